"""A real OpenID Provider (the npm package oidc-provider) for the tests of the RFC 7591
registration adapter, started for the session by scripts/start-oidc-provider (which
installs it into .tools/oidc-provider the first time, in a few seconds) and stopped after.

It needs npm. Without it the tests are skipped, unless PROVISIONER_REQUIRE_OIDC=1 (as in
.ci/run) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "start-oidc-provider"


@dataclass(frozen=True, slots=True)
class OidcProvider:
    issuer: str
    registration_token: str


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    if shutil.which("npm") is None:
        if os.environ.get("PROVISIONER_REQUIRE_OIDC") == "1":
            pytest.fail("npm is needed for oidc-provider (PROVISIONER_REQUIRE_OIDC=1)", pytrace=False)
        pytest.skip("no npm: oidc-provider cannot be installed")
    install = REPO / ".tools" / "oidc-provider"
    started = subprocess.run(
        [str(SCRIPT), str(install)], capture_output=True, text=True, timeout=600, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/start-oidc-provider failed:\n{started.stderr}", pytrace=False)
    values = dict(
        line.split("=", 1) for line in started.stdout.splitlines() if "=" in line and " " not in line
    )
    try:
        yield OidcProvider(
            values["PROVISIONER_OAUTH_PROVIDER"], values["PROVISIONER_OAUTH_REGISTRATION_TOKEN"]
        )
    finally:
        subprocess.run([str(SCRIPT), "--stop", str(install)], capture_output=True, timeout=30, check=False)
