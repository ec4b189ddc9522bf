"""The real control plane in a subprocess, for the benchmarks (not a test fixture)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import jwt

SECRET = "bench-secret-" + "b" * 40
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    def __init__(
        self, state_dir: Path, *, steps: str, settings: Mapping[str, str] | None = None, envoy: bool = True
    ) -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        self.rest = f"http://127.0.0.1:{free_port()}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")},
            "PROVISIONER_STATE_DIR": str(state_dir),
            "PROVISIONER_GRPC_ADDR": self.grpc,
            "PROVISIONER_METRICS_ADDR": "127.0.0.1:0",
            "PROVISIONER_HTTP_ADDR": self.rest.removeprefix("http://"),
            "PROVISIONER_ENVOY_ADMIN_ADDR": f"127.0.0.1:{free_port()}",
            "PROVISIONER_STEPS": steps,
            "PROVISIONER_JWT_SECRET": SECRET,
            # No-op steps and a key file under the state dir: a bench, not a production.
            "PROVISIONER_MODE": "development",
            "PROVISIONER_RATE_LIMIT_PROVISION": "1000000/h",
            "PROVISIONER_RATE_LIMIT_DEPROVISION": "1000000/h",
            "PROVISIONER_RATE_LIMIT_READ": "10000000/m",
            # The benchmarks are one principal with 1,000 calls and streams at once, and
            # measure the engine saturated: no limit or load shedding may refuse them.
            "PROVISIONER_MAX_STREAMS_PER_PRINCIPAL": "100000",
            "PROVISIONER_MAX_CALLS_PER_PRINCIPAL": "100000",
            "PROVISIONER_MAX_STREAMS": "100000",
            "PROVISIONER_MAX_CALLS": "100000",
            "PROVISIONER_OVERLOAD_LAG": "3600",
            "PROVISIONER_MAX_RUNNING_JOBS": "2000",
            # The departments of a run (and any warm-up) stay provisioned: above the quota.
            "PROVISIONER_MAX_DEPARTMENTS": "100000",
            "PROVISIONER_LOG_LEVEL": "WARNING",
            **(settings or {}),
        }
        self.args = [] if envoy else ["--no-envoy"]
        self.log = state_dir.parent / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.with_suffix(".out")
        with self.log.open("wb") as log, out.open("wb") as sink:
            self.process = subprocess.Popen(
                [str(BIN / "provisioning-server"), *self.args], env=self.env, stdout=sink, stderr=log
            )
        deadline = time.monotonic() + 60
        while "control plane ready" not in out.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: server did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def peak_rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def stop_departments(self) -> None:
        """Department services outlive the control plane by design: stop this run's."""
        marker = str(self.env["PROVISIONER_STATE_DIR"]).encode()
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError):
                command = (proc / "cmdline").read_bytes()
                if proc.name.isdigit() and b"department_service" in command and marker in command:
                    os.kill(int(proc.name), signal.SIGKILL)


def token() -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": "bench", "roles": ["admin"], "iat": now, "nbf": now, "exp": now + 3600}, SECRET, "HS256"
    )
