"""`/metrics` of the real `provisioning-server`, after a provisioning that succeeded, one
that failed and a refused call: parsed directly, and scraped by a real Prometheus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ControlPlane, started_plane
from tests.prometheus import prometheus
from tests.unit.test_dashboard import queries

pytestmark = pytest.mark.slow

SPEC = {
    "departmentName": "Metrics",
    "workflows": ["database"],
    "dataRetention": "90d",
    "region": "us-west",
    "adminEmail": "admin@example.com",
}
GOOD, BAD = "metrics-good", "metrics-bad"
PROVISION = "/provisioning.v1.ProvisioningService/Provision"


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with started_plane(
        tmp_path_factory.mktemp("metrics"),
        PROVISIONER_STEPS="local",
        PROVISIONER_FAULT_INJECTION=f"validation=fail@{BAD}",
        PROVISIONER_CENSUS_INTERVAL="0.5",
    ) as running:
        with running.http() as api:
            for department in (GOOD, BAD):
                job = api.post("/api/provision-department", json={**SPEC, "departmentId": department}).json()
                # Watched to its end over SSE: WatchProgress streams and delivery are measured.
                with api.stream("GET", f"/api/provision-status/{job['jobId']}/watch", timeout=30) as reply:
                    assert reply.status_code == 200
                    lines = [line for line in reply.iter_lines() if line.startswith("data: ")]
                last = json.loads(lines[-1].removeprefix("data: "))
                assert last["event"]["type"] == "JOB_EVENT_TYPE_JOB_FINISHED", last
        refused = httpx.get(f"{running.rest_url}/api/departments", trust_env=False)
        assert refused.status_code == 401
        yield running


def scrape(plane: ControlPlane, accept: str = "") -> httpx.Response:
    reply = httpx.get(plane.metrics_url, headers={"accept": accept} if accept else {}, trust_env=False)
    assert reply.status_code == 200
    return reply


def samples(plane: ControlPlane) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(scrape(plane).text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def get(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_jobs_and_steps_are_counted_by_outcome(plane: ControlPlane) -> None:
    found = samples(plane)
    assert get(found, "provisioner_jobs_total", kind="provision", outcome="completed") == 1
    assert get(found, "provisioner_jobs_total", kind="provision", outcome="failed") == 1
    assert get(found, "provisioner_jobs_in_flight", kind="provision") == 0
    assert get(found, "provisioner_step_duration_seconds_count", step="validation", outcome="succeeded") == 1
    assert get(found, "provisioner_step_duration_seconds_count", step="validation", outcome="failed") == 1
    assert get(found, "provisioner_compensations_total", step="database", outcome="compensated") == 1


def test_requests_rejections_streams_and_the_store_are_measured(plane: ControlPlane) -> None:
    found = samples(plane)
    assert get(found, "provisioner_requests_total", method=PROVISION, code="OK") == 2
    assert get(found, "provisioner_request_duration_seconds_count", method=PROVISION) == 2
    assert get(found, "provisioner_requests_rejected_total", reason="auth") == 1
    assert get(found, "provisioner_watch_streams") == 0
    assert get(found, "provisioner_event_delivery_seconds_count") > 10
    assert get(found, "provisioner_store_commit_seconds_count") > 10
    assert get(found, "provisioner_store_commit_batch_size_count") > 10
    assert get(found, "process_cpu_seconds_total") > 0


def test_no_series_names_a_department_and_openmetrics_is_served_on_request(plane: ControlPlane) -> None:
    text = scrape(plane).text
    assert GOOD not in text and BAD not in text and "e2e-user" not in text
    open_metrics = scrape(plane, "application/openmetrics-text; version=1.0.0")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")


def test_a_taken_metrics_port_is_one_clear_error(plane: ControlPlane, tmp_path: Path) -> None:
    taken = plane.metrics_url.removeprefix("http://").removesuffix("/metrics")
    refused = pytest.raises(AssertionError, match=f"cannot listen on PROVISIONER_METRICS_ADDR={taken}")
    with refused, started_plane(tmp_path, PROVISIONER_STEPS="noop", PROVISIONER_METRICS_ADDR=taken):
        pass


def test_a_real_prometheus_scrapes_the_server_and_envoy(plane: ControlPlane, tmp_path: Path) -> None:
    targets = {"provisioner": plane.metrics_url, "envoy": f"{plane.admin_url}/stats/prometheus"}
    with prometheus(tmp_path, targets) as prom:
        outcome = 'provisioner_jobs_total{job="provisioner",kind="provision",outcome="%s"}'
        assert prom.eventually(outcome % "completed") == 1
        assert prom.value(outcome % "failed") == 1
        assert prom.value('provisioner_departments{status="active"}') == 1
        assert prom.value('provisioner_departments{status="failed"}') == 1
        assert prom.value('provisioner_departments{status="needs_attention"}') == 0
        assert prom.value("provisioner_jobs_overdue") == 0
        assert prom.value('up{job="provisioner"}') == 1
        # A dashboard's query: the p95 of a step's duration, from the histogram's buckets.
        p95 = prom.value(
            "histogram_quantile(0.95, sum by (le) "
            '(provisioner_step_duration_seconds_bucket{step="database",outcome="succeeded"}))'
        )
        assert p95 is not None and 0 < p95 < 60
        # Every dashboard query answers (a misspelt metric or label would answer nothing).
        time.sleep(3)  # rate() needs two samples in its window
        for expr in queries():
            assert prom.query(expr.replace("$__rate_interval", "30s")), expr
        # Envoy's own statistics, from its admin port, as the operations guide scrapes them.
        assert prom.eventually('up{job="envoy"}') == 1
        assert prom.eventually('sum(envoy_http_downstream_rq_total{job="envoy"})') >= 3
