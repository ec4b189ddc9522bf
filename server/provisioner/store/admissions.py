"""Rate-limit windows in the SQL job store, counted by every replica together.

Each admission is one row (bucket, principal, time). Admitting drops the key's expired
rows, counts the rest and inserts one if there is room, in the commit writer's
transaction: calls of one key take turns (PostgreSQL: a transaction advisory lock on
the key, taken in key order; SQLite: its single writer, which begins IMMEDIATE), so N
replicas admit exactly the configured number, and a restart forgets nothing.

Admissions go through the writer's queue rather than a connection of their own: on
SQLite a second writing connection fights the writer for the database's lock (and
SQLite's busy handler waits by sleeping); sharing the writer's one pooled connection
with request tasks, which may be cancelled, lost it for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provisioner.store.connections import reading
from provisioner.store.schema import rate_admissions

_T = rate_admissions


@dataclass(slots=True)
class PendingAdmission:
    """One call to admit, or to learn how long to wait; answered by the writer."""

    bucket: str
    principal: str
    count: int
    period: float
    now: float
    future: asyncio.Future[float | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Writer(Protocol):
    async def admit(self, item: PendingAdmission) -> float | None: ...


class SqlAdmissions:
    """The `AdmissionStore` of `edge.ratelimit`, on the job store's database."""

    def __init__(self, writer: _Writer, engine: AsyncEngine) -> None:
        self._writer = writer
        #: Reads (`wait`) need no turn at the writer.
        self._engine = engine

    async def admit(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        """Record an admission at `now` and return None, or return the seconds until the
        oldest admission in the window leaves it (and record nothing)."""
        return await self._writer.admit(PendingAdmission(bucket, principal, count, period, now))

    async def wait(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        """The seconds until an admission would fit, or None if one fits now; records nothing."""
        key = (_T.c.bucket == bucket, _T.c.principal == principal, _T.c.at > now - period)
        async with reading(self._engine) as conn:
            opens = (await conn.execute(_window_opens(key, count))).scalar_one_or_none()
        return None if opens is None else max(float(opens) + period - now, 1e-6)


def _window_opens(key: tuple[sa.ColumnElement[bool], ...], count: int) -> sa.Select[Any]:
    """The admission whose leaving the window lets one more in: the count-th newest."""
    return sa.select(_T.c.at).where(*key).order_by(_T.c.at.desc()).offset(count - 1).limit(1)


async def decide(
    conn: AsyncConnection, admissions: Sequence[PendingAdmission], postgres: bool
) -> list[float | None]:
    """Admit or refuse each, in order, inside the caller's transaction."""
    if postgres:
        for name in sorted({f"{a.bucket}/{a.principal}" for a in admissions}):
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(name, 0))))
    waits: list[float | None] = []
    for item in admissions:
        key = (_T.c.bucket == item.bucket, _T.c.principal == item.principal)
        await conn.execute(_T.delete().where(*key, _T.c.at <= item.now - item.period))
        # Counted, not fetched: a busy key's window may hold a million admissions, and
        # fetching them all made every admission cost as much as the window is long.
        held = (await conn.execute(sa.select(sa.func.count()).where(*key))).scalar_one()
        if held >= item.count:
            opens = (await conn.execute(_window_opens(key, item.count))).scalar_one()
            waits.append(max(float(opens) + item.period - item.now, 1e-6))
            continue
        await conn.execute(_T.insert().values(bucket=item.bucket, principal=item.principal, at=item.now))
        waits.append(None)
    return waits
