"""The transition table: no skipping, no leaving a terminal state, every state reachable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.core.states import (
    STEP_DEPENDENCIES,
    STEP_ORDER,
    STEP_STATE,
    TERMINAL_STATES,
    TRANSITIONS,
    IllegalTransitionError,
    JobKind,
    State,
    can_transition,
    transition,
)

FORWARD = [State.PENDING, *STEP_STATE.values(), State.COMPLETED]


def test_the_seed_has_exactly_eleven_states() -> None:
    assert [s.value for s in State] == [
        "PENDING", "VALIDATING", "CREATING_DATABASE", "CREATING_OAUTH", "DEPLOYING_CONTAINER",
        "DEPLOYING_WORKFLOWS", "CONFIGURING_GATEWAY", "VALIDATING_DEPLOYMENT", "COMPLETED",
        "FAILED", "ROLLING_BACK",
    ]  # fmt: skip


def test_happy_path_walks_every_state_in_order() -> None:
    state = State.PENDING
    for target in FORWARD[1:]:
        state = transition(JobKind.PROVISION, state, target)
    assert state is State.COMPLETED


@given(st.sampled_from(JobKind), st.sampled_from(State), st.sampled_from(State))
def test_transition_agrees_with_the_table(kind: JobKind, here: State, there: State) -> None:
    allowed = there in TRANSITIONS[kind].get(here, frozenset())
    assert can_transition(kind, here, there) is allowed
    if allowed:
        assert transition(kind, here, there) is there
    else:
        with pytest.raises(IllegalTransitionError):
            transition(kind, here, there)


@given(st.sampled_from(JobKind), st.sampled_from(sorted(TERMINAL_STATES)), st.sampled_from(State))
def test_no_state_leaves_a_terminal_state(kind: JobKind, terminal: State, there: State) -> None:
    assert not can_transition(kind, terminal, there)


@given(st.integers(0, len(FORWARD) - 1), st.integers(0, len(FORWARD) - 1))
def test_forward_moves_never_skip_or_go_back(i: int, j: int) -> None:
    assert can_transition(JobKind.PROVISION, FORWARD[i], FORWARD[j]) is (j == i + 1)


@given(st.sampled_from(FORWARD[:-1]))
def test_every_active_state_can_give_up(state: State) -> None:
    assert can_transition(JobKind.PROVISION, state, State.ROLLING_BACK)
    assert can_transition(JobKind.PROVISION, state, State.FAILED)


def test_rolling_back_only_ends_in_failed() -> None:
    assert TRANSITIONS[JobKind.PROVISION][State.ROLLING_BACK] == {State.FAILED}


def test_deprovisioning_tears_down_under_rolling_back() -> None:
    table = TRANSITIONS[JobKind.DEPROVISION]
    assert table[State.PENDING] == {State.ROLLING_BACK, State.FAILED}
    assert table[State.ROLLING_BACK] == {State.COMPLETED, State.FAILED}


def test_step_graph_dependencies_point_backwards_in_the_seed_order() -> None:
    for step, deps in STEP_DEPENDENCIES.items():
        assert all(STEP_ORDER.index(d) < STEP_ORDER.index(step) for d in deps)
