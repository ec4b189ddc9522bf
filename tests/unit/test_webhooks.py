"""Webhook messages: what a finished job calls for (pure), and the delivery loop's
bookkeeping (the in-memory outbox, a sender that answers as told).

The real HTTP path, signatures and restarts are in tests/e2e/test_webhooks.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from provisioner.core.errors import ConfigurationError
from provisioner.core.job import EventType, Job
from provisioner.core.notifications import notifications
from provisioner.core.states import State, StepName
from provisioner.settings import load_settings
from provisioner.store.memory import InMemoryOutbox
from provisioner.store.protocol import OutboxMessage
from provisioner.webhooks import DeliveryError, WebhookConfig, WebhookDelivery
from tests.unit.factories import new_job, walk_to_completion
from tests.unit.test_engine import FAST, Build, build, run, store  # noqa: F401  (fixtures)

START = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


async def finished(build: Build, faults: str = "") -> Job:  # noqa: F811
    job, _ = await run(build(faults, config=replace(FAST, webhooks=True)))
    return job


async def test_a_completed_job_calls_for_one_job_completed(build: Build) -> None:  # noqa: F811
    job = await finished(build)
    outbox = build().store.outbox
    (message,) = outbox.messages.values()
    notice = message.notification
    assert notice.type == "job.completed" and notice.job_id == job.job_id
    body = json.loads(notice.body)
    assert body["type"] == "job.completed"
    assert body["data"] == {
        "job_id": job.job_id,
        "department_id": "hr",
        "kind": "provision",
        "state": "completed",
        "department_status": "active",
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    assert notice.message_id.startswith("msg_")


async def test_a_rollback_that_leaves_resources_calls_for_failed_and_needs_attention(
    build: Build,  # noqa: F811
) -> None:
    job = await finished(build, "validation=fail,container=fail-compensate")
    assert job.state is State.FAILED
    messages = {m.notification.type: m.notification for m in build().store.outbox.messages.values()}
    assert set(messages) == {"job.failed", "department.needs_attention"}
    data = json.loads(messages["job.failed"].body)["data"]
    assert data["error"]["step"] == "validation"
    assert data["cleanup"]["remaining"] == ["container"]
    assert data["department_status"] == "needs_attention"
    # Steps and outcomes only: never where a resource is.
    assert (
        "path" not in messages["job.failed"].body and str(StepName.CONTAINER) in data["cleanup"]["remaining"]
    )


async def test_no_messages_unless_webhooks_are_on_and_none_before_the_end(build: Build) -> None:  # noqa: F811
    job, events = await run(build())
    assert build().store.outbox.messages == {}
    assert notifications(job, [e for e in events if e.type is not EventType.JOB_FINISHED]) == []
    ids = {n.message_id for n in notifications(job, events)}
    assert ids == {n.message_id for n in notifications(job, events)}, "the same fact, the same id"


class Receiver:
    """A sender whose receiver answers from a script: None is 2xx, else the error."""

    def __init__(self, *answers: DeliveryError | None) -> None:
        self.answers = list(answers)
        self.sent: list[str] = []

    async def send(self, message: OutboxMessage) -> None:
        self.sent.append(message.notification.message_id)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def outbox_with_one() -> tuple[InMemoryOutbox, str]:
    outbox = InMemoryOutbox()
    job, first = new_job()
    (notice,) = notifications(job, [first, *walk_to_completion(job, START)])
    outbox.add(notice)
    return outbox, notice.message_id


CONFIG = WebhookConfig("http://receiver.invalid/hook", "whsec_" + "A" * 32, max_attempts=3, base_delay=10)


def delivery(outbox: InMemoryOutbox, receiver: Receiver, clock: Clock, owner: str = "r1") -> WebhookDelivery:
    return WebhookDelivery(outbox, receiver, CONFIG, owner=owner, clock=clock, rng=random.Random(1))  # type: ignore[arg-type]


async def test_delivered_once_then_nothing_more_to_send() -> None:
    outbox, message_id = outbox_with_one()
    receiver, clock = Receiver(None), Clock()
    assert await delivery(outbox, receiver, clock).deliver_due() == 1
    assert await delivery(outbox, receiver, clock).deliver_due() == 0
    assert receiver.sent == [message_id]
    assert outbox.messages[message_id].done and outbox.counts() == (0, 0)


async def test_refusals_back_off_then_give_up_visibly() -> None:
    outbox, message_id = outbox_with_one()
    refusal = DeliveryError("HTTP 500")
    receiver, clock = Receiver(refusal, refusal, refusal), Clock()
    sender = delivery(outbox, receiver, clock)
    assert await sender.deliver_due() == 1
    message = outbox.messages[message_id]
    assert message.attempts == 1 and message.last_error == "HTTP 500"
    assert message.next_attempt_at is not None
    first_wait = (message.next_attempt_at - START).total_seconds()
    assert 8 <= first_wait <= 12  # 10 s base, 20 % jitter
    assert await sender.deliver_due() == 0, "not before its time"
    clock.now = message.next_attempt_at
    assert await sender.deliver_due() == 1
    assert 16 <= (message.next_attempt_at - clock.now).total_seconds() <= 24  # doubled
    clock.now = message.next_attempt_at
    assert await sender.deliver_due() == 1
    assert message.failed and message.attempts == 3 and outbox.counts() == (0, 1)
    clock.now += timedelta(days=1)
    assert await sender.deliver_due() == 0
    assert receiver.sent == [message_id] * 3


async def test_a_receivers_retry_after_is_honoured() -> None:
    outbox, message_id = outbox_with_one()
    receiver, clock = Receiver(DeliveryError("HTTP 429", retry_after=120)), Clock()
    await delivery(outbox, receiver, clock).deliver_due()
    assert outbox.messages[message_id].next_attempt_at == START + timedelta(seconds=120)


async def test_a_message_leased_by_one_replica_is_not_sent_by_another() -> None:
    outbox, message_id = outbox_with_one()
    clock = Clock()
    claimed = await outbox.claim("r1", START, START + timedelta(seconds=50), 10)
    assert [m.notification.message_id for m in claimed] == [message_id]
    other = Receiver(None)
    assert await delivery(outbox, other, clock, owner="r2").deliver_due() == 0
    # r1 died; once its lease has expired, r2 sends the message (again, for all it knows).
    clock.now = START + timedelta(seconds=51)
    assert await delivery(outbox, other, clock, owner="r2").deliver_due() == 1
    assert other.sent == [message_id]
    assert not await outbox.attempted(message_id, "r1", attempts=1, now=clock.now, error=None, retry_at=None)


@pytest.mark.parametrize(
    ("secret", "ok"),
    [
        ("whsec_" + "A" * 32, True),
        ("whsec_" + "A" * 16, False),  # 12 bytes: too short
        ("A" * 32, False),  # no prefix
        ("whsec_not*base64" + "A" * 30, False),
    ],
)
def test_webhook_settings_are_checked(secret: str, ok: bool) -> None:
    url = "https://hooks.example/provisioner"
    env = {"PROVISIONER_WEBHOOK_URL": url, "PROVISIONER_WEBHOOK_SECRET": secret}
    if ok:
        settings = load_settings(env)
        assert settings.engine.webhooks and settings.webhook_url == url
        assert secret not in repr(settings)
    else:
        with pytest.raises(ConfigurationError, match="PROVISIONER_WEBHOOK_SECRET") as raised:
            load_settings(env)
        assert secret not in str(raised.value)
    with pytest.raises(ConfigurationError, match="set both or neither"):
        load_settings({"PROVISIONER_WEBHOOK_URL": url})
