"""Webhooks from the real `provisioning-server` to a real HTTP receiver run by the test,
which checks every signature with the `standardwebhooks` package, as a receiver would."""

from __future__ import annotations

import base64
import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import (
    ControlPlane,
    control_plane,
    provisioned,
    started_plane,
    stop_department_services,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SPEC = {
    "departmentName": "Hooks",
    "workflows": ["database"],
    "dataRetention": "90d",
    "region": "us-west",
    "adminEmail": "admin@example.com",
}


@dataclass
class Delivery:
    webhook_id: str
    type: str
    data: dict[str, object]


@dataclass
class Receiver:
    """What arrived, verified; `answer` decides each reply (status code) from the count so far."""

    url: str = ""
    arrived: list[Delivery] = field(default_factory=list)
    forged: int = 0
    answer: Callable[[int], int] = lambda n: 200
    #: While set, requests wait (a receiver that is slow to answer).
    hold: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, body: bytes, headers: dict[str, str]) -> int:
        try:
            payload = Webhook(SECRET).verify(body, headers)
        except Exception:
            with self.lock:
                self.forged += 1
            return 400
        with self.lock:
            self.arrived.append(Delivery(headers["webhook-id"], payload["type"], payload["data"]))
            count = len(self.arrived)
        while self.hold.is_set():
            time.sleep(0.05)
        return self.answer(count)

    def wait_for(self, count: int, patience: float = 30) -> list[Delivery]:
        deadline = time.monotonic() + patience
        while len(self.arrived) < count:
            assert time.monotonic() < deadline, f"{len(self.arrived)} of {count} arrived: {self.arrived}"
            time.sleep(0.05)
        return list(self.arrived)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            status = found.received(body, {k.lower(): v for k, v in self.headers.items()})
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/provisioner"
    yield found
    found.hold.clear()
    server.shutdown()
    server.server_close()


def settings(receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "PROVISIONER_STEPS": "local",
        "PROVISIONER_WEBHOOK_URL": receiver.url,
        "PROVISIONER_WEBHOOK_SECRET": SECRET,
        "PROVISIONER_WEBHOOK_RETRY_BASE": "0.3",
        "PROVISIONER_CENSUS_INTERVAL": "0.5",
        **extra,
    }


def outbox(plane: ControlPlane) -> list[tuple[object, ...]]:
    return plane.query(
        "SELECT event_type, attempts, delivered_at IS NOT NULL, failed_at IS NOT NULL, last_error "
        "FROM webhook_outbox ORDER BY created_at, event_type"
    )


def test_signed_messages_for_success_failure_and_attention_with_a_retry_after_a_500(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answer = lambda count: 500 if count == 1 else 200
    faults = "validation=fail@hook-bad,container=fail-compensate@hook-bad"
    with started_plane(tmp_path, **settings(receiver, PROVISIONER_FAULT_INJECTION=faults)) as plane:
        with plane.http() as api:
            good = provisioned(api, {**SPEC, "departmentId": "hook-good"})
            bad = provisioned(api, {**SPEC, "departmentId": "hook-bad"})
        arrived = receiver.wait_for(4)
        time.sleep(0.5)
        rows = outbox(plane)
        metrics = httpx.get(plane.metrics_url, trust_env=False).text

    assert receiver.forged == 0
    first, *rest = arrived
    assert first.webhook_id == rest[0].webhook_id, "the refused message came again, with its id"
    by_type = {(d.type, d.data["job_id"]) for d in rest}
    assert by_type == {
        ("job.completed", good["jobId"]),
        ("job.failed", bad["jobId"]),
        ("department.needs_attention", bad["jobId"]),
    }
    failed = next(d for d in rest if d.type == "job.failed")
    assert failed.data["department_status"] == "needs_attention"
    assert failed.data["cleanup"] == {
        "compensated": ["validation", "gateway", "workflows", "oauth", "database", "validate"],
        "remaining": ["container"],
    }
    assert len({d.webhook_id for d in rest}) == 3
    # (attempts, delivered, given up): the first message needed a second attempt.
    assert sorted((r[1], r[2], r[3]) for r in rows) == [(1, True, False), (1, True, False), (2, True, False)]
    assert 'provisioner_webhook_deliveries_total{outcome="retrying",type="job.completed"} 1.0' in metrics
    assert "provisioner_webhooks_pending 0.0" in metrics


def test_a_message_committed_before_a_sigkill_is_sent_after_the_restart(
    receiver: Receiver, tmp_path: Path
) -> None:
    plane = control_plane(tmp_path, **settings(receiver))
    try:
        plane.start()
        receiver.hold.set()  # the first delivery is under way when the server dies
        with plane.http() as api:
            job = provisioned(api, {**SPEC, "departmentId": "hook-kill"})
        (held,) = receiver.wait_for(1)
        assert plane.stop(signal.SIGKILL) == -signal.SIGKILL
        receiver.hold.clear()
        assert outbox(plane) == [("job.completed", 0, False, False, None)], "committed, not yet sent"
        plane.start()
        again = receiver.wait_for(2)[1]
        deadline = time.monotonic() + 10
        while outbox(plane) != [("job.completed", 1, True, False, None)]:
            assert time.monotonic() < deadline, outbox(plane)
            time.sleep(0.1)
        assert plane.stop() == 0
    finally:
        if plane.process is not None:
            plane.stop(signal.SIGKILL)
        stop_department_services(plane.state_dir)
    assert held.webhook_id == again.webhook_id and again.data["job_id"] == job["jobId"]


def test_a_receiver_that_refuses_forever_leaves_a_visible_failed_message(
    receiver: Receiver, tmp_path: Path
) -> None:
    receiver.answer = lambda count: 503
    with started_plane(tmp_path, **settings(receiver, PROVISIONER_WEBHOOK_MAX_ATTEMPTS="3")) as plane:
        with plane.http() as api:
            job = provisioned(api, {**SPEC, "departmentId": "hook-refused"})
        assert job["state"] == "JOB_STATE_COMPLETED", "a receiver never holds a job up"
        receiver.wait_for(3)
        deadline = time.monotonic() + 10
        while outbox(plane) != [("job.completed", 3, False, True, "HTTP 503")]:
            assert time.monotonic() < deadline, outbox(plane)
            time.sleep(0.1)
        time.sleep(0.6)  # a census
        metrics = httpx.get(plane.metrics_url, trust_env=False).text
        log = plane.log.read_text()
    assert 'provisioner_webhook_deliveries_total{outcome="failed",type="job.completed"} 1.0' in metrics
    assert "provisioner_webhooks_failed 1.0" in metrics
    given_up = [json.loads(line) for line in log.splitlines() if "given up" in line]
    assert [line["job_id"] for line in given_up] == [job["jobId"]]
    assert SECRET not in log
    assert len(receiver.arrived) == 3
