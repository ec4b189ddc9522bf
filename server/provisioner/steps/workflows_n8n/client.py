"""A small client of n8n's public REST API (`/api/v1`) that speaks in step errors.

Only here do HTTP failures turn into ours: connection trouble, timeouts, 429 and 5xx are
retryable (`TransientStepError`, chained); 401/403 mean the API key was refused, said
without the key; any other 4xx is fatal and carries n8n's own message on one line.
The key travels only in the `X-N8N-API-KEY` header and appears in no message or log.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.steps.base import settle

API_PREFIX = "/api/v1"
#: The largest page n8n's list endpoints serve.
PAGE_SIZE = 250
#: A listing longer than this many pages is taken for a cursor that never ends.
MAX_PAGES = 400
_MAX_MESSAGE = 200
_SPACES = re.compile(r"\s+")


def check_base_url(base_url: str) -> str:
    """The n8n URL without a trailing slash; a malformed one is a configuration error."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            f"PROVISIONER_N8N_URL must be n8n's base URL like https://n8n.example.com, not {base_url!r}"
        )
    return base_url.rstrip("/")


def one_line(text: str, limit: int = _MAX_MESSAGE) -> str:
    """`text` with its whitespace collapsed, cut to `limit` characters."""
    flat = _SPACES.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return one_line(response.text) or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return one_line(body["message"])
    return one_line(response.text)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


class N8nConflict(StepError):
    """n8n answered 409: a webhook path is taken, or a workflow is still being published
    or unpublished in the background. Fatal unless the caller knows to wait."""


def error_for(response: httpx.Response, doing: str) -> StepError:
    """The step error for n8n's failed answer to a request made while `doing` something."""
    status = response.status_code
    if status in (401, 403):
        # Never echo the key, nor n8n's text about it: just which call it refused.
        return StepError(f"n8n rejected the API key (HTTP {status} while {doing})")
    where = f"(HTTP {status} while {doing})"
    if status == 429:
        return TransientStepError(f"n8n is rate limiting {where}", retry_after=_retry_after(response))
    if status >= 500:
        return TransientStepError(f"n8n failed: {_message(response)} {where}")
    if status == 409:
        return N8nConflict(f"n8n: {_message(response)} {where}")
    return StepError(f"n8n: {_message(response)} {where}")


class N8nApi:
    """The public API of one n8n instance, authenticated with one API key.

    `transport` replaces the network (an `httpx.MockTransport` in unit tests). The
    environment is not consulted (no proxy variables, no .netrc): settings come from
    the composition root only.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        if not api_key.strip():
            raise ConfigurationError("PROVISIONER_N8N_API_KEY must not be empty")
        if timeout <= 0:
            raise ConfigurationError(f"the n8n timeout must be positive, not {timeout}")
        self._api_key = api_key
        self._client = httpx.AsyncClient(
            base_url=self.base_url + API_PREFIX,
            headers={"X-N8N-API-KEY": api_key, "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
            trust_env=False,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"N8nApi({self.base_url!r})"

    async def close(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        doing: str,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        tolerate: Collection[int] = (),
    ) -> Any:
        """The decoded JSON answer of one request; None for an answer whose status is in
        `tolerate` (a 404 for something already gone, a 409 for something already made).

        A request that may change n8n runs to its end even if the caller is cancelled
        meanwhile, so whatever it made is there for the rollback that follows.
        """
        request = self._client.request(method, path, json=json, params=params)
        try:
            response = await (request if method == "GET" else settle(request))
        except httpx.HTTPError as exc:
            raise TransientStepError(
                f"cannot reach n8n at {self.base_url} while {doing}: {type(exc).__name__}"
            ) from exc
        if response.status_code in tolerate:
            return None
        if response.is_error or response.is_redirect:
            raise self._redacted(error_for(response, doing))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise TransientStepError(f"n8n answered {doing} with something that is not JSON") from exc

    async def pages(
        self, path: str, *, doing: str, params: Mapping[str, str | int] | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a paginated listing, following `nextCursor` to its end."""
        items: list[dict[str, Any]] = []
        query: dict[str, str | int] = {**(params or {}), "limit": PAGE_SIZE}
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = await self.call("GET", path, doing=doing, params=query)
            data = page.get("data") if isinstance(page, dict) else None
            if not isinstance(data, list):
                raise StepError(f"n8n answered {doing} without a list of data")
            items.extend(item for item in data if isinstance(item, dict))
            cursor = page.get("nextCursor")
            if not cursor:
                return items
            if cursor in seen:
                break
            seen.add(cursor)
            query = {**(params or {}), "limit": PAGE_SIZE, "cursor": str(cursor)}
        raise StepError(f"n8n's listing never ended while {doing}")

    def _redacted(self, error: StepError) -> StepError:
        # n8n has no reason to echo the key, but a proxy in front of it might.
        if self._api_key in error.message:
            redacted = error.message.replace(self._api_key, "<api key>")
            return type(error)(redacted, retry_after=error.retry_after)
        return error
