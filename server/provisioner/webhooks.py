"""Webhook delivery: the outbox's messages, signed per Standard Webhooks, sent to
PROVISIONER_WEBHOOK_URL by whichever replica leases them.

Messages are written by the engine's commits (`store.outbox`), so a job never waits for
a receiver. Here a loop leases due messages, POSTs each with `webhook-id`,
`webhook-timestamp` and `webhook-signature` (signed with the `standardwebhooks`
package, fresh at each attempt so the timestamp is current), and records the outcome.
Any answer other than 2xx, a timeout or a connection error is retried with exponential
backoff (the receiver's `Retry-After` honoured, capped); after the last attempt the
message is given up on, which the metrics, the log and the `WebhooksFailing` alert show.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from standardwebhooks.webhooks import Webhook

from provisioner.core.errors import ProvisioningError
from provisioner.core.retry import RetryPolicy
from provisioner.store.protocol import Outbox, OutboxMessage
from provisioner.telemetry import metrics

log = logging.getLogger(__name__)

_USER_AGENT = "provisioning-orchestrator-webhooks/1"


class DeliveryError(ProvisioningError):
    """The receiver did not take the message (non-2xx, timeout, no connection)."""

    reason = "WEBHOOK_NOT_DELIVERED"
    retryable = True


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: str
    #: Seconds one attempt may take, connection included.
    timeout: float = 10.0
    #: Attempts in all, then the message is given up on; with the defaults the last one
    #: is about 12 hours after the first.
    max_attempts: int = 12
    base_delay: float = 5.0
    max_delay: float = 3600.0 * 4
    #: Messages in flight at once, per replica.
    concurrency: int = 8
    #: How often the outbox is looked at when there was nothing to send.
    poll_interval: float = 0.5
    ca_file: Path | None = None

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(
            max_retries=self.max_attempts - 1, base_delay=self.base_delay, max_delay=self.max_delay
        )


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


class WebhookSender:
    """Signs and POSTs one message; raises `DeliveryError` unless the receiver says 2xx."""

    def __init__(self, config: WebhookConfig) -> None:
        self._url = config.url
        self._signer = Webhook(config.secret)
        self._client = httpx.AsyncClient(
            timeout=config.timeout,
            follow_redirects=False,
            trust_env=False,
            verify=str(config.ca_file) if config.ca_file else True,
            limits=httpx.Limits(max_connections=config.concurrency),
        )

    async def send(self, message: OutboxMessage) -> None:
        notice = message.notification
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": _USER_AGENT,
            "webhook-id": notice.message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(notice.message_id, now, notice.body),
        }
        try:
            reply = await self._client.post(self._url, content=notice.body.encode(), headers=headers)
        except httpx.TimeoutException:
            raise DeliveryError("timed out") from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"no answer ({type(exc).__name__})") from None
        if not reply.is_success:
            raise DeliveryError(
                f"HTTP {reply.status_code}", retry_after=_retry_after(reply.headers.get("retry-after"))
            )

    async def close(self) -> None:
        await self._client.aclose()


def utcnow() -> datetime:
    return datetime.now(UTC)


class WebhookDelivery:
    """Sends the outbox's due messages until cancelled (run it as a task)."""

    def __init__(
        self,
        outbox: Outbox,
        sender: WebhookSender,
        config: WebhookConfig,
        *,
        owner: str,
        clock: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self._outbox = outbox
        self._sender = sender
        self._config = config
        self._owner = owner
        self._clock = clock
        self._rng = rng or random.Random()
        self._policy = config.retry

    async def run(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except ProvisioningError as exc:
                log.warning("webhook delivery skipped: %s", exc.message)
                sent = 0
            if not sent:
                await asyncio.sleep(self._config.poll_interval)

    async def deliver_due(self) -> int:
        """Lease the messages due now, send them at once, record each outcome; how many."""
        now = self._clock()
        # Long enough for every attempt of a batch, however slow the receiver.
        lease = now + timedelta(seconds=2 * self._config.timeout + 30)
        due = await self._outbox.claim(self._owner, now, lease, self._config.concurrency)
        await asyncio.gather(*(self._deliver(m) for m in due))
        return len(due)

    async def _deliver(self, message: OutboxMessage) -> None:
        notice, attempt = message.notification, message.attempts + 1
        began = time.perf_counter()
        error: DeliveryError | None = None
        try:
            await self._sender.send(message)
        except DeliveryError as exc:
            error = exc
        metrics.WEBHOOK_ATTEMPT.observe(time.perf_counter() - began)
        delay = None if error is None else self._policy.next_delay(attempt, error, self._rng.random())
        now = self._clock()
        recorded = await self._outbox.attempted(
            notice.message_id,
            self._owner,
            attempts=attempt,
            now=now,
            error=None if error is None else error.message,
            retry_at=None if delay is None else now + timedelta(seconds=delay),
        )
        if not recorded:
            log.warning("webhook %s: lease lost before its attempt was recorded", notice.message_id)
            return
        outcome = "delivered" if error is None else ("retrying" if delay is not None else "failed")
        metrics.WEBHOOKS.labels(notice.type, outcome).inc()
        fields = {"webhook_id": notice.message_id, "type": notice.type, "attempt": attempt}
        if error is None:
            log.info("webhook %s delivered", notice.type, extra={"fields": fields})
        elif delay is not None:
            log.info(
                "webhook %s not delivered (%s); retrying in %.1f s",
                notice.type,
                error.message,
                delay,
                extra={"fields": fields},
            )
        else:
            log.error(
                "webhook %s given up after %d attempts: %s",
                notice.type,
                attempt,
                error.message,
                extra={"fields": {**fields, "department": notice.department_id, "job_id": notice.job_id}},
            )
