"""Department secrets and store-wide settings in the SQL job store.

Every replica reads and writes the same rows, so whichever replica runs (or takes over)
a job finds the sealed secrets its steps need. Writes that must not race across
replicas are single statements or run in one transaction: the first value of a secret
or setting wins (`INSERT ... ON CONFLICT DO NOTHING`, then read back), activation and
resealing compare before they replace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from provisioner.core.secrets import SealedSecret
from provisioner.store.connections import reading, writing
from provisioner.store.schema import department_secrets, store_settings

_T = department_secrets


def _secret(row: Any) -> SealedSecret:
    return SealedSecret(
        department_id=row.department_id,
        name=row.name,
        purpose=row.purpose,
        sealed=row.sealed,
        job_id=row.job_id,
        client_id=row.client_id,
        secret_sha256=row.secret_sha256,
    )


def _values(secret: SealedSecret) -> dict[str, Any]:
    return {
        "department_id": secret.department_id,
        "name": secret.name,
        "purpose": secret.purpose,
        "sealed": secret.sealed,
        "job_id": secret.job_id,
        "client_id": secret.client_id,
        "secret_sha256": secret.secret_sha256,
        "created_at": datetime.now(UTC),
    }


class SqlSecretStore:
    """The `SecretStore` of `steps.vault`, on the job store's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def get_secret(self, department_id: str, name: str) -> SealedSecret | None:
        async with reading(self._engine) as conn:
            return await self._get(conn, department_id, name)

    @staticmethod
    async def _get(conn: AsyncConnection, department_id: str, name: str) -> SealedSecret | None:
        row = (
            await conn.execute(sa.select(_T).where(_T.c.department_id == department_id, _T.c.name == name))
        ).first()
        return None if row is None else _secret(row)

    async def add_secret(self, secret: SealedSecret) -> SealedSecret:
        """Store `secret` unless the department already has one by its name; return the stored one."""
        async with writing(self._engine) as conn:
            await conn.execute(self._insert(_T).values(_values(secret)).on_conflict_do_nothing())
            stored = await self._get(conn, secret.department_id, secret.name)
        assert stored is not None  # inserted, or there before: either way it is there
        return stored

    async def promote_secret(
        self, department_id: str, source: str, target: str, *, job_id: str, drop_prefix: str
    ) -> SealedSecret | None:
        """Make `source` the department's `target` and drop every secret named `drop_prefix…`.

        Idempotent: when `source` is gone but `target` already belongs to `job_id` (a
        crash came after the promotion), the leftovers are still dropped. Returns the
        `target` if it belongs to `job_id` now, else None and nothing changed.
        """
        async with writing(self._engine) as conn:
            issued = await self._get(conn, department_id, source)
            if issued is not None:
                row = {**_values(issued), "name": target}
                stmt = self._insert(_T).values(row)
                await conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["department_id", "name"],
                        set_={k: stmt.excluded[k] for k in row if k not in ("department_id", "name")},
                    )
                )
            active = await self._get(conn, department_id, target)
            if active is None or active.job_id != job_id:
                return None
            await conn.execute(
                _T.delete().where(_T.c.department_id == department_id, _T.c.name.startswith(drop_prefix))
            )
            return active

    async def delete_secrets(self, department_id: str, *, purpose: str, name: str | None = None) -> int:
        """Delete the department's secrets of `purpose` (only `name`, if given); how many went."""
        criteria = [_T.c.department_id == department_id, _T.c.purpose == purpose]
        if name is not None:
            criteria.append(_T.c.name == name)
        async with writing(self._engine) as conn:
            return int((await conn.execute(_T.delete().where(*criteria))).rowcount)

    async def all_secrets(self) -> list[SealedSecret]:
        async with reading(self._engine) as conn:
            rows = (await conn.execute(sa.select(_T).order_by(_T.c.department_id, _T.c.name))).all()
        return [_secret(r) for r in rows]

    async def replace_sealed(self, secret: SealedSecret, sealed: str) -> bool:
        """Seal a stored value anew, unless it changed since it was read; True if replaced."""
        async with writing(self._engine) as conn:
            result = await conn.execute(
                _T.update()
                .where(
                    _T.c.department_id == secret.department_id,
                    _T.c.name == secret.name,
                    _T.c.sealed == secret.sealed,
                )
                .values(sealed=sealed)
            )
        return bool(result.rowcount)

    # -- store-wide settings ------------------------------------------------------------------

    async def claim_setting(self, name: str, value: str) -> str:
        """Record `value` for `name` unless one is recorded; return the recorded one."""
        now = datetime.now(UTC)
        async with writing(self._engine) as conn:
            await conn.execute(
                self._insert(store_settings)
                .values(name=name, value=value, updated_at=now)
                .on_conflict_do_nothing()
            )
            recorded = (
                await conn.execute(sa.select(store_settings.c.value).where(store_settings.c.name == name))
            ).scalar_one()
        return str(recorded)

    async def put_setting(self, name: str, value: str) -> None:
        now = datetime.now(UTC)
        stmt = self._insert(store_settings).values(name=name, value=value, updated_at=now)
        async with writing(self._engine) as conn:
            await conn.execute(
                stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
            )
