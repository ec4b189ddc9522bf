"""The README's first journey, run as written: the block is read from README.md itself and
pasted into bash, against a real `provisioning-server` started as `make run` starts it
(development mode, default ports, `var/` in the working directory)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BIN, stop_department_services

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
DEFAULT_PORTS = (50051, 8080, 9901, 9464)


def first_journey() -> str:
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- first-journey[^>]*-->\n```bash\n(.*?)\n```", readme, re.S)
    assert found, "README.md has no block marked first-journey"
    return found.group(1)


def taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_readmes_first_journey_works_as_written(tmp_path: Path) -> None:
    busy = [port for port in DEFAULT_PORTS if taken(port)]
    if busy:
        pytest.skip(f"the README's journey needs the default ports; in use here: {busy}")
    # The repository as a newcomer has it after `make run`: .venv, examples/, and var/.
    (tmp_path / ".venv").symlink_to(BIN.parent)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    out = tmp_path / "server.out"
    with out.open("wb") as sink, (tmp_path / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(BIN / "provisioning-server")],
            cwd=tmp_path,
            env={**env, "PROVISIONER_MODE": "development"},
            stdout=sink,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while "control plane ready" not in out.read_text():
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        journey = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", first_journey()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert journey.returncode == 0, journey.stdout + journey.stderr
        lines = journey.stdout.splitlines()
        made = next(line for line in lines if line.startswith("job "))
        assert re.fullmatch(r"job [0-9a-f-]{36} made department hr, whose OAuth client is hr\.\S+", made), (
            made
        )
        assert '"status"' in journey.stdout and "SERVING" in journey.stdout  # the service's /healthz
        # The workflow ran with the access token the client got at the token endpoint.
        assert '"workflow":"database","status":"succeeded"' in journey.stdout, journey.stdout
        assert "department hr is healthy" in journey.stdout
        history = [
            m.groups() for line in lines if (m := re.match(r"[0-9a-f-]{36}\s+hr\s+(\w+)\s+(\w+)", line))
        ]
        assert history == [("deprovision", "COMPLETED"), ("provision", "COMPLETED")]
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
        stop_department_services(tmp_path / "var")
