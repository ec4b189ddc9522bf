"""`/metrics` over HTTP, for Prometheus to scrape (PROVISIONER_METRICS_ADDR).

prometheus_client's own exposition server, on a thread of its own: a scrape never waits
for the event loop, so a busy loop still answers, and its figures show how busy. It
serves the text format, and OpenMetrics to a scraper that asks for it (`Accept`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from prometheus_client import start_http_server

from provisioner.core.errors import ConfigurationError


@contextlib.asynccontextmanager
async def exporting(host: str, port: int) -> AsyncIterator[str]:
    """Serve `/metrics` on `host:port` (0: any free port) while the block runs; yields its URL."""
    try:
        server, thread = start_http_server(port, host)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot listen on PROVISIONER_METRICS_ADDR={host}:{port}: {exc.strerror or exc}"
        ) from exc
    try:
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
