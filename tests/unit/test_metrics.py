"""The engine's metrics, counted from what it commits (the in-memory store, marker steps).

Families are process-wide (prometheus_client's registry), so every check is on the
difference a job made, not on an absolute value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

from prometheus_client import REGISTRY, generate_latest

from provisioner.core.states import DepartmentStatus, State, StepName
from provisioner.edge.errors import _REJECTIONS
from provisioner.engine.orchestrator import utcnow
from provisioner.telemetry.metrics import REJECTION_REASONS
from tests.unit.test_engine import FAST, Build, build, run, store  # noqa: F401  (fixtures)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Samples before and after, by (name, labels)."""

    def __init__(self, *samples: tuple[str, Mapping[str, str]]) -> None:
        self._samples = samples
        self._before = [value(name, **labels) for name, labels in samples]

    def __getitem__(self, index: int) -> float:
        name, labels = self._samples[index]
        return value(name, **labels) - self._before[index]


async def test_a_completed_job_counts_once_with_every_step_timed(build: Build) -> None:  # noqa: F811
    steps = [str(s) for s in StepName]
    delta = Delta(
        ("provisioner_jobs_total", {"kind": "provision", "outcome": "completed"}),
        ("provisioner_job_duration_seconds_count", {"kind": "provision", "outcome": "completed"}),
        *(("provisioner_step_duration_seconds_count", {"step": s, "outcome": "succeeded"}) for s in steps),
    )
    job, _ = await run(build())
    assert job.state is State.COMPLETED
    assert delta[0] == 1 and delta[1] == 1
    assert [delta[2 + i] for i in range(len(steps))] == [1] * len(steps)
    assert value("provisioner_jobs_in_flight", kind="provision") == 0


async def test_retries_failures_and_compensations_are_counted_by_step(build: Build) -> None:  # noqa: F811
    delta = Delta(
        ("provisioner_step_retries_total", {"step": "database"}),
        ("provisioner_jobs_total", {"kind": "provision", "outcome": "failed"}),
        ("provisioner_step_duration_seconds_count", {"step": "validation", "outcome": "failed"}),
        ("provisioner_compensations_total", {"step": "container", "outcome": "failed"}),
        ("provisioner_compensations_total", {"step": "database", "outcome": "compensated"}),
    )
    job, _ = await run(build("database=transient:2,container=fail-compensate,validation=fail"))
    assert job.state is State.FAILED
    assert [delta[i] for i in range(5)] == [2, 1, 1, 1, 1]


async def test_no_label_names_a_department_or_a_principal(build: Build) -> None:  # noqa: F811
    await run(build(), "finance-secret-dept")
    scrape = generate_latest(REGISTRY).decode()
    assert "finance-secret-dept" not in scrape and "alice" not in scrape
    assert "provisioner_jobs_total" in scrape


async def test_known_series_exist_at_zero_before_anything_happens() -> None:
    scrape = generate_latest(REGISTRY).decode()
    for series in (
        'provisioner_jobs_total{kind="deprovision",outcome="failed"}',
        'provisioner_jobs_in_flight{kind="deprovision"}',
        'provisioner_step_retries_total{step="gateway"}',
        'provisioner_departments{status="needs_attention"}',
        'provisioner_requests_rejected_total{reason="concurrency"}',
    ):
        assert series in scrape, series


def test_every_rejection_reason_the_edge_counts_is_initialized() -> None:
    assert {reason for _, reason in _REJECTIONS} == set(REJECTION_REASONS)


async def test_the_census_reports_departments_by_status_and_overdue_jobs(
    build: Build,  # noqa: F811
) -> None:
    config = replace(FAST, census_interval=0.05)
    await run(build(config=config), "census-a")
    await run(build("validate=fail", config=config), "census-b")
    for _ in range(100):
        counts = await build().store.census(utcnow())
        if value("provisioner_departments", status="failed") == counts.departments[DepartmentStatus.FAILED]:
            break
        await asyncio.sleep(0.02)
    for status, count in counts.departments.items():
        assert value("provisioner_departments", status=status.value) == count
    assert counts.departments[DepartmentStatus.ACTIVE] >= 1
    assert counts.departments[DepartmentStatus.FAILED] >= 1
    assert value("provisioner_jobs_overdue") == 0
