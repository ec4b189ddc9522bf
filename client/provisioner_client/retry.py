"""Capped exponential backoff: a pure policy, no sleeping and no clock reads inside."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: However long a server asks us to wait, a client that waits longer looks hung.
MAX_SERVER_HINT = 30.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often, and how patiently, a failed call (or a dropped watch) is tried again.

    `max_attempts` counts every try, the first included: 1 means never retry.
    """

    max_attempts: int = 5
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 2.0
    #: Each delay is spread by up to this share either way, so clients cut off together
    #: by a restart do not all come back in the same instant.
    jitter: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append("max_attempts must be at least 1")
        if self.initial_delay < 0 or self.max_delay < 0:
            problems.append("delays must not be negative")
        if self.multiplier < 1:
            problems.append("multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be in [0, 1)")
        if problems:
            raise ValueError("RetryPolicy: " + "; ".join(problems))

    def delay(
        self, failed_attempts: int, hint: float | None = None, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait after `failed_attempts` consecutive failures, or None to give up.

        `hint` is the server's own `RetryInfo` delay; it wins when longer than our backoff.
        """
        if failed_attempts >= self.max_attempts:
            return None
        backoff = min(self.max_delay, self.initial_delay * self.multiplier ** (failed_attempts - 1))
        backoff *= 1 + self.jitter * (2 * rand() - 1)
        if hint is not None and hint > backoff:
            return min(hint, MAX_SERVER_HINT)
        return backoff


#: Unary calls: about 1.5 s of patience in all, enough to ride out a reconnect.
DEFAULT_RETRY = RetryPolicy()
#: Watches: about 20 s without hearing from the server, enough for a restart with recovery.
DEFAULT_RECONNECT = RetryPolicy(max_attempts=13, initial_delay=0.1, max_delay=2.0)
