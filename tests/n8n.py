"""The real n8n for the opt-in tests (marker `n8n`), shared by the integration and e2e tiers.

The n8n the environment names (PROVISIONER_N8N_URL and PROVISIONER_N8N_API_KEY, for
example after `eval "$(scripts/start-n8n)"`), or with PROVISIONER_N8N_TESTS=1 one started
for the session with scripts/start-n8n (installing it into .tools/n8n the first time,
which takes a few minutes) and stopped afterwards if it was not already running. The
tests that use it are skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "start-n8n"
INSTALL_DIR = REPO / ".tools" / "n8n"


@dataclass(frozen=True, slots=True)
class N8n:
    url: str
    api_key: str


def _running_pid(install_dir: Path) -> str | None:
    pid = (
        (install_dir / "state" / "n8n.pid").read_text().strip()
        if (install_dir / "state" / "n8n.pid").exists()
        else ""
    )
    return pid if pid.isdigit() and Path(f"/proc/{pid}").exists() else None


@pytest.fixture(scope="session")
def n8n() -> Iterator[N8n]:
    """The n8n under test: the one the environment names, else one started for the session."""
    url, key = os.environ.get("PROVISIONER_N8N_URL"), os.environ.get("PROVISIONER_N8N_API_KEY")
    if url and key:
        yield N8n(url, key)
        return
    if os.environ.get("PROVISIONER_N8N_TESTS") != "1":
        pytest.skip("no n8n: set PROVISIONER_N8N_URL and PROVISIONER_N8N_API_KEY, or PROVISIONER_N8N_TESTS=1")
    already = _running_pid(INSTALL_DIR)
    started = subprocess.run(
        [str(SCRIPT), str(INSTALL_DIR)], capture_output=True, text=True, timeout=840, check=False
    )
    if started.returncode != 0:
        pytest.fail(f"scripts/start-n8n failed ({started.returncode}):\n{started.stderr}", pytrace=False)
    values = dict(
        line.split("=", 1)
        for line in started.stdout.splitlines()
        if "=" in line and not line.startswith("export")
    )
    try:
        yield N8n(values["PROVISIONER_N8N_URL"], values["PROVISIONER_N8N_API_KEY"])
    finally:
        if values.get("N8N_PID") != already:  # ours to stop; one found running stays
            subprocess.run(
                [str(SCRIPT), "--stop", str(INSTALL_DIR)], capture_output=True, timeout=60, check=False
            )
