"""The seed's eleven job states, the seven steps, and the legal transitions between states."""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping


class State(enum.StrEnum):
    """Lifecycle state of a job (the seed's eleven states, exactly)."""

    PENDING = "PENDING"
    VALIDATING = "VALIDATING"
    CREATING_DATABASE = "CREATING_DATABASE"
    CREATING_OAUTH = "CREATING_OAUTH"
    DEPLOYING_CONTAINER = "DEPLOYING_CONTAINER"
    DEPLOYING_WORKFLOWS = "DEPLOYING_WORKFLOWS"
    CONFIGURING_GATEWAY = "CONFIGURING_GATEWAY"
    VALIDATING_DEPLOYMENT = "VALIDATING_DEPLOYMENT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    ROLLING_BACK = "ROLLING_BACK"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({State.COMPLETED, State.FAILED})


class StepName(enum.StrEnum):
    """The seven provisioning steps, in the seed's order."""

    VALIDATE = "validate"
    DATABASE = "database"
    OAUTH = "oauth"
    CONTAINER = "container"
    WORKFLOWS = "workflows"
    GATEWAY = "gateway"
    VALIDATION = "validation"


#: The seed's linear order; the state of a job is the state of its earliest unfinished step.
STEP_ORDER: tuple[StepName, ...] = tuple(StepName)

STEP_STATE: Mapping[StepName, State] = {
    StepName.VALIDATE: State.VALIDATING,
    StepName.DATABASE: State.CREATING_DATABASE,
    StepName.OAUTH: State.CREATING_OAUTH,
    StepName.CONTAINER: State.DEPLOYING_CONTAINER,
    StepName.WORKFLOWS: State.DEPLOYING_WORKFLOWS,
    StepName.GATEWAY: State.CONFIGURING_GATEWAY,
    StepName.VALIDATION: State.VALIDATING_DEPLOYMENT,
}

#: What each step needs finished first: validate -> database || oauth -> container
#: -> workflows || gateway -> validation.
STEP_DEPENDENCIES: Mapping[StepName, frozenset[StepName]] = {
    StepName.VALIDATE: frozenset(),
    StepName.DATABASE: frozenset({StepName.VALIDATE}),
    StepName.OAUTH: frozenset({StepName.VALIDATE}),
    StepName.CONTAINER: frozenset({StepName.DATABASE, StepName.OAUTH}),
    StepName.WORKFLOWS: frozenset({StepName.CONTAINER}),
    StepName.GATEWAY: frozenset({StepName.CONTAINER}),
    StepName.VALIDATION: frozenset({StepName.WORKFLOWS, StepName.GATEWAY}),
}


class JobKind(enum.StrEnum):
    PROVISION = "provision"
    DEPROVISION = "deprovision"


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


class DepartmentStatus(enum.StrEnum):
    """Lifecycle of a department, as opposed to the job working on it."""

    PROVISIONING = "provisioning"
    ACTIVE = "active"
    FAILED = "failed"
    NEEDS_ATTENTION = "needs_attention"
    DEPROVISIONING = "deprovisioning"
    DEPROVISIONED = "deprovisioned"


_FORWARD: tuple[State, ...] = (State.PENDING, *STEP_STATE.values(), State.COMPLETED)
_ACTIVE: frozenset[State] = frozenset(_FORWARD[:-1])


def _provision_table() -> dict[State, frozenset[State]]:
    table: dict[State, frozenset[State]] = {}
    for here, there in itertools.pairwise(_FORWARD):
        # From any active state a job may give up: roll back what it made, or fail outright
        # when nothing was made yet.
        table[here] = frozenset({there, State.ROLLING_BACK, State.FAILED})
    table[State.ROLLING_BACK] = frozenset({State.FAILED})
    table[State.COMPLETED] = frozenset()
    table[State.FAILED] = frozenset()
    return table


#: Provisioning walks the seed's states in order; deprovisioning tears down under ROLLING_BACK.
TRANSITIONS: Mapping[JobKind, Mapping[State, frozenset[State]]] = {
    JobKind.PROVISION: _provision_table(),
    JobKind.DEPROVISION: {
        State.PENDING: frozenset({State.ROLLING_BACK, State.FAILED}),
        State.ROLLING_BACK: frozenset({State.COMPLETED, State.FAILED}),
        State.COMPLETED: frozenset(),
        State.FAILED: frozenset(),
    },
}


class IllegalTransitionError(RuntimeError):
    """A transition the table forbids: always a programming error in the engine."""

    def __init__(self, kind: JobKind, current: State, target: State) -> None:
        super().__init__(f"illegal {kind} transition {current} -> {target}")
        self.kind = kind
        self.current = current
        self.target = target


def can_transition(kind: JobKind, current: State, target: State) -> bool:
    return target in TRANSITIONS[kind].get(current, frozenset())


def transition(kind: JobKind, current: State, target: State) -> State:
    """Return `target` if the table allows `current -> target`, else raise."""
    if not can_transition(kind, current, target):
        raise IllegalTransitionError(kind, current, target)
    return target


def is_active(state: State) -> bool:
    """True for the provisioning states that still move forward."""
    return state in _ACTIVE
