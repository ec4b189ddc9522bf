"""The job store goes away mid-job, then comes back: the job waits and resumes intact.

The real server (a subprocess) reaches PostgreSQL through a TCP proxy that this test
controls; cutting the proxy drops every connection and refuses new ones, as a database
restart or a network partition would. The job must end COMPLETED with a gap-free event
log and exactly the resources of a completed department on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
import jwt
import pytest

from provisioner.core.states import StepName
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.report import record
from tests.integration.test_crash_recovery import Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SECRET = "outage-" + "s" * 40


class Proxy:
    """A TCP proxy on its own thread and event loop, which can cut every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", 0))
        started.set()
        self._loop.run_forever()
        # Stopped: close the listener, end every pipe, and close the loop on its own thread.
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self) -> None:
        def close_all() -> None:
            self._up = False
            for writer in self._writers:
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(close_all)

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_up", True)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def proxied(postgres_url: str) -> Iterator[tuple[str, Proxy]]:
    parts = urlsplit(postgres_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    yield urlunsplit(parts._replace(netloc=netloc)), proxy
    proxy.close()


def follow(target: str, job_id: str, metadata: tuple[tuple[str, str], ...]) -> list[pb.JobEvent]:
    """Every event of the job, reconnecting (and resuming) through the outage."""
    seen: list[pb.JobEvent] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            after = seen[-1].sequence if seen else 0
            request = pb.WatchProgressRequest(job_id=job_id, after_sequence=after)
            try:
                for message in stub.WatchProgress(request, metadata=metadata, timeout=30):
                    if message.HasField("event"):
                        seen.append(message.event)
                        if message.event.type == pb.JOB_EVENT_TYPE_JOB_FINISHED:
                            return seen
            except grpc.RpcError as error:
                # Only a resumable end is fine while the store is away.
                ended = error.code()
                if ended not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
        time.sleep(0.2)
    raise AssertionError(f"the job never finished; saw {[e.sequence for e in seen]}")


def test_a_job_waits_out_a_store_outage_and_finishes_intact(
    tmp_path: Path, proxied: tuple[str, Proxy]
) -> None:
    url, proxy = proxied
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")},
        "PROVISIONER_STATE_DIR": str(state),
        "PROVISIONER_DATABASE_URL": url,
        "PROVISIONER_MODE": "development",  # marker steps, slowed
        "PROVISIONER_STEPS": "local",
        "PROVISIONER_STEP_DELAY": "0.3",
        "PROVISIONER_GRPC_ADDR": "127.0.0.1:0",
        "PROVISIONER_METRICS_ADDR": "127.0.0.1:0",
        "PROVISIONER_CLAIM_INTERVAL": "0.2",
        "PROVISIONER_LEASE_SECONDS": "3",
        "PROVISIONER_JWT_SECRET": SECRET,
    }
    server = Server(env, tmp_path / "server.log")
    server.start()
    try:
        port = int(server.log.read_text().split('"grpc_port": ')[1].split(",")[0])
        target = f"127.0.0.1:{port}"
        now = int(time.time())
        bearer = jwt.encode({"sub": "ops", "roles": ["admin"], "iat": now, "exp": now + 600}, SECRET, "HS256")
        metadata = (("authorization", f"Bearer {bearer}"),)
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            job = stub.Provision(
                pb.ProvisionRequest(
                    department_id="outage", department_name="Outage", workflows=["email"],
                    data_retention="30d", region="eu-west", admin_email="ops@example.com",
                ),
                metadata=metadata,
                timeout=10,
            )  # fmt: skip
            for message in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), metadata=metadata):
                if message.HasField("event") and message.event.step == StepName.CONTAINER.value:
                    break
        proxy.cut()
        time.sleep(3)  # longer than the lease: the job must not be lost or run twice
        proxy.restore()
        events = follow(target, job.job_id, metadata)
        assert server.process is not None and server.process.poll() is None, "the server died"
    finally:
        server.stop()

    sequences = [e.sequence for e in events]
    record(
        "store_outage",
        outage_seconds=3,
        completed=events[-1].state == pb.JOB_STATE_COMPLETED,
        events_lost_or_repeated=len(set(range(1, sequences[-1] + 1)) ^ set(sequences))
        + len(sequences)
        - len(set(sequences)),
    )
    assert events[-1].state == pb.JOB_STATE_COMPLETED, events[-1]
    assert sequences == list(range(1, len(sequences) + 1))
    markers = sorted(p.name for p in (state / "resources" / "outage").iterdir())
    assert markers == sorted(f"{name.value}.json" for name in StepName)
    # The outage was real: the job paused on it, and resumed from its committed state.
    assert f"job {job.job_id} paused: job store unavailable" in server.log.read_text()
