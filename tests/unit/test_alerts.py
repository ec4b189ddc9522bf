"""The alert rules in deploy/prometheus/alerts.yml, run by `promtool test rules`.

Each alert has series that must fire it (with its labels and its rendered summary) and
series that must not. The cases are written here and turned into promtool's test file;
the descriptions, which are plain text, are taken from the rules themselves.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus import binary

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "alerts.yml"
A, B = {"job": "provisioner", "instance": "a"}, {"job": "provisioner", "instance": "b"}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{body}}}", "values": values}


def histogram(name: str, counts: dict[str, str], **labels: str) -> list[dict[str, str]]:
    """A histogram's cumulative buckets: `counts` maps each `le` to its values."""
    return [series(f"{name}_bucket", values, **labels, le=le) for le, values in counts.items()]


def descriptions() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    return {rule["alert"]: rule["annotations"]["description"] for rule in rules}


def fired(alert: str, summary: str, **labels: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": descriptions()[alert]},
    }


# (alert, what the case shows, input series, [(eval time, expected alerts)])
CASES: list[tuple[str, str, list[dict[str, str]], list[tuple[str, list[dict[str, Any]]]]]] = [
    (
        "ProvisioningsFailing",
        "half the provisionings fail",
        [
            series("provisioner_jobs_total", "0+1x40", **A, kind="provision", outcome="failed"),
            series("provisioner_jobs_total", "0+1x40", **A, kind="provision", outcome="completed"),
        ],
        [
            (
                "30m",
                [
                    fired(
                        "ProvisioningsFailing",
                        "provisionings failed in the last 30 minutes: 30",
                        severity="warning",
                    )
                ],
            )
        ],
    ),
    (
        "ProvisioningsFailing",
        "one bad spec, and a busy hour where few fail, are not incidents",
        [
            series("provisioner_jobs_total", "0x10 1x30", **A, kind="provision", outcome="failed"),
            series("provisioner_jobs_total", "0+5x40", **A, kind="provision", outcome="completed"),
            series("provisioner_jobs_total", "0+1x40", **B, kind="provision", outcome="failed"),
            series("provisioner_jobs_total", "0+10x40", **B, kind="provision", outcome="completed"),
        ],
        [("30m", [])],
    ),
    (
        "DepartmentsNeedAttention",
        "two replicas report the same two departments: two, not four; after 5 minutes",
        [
            series("provisioner_departments", "2x20", **A, status="needs_attention"),
            series("provisioner_departments", "2x20", **B, status="needs_attention"),
        ],
        [
            ("3m", []),
            ("10m", [fired("DepartmentsNeedAttention", "departments needing attention: 2", severity="page")]),
        ],
    ),
    (
        "DepartmentsNeedAttention",
        "none need attention, however many failed",
        [
            series("provisioner_departments", "0x20", **A, status="needs_attention"),
            series("provisioner_departments", "5x20", **A, status="failed"),
        ],
        [("10m", [])],
    ),
    (
        "JobsOverdue",
        "a job stays past its deadline",
        [series("provisioner_jobs_overdue", "0x2 1x20", **A)],
        [
            ("5m", []),
            ("10m", [fired("JobsOverdue", "unfinished jobs past their deadline: 1", severity="page")]),
        ],
    ),
    (
        "JobsOverdue",
        "an overdue job that a replica takes over within minutes",
        [series("provisioner_jobs_overdue", "0x5 1x3 0x12", **A)],
        [("6m", []), ("10m", []), ("15m", [])],
    ),
    (
        "RequestsRejected",
        "half the calls rate-limited, at 1 a second, for 10 minutes",
        [
            series("provisioner_requests_rejected_total", "0+60x30", **A, reason="rate_limit"),
            series("provisioner_requests_rejected_total", "0x30", **A, reason="auth"),
            series("provisioner_requests_total", "0+120x30", **A, method="m", code="OK"),
        ],
        [
            ("8m", []),
            (
                "20m",
                [
                    fired(
                        "RequestsRejected",
                        "requests rejected for rate_limit: 1/s",
                        severity="warning",
                        reason="rate_limit",
                    )
                ],
            ),
        ],
    ),
    (
        "RequestsRejected",
        "a few refusals among many calls, and all of a very few calls",
        [
            series("provisioner_requests_rejected_total", "0+6x30", **A, reason="auth"),
            series("provisioner_requests_total", "0+600x30", **A, method="m", code="OK"),
            series("provisioner_requests_rejected_total", "0+2x30", **B, reason="invalid"),
            series("provisioner_requests_total", "0x30", **B, method="m", code="OK"),
        ],
        [("20m", [])],
    ),
    (
        "EventDeliveryLagging",
        "events reach watchers 2.5 to 5 s late",
        histogram(
            "provisioner_event_delivery_seconds",
            {"0.5": "0x30", "1": "0x30", "2.5": "0x30", "5": "0+100x30", "+Inf": "0+100x30"},
            **A,
        ),
        [
            ("5m", []),
            (
                "20m",
                [
                    fired(
                        "EventDeliveryLagging",
                        "p99 event delivery 4.975s on a",
                        severity="warning",
                        instance="a",
                    )
                ],
            ),
        ],
    ),
    (
        "EventDeliveryLagging",
        "events arrive within half a second",
        histogram(
            "provisioner_event_delivery_seconds",
            {"0.5": "0+100x30", "1": "0+100x30", "2.5": "0+100x30", "5": "0+100x30", "+Inf": "0+100x30"},
            **A,
        ),
        [("20m", [])],
    ),
    (
        "StoreCommitsSlow",
        "commits take 0.5 to 1 s",
        histogram(
            "provisioner_store_commit_seconds",
            {"0.1": "0x30", "0.25": "0x30", "0.5": "0x30", "1": "0+50x30", "+Inf": "0+50x30"},
            **B,
        ),
        [
            ("5m", []),
            (
                "20m",
                [fired("StoreCommitsSlow", "p99 store commit 995ms on b", severity="warning", instance="b")],
            ),
        ],
    ),
    (
        "StoreCommitsSlow",
        "commits under 100 ms",
        histogram(
            "provisioner_store_commit_seconds",
            {"0.1": "0+50x30", "0.25": "0+50x30", "0.5": "0+50x30", "1": "0+50x30", "+Inf": "0+50x30"},
            **B,
        ),
        [("20m", [])],
    ),
    (
        "WebhooksFailing",
        "one job.failed message given up on",
        [
            series(
                "provisioner_webhook_deliveries_total", "0x10 1x20", **A, type="job.failed", outcome="failed"
            ),
            series(
                "provisioner_webhook_deliveries_total",
                "0+3x30",
                **A,
                type="job.completed",
                outcome="delivered",
            ),
        ],
        [
            ("5m", []),
            (
                "20m",
                [
                    fired(
                        "WebhooksFailing",
                        "job.failed webhooks given up on in the last hour: 1",
                        severity="warning",
                        type="job.failed",
                    )
                ],
            ),
        ],
    ),
    (
        "WebhooksFailing",
        "retries that end delivered",
        [
            series(
                "provisioner_webhook_deliveries_total",
                "0+2x30",
                **A,
                type="job.completed",
                outcome="retrying",
            ),
            series(
                "provisioner_webhook_deliveries_total",
                "0+2x30",
                **A,
                type="job.completed",
                outcome="delivered",
            ),
            series(
                "provisioner_webhook_deliveries_total", "0x30", **A, type="job.completed", outcome="failed"
            ),
        ],
        [("20m", [])],
    ),
    (
        "WebhooksBacklogged",
        "the receiver is down for half an hour",
        [
            series("provisioner_webhooks_pending", "0+5x40", **A),
            series("provisioner_webhooks_pending", "0+5x40", **B),
        ],
        [
            ("20m", []),
            ("35m", [fired("WebhooksBacklogged", "webhook messages waiting: 175", severity="warning")]),
        ],
    ),
    (
        "WebhooksBacklogged",
        "a burst that drains within minutes",
        [series("provisioner_webhooks_pending", "0x5 200x5 0x20", **A)],
        [("10m", []), ("25m", [])],
    ),
    (
        "ReplicaDown",
        "one of two replicas stops answering scrapes",
        [series("up", "1x5 0x10", **A), series("up", "1x15", **B)],
        [("6m", []), ("10m", [fired("ReplicaDown", "replica a cannot be scraped", severity="warning", **A)])],
    ),
    (
        "NoReplicaUp",
        "both replicas down",
        [series("up", "1x5 0x10", **A), series("up", "1x5 0x10", **B)],
        [("4m", []), ("10m", [fired("NoReplicaUp", "no provisioning replica is up", severity="page")])],
    ),
    (
        "NoReplicaUp",
        "one replica of two still up",
        [series("up", "1x5 0x10", **A), series("up", "1x15", **B)],
        [("10m", [])],
    ),
]


def test_the_rules_are_valid() -> None:
    checked = subprocess.run(
        [binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_must_not() -> None:
    firing = {alert for alert, _, _, evals in CASES if any(expected for _, expected in evals)}
    silent = {alert for alert, _, _, evals in CASES if any(not expected for _, expected in evals)}
    assert firing == silent == set(descriptions())
    assert not any("{{" in text for text in descriptions().values()), "descriptions are plain text"


@pytest.mark.parametrize(("alert", "case"), [(alert, case) for alert, case, _, _ in CASES])
def test_alert(alert: str, case: str, tmp_path: Path) -> None:
    (inputs, evals) = next((s, e) for a, c, s, e in CASES if (a, c) == (alert, case))
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "name": f"{alert}: {case}",
                        "interval": "1m",
                        "input_series": inputs,
                        "alert_rule_test": [
                            {"eval_time": at, "alertname": alert, "exp_alerts": expected}
                            for at, expected in evals
                        ],
                    }
                ],
            }
        )
    )
    tested = subprocess.run(
        [binary("promtool"), "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
