"""A real Prometheus server (Debian's `prometheus` package), and `promtool`, for the tests.

Without the binaries these tests are skipped, unless PROVISIONER_REQUIRE_PROMETHEUS=1
(CI, where `scripts/ensure-system-packages` installs them): a silent skip there would
hide that the metrics were never scraped by the real thing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ports import free_port

_REQUIRE_ENV = "PROVISIONER_REQUIRE_PROMETHEUS"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; skips (or fails, in CI) when missing."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found: `apt-get install prometheus` (scripts/ensure-system-packages)"
        if os.environ.get(_REQUIRE_ENV) == "1":
            pytest.fail(f"{message}; {_REQUIRE_ENV}=1 requires it")
        pytest.skip(message)
    return found


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, object]]:
        """An instant query's result vector, through the HTTP API."""
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, trust_env=False, timeout=10)
        body = reply.json()
        assert reply.status_code == 200 and body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The value of a query that selects one series, or None if it selects none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]

    def eventually(self, expr: str, patience: float = 30) -> float:
        """The value of `expr` once Prometheus has scraped a sample of it."""
        deadline = time.monotonic() + patience
        while (found := self.value(expr)) is None:
            assert time.monotonic() < deadline, f"Prometheus never had {expr}"
            time.sleep(0.25)
        return found


@contextlib.contextmanager
def prometheus(root: Path, targets: dict[str, str]) -> Iterator[Prometheus]:
    """Prometheus on a private port, scraping each job's `http://host:port/path` every second."""
    executable = binary("prometheus")
    root.mkdir(parents=True, exist_ok=True)
    jobs = ""
    for job, url in targets.items():
        parts = urlsplit(url)
        jobs += (
            f"  - job_name: {job}\n    metrics_path: {parts.path}\n"
            f"    static_configs:\n      - targets: ['{parts.netloc}']\n"
        )
    config = root / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{jobs}")
    address = f"127.0.0.1:{free_port()}"
    with (root / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                executable,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address={address}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://{address}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", trust_env=False, timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "Prometheus was not ready in 30 s"
            time.sleep(0.1)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
