"""The job aggregate: the state walk, progress, rollback plan and cleanup report."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from provisioner.core.errors import TransientStepError
from provisioner.core.job import EventType, Job, JobError, ready_steps, rollback_plan
from provisioner.core.states import (
    STEP_ORDER,
    STEP_STATE,
    JobKind,
    State,
    StepName,
    StepStatus,
)
from tests.unit.factories import T0, new_job

FORWARD = [State.PENDING, *STEP_STATE.values(), State.COMPLETED]


@st.composite
def completion_orders(draw: st.DrawFn) -> list[StepName]:
    """Any order in which the step graph could finish its steps."""
    job, _ = new_job()
    order: list[StepName] = []
    running: list[StepName] = []
    while len(order) < len(STEP_ORDER):
        for name in ready_steps(job.steps):
            job.steps[name].status = StepStatus.RUNNING
            running.append(name)
        done = draw(st.sampled_from(running))
        running.remove(done)
        job.steps[done].status = StepStatus.SUCCEEDED
        order.append(done)
    return order


@given(completion_orders())
def test_watchers_see_every_state_once_and_in_order_whatever_finishes_first(order: list[StepName]) -> None:
    job, created = new_job()
    events = [created, *job.start(T0)]
    for name in order:
        events.append(job.start_step(name, T0))
        events.extend(job.step_succeeded(name, {"id": name.value}, T0))
    events.extend(job.complete(T0))
    states = [State.PENDING] + [e.state for e in events if e.type is EventType.STATE_CHANGED]
    assert states == FORWARD
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type is EventType.JOB_FINISHED and events[-1].is_terminal


@given(completion_orders())
def test_progress_never_decreases_on_the_way_up_and_ends_at_100(order: list[StepName]) -> None:
    job, _ = new_job()
    job.start(T0)
    seen = [job.progress]
    for name in order:
        job.start_step(name, T0)
        job.step_succeeded(name, {}, T0)
        seen.append(job.progress)
    assert seen == sorted(seen) and seen[0] == 0 and seen[-1] == 100


@given(st.lists(st.sampled_from(StepStatus), min_size=len(STEP_ORDER), max_size=len(STEP_ORDER)))
def test_rollback_plan_is_everything_that_may_have_effects_latest_first(statuses: list[StepStatus]) -> None:
    job, _ = new_job()
    for name, status in zip(STEP_ORDER, statuses, strict=True):
        job.steps[name].status = status
    plan = rollback_plan(job.steps)
    with_effects = {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.RUNNING, StepStatus.COMPENSATING}
    assert set(plan) == {n for n, s in zip(STEP_ORDER, statuses, strict=True) if s in with_effects}
    assert plan == sorted(plan, key=STEP_ORDER.index, reverse=True)


def _failing_job() -> Job:
    job, _ = new_job()
    job.start(T0)
    for name in (StepName.VALIDATE, StepName.DATABASE, StepName.OAUTH):
        job.start_step(name, T0)
        job.step_succeeded(name, {"id": f"{name}-1"}, T0)
    job.start_step(StepName.CONTAINER, T0)
    job.step_failed(StepName.CONTAINER, TransientStepError("no capacity"), T0)
    return job


def test_failure_rolls_back_then_fails_with_a_clean_report() -> None:
    job = _failing_job()
    [event] = job.fail(JobError("STEP_FAILED", "no capacity", StepName.CONTAINER), T0)
    assert job.state is State.ROLLING_BACK and event.state is State.ROLLING_BACK
    assert job.rollback_plan() == [StepName.CONTAINER, StepName.OAUTH, StepName.DATABASE, StepName.VALIDATE]
    for name in job.rollback_plan():
        job.start_compensation(name, 1, T0)
        job.step_compensated(name, T0)
    events = job.finish_rollback(T0)
    assert job.state is State.FAILED
    assert job.cleanup is not None and job.cleanup.clean
    assert events[-1].detail["error"] == {
        "reason": "STEP_FAILED",
        "message": "no capacity",
        "step": "container",
    }
    assert events[-1].detail["cleanup"]["compensated"] == ["container", "oauth", "database", "validate"]


def test_a_failed_compensation_is_reported_with_what_remains() -> None:
    job = _failing_job()
    job.fail(JobError("STEP_FAILED", "no capacity"), T0)
    for name in job.rollback_plan():
        job.start_compensation(name, 1, T0)
        if name is StepName.DATABASE:
            job.compensation_failed(name, TransientStepError("db down"), T0)
        else:
            job.step_compensated(name, T0)
    job.finish_rollback(T0)
    assert job.cleanup is not None
    assert job.cleanup.remaining == {StepName.DATABASE: {"id": "database-1"}}
    assert job.steps[StepName.DATABASE].last_error == "compensation failed: db down"


def test_failing_before_anything_ran_skips_rolling_back() -> None:
    job, _ = new_job()
    events = job.fail(JobError("DEADLINE_EXCEEDED", "too late"), T0)
    assert [e.state for e in events if e.type is EventType.STATE_CHANGED] == [State.FAILED]
    assert job.cleanup is not None and job.cleanup.clean


def test_deprovisioning_progress_counts_torn_down_steps() -> None:
    job, _ = new_job(JobKind.DEPROVISION)
    job.start(T0)
    assert job.state is State.ROLLING_BACK and job.progress == 0
    for name in job.rollback_plan():
        job.start_compensation(name, 1, T0)
        job.step_compensated(name, T0)
    assert job.progress == 100
    job.finish_rollback(T0)
    assert job.state is State.COMPLETED


def test_unexpected_errors_do_not_leak_their_text() -> None:
    error = JobError.from_exception(RuntimeError("password=hunter2"), StepName.OAUTH)
    assert "hunter2" not in error.message and error.reason == "INTERNAL"
