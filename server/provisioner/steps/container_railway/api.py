"""Railway's public GraphQL API: one POST per operation, its failures translated once.

Requests and answers follow docs.railway.com/integrations/api: a POST of
`{"query", "variables"}` to `https://backboard.railway.com/graphql/v2`, answered with
`{"data": ..., "errors": [...]}` (HTTP 200 for execution and authorization failures, 400
for documents that do not parse or validate). An account or workspace token goes in
`Authorization: Bearer`, a project token in `Project-Access-Token`, as the Railway CLI
sends them (`src/client.rs`), which also reads a 429 as "rate limited" and a first error
whose message contains "not authorized" as a refused token; we do the same.

Neither the token nor the variables sent (they carry the department's secrets) ever
appear in an error message: GraphQL servers echo invalid variable values in their
messages, so every value marked secret is masked before a message leaves this module.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError

DEFAULT_ENDPOINT = "https://backboard.railway.com/graphql/v2"
AuthKind = Literal["bearer", "project"]

REJECTED = "Railway rejected the token"
_MAX_MESSAGE = 300
_OPERATION = re.compile(r"^\s*(?:query|mutation)\s+(\w+)")
_RATE_LIMITED = ("rate limit", "ratelimit", "too many requests", "too quickly")


def operation_name(document: str) -> str:
    """The name a GraphQL document gives its operation, for messages."""
    found = _OPERATION.match(document)
    return found.group(1) if found else "request"


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay-seconds or an HTTP date)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _one_line(message: str, secrets: Collection[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            message = message.replace(secret, "***")
    line = " ".join(message.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 1] + "…"


def graphql_error(
    errors: list[Any], operation: str, wait: float | None, secrets: Collection[str] = ()
) -> StepError:
    """The step error for the `errors` of a GraphQL answer (the first one speaks for all)."""
    first = errors[0] if isinstance(errors[0], dict) else {}
    message = str(first.get("message") or "no message")
    extensions = first.get("extensions")
    code = str(extensions.get("code") or "") if isinstance(extensions, dict) else ""
    lowered = message.lower()
    if "not authorized" in lowered or code in ("UNAUTHENTICATED", "FORBIDDEN"):
        return StepError(f"{REJECTED} ({operation}: not authorized)")
    if code == "RATE_LIMITED" or any(marker in lowered for marker in _RATE_LIMITED):
        return TransientStepError(
            f"Railway rate limit reached ({operation}): {_one_line(message, secrets)}", retry_after=wait
        )
    return StepError(f"Railway {operation}: {_one_line(message, secrets)}")


def _status_error(reply: httpx.Response, operation: str) -> StepError:
    status = reply.status_code
    if status in (401, 403):
        return StepError(f"{REJECTED} (HTTP {status} to {operation})")
    if status == 429:
        return TransientStepError(
            f"Railway rate limit reached (HTTP 429 to {operation})", retry_after=retry_after(reply.headers)
        )
    if status >= 500:
        return TransientStepError(
            f"Railway is unavailable (HTTP {status} to {operation})", retry_after=retry_after(reply.headers)
        )
    return StepError(f"Railway answered HTTP {status} to {operation}")


class RailwayApi:
    """A client of Railway's GraphQL endpoint; `execute` returns `data` or raises a step error.

    Network trouble, HTTP 429 and 5xx, and rate-limit errors are `TransientStepError`s
    (chained, with the server's `Retry-After`); a refused token is a `StepError` that says
    so without echoing it; any other GraphQL error is a `StepError` with its first message.
    """

    def __init__(
        self,
        token: str,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        auth: AuthKind = "bearer",
        timeout: float = 10.0,
    ) -> None:
        if not token.strip():
            raise ConfigurationError("the Railway token is empty: set PROVISIONER_RAILWAY_TOKEN")
        if not endpoint.startswith(("https://", "http://")):
            raise ConfigurationError(f"the Railway endpoint must be an http(s) URL, not {endpoint!r}")
        if timeout <= 0:
            raise ConfigurationError(f"the Railway request timeout must be positive, not {timeout!r}")
        headers = {"Content-Type": "application/json", "User-Agent": "provisioning-orchestrator"}
        if auth == "project":
            headers["Project-Access-Token"] = token
        elif auth == "bearer":
            headers["Authorization"] = f"Bearer {token}"
        else:
            raise ConfigurationError(f"the Railway token kind must be 'bearer' or 'project', not {auth!r}")
        self._endpoint = endpoint
        # The environment's proxy settings apply: Railway is on the public internet.
        self._client = httpx.AsyncClient(timeout=timeout, headers=headers)

    async def execute(
        self, document: str, variables: Mapping[str, Any], *, secrets: Collection[str] = ()
    ) -> dict[str, Any]:
        """Run one GraphQL operation; `secrets` are values that no message may repeat."""
        operation = operation_name(document)
        try:
            reply = await self._client.post(self._endpoint, json={"query": document, "variables": variables})
        except httpx.HTTPError as exc:
            raise TransientStepError(f"cannot reach Railway ({operation}): {type(exc).__name__}") from exc
        try:
            body = reply.json()
        except ValueError:
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        # Documents that fail validation come back as HTTP 400 with GraphQL errors.
        if reply.status_code == 400 and isinstance(errors, list) and errors:
            raise graphql_error(errors, operation, None, secrets)
        try:
            reply.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise _status_error(reply, operation) from exc
        if not isinstance(body, dict):
            raise StepError(f"Railway answered {operation} with something that is not a JSON object")
        if isinstance(errors, list) and errors:
            raise graphql_error(errors, operation, retry_after(reply.headers), secrets)
        data = body.get("data")
        if not isinstance(data, dict):
            raise StepError(f"Railway answered {operation} without data")
        return data

    async def close(self) -> None:
        """Close the connections; the client cannot be used afterwards."""
        await self._client.aclose()
