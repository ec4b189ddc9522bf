"""One replica against two, on one PostgreSQL job store, with no-op steps.

Starts `provisioning-server` replicas (gRPC only, `PROVISIONER_STEPS=noop`, so the engine,
the store and the fan-out are what is measured) on a PostgreSQL server: `--database-url`
names an administrator connection to use, else a throwaway server is started from the
local binaries (durable settings: fsync on). For one replica, then two, on a fresh
database each, it prints in one run:

1. `--jobs` concurrent Provision calls spread over the replicas, each watched at once on
   *another* replica than the one that accepted it (with one replica, the same): jobs/s
   from the first call to the last terminal event, and the delay from an event's commit
   (its timestamp) to its delivery to that watcher, p50 and p99, with the events lost
   and duplicated (both must be 0). Across replicas, delivery rides LISTEN/NOTIFY.
2. Takeover: a job on slowed steps, its replica SIGKILLed mid-step; the seconds until the
   other replica commits the job's next event, against the lease plus the claim interval.

Run from the repository root:  .venv/bin/python bench/replicas.py [--jobs 1000] [--json]
Exits 1 if any event is lost or duplicated or any job does not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import Server, quantile, token
from tests.postgres import find_bindir, throwaway_postgres

from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc

LEASE, CLAIM = 5.0, 0.5
TERMINAL = (pb.JOB_STATE_COMPLETED, pb.JOB_STATE_FAILED)


@dataclass
class Figures:
    replicas: int
    jobs: int
    jobs_per_second: float
    delivery_p50_ms: float
    delivery_p99_ms: float
    events_delivered: int
    events_lost: int
    events_duplicated: int
    takeover_seconds: float | None


def spec(index: int) -> pb.ProvisionRequest:
    return pb.ProvisionRequest(
        department_id=f"bench-{index:05d}",
        department_name=f"Bench {index}",
        workflows=["email"],
        data_retention="90d",
        region="us-west",
        admin_email="bench@example.com",
    )


@contextlib.contextmanager
def replicas(root: Path, url: str, count: int, **settings: str) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for index in range(count):
            (root / f"r{index}").mkdir(parents=True)
            server = Server(
                root / f"r{index}" / "var",
                steps="noop",
                envoy=False,
                settings={
                    "PROVISIONER_DATABASE_URL": url,
                    "PROVISIONER_LEASE_SECONDS": str(LEASE),
                    "PROVISIONER_CLAIM_INTERVAL": str(CLAIM),
                    **settings,
                },
            )
            server.start()
            started.append(server)
        yield started
    finally:
        for server in started:
            server.stop()


async def fresh_database(admin_url: str, name: str) -> str:
    admin = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = admin_url.replace("postgresql://", "postgresql+asyncpg://", 1).rsplit("/", 1)[0]
    return f"{base}/{name}"


async def one_job(
    accept: pb_grpc.ProvisioningServiceStub,
    watch: pb_grpc.ProvisioningServiceStub,
    index: int,
    metadata: object,
) -> tuple[list[int], list[float], int]:
    job = await accept.Provision(spec(index), metadata=metadata, timeout=120)
    sequences: list[int] = []
    delays: list[float] = []
    request = pb.WatchProgressRequest(job_id=job.job_id)
    async for message in watch.WatchProgress(request, metadata=metadata):
        if message.HasField("event"):
            sequences.append(message.event.sequence)
            delays.append((time.time() - message.event.time.ToMicroseconds() / 1e6) * 1000)
    final = await watch.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=metadata, timeout=60)
    if final.state not in TERMINAL:
        raise SystemExit(f"bench: job {job.job_id} did not finish")
    return sequences, delays, final.last_sequence


async def throughput(servers: list[Server], jobs: int) -> tuple[float, list[float], int, int, int]:
    metadata = (("authorization", f"Bearer {token()}"),)
    channels = [grpc.aio.insecure_channel(s.grpc) for s in servers]
    try:
        stubs = [pb_grpc.ProvisioningServiceStub(c) for c in channels]
        count = len(stubs)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_job(stubs[i % count], stubs[(i + 1) % count], i, metadata) for i in range(jobs))
        )
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    delays = [d for _, ds, _ in results for d in ds]
    lost = sum(len(set(range(1, last + 1)) - set(seq)) for seq, _, last in results)
    duplicated = sum(len(seq) - len(set(seq)) for seq, _, _ in results)
    return jobs / elapsed, delays, len(delays), lost, duplicated


async def takeover(servers: list[Server]) -> float:
    """SIGKILL the replica running a slowed job; seconds until the other commits its next event."""
    metadata = (("authorization", f"Bearer {token()}"),)
    victim, survivor = servers
    async with (
        grpc.aio.insecure_channel(victim.grpc) as first,
        grpc.aio.insecure_channel(survivor.grpc) as other,
    ):
        job = await pb_grpc.ProvisioningServiceStub(first).Provision(
            spec(90_000), metadata=metadata, timeout=30
        )
        watcher = pb_grpc.ProvisioningServiceStub(other)
        request = pb.WatchProgressRequest(job_id=job.job_id)
        killed_at: float | None = None
        last = 0
        async for message in watcher.WatchProgress(request, metadata=metadata):
            if not message.HasField("event"):
                continue
            last = message.event.sequence
            committed = message.event.time.ToMicroseconds() / 1e6
            if killed_at is not None and committed > killed_at:
                return committed - killed_at
            if message.event.type == pb.JOB_EVENT_TYPE_STEP_STARTED:
                assert victim.process is not None
                victim.process.send_signal(signal.SIGKILL)
                victim.process.wait()
                killed_at = time.time()
    raise SystemExit(f"bench: the job ended before a takeover (last event {last})")


def measure(root: Path, admin_url: str, count: int, jobs: int) -> Figures:
    url = asyncio.run(fresh_database(admin_url, f"bench_replicas_{count}"))
    with replicas(root / f"n{count}", url, count) as servers:
        rate, delays, delivered, lost, duplicated = asyncio.run(throughput(servers, jobs))
    took: float | None = None
    if count == 2:
        url = asyncio.run(fresh_database(admin_url, "bench_takeover"))
        with replicas(root / "takeover", url, 2, PROVISIONER_STEP_DELAY="1") as servers:
            took = asyncio.run(takeover(servers))
    return Figures(
        replicas=count,
        jobs=jobs,
        jobs_per_second=round(rate, 1),
        delivery_p50_ms=round(quantile(delays, 0.5), 1),
        delivery_p99_ms=round(quantile(delays, 0.99), 1),
        events_delivered=delivered,
        events_lost=lost,
        events_duplicated=duplicated,
        takeover_seconds=None if took is None else round(took, 2),
    )


def table(results: Sequence[Figures]) -> str:
    one, two = results
    lines = [
        f"replicas on one PostgreSQL, no-op steps, {one.jobs} jobs each watched on another replica",
        f"{'':28}{'1 replica':>12}{'2 replicas':>12}",
        f"{'jobs/s':28}{one.jobs_per_second:>12}{two.jobs_per_second:>12}",
        f"{'delivery p50 (ms)':28}{one.delivery_p50_ms:>12}{two.delivery_p50_ms:>12}",
        f"{'delivery p99 (ms)':28}{one.delivery_p99_ms:>12}{two.delivery_p99_ms:>12}",
        f"{'events lost / duplicated':28}{f'{one.events_lost}/{one.events_duplicated}':>12}"
        f"{f'{two.events_lost}/{two.events_duplicated}':>12}",
        f"2 replicas / 1: {two.jobs_per_second / one.jobs_per_second:.2f}x",
        f"takeover after SIGKILL: {two.takeover_seconds} s (lease {LEASE:g} s + claim interval {CLAIM:g} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--database-url", help="an administrator's postgresql:// URL (default: a throwaway server)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replicas-")))
        admin_url = args.database_url
        if not admin_url:
            bindir = find_bindir()
            if bindir is None:
                raise SystemExit("bench: no PostgreSQL binaries; install postgresql or pass --database-url")
            server = stack.enter_context(throwaway_postgres(bindir, options=""))
            admin_url = server.url("postgres")
        results = [measure(root, admin_url, count, args.jobs) for count in (1, 2)]
    print(json.dumps([asdict(r) for r in results]) if args.json else table(results))
    return 1 if any(r.events_lost or r.events_duplicated for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
