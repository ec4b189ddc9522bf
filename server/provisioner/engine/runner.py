"""Runs one job: the step graph forward, then rollback or teardown, committing each fact.

Every change is made to the in-memory job under the runner's lock, committed to the store
(fenced by the lease) and only then published to watchers. If a commit fails the runner
stops touching the job; whoever holds the lease next resumes it from the store.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial

from provisioner.core.errors import (
    CancelledByRequestError,
    DeadlineExceededError,
    ProvisioningError,
    StepTimeoutError,
)
from provisioner.core.job import Event, Job, JobError, ready_steps
from provisioner.core.notifications import notifications
from provisioner.core.states import JobKind, State, StepName, StepStatus, is_active
from provisioner.engine.config import EngineConfig
from provisioner.events.hub import EventHub
from provisioner.steps.base import Step, StepContext
from provisioner.store.protocol import JobStore
from provisioner.telemetry import metrics, tracing

log = logging.getLogger(__name__)


_CANCELLED = "cancelled on request (CancelJob, or a deprovisioning of the department)"


class _StepFailed(Exception):
    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


class JobRunner:
    def __init__(
        self,
        job: Job,
        *,
        store: JobStore,
        hub: EventHub,
        steps: Mapping[StepName, Step],
        config: EngineConfig,
        owner: str,
        clock: Callable[[], datetime],
        rng: random.Random,
    ) -> None:
        self.job = job
        self._store = store
        self._hub = hub
        self._steps = steps
        self._config = config
        self._owner = owner
        self._clock = clock
        self._rng = rng
        self._lock = asyncio.Lock()
        self._broken: BaseException | None = None
        self._graph: asyncio.Task[None] | None = None
        self._cancel_requested = False

    def request_cancel(self) -> None:
        """Stop the forward path and roll back (a deprovisioning asked for it)."""
        self._cancel_requested = True
        if self._graph is not None:
            self._graph.cancel()

    async def run(self) -> None:
        job = self.job
        attributes = {"provisioner.department_id": job.department_id, "provisioner.job_id": job.job_id}
        with tracing.job_span(f"job {job.kind}", job.trace_parent, attributes):
            await self._run()

    async def _run(self) -> None:
        job = self.job
        if job.state is State.PENDING:
            if job.kind is JobKind.DEPROVISION:
                await self._await_provisioning()
            await self._record(job.start)
        if job.kind is JobKind.PROVISION and is_active(job.state):
            await self._forward()
        if job.state is State.ROLLING_BACK:
            await self._roll_back()
        if job.state is State.FAILED:
            self._log_failure()

    # -- forward -------------------------------------------------------------------------------

    async def _forward(self) -> None:
        job = self.job
        error = self._already_failed()
        remaining = (job.deadline_at - self._clock()).total_seconds()
        if error is None and remaining <= 0:
            error = JobError.from_exception(DeadlineExceededError("the job passed its deadline"))
        if error is None and self._cancel_requested:
            error = JobError.from_exception(CancelledByRequestError(_CANCELLED))
        if error is None:
            self._graph = asyncio.create_task(self._run_graph(), name=f"graph-{job.job_id}")
            try:
                async with asyncio.timeout(remaining):
                    await self._graph
            except _StepFailed as failure:
                error = failure.error
            except TimeoutError:
                error = JobError.from_exception(
                    DeadlineExceededError(f"the job passed its {self._config.job_deadline:g}s deadline")
                )
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not self._cancel_requested or (current is not None and current.cancelling()):
                    raise
                error = JobError.from_exception(CancelledByRequestError(_CANCELLED))
            finally:
                await cancel_and_wait(self._graph)
        if error is None:
            await self._record(job.complete)
        else:
            await self._record(partial(job.fail, error))

    def _already_failed(self) -> JobError | None:
        # Resuming after a crash between a step's failure and the job's.
        for name, step in self.job.steps.items():
            if step.status is StepStatus.FAILED:
                return JobError("STEP_FAILED", step.last_error or f"{name} failed", name)
        return None

    async def _run_graph(self) -> None:
        job = self.job
        running: dict[StepName, asyncio.Task[None]] = {}
        # Steps that were running when a previous owner died are simply run again: their
        # apply adopts whatever they had made.
        todo = [n for n, s in job.steps.items() if s.status is StepStatus.RUNNING]
        try:
            while True:
                for name in todo + ready_steps(job.steps):
                    if name not in running:
                        running[name] = asyncio.create_task(self._run_step(name), name=f"{job.job_id}-{name}")
                todo = []
                if not running:
                    return
                done, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
                for name in [n for n, t in running.items() if t in done]:
                    task = running.pop(name)
                    task.result()  # re-raise the step's failure, which cancels its siblings
        finally:
            for task in running.values():
                await cancel_and_wait(task)

    async def _run_step(self, name: StepName) -> None:
        outcome = await self._attempts(name, undo=False)
        if isinstance(outcome, BaseException):
            await self._record(partial(self.job.step_failed, name, outcome))
            raise _StepFailed(JobError.from_exception(outcome, name))
        await self._record(partial(self.job.step_succeeded, name, outcome))

    async def _attempts(self, name: StepName, *, undo: bool) -> dict[str, str] | BaseException:
        """Apply (or undo) a step under its timeout, retrying as the policy allows.

        Returns what the step made, or the error the policy gave up on.
        """
        job = self.job
        step = self._steps[name]
        what = f"undoing {name}" if undo else str(name)
        attempt = 0
        while True:
            attempt += 1
            await self._record(
                partial(job.start_compensation, name, attempt) if undo else partial(job.start_step, name)
            )
            ctx = StepContext(job.job_id, job.spec, job.steps[name].attempts, dict(job.steps[name].resources))
            numbered = attempt if undo else job.steps[name].attempts
            attributes: dict[str, str | int] = {
                "provisioner.department_id": job.department_id,
                "provisioner.job_id": job.job_id,
                "provisioner.step": str(name),
                "provisioner.attempt": numbered,
            }
            with tracing.step_span(f"{'compensate' if undo else 'step'} {name}", attributes) as span:
                try:
                    async with asyncio.timeout(self._config.step_timeout):
                        if undo:
                            await step.compensate(ctx)
                            made: dict[str, str] = {}
                        else:
                            made = await step.apply(ctx)
                    tracing.outcome(span, "compensated" if undo else "succeeded")
                    return made
                except TimeoutError:
                    error: BaseException = StepTimeoutError(
                        f"{what} did not finish within {self._config.step_timeout:g}s"
                    )
                except ProvisioningError as exc:
                    error = exc
                except Exception as exc:
                    log.exception("%s in job %s raised unexpectedly", what, job.job_id)
                    error = exc
                except asyncio.CancelledError:
                    tracing.outcome(span, "cancelled")
                    raise
                delay = self._config.retry.next_delay(attempt, error, self._rng.random())
                tracing.outcome(span, "failed" if delay is None else "retrying", error)
            if delay is None:
                return error
            await self._record(partial(job.step_retrying, name, error, delay, numbered))
            await asyncio.sleep(delay)

    # -- rollback and teardown --------------------------------------------------------------------

    async def _roll_back(self) -> None:
        job = self.job
        for name in job.rollback_plan():
            await self._compensate(name)
        await self._record(job.finish_rollback)

    async def _compensate(self, name: StepName) -> None:
        outcome = await self._attempts(name, undo=True)
        if isinstance(outcome, BaseException):
            await self._record(partial(self.job.compensation_failed, name, outcome))
        else:
            await self._record(partial(self.job.step_compensated, name))

    async def _await_provisioning(self) -> None:
        """A deprovisioning starts once the department's provisioning has stopped."""
        for other in await self._store.unfinished_jobs(self.job.department_id):
            if other.kind is JobKind.PROVISION:
                async for _ in self._hub.subscribe(other.job_id, other.last_sequence):
                    pass
        latest = await self._store.latest_job(self.job.department_id, JobKind.PROVISION)
        if latest is not None:
            self.job.adopt_resources({n: s.resources for n, s in latest.steps.items()})

    # -- plumbing ----------------------------------------------------------------------------------

    async def _record(self, mutate: Callable[[datetime], Event | list[Event]]) -> None:
        """Apply a change, commit it durably, then publish it; strictly one at a time."""
        async with self._lock:
            if self._broken is not None:
                raise self._broken
            made = mutate(self._clock())
            events = made if isinstance(made, list) else [made]
            notices = notifications(self.job, events) if self._config.webhooks else ()
            commit = asyncio.ensure_future(self._store.commit(self.job, events, self._owner, notices))
            try:
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                # Let the commit finish so memory and store never disagree, then go on
                # being cancelled.
                await asyncio.wait([commit])
                if commit.exception() is not None:
                    self._broken = commit.exception()
                else:
                    self._committed(events)
                raise
            except BaseException as exc:
                self._broken = exc
                raise
            self._committed(events)

    def _committed(self, events: list[Event]) -> None:
        self._hub.publish(events)
        metrics.job_committed(self.job, events)

    def _log_failure(self) -> None:
        job = self.job
        cleanup = job.cleanup
        if cleanup is not None and not cleanup.clean:
            log.warning(
                "job %s for department %s FAILED and left resources behind: %s",
                job.job_id,
                job.department_id,
                sorted(cleanup.remaining),
            )
        else:
            log.info(
                "job %s for department %s FAILED: %s",
                job.job_id,
                job.department_id,
                job.error.message if job.error else "",
            )


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has ended, whatever it ended with."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait([task])
