"""One JSON object per line on stderr: requests, start and stop.

Callers choose the fields; nothing here ever sees a request's headers, so neither the
Authorization header nor any secret can reach the log by accident.
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime

_lock = threading.Lock()  # request threads must not interleave their lines


def utc_now() -> str:
    """Now, as fixed-width ISO-8601 UTC (text order is time order)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def emit(**fields: object) -> None:
    """Write one log line; a closed or broken stderr is ignored rather than failing the request."""
    line = json.dumps({"ts": utc_now(), **fields}, default=str)
    with _lock:
        try:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
