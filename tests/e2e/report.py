"""Figures for the hostile-input and attack report: one JSON line per suite run.

`record(suite, **figures)` appends `{"suite": ..., "time": ..., **figures}` to the file named
by `PROVISIONER_REPORT_FILE`, and does nothing when that variable is unset, so suites call it
unconditionally and CI decides whether a report is kept (and turns the lines into a table).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

REPORT_FILE = "PROVISIONER_REPORT_FILE"


def record(suite: str, **figures: int | float | str | bool) -> None:
    """Append one line of `figures` for `suite` to the report file, if one is configured."""
    target = os.environ.get(REPORT_FILE)
    if not target:
        return
    line = json.dumps({"suite": suite, "time": round(time.time(), 3), **figures}, sort_keys=True)
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One write of one line in append mode: lines from concurrent suites never interleave.
    with path.open("a", encoding="utf-8") as report:
        report.write(line + "\n")
