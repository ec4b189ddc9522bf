"""The webhook outbox in the SQL job store: messages are inserted by the commit writer in
the transaction of the event they tell of (`writer`); here they are leased, and their
attempts recorded, by whichever replica sends them.

A lease keeps two replicas from sending one message at once. A replica that dies while
sending leaves its lease to expire, and the message is sent again: receivers deduplicate
on the message id, as Standard Webhooks asks of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from provisioner.core.notifications import Notification
from provisioner.store.connections import writing
from provisioner.store.protocol import OutboxMessage
from provisioner.store.schema import webhook_outbox

_T = webhook_outbox
_PENDING = (_T.c.delivered_at.is_(None), _T.c.failed_at.is_(None))


def outbox_row(notice: Notification) -> dict[str, Any]:
    return {
        "message_id": notice.message_id,
        "event_type": notice.type,
        "department_id": notice.department_id,
        "job_id": notice.job_id,
        "body": notice.body,
        "created_at": notice.created_at,
        "attempts": 0,
        "next_attempt_at": notice.created_at,
    }


def _message(row: Any) -> OutboxMessage:
    notice = Notification(
        row.message_id, row.event_type, row.department_id, row.job_id, row.created_at, row.body
    )
    return OutboxMessage(notice, row.attempts)


class SqlOutbox:
    """The `Outbox` of `webhooks`, on the job store's database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def claim(
        self, owner: str, now: datetime, lease_until: datetime, limit: int
    ) -> list[OutboxMessage]:
        due = (
            sa.select(_T.c.message_id)
            .where(
                *_PENDING,
                _T.c.next_attempt_at <= now,
                sa.or_(_T.c.lease_owner.is_(None), _T.c.lease_owner == owner, _T.c.lease_expires_at < now),
            )
            .order_by(_T.c.next_attempt_at)
            .limit(limit)
        )
        if self._engine.dialect.name == "postgresql":
            due = due.with_for_update(skip_locked=True)
        stmt = (
            _T.update()
            .where(_T.c.message_id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_expires_at=lease_until)
            .returning(
                _T.c.message_id,
                _T.c.event_type,
                _T.c.department_id,
                _T.c.job_id,
                _T.c.created_at,
                _T.c.body,
                _T.c.attempts,
            )
        )
        async with writing(self._engine) as conn:
            rows = (await conn.execute(stmt)).all()
        return sorted((_message(r) for r in rows), key=lambda m: m.notification.created_at)

    async def attempted(
        self,
        message_id: str,
        owner: str,
        *,
        attempts: int,
        now: datetime,
        error: str | None,
        retry_at: datetime | None,
    ) -> bool:
        """Record an attempt of a message `owner` leases: delivered if `error` is None,
        else retried at `retry_at`, else given up on. False if the lease was lost."""
        values: dict[str, Any] = {"attempts": attempts, "lease_owner": None, "lease_expires_at": None}
        if error is None:
            values |= {"delivered_at": now, "last_error": None}
        elif retry_at is not None:
            values |= {"next_attempt_at": retry_at, "last_error": error[:300]}
        else:
            values |= {"failed_at": now, "last_error": error[:300]}
        stmt = _T.update().where(_T.c.message_id == message_id, _T.c.lease_owner == owner).values(values)
        async with writing(self._engine) as conn:
            return bool((await conn.execute(stmt)).rowcount)
