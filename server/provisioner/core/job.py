"""The job aggregate: step records, events, progress, the state walk and the rollback plan.

Every mutation is a method that takes `now`, checks the transition table and returns the
events it produced; the engine commits them (durably) before anyone sees them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from provisioner.core.errors import ProvisioningError
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import (
    STEP_DEPENDENCIES,
    STEP_ORDER,
    STEP_STATE,
    JobKind,
    State,
    StepName,
    StepStatus,
    transition,
)


class EventType(enum.StrEnum):
    JOB_CREATED = "job.created"
    STATE_CHANGED = "job.state_changed"
    STEP_STARTED = "step.started"
    STEP_RETRYING = "step.retrying"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_COMPENSATING = "step.compensating"
    STEP_COMPENSATED = "step.compensated"
    STEP_COMPENSATION_FAILED = "step.compensation_failed"
    JOB_FINISHED = "job.finished"


@dataclass(frozen=True, slots=True)
class Event:
    """One committed fact about a job; `sequence` is strictly increasing per job."""

    job_id: str
    sequence: int
    type: EventType
    state: State
    progress: int
    at: datetime
    step: StepName | None = None
    attempt: int = 0
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.type is EventType.JOB_FINISHED


@dataclass(frozen=True, slots=True)
class JobError:
    reason: str
    message: str
    step: StepName | None = None

    @classmethod
    def from_exception(cls, exc: BaseException, step: StepName | None = None) -> JobError:
        if isinstance(exc, ProvisioningError):
            return cls(exc.reason, exc.message, step)
        # An unexpected exception's text may hold anything; its traceback goes to the log.
        where = f" in step {step}" if step else ""
        return cls("INTERNAL", f"unexpected {type(exc).__name__}{where} (details in the server log)", step)


@dataclass(slots=True)
class StepRecord:
    name: StepName
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    last_error: str | None = None
    #: Names and ids of what the step made (never secrets), for compensation and reports.
    resources: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CleanupReport:
    compensated: tuple[StepName, ...]
    #: Steps whose compensation failed, with the resources they leave behind.
    remaining: dict[StepName, dict[str, str]]

    @property
    def clean(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "compensated": [s.value for s in self.compensated],
            "remaining": {s.value: dict(r) for s, r in self.remaining.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CleanupReport:
        return cls(
            tuple(StepName(s) for s in data.get("compensated", ())),
            {StepName(s): dict(r) for s, r in data.get("remaining", {}).items()},
        )


#: Step statuses whose effects may exist and so must be undone on rollback.
_MAY_HAVE_EFFECTS = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.RUNNING, StepStatus.COMPENSATING}
)


def rollback_plan(steps: dict[StepName, StepRecord]) -> list[StepName]:
    """The steps to compensate: completed or partly applied ones, latest first."""
    return [name for name in reversed(STEP_ORDER) if steps[name].status in _MAY_HAVE_EFFECTS]


def ready_steps(steps: dict[StepName, StepRecord]) -> list[StepName]:
    """Pending steps whose dependencies have all succeeded."""
    return [
        name
        for name in STEP_ORDER
        if steps[name].status is StepStatus.PENDING
        and all(steps[dep].status is StepStatus.SUCCEEDED for dep in STEP_DEPENDENCIES[name])
    ]


@dataclass(frozen=True, slots=True)
class IssuedClient:
    client_id: str
    client_secret: str = field(repr=False)


@dataclass(slots=True)
class Job:
    """A provisioning or deprovisioning job and everything known about its steps."""

    job_id: str
    kind: JobKind
    spec: DepartmentSpec
    principal: str
    created_at: datetime
    deadline_at: datetime
    request_id: str | None = None
    state: State = State.PENDING
    steps: dict[StepName, StepRecord] = field(default_factory=dict)
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | None = None
    cleanup: CleanupReport | None = None
    last_sequence: int = 0
    #: The W3C `traceparent` of the call that created the job: its runs, on any replica,
    #: are traced as part of that call's trace. None when tracing is off.
    trace_parent: str | None = None
    #: The OAuth client issued when this provisioning job was accepted. Set only on the
    #: copy handed to the caller that created the job, never stored: the secret is
    #: revealed once (the vault keeps it sealed and hashed).
    issued_client: IssuedClient | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        *,
        job_id: str,
        kind: JobKind,
        spec: DepartmentSpec,
        principal: str,
        now: datetime,
        deadline_at: datetime,
        request_id: str | None = None,
        inherited: dict[StepName, dict[str, str]] | None = None,
        trace_parent: str | None = None,
    ) -> tuple[Job, Event]:
        """A new job in PENDING with its creation event (sequence 1)."""
        steps = {
            name: StepRecord(name, resources=dict((inherited or {}).get(name, {}))) for name in STEP_ORDER
        }
        job = cls(
            job_id=job_id,
            kind=kind,
            spec=spec,
            principal=principal,
            created_at=now,
            deadline_at=deadline_at,
            request_id=request_id,
            steps=steps,
            updated_at=now,
            trace_parent=trace_parent,
        )
        return job, job._emit(EventType.JOB_CREATED, now, message=f"{kind} job created")

    @property
    def department_id(self) -> str:
        return self.spec.department_id

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal

    @property
    def progress(self) -> int:
        """Share of the job's goal reached, 0-100: steps made, or steps torn down."""
        goal = StepStatus.SUCCEEDED if self.kind is JobKind.PROVISION else StepStatus.COMPENSATED
        done = sum(1 for s in self.steps.values() if s.status is goal)
        return 100 * done // len(STEP_ORDER)

    def snapshot(self) -> Job:
        """A deep-enough copy for readers: step records are copied, events are immutable."""
        return replace(
            self, steps={n: replace(s, resources=dict(s.resources)) for n, s in self.steps.items()}
        )

    # -- forward path ------------------------------------------------------------------

    def start(self, now: datetime) -> list[Event]:
        """Leave PENDING: provisioning starts validating, deprovisioning starts tearing down."""
        first = State.VALIDATING if self.kind is JobKind.PROVISION else State.ROLLING_BACK
        return [self._move(first, now)]

    def start_step(self, name: StepName, now: datetime) -> Event:
        step = self.steps[name]
        step.status = StepStatus.RUNNING
        step.attempts += 1
        step.started_at = now
        step.finished_at = None
        return self._emit(
            EventType.STEP_STARTED,
            now,
            step=name,
            attempt=step.attempts,
            message=f"{name} attempt {step.attempts} started",
        )

    def step_retrying(
        self, name: StepName, error: BaseException, delay: float, attempt: int, now: datetime
    ) -> Event:
        """Attempt `attempt` of applying (or undoing) a step failed and will be tried again."""
        step = self.steps[name]
        failure = JobError.from_exception(error, name)
        step.last_error = failure.message
        return self._emit(
            EventType.STEP_RETRYING,
            now,
            step=name,
            attempt=attempt,
            message=f"{name} attempt {attempt} failed, retrying in {delay:.2f}s: {failure.message}",
            detail={"delay_seconds": round(delay, 3), "reason": failure.reason},
        )

    def step_succeeded(self, name: StepName, resources: dict[str, str], now: datetime) -> list[Event]:
        """Mark a step done, then walk the job state forward past every finished step."""
        step = self.steps[name]
        step.status = StepStatus.SUCCEEDED
        step.finished_at = now
        step.last_error = None
        step.resources = dict(resources)
        events = [
            self._emit(
                EventType.STEP_SUCCEEDED,
                now,
                step=name,
                attempt=step.attempts,
                message=f"{name} succeeded",
                detail={"resources": dict(resources)},
            )
        ]
        events.extend(self._walk_forward(now))
        return events

    def step_failed(self, name: StepName, error: BaseException, now: datetime) -> Event:
        step = self.steps[name]
        step.status = StepStatus.FAILED
        step.finished_at = now
        failure = JobError.from_exception(error, name)
        step.last_error = failure.message
        return self._emit(
            EventType.STEP_FAILED,
            now,
            step=name,
            attempt=step.attempts,
            message=f"{name} failed: {failure.message}",
            detail={"reason": failure.reason},
        )

    def _walk_forward(self, now: datetime) -> list[Event]:
        # The state is the earliest unfinished step's; when later steps finished first,
        # pass through their states now, one at a time, so watchers see every state in order.
        events: list[Event] = []
        for name in STEP_ORDER:
            if self.steps[name].status is not StepStatus.SUCCEEDED:
                target = STEP_STATE[name]
                if target != self.state:
                    events.extend(self._advance_to(target, now))
                return events
        return events

    def _advance_to(self, target: State, now: datetime) -> list[Event]:
        order = list(STEP_STATE.values())
        events = []
        while self.state != target:
            here = order.index(self.state)
            events.append(self._move(order[here + 1], now))
        return events

    # -- failure and rollback --------------------------------------------------------------

    def fail(self, error: JobError, now: datetime) -> list[Event]:
        """Give up the forward path: record why, then roll back (or fail if nothing to undo)."""
        if self.error is None:
            self.error = error
        if rollback_plan(self.steps):
            return [self._move(State.ROLLING_BACK, now, message=f"rolling back: {error.message}")]
        return self._finish(now)

    def rollback_plan(self) -> list[StepName]:
        """What still has to be undone (rollback) or torn down (deprovisioning)."""
        if self.kind is JobKind.DEPROVISION:
            return [n for n in reversed(STEP_ORDER) if self.steps[n].status is not StepStatus.COMPENSATED]
        return rollback_plan(self.steps)

    def adopt_resources(self, resources: dict[StepName, dict[str, str]]) -> None:
        """Before tearing down, take over what the department's last provisioning left."""
        for name, found in resources.items():
            if self.steps[name].status is StepStatus.PENDING:
                self.steps[name].resources = dict(found)

    @property
    def _undo(self) -> tuple[str, str, str]:
        """How an undo reads: a teardown removes what a rollback undoes."""
        if self.kind is JobKind.DEPROVISION:
            return ("removing", "removed", "remove")
        return ("undoing", "undone", "undo")

    def start_compensation(self, name: StepName, attempt: int, now: datetime) -> Event:
        """Begin undoing a step; `attempt` counts compensation attempts, apart from `attempts`."""
        self.steps[name].status = StepStatus.COMPENSATING
        return self._emit(
            EventType.STEP_COMPENSATING,
            now,
            step=name,
            attempt=attempt,
            message=f"{self._undo[0]} {name}" + (f" (attempt {attempt})" if attempt > 1 else ""),
        )

    def step_compensated(self, name: StepName, now: datetime) -> Event:
        step = self.steps[name]
        step.status = StepStatus.COMPENSATED
        step.finished_at = now
        step.last_error = None
        removed = dict(step.resources)
        step.resources = {}
        return self._emit(
            EventType.STEP_COMPENSATED,
            now,
            step=name,
            message=f"{name} {self._undo[1]}",
            detail={"removed": removed},
        )

    def compensation_failed(self, name: StepName, error: BaseException, now: datetime) -> Event:
        step = self.steps[name]
        step.status = StepStatus.FAILED
        step.finished_at = now
        failure = JobError.from_exception(error, name)
        step.last_error = f"compensation failed: {failure.message}"
        return self._emit(
            EventType.STEP_COMPENSATION_FAILED,
            now,
            step=name,
            message=f"could not {self._undo[2]} {name}: {failure.message}",
            detail={"reason": failure.reason, "remaining": dict(step.resources)},
        )

    # -- the end -----------------------------------------------------------------------------

    def complete(self, now: datetime) -> list[Event]:
        """Finish a job whose every step is done (or, deprovisioning, undone)."""
        goal = StepStatus.SUCCEEDED if self.kind is JobKind.PROVISION else StepStatus.COMPENSATED
        unfinished = [n for n, s in self.steps.items() if s.status is not goal]
        if unfinished:
            raise RuntimeError(f"job {self.job_id} cannot complete: {unfinished} unfinished")
        return self._finish(now)

    def finish_rollback(self, now: datetime) -> list[Event]:
        """End a rollback or a teardown with a cleanup report of what could not be undone."""
        return self._finish(now)

    def _finish(self, now: datetime) -> list[Event]:
        if (
            self.kind is JobKind.PROVISION
            and self.error is None
            and self.state is State.VALIDATING_DEPLOYMENT
        ):
            target = State.COMPLETED
        else:
            self.cleanup = self._cleanup_report()
            clean = self.cleanup.clean and self.error is None
            target = State.COMPLETED if self.kind is JobKind.DEPROVISION and clean else State.FAILED
            if self.error is None and not clean:
                self.error = JobError("CLEANUP_INCOMPLETE", "some resources could not be removed")
        events: list[Event] = []
        events.append(self._move(target, now))
        self.finished_at = now
        detail: dict[str, Any] = {}
        if self.error is not None:
            detail["error"] = {"reason": self.error.reason, "message": self.error.message}
            if self.error.step is not None:
                detail["error"]["step"] = self.error.step.value
        if self.cleanup is not None:
            detail["cleanup"] = self.cleanup.to_dict()
        events.append(
            self._emit(EventType.JOB_FINISHED, now, message=f"{self.kind} job {target}", detail=detail)
        )
        return events

    def _cleanup_report(self) -> CleanupReport:
        compensated = tuple(n for n in reversed(STEP_ORDER) if self.steps[n].status is StepStatus.COMPENSATED)
        remaining = {n: dict(self.steps[n].resources) for n in self.rollback_plan()}
        return CleanupReport(compensated, remaining)

    # -- plumbing ------------------------------------------------------------------------------

    def _move(self, target: State, now: datetime, message: str = "") -> Event:
        previous = self.state
        self.state = transition(self.kind, self.state, target)
        return self._emit(
            EventType.STATE_CHANGED,
            now,
            message=message or f"{previous} -> {target}",
            detail={"from": previous.value},
        )

    def _emit(
        self,
        type_: EventType,
        now: datetime,
        *,
        step: StepName | None = None,
        attempt: int = 0,
        message: str = "",
        detail: dict[str, Any] | None = None,
    ) -> Event:
        self.last_sequence += 1
        self.updated_at = now
        return Event(
            job_id=self.job_id,
            sequence=self.last_sequence,
            type=type_,
            state=self.state,
            progress=self.progress,
            at=now,
            step=step,
            attempt=attempt,
            message=message,
            detail=detail or {},
        )
