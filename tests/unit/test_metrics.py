"""The engine's metrics, counted from what it commits (the in-memory store, marker steps).

Families are process-wide (prometheus_client's registry), so every check is on the
difference a job made, not on an absolute value.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import REGISTRY, generate_latest

from provisioner.core.states import State, StepName
from tests.unit.test_engine import Build, build, run, store  # noqa: F401  (fixtures)


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
