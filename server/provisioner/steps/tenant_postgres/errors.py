"""Driver errors of the tenant database, translated into the product's step errors.

Only here do asyncpg's exceptions turn into ours: retryable when trying again may work
(the server is unreachable, restarting or busy, a transaction lost a race or a lock
wait timed out), fatal otherwise. Messages are one line and carry the server's own
short message, never a statement (a statement may carry a password verifier).
"""

from __future__ import annotations

import asyncpg

from provisioner.core.errors import StepError, TransientStepError

#: What a call to the driver may raise besides our own errors and cancellation.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)

#: SQLSTATE classes and codes worth retrying: 08 connection exceptions, 40 transaction
#: rollback (serialization failure, deadlock), 53 insufficient resources (too many
#: connections), 57P0x the server shutting down or starting up, 57014 statement timeout,
#: 55P03 lock timeout (another transaction holds the department's lock or a table).
_TRANSIENT_SQLSTATES = ("08", "40", "53", "57P01", "57P02", "57P03", "57014", "55P03")

_MAX_DETAIL = 200


def is_transient(exc: BaseException) -> bool:
    """Whether the same operation may succeed if tried again later."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(_TRANSIENT_SQLSTATES)
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return False  # a malformed URL stays malformed
    # A connection lost mid-call (InterfaceError), refused or timed out (OSError, TimeoutError).
    return isinstance(exc, (asyncpg.InterfaceError, OSError, TimeoutError))


def describe(exc: BaseException) -> str:
    """A one-line, statement-free account of a driver error, for messages and conditions."""
    if isinstance(exc, asyncpg.PostgresError):
        first_line = (str(exc).splitlines() or [""])[0][:_MAX_DETAIL]
        return f"{first_line} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    first_line = (str(exc).splitlines() or [""])[0][:_MAX_DETAIL]
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def step_error(exc: BaseException, doing: str) -> StepError:
    """The step error for a driver error met while `doing` something; chain it with `from`."""
    message = f"database step: {doing}: {describe(exc)}"
    if is_transient(exc):
        return TransientStepError(message)
    return StepError(message)
