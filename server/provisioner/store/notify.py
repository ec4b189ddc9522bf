"""Commit announcements over PostgreSQL LISTEN/NOTIFY.

The writer announces each batch from inside the transaction that commits it
(`pg_notify` is delivered only on commit, so nothing is announced that is not durable):
one notification per batch, listing each job's last committed sequence. Every replica
keeps one connection listening and reports whether it is, so the event hub falls back
to polling only while it is not. A notification tells *that* there is news; the events
themselves are read from the store, once per job however many watchers it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "provisioner_events"
#: PostgreSQL refuses payloads of 8000 bytes or more.
_MAX_PAYLOAD = 7900

#: (job id, last committed sequence)
Head = tuple[str, int]


def payloads(heads: Iterable[Head]) -> list[str]:
    """`job:sequence` items, comma-separated, in as few payloads as the size limit allows."""
    found: list[str] = []
    current: list[str] = []
    size = 0
    for job_id, sequence in heads:
        item = f"{job_id}:{sequence}"
        if current and size + len(item) + 1 > _MAX_PAYLOAD:
            found.append(",".join(current))
            current, size = [], 0
        current.append(item)
        size += len(item) + 1
    if current:
        found.append(",".join(current))
    return found


def parse(payload: str) -> list[Head]:
    """The heads of a payload; malformed items (never written by us) are skipped."""
    heads = []
    for item in payload.split(","):
        job_id, _, sequence = item.rpartition(":")
        if job_id and sequence.isdigit():
            heads.append((job_id, int(sequence)))
    return heads


class Listener:
    """One connection LISTENing on the store's channel, reconnecting when it drops.

    `on_heads` gets each notification's heads; `on_state(True)` once listening (anything
    committed from then on is heard), `on_state(False)` when the connection is lost.
    """

    def __init__(
        self,
        url: str,
        *,
        on_heads: Callable[[list[Head]], None],
        on_state: Callable[[bool], None],
        retry_seconds: float = 1.0,
        check_seconds: float = 2.0,
    ) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_heads = on_heads
        self._on_state = on_state
        self._retry = retry_seconds
        self._check = check_seconds
        #: The listening connection's backend pid (tests end it to prove the fallback).
        self.backend_pid: int | None = None

    async def run(self) -> None:
        """Listen until cancelled."""
        while True:
            try:
                await self._listen_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "event notifications lost (%s); watchers poll until they are back", type(exc).__name__
                )
            await asyncio.sleep(self._retry)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=5)
        try:
            await conn.add_listener(CHANNEL, self._heard)
            self.backend_pid = conn.get_server_pid()
            self._on_state(True)
            # A connection whose server went away says so only when used: ask it regularly.
            while not conn.is_closed():
                await asyncio.sleep(self._check)
                await conn.fetchval("SELECT 1", timeout=self._check)
        finally:
            self._on_state(False)
            self.backend_pid = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._on_heads(parse(payload))
