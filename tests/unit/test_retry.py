from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioner.core.errors import StepError, StepTimeoutError, TransientStepError
from provisioner.core.retry import RetryPolicy


def test_seed_defaults_retry_three_times_doubling_from_one_second() -> None:
    policy = RetryPolicy(jitter=0)
    error = TransientStepError("network blip")
    assert [policy.next_delay(a, error, 0.5) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, None]


def test_fatal_and_unknown_errors_are_not_retried() -> None:
    policy = RetryPolicy()
    assert policy.next_delay(1, StepError("bad input"), 0.5) is None
    assert policy.next_delay(1, RuntimeError("bug"), 0.5) is None


def test_timeouts_are_retried() -> None:
    assert RetryPolicy(jitter=0).next_delay(1, StepTimeoutError("slow"), 0.0) == 1.0


def test_an_errors_own_retry_after_wins_but_stays_capped() -> None:
    policy = RetryPolicy(max_delay=10)
    assert policy.next_delay(1, TransientStepError("429", retry_after=7.5), 0.9) == 7.5
    assert policy.next_delay(1, TransientStepError("429", retry_after=60), 0.9) == 10


@given(st.integers(1, 3), st.floats(0, 1, exclude_max=True))
def test_jittered_delay_stays_within_its_band_and_the_cap(attempt: int, rand: float) -> None:
    policy = RetryPolicy(base_delay=1, factor=2, jitter=0.2, max_delay=3)
    delay = policy.next_delay(attempt, TransientStepError("x"), rand)
    assert delay is not None
    raw = 2 ** (attempt - 1)
    assert min(raw * 0.8, 3) <= delay <= min(raw * 1.2, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"base_delay": -1}, "base_delay"),
        ({"factor": 0.5}, "factor"),
        ({"base_delay": 5, "max_delay": 1}, "max_delay"),
        ({"jitter": 2}, "jitter"),
    ],
)
def test_bad_policies_are_refused_when_built(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
