"""Wall time of real provisioning and deprovisioning on the embedded default.

Starts the real `provisioning-server` with Envoy and the real steps (a SQLite database,
sealed OAuth credentials, a department service process, workflows, an Envoy route and
the validation through it) in a throwaway state directory, then:

1. provisions and deprovisions one department at a time, `--runs` times;
2. provisions `--concurrent` departments at once, then deprovisions them at once,
   `--rounds` times;

and prints, for each, the median and p95 wall time per job (from the Provision or
Deprovision call to the job's terminal event, seen by a watcher) and the median time
spent in each step (from the step's start event to its success event; for teardowns,
from compensating to compensated). The seed took 3-4 minutes per department with mocked
components; the aim here is under 1 second for one department.

Run from the repository root:  .venv/bin/python bench/provision.py [--runs 20] [--json]
With `--tenant-database-url postgresql://…` (an administrator of an empty database), the
database step is the PostgreSQL adapter instead: a schema, a login role and row-level
security per department. Exits 1 if any job does not end COMPLETED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from _harness import Server, quantile, token
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc

STEPS = ("validate", "database", "oauth", "container", "workflows", "gateway", "validation")
STARTS = {pb.JOB_EVENT_TYPE_STEP_STARTED, pb.JOB_EVENT_TYPE_STEP_COMPENSATING}
ENDS = {pb.JOB_EVENT_TYPE_STEP_SUCCEEDED, pb.JOB_EVENT_TYPE_STEP_COMPENSATED}


@dataclass
class Timing:
    wall: float
    steps: dict[str, float]
    state: int


@dataclass
class Series:
    label: str
    jobs: int
    median_s: float
    p95_s: float
    step_median_ms: dict[str, float] = field(default_factory=dict)


def spec(name: str) -> pb.ProvisionRequest:
    return pb.ProvisionRequest(
        department_id=name,
        department_name=f"Bench {name}",
        workflows=["email", "google_drive", "database"],
        data_retention="90d",
        region="us-west",
        admin_email="bench@example.com",
    )


async def follow(
    stub: pb_grpc.ProvisioningServiceStub, job: pb.Job, began: float, metadata: object
) -> Timing:
    started: dict[str, float] = {}
    spent: dict[str, float] = {}
    state = pb.JOB_STATE_UNSPECIFIED
    async for message in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), metadata=metadata):
        if not message.HasField("event"):
            continue
        event = message.event
        at = event.time.ToMicroseconds() / 1e6
        if event.type in STARTS:
            started[event.step] = at
        elif event.type in ENDS and event.step in started:
            spent[event.step] = at - started[event.step]
        state = event.state
    return Timing(time.perf_counter() - began, spent, state)


async def provision(stub: pb_grpc.ProvisioningServiceStub, name: str, metadata: object) -> Timing:
    began = time.perf_counter()
    job = await stub.Provision(spec(name), metadata=metadata, timeout=60)
    return await follow(stub, job, began, metadata)


async def deprovision(stub: pb_grpc.ProvisioningServiceStub, name: str, metadata: object) -> Timing:
    began = time.perf_counter()
    job = await stub.Deprovision(pb.DeprovisionRequest(department_id=name), metadata=metadata, timeout=60)
    return await follow(stub, job, began, metadata)


def series(label: str, timings: Sequence[Timing]) -> Series:
    walls = [t.wall for t in timings]
    per_step: defaultdict[str, list[float]] = defaultdict(list)
    for timing in timings:
        for step, seconds in timing.steps.items():
            per_step[step].append(seconds * 1000)
    return Series(
        label,
        len(timings),
        round(statistics.median(walls), 3),
        round(quantile(walls, 0.95), 3),
        {step: round(statistics.median(per_step[step]), 1) for step in STEPS if per_step[step]},
    )


async def measure(server: Server, runs: int, concurrent: int, rounds: int) -> tuple[list[Series], int]:
    metadata = (("authorization", f"Bearer {token()}"),)
    singles_up: list[Timing] = []
    singles_down: list[Timing] = []
    batch_up: list[Timing] = []
    batch_down: list[Timing] = []
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        await provision(stub, "warm-up", metadata)
        await deprovision(stub, "warm-up", metadata)
        for run in range(runs):
            singles_up.append(await provision(stub, f"one-{run}", metadata))
            singles_down.append(await deprovision(stub, f"one-{run}", metadata))
        for round_ in range(rounds):
            names = [f"many-{round_}-{i}" for i in range(concurrent)]
            batch_up += await asyncio.gather(*(provision(stub, n, metadata) for n in names))
            batch_down += await asyncio.gather(*(deprovision(stub, n, metadata) for n in names))
    everything = singles_up + singles_down + batch_up + batch_down
    failed = sum(t.state != pb.JOB_STATE_COMPLETED for t in everything)
    return [
        series("provision, one at a time", singles_up),
        series("deprovision, one at a time", singles_down),
        series(f"provision, {concurrent} at once", batch_up),
        series(f"deprovision, {concurrent} at once", batch_down),
    ], failed


def table(results: Sequence[Series]) -> str:
    header = "| run | jobs | median | p95 | " + " | ".join(STEPS) + " |"
    lines = [header, "|" + "---|" * (4 + len(STEPS))]
    for s in results:
        steps = " | ".join(f"{s.step_median_ms[n]:g} ms" if n in s.step_median_ms else "-" for n in STEPS)
        lines.append(f"| {s.label} | {s.jobs} | {s.median_s:.3f} s | {s.p95_s:.3f} s | {steps} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="one-at-a-time provisions (and deprovisions)")
    parser.add_argument("--concurrent", type=int, default=20, help="departments provisioned at once")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of concurrent provisioning")
    parser.add_argument("--tenant-database-url", default="", help="departments' data in this PostgreSQL")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    url = args.tenant_database_url
    settings = {"PROVISIONER_TENANT_DATABASE_URL": url} if url else {}
    with tempfile.TemporaryDirectory(prefix="bench-provision-") as root:
        server = Server(Path(root) / "var", steps="embedded", settings=settings)
        server.start()
        try:
            results, failed = asyncio.run(measure(server, args.runs, args.concurrent, args.rounds))
        finally:
            server.stop()
            server.stop_departments()
    print(json.dumps([asdict(r) for r in results]) if args.json else table(results))
    if failed:
        print(f"bench/provision.py: {failed} jobs did not complete", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
