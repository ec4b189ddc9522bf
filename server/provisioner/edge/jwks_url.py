"""Verification keys from an identity provider's JWKS URL.

Fetched once at start (a server that cannot get its keys refuses to start, saying so),
then kept: refreshed in the background once they are `max_age` seconds old, and at once
when a token names a key id not among them (a provider that rotated), but at most every
`min_interval` seconds, so a stream of tokens with made-up key ids costs the provider one
request per interval, not one per token. Concurrent refreshes share one request. A fetch
that fails keeps the last good keys.

Only HTTPS, except to loopback (a sidecar or a test). The proxy and CA settings of the
environment apply (`HTTPS_PROXY`, `SSL_CERT_FILE`), as for any egress call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from provisioner.core.errors import ConfigurationError
from provisioner.edge.auth import VerificationKey, parse_jwks

log = logging.getLogger(__name__)

#: A JWKS is a few keys; a larger answer is not one.
MAX_DOCUMENT_BYTES = 1024 * 1024
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_jwks_url(url: str) -> str:
    """`url` if it is HTTPS, or HTTP to loopback; ValueError otherwise."""
    parts = urlsplit(url)
    secure = parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK)
    if secure and parts.hostname:
        return url
    raise ValueError("must be an https:// URL (http:// only to 127.0.0.1, ::1 or localhost)")


class JwksUrl:
    def __init__(
        self,
        url: str,
        *,
        max_age: float = 300.0,
        min_interval: float = 30.0,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = check_jwks_url(url)
        self._max_age = max_age
        self._min_interval = min_interval
        self._timeout = timeout
        self._transport = transport
        self._monotonic = monotonic
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at = -float("inf")
        self._tried_at = -float("inf")
        self._flight: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """The first fetch, at start: ConfigurationError if it fails."""
        try:
            self._keys = await self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            raise ConfigurationError(f"cannot get keys from PROVISIONER_JWKS_URL={self.url}: {exc}") from exc
        self._fetched_at = self._tried_at = self._monotonic()

    def get(self, kid: str) -> VerificationKey | None:
        if self._monotonic() - self._fetched_at > self._max_age:
            self._start_refresh()  # in the background: this call uses the keys at hand
        return self._keys.get(kid)

    async def refresh_for(self, kid: str) -> bool:
        """Fetch now for a token naming the unknown `kid`, unless a fetch was tried within
        `min_interval`; True if the keys now hold it."""
        if self._flight is None and self._monotonic() - self._tried_at < self._min_interval:
            return False
        await asyncio.shield(self._start_refresh())
        return kid in self._keys

    def _start_refresh(self) -> asyncio.Task[None]:
        if self._flight is None:
            self._tried_at = self._monotonic()
            self._flight = asyncio.get_running_loop().create_task(self._refresh(), name="jwks-refresh")
        return self._flight

    async def _refresh(self) -> None:
        try:
            keys = await self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning(
                "JWKS URL unusable; keeping the last good keys", extra={"fields": {"problem": str(exc)}}
            )
        else:
            if keys.keys() != self._keys.keys():
                log.info("JWKS keys changed", extra={"fields": {"keys": len(keys)}})
            self._keys, self._fetched_at = keys, self._monotonic()
        finally:
            self._flight = None

    async def _fetch(self) -> dict[str, VerificationKey]:
        async with (
            httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client,
            client.stream("GET", self.url, headers={"accept": "application/json"}) as reply,
        ):
            if reply.status_code != 200:
                raise ValueError(f"answered {reply.status_code}")
            body = bytearray()
            async for chunk in reply.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
        return parse_jwks(body.decode("utf-8", errors="replace"))
