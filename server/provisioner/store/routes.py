"""The gateway's routes in the SQL job store: every replica's Envoy is built from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from provisioner.core.routes import Route
from provisioner.store.connections import reading, writing
from provisioner.store.schema import department_routes

_T = department_routes


def _route(row: Any) -> Route:
    return Route(row.department_id, row.host, row.port, row.tls, row.replica)


class SqlRouteStore:
    """The `RouteStore` of `steps.gateway`, on the job store's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def put_route(self, route: Route) -> None:
        values = {
            "department_id": route.department_id,
            "host": route.host,
            "port": route.port,
            "tls": route.tls,
            "replica": route.replica,
            "updated_at": datetime.now(UTC),
        }
        stmt = self._insert(_T).values(values)
        async with writing(self._engine) as conn:
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["department_id"],
                    set_={k: stmt.excluded[k] for k in values if k != "department_id"},
                )
            )

    async def delete_route(self, department_id: str) -> bool:
        async with writing(self._engine) as conn:
            result = await conn.execute(_T.delete().where(_T.c.department_id == department_id))
        return bool(result.rowcount)

    async def get_route(self, department_id: str) -> Route | None:
        async with reading(self._engine) as conn:
            row = (await conn.execute(sa.select(_T).where(_T.c.department_id == department_id))).first()
        return None if row is None else _route(row)

    async def routes_for(self, replica: str) -> list[Route]:
        """The routes `replica`'s Envoy serves: everyone's, and those only it can reach."""
        query = (
            sa.select(_T)
            .where(sa.or_(_T.c.replica.is_(None), _T.c.replica == replica))
            .order_by(_T.c.department_id)
        )
        async with reading(self._engine) as conn:
            return [_route(r) for r in (await conn.execute(query)).all()]
