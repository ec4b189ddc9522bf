"""Rate-limit windows in the SQL job store, counted by every replica together.

Each admission is one row (principal, bucket, time). Admitting is one transaction per
call that drops the key's expired rows, counts the rest and inserts one if there is room;
calls of one key take turns (PostgreSQL: a transaction advisory lock on the key; SQLite:
the store's single writer connection, whose transactions begin IMMEDIATE), so N replicas
admit exactly the configured number, and a restart forgets nothing.

On SQLite the admissions share the commit writer's connection: a connection of their
own would fight it for the database's write lock, and SQLite's busy handler waits by
sleeping (a thousand concurrent provisionings slowed to a crawl that way).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from provisioner.store.connections import writing
from provisioner.store.schema import rate_admissions

_T = rate_admissions


class SqlAdmissions:
    """The `AdmissionStore` of `edge.ratelimit`, on the job store's database.

    `engine`: on PostgreSQL any pool; on SQLite the writer's own connection.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    async def admit(self, bucket: str, principal: str, count: int, period: float, now: float) -> float | None:
        """Record an admission at `now` and return None, or return the seconds until the
        oldest admission in the window leaves it (and record nothing)."""
        key = (_T.c.bucket == bucket, _T.c.principal == principal)
        async with writing(self._engine) as conn:
            if self._postgres:
                await conn.execute(
                    sa.select(
                        sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"{bucket}/{principal}", 0))
                    )
                )
            await conn.execute(_T.delete().where(*key, _T.c.at <= now - period))
            times = (await conn.execute(sa.select(_T.c.at).where(*key).order_by(_T.c.at))).scalars().all()
            if len(times) >= count:
                # The window opens when the count-th newest admission leaves it.
                return max(float(times[-count]) + period - now, 1e-6)
            await conn.execute(_T.insert().values(bucket=bucket, principal=principal, at=now))
        return None
