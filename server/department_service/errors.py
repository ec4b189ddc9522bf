"""The service's errors, each carrying the HTTP status and a stable code for its JSON body.

Handlers raise these; the HTTP edge (`httpd`) turns them into responses in one place.
Anything else that escapes a handler is a bug: a generic 500 for the client, the
traceback for the log.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error the client is told about: `status` and `code` go into the response."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The request could not be understood (malformed JSON, bad query parameter)."""

    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """No valid access token; `reason` is for the log only, never for the client.

    The challenge follows RFC 6750 §3: a request with no token gets a bare `Bearer`
    challenge, one with a bad token `error="invalid_token"` too.
    """

    status = 401
    code = "unauthorized"

    def __init__(self, reason: str, *, token_error: bool = True) -> None:
        challenge = 'Bearer realm="department"' + (', error="invalid_token"' if token_error else "")
        super().__init__("a valid access token is required", headers={"WWW-Authenticate": challenge})
        self.reason = reason


class Forbidden(ServiceError):
    """A valid token without the scope the route needs (RFC 6750 §3.1, insufficient_scope)."""

    status = 403
    code = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        challenge = f'Bearer realm="department", error="insufficient_scope", scope="{scope}"'
        super().__init__(f"the token lacks the scope {scope}", headers={"WWW-Authenticate": challenge})
        self.reason = f"scope {scope} missing"


class RetryLater(ServiceError):
    """A passing condition: the answer tells the client to retry in a second."""

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class KeysUnavailable(RetryLater):
    """The platform's signing keys cannot be had right now (or no issuer is configured):
    the service's problem, not the caller's, so 503 and not 401."""

    status = 503
    code = "keys_unavailable"


class NotFound(ServiceError):
    """No such path, or no such deployed workflow."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ServiceError):
    """The path exists but not for this method; `allow` lists the methods it takes."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, method: str, allow: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed here", headers={"Allow": ", ".join(allow)})


class LengthRequired(ServiceError):
    """A body sent without Content-Length (chunked bodies are not supported)."""

    status = 411
    code = "length_required"


class PayloadTooLarge(ServiceError):
    """The body is over the limit; it is never read."""

    status = 413
    code = "payload_too_large"


class InputRejected(ServiceError):
    """The request broke the workflow action's own input rules (recorded as "rejected")."""

    status = 422
    code = "rejected"


class WorkflowBroken(ServiceError):
    """The deployed workflow file cannot be run (unknown action type, bad definition)."""

    status = 500
    code = "workflow_broken"


class DatabaseUnavailable(RetryLater):
    """The department database cannot be used right now; the client may retry."""

    status = 503
    code = "database_unavailable"


class MailBusy(RetryLater):
    """The email workflow is already sending as many messages as it may at once."""

    status = 429
    code = "mail_busy"
