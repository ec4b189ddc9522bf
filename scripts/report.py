"""Print the suites' figures as one table: `make report` runs the suites, then this.

Usage: report.py REPORT.jsonl  (lines written by tests/e2e/report.py's `record`)
The latest line of each suite wins; a suite with no line is shown as not run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS: list[tuple[str, str, str]] = [
    ("crash", "crashes injected / jobs recovered / orphans found",
     "{crashes_injected} / {jobs_recovered} of {jobs} / {orphans_found}"),
    ("faults", "faults injected / handled as specified (clean rollback, retry, or reported leftovers)",
     "{faults_injected} / {handled_as_specified}"),
    ("store_outage", "job store cut for 3 s mid-job: job completed / events lost or repeated",
     "{completed} / {events_lost_or_repeated}"),
    ("envoy_restart", "Envoy killed under a REST watcher: reconnects / events / lost or repeated",
     "{reconnects} / {events} / {lost_or_repeated}"),
    ("load", "watchers / events delivered / lost / duplicated",
     "{watchers} / {events_delivered} / {lost} / {duplicated} (peak RSS {server_peak_rss_mib} MiB)"),
    ("hostile", "generated requests (gRPC + REST) / 5xx or INTERNAL / crashes",
     "{grpc_requests} + {rest_requests} / {responses_5xx} / {crashes}"),
    ("hostile", "malicious inputs / anything created outside a department's own resources",
     "{malicious_inputs} / {created_outside}"),
    ("auth", "bad tokens / accepted", "{bad_tokens} / {bad_tokens_accepted}"),
    ("auth", "method x role checks / violations", "{role_checks} / {role_violations}"),
    ("rate_limit", "rate limit: allowed of limit / next refused / others unaffected / after restart",
     "{allowed} of {limit} / {refused} refused / {others_unaffected} / {held_across_restart}"),
    ("secrets", "places scanned / secrets found", "{places_scanned} / {secrets_found}"),
    ("abuse_half_open", "half-open connections / all dropped after (s)", "{connections} / {dropped_after_s}"),
    ("abuse_streams", "one viewer's watches: SSE open/refused, gRPC open/refused / another's GetStatus p99",
     "{sse_opened}/{sse_refused}, {grpc_opened}/{grpc_refused} / {other_getstatus_p99_ms} ms "
     "(RSS {rss_before_mib} -> {rss_after_mib} MiB)"),
    ("abuse_health", "concurrent health checks / p50 / another's read p99",
     "{checks} / {check_p50_ms} ms / {other_read_p99_ms} ms"),
]  # fmt: skip


def latest(path: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        found[entry["suite"]] = entry
    return found


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = ["| suite | measure | result |", "|---|---|---|"]
    for suite, measure, template in ROWS:
        entry = figures.get(suite)
        try:
            result = template.format(**entry) if entry else "not run"
        except KeyError as missing:
            result = f"incomplete (no {missing})"
        lines.append(f"| {suite} | {measure} | {result} |")
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1])
    if not path.exists():
        print(f"report.py: {path} does not exist; run the suites first (make report)", file=sys.stderr)
        return 1
    print(table(latest(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
