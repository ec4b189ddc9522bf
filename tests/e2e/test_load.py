"""Load: 1,000 concurrent provisions, each followed by its own watcher, on the real server.

No-op steps (the orchestration, the store and the edge are under load, not the steps).
Every watcher must receive every event of its job exactly once and in order, no call may
end INTERNAL or UNAVAILABLE, and the server's memory must stay bounded.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.e2e.conftest import control_plane, token
from tests.e2e.report import record

pytestmark = pytest.mark.slow

JOBS = 1000
MEMORY_BOUND_MIB = 400


@dataclass
class Followed:
    sequences: list[int]
    last_sequence: int
    state: int
    failure: grpc.StatusCode | None = None


async def provision_and_follow(stub: pb_grpc.ProvisioningServiceStub, index: int) -> Followed:
    metadata = (("authorization", f"Bearer {token()}"),)
    request = pb.ProvisionRequest(
        department_id=f"load-{index:04d}",
        department_name=f"Load {index}",
        workflows=["email"],
        data_retention="30d",
        region="us-east",
        admin_email="load@example.com",
    )
    try:
        job = await stub.Provision(request, metadata=metadata, timeout=120)
        sequences = [
            m.event.sequence
            async for m in stub.WatchProgress(
                pb.WatchProgressRequest(job_id=job.job_id), metadata=metadata, timeout=300
            )
            if m.HasField("event")
        ]
        final = await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=metadata, timeout=60)
    except grpc.aio.AioRpcError as error:
        return Followed([], 0, pb.JOB_STATE_UNSPECIFIED, error.code())
    return Followed(sequences, final.last_sequence, final.state)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_thousand_watchers_each_get_every_event_of_their_job_exactly_once(tmp_path: Path) -> None:
    plane = control_plane(
        tmp_path,
        PROVISIONER_STEPS="noop",
        PROVISIONER_MAX_RUNNING_JOBS="2000",
        PROVISIONER_RATE_LIMIT_PROVISION="100000/h",
        PROVISIONER_RATE_LIMIT_READ="10000000/m",
        # One principal watches all 1,000 jobs here, and the loop is meant to be busy:
        # the limits that would refuse it have their own suite (test_abuse.py).
        PROVISIONER_MAX_STREAMS_PER_PRINCIPAL="5000",
        PROVISIONER_MAX_CALLS_PER_PRINCIPAL="5000",
        PROVISIONER_MAX_CALLS="5000",
        PROVISIONER_OVERLOAD_LAG="600",
        PROVISIONER_LOG_LEVEL="WARNING",
    )
    plane.start("--no-envoy")
    try:
        began = time.monotonic()
        async with grpc.aio.insecure_channel(plane.grpc_target) as channel:
            stub = pb_grpc.ProvisioningServiceStub(channel)
            followed = await asyncio.gather(*(provision_and_follow(stub, i) for i in range(JOBS)))
        elapsed = time.monotonic() - began
        assert plane.process is not None
        rss = peak_rss_mib(plane.process.pid)
    finally:
        assert plane.stop() == 0

    failures = Counter(f.failure for f in followed if f.failure is not None)
    lost = sum(len(set(range(1, f.last_sequence + 1)) - set(f.sequences)) for f in followed)
    duplicated = sum(len(f.sequences) - len(set(f.sequences)) for f in followed)
    out_of_order = sum(f.sequences != sorted(f.sequences) for f in followed)
    delivered = sum(len(f.sequences) for f in followed)
    record(
        "load",
        watchers=JOBS,
        events_delivered=delivered,
        lost=lost,
        duplicated=duplicated,
        out_of_order=out_of_order,
        failed_calls=sum(failures.values()),
        seconds=round(elapsed, 1),
        server_peak_rss_mib=round(rss),
    )
    assert not failures, failures
    assert (lost, duplicated, out_of_order) == (0, 0, 0)
    assert all(f.state == pb.JOB_STATE_COMPLETED for f in followed)
    assert rss < MEMORY_BOUND_MIB, f"server peak RSS {rss:.0f} MiB"
    print(
        f"\nload: {JOBS} jobs and watchers in {elapsed:.1f} s, {delivered} events delivered, "
        f"{lost} lost, {duplicated} duplicated, server peak RSS {rss:.0f} MiB"
    )
