"""The API's figures, measured against the real `provisioning-server` and its Envoy.

Starts `provisioning-server` (gRPC + Envoy) in a subprocess on free loopback ports with
no-op steps (`PROVISIONER_STEPS=noop`, so the orchestration and the edge are what is
measured), high rate limits and a throwaway state directory, then prints, in one run:

1. GetStatus latency (median, p99) and throughput (requests/s with `--concurrency`
   callers), directly over gRPC and through Envoy's REST transcoding.
2. `--jobs` concurrent Provision calls over gRPC, each followed at once by a
   WatchProgress of its job: jobs/s and durable transitions/s end to end (from the
   first call to the last terminal event), and for those watchers the delay from an
   event's commit (its timestamp) to its delivery (p50, p99), with the number of events
   lost (in the job's log but not received) and duplicated (both must be 0).
3. The server's peak RSS.

Run from the repository root:  .venv/bin/python bench/api.py [--jobs 1000] [--json]
Exits 1 if any event is lost or duplicated or any job does not complete.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx

from _harness import Server, free_port, quantile, token
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc


@dataclass
class Figures:
    grpc_get_status_p50_ms: float
    grpc_get_status_p99_ms: float
    grpc_get_status_rps: float
    rest_get_status_p50_ms: float
    rest_get_status_p99_ms: float
    rest_get_status_rps: float
    jobs: int
    jobs_per_s: float
    transitions_per_s: float
    watchers: int
    delivery_p50_ms: float
    delivery_p99_ms: float
    events_delivered: int
    events_lost: int
    events_duplicated: int
    server_peak_rss_mib: float
    #: With --traces: spans the server exported (0 otherwise).
    spans_exported: int = 0


def spec(index: int) -> pb.ProvisionRequest:
    return pb.ProvisionRequest(
        department_id=f"bench-{index:05d}",
        department_name=f"Bench {index}",
        workflows=["email", "database"],
        data_retention="90d",
        region="us-west",
        admin_email="bench@example.com",
    )


async def latency_and_rate(
    call: Callable[[], Awaitable[object]], samples: int, concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """Median and p99 of `samples` sequential calls (ms), then calls/s with `concurrency`."""
    for _ in range(50):
        await call()
    latencies = []
    for _ in range(samples):
        began = time.perf_counter()
        await call()
        latencies.append((time.perf_counter() - began) * 1000)
    count = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal count
        while time.perf_counter() < stop_at:
            await call()
            count += 1

    began = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return statistics.median(latencies), quantile(latencies, 0.99), count / (time.perf_counter() - began)


@dataclass
class Watched:
    sequences: list[int]
    delays_ms: list[float]
    last_sequence: int
    state: int


async def provision_and_watch(stub: pb_grpc.ProvisioningServiceStub, index: int, metadata: object) -> Watched:
    job = await stub.Provision(spec(index), metadata=metadata, timeout=120)
    sequences: list[int] = []
    delays: list[float] = []
    state = pb.JOB_STATE_UNSPECIFIED
    async for message in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id), metadata=metadata):
        if message.HasField("event"):
            arrived = time.time()
            event = message.event
            sequences.append(event.sequence)
            delays.append((arrived - event.time.ToMicroseconds() / 1e6) * 1000)
            state = event.state
    final = await stub.GetStatus(pb.GetStatusRequest(job_id=job.job_id), metadata=metadata, timeout=60)
    return Watched(sequences, delays, final.last_sequence, state)


async def measure(server: Server, jobs: int, samples: int, concurrency: int, seconds: float) -> Figures:
    metadata = (("authorization", f"Bearer {token()}"),)
    async with grpc.aio.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.ProvisioningServiceStub(channel)
        probe = await stub.Provision(spec(99_999), metadata=metadata)
        status = pb.GetStatusRequest(job_id=probe.job_id)
        grpc_figures = await latency_and_rate(
            lambda: stub.GetStatus(status, metadata=metadata), samples, concurrency, seconds
        )
        headers = {"authorization": f"Bearer {token()}"}
        async with httpx.AsyncClient(base_url=server.rest, headers=headers, trust_env=False) as http:
            path = f"/api/provision-status/{probe.job_id}"

            async def rest_call() -> None:
                (await http.get(path)).raise_for_status()

            rest_figures = await latency_and_rate(rest_call, samples, concurrency, seconds)

        began = time.perf_counter()
        watched = await asyncio.gather(*(provision_and_watch(stub, i, metadata) for i in range(jobs)))
        elapsed = time.perf_counter() - began

    delays = [d for w in watched for d in w.delays_ms]
    delivered = sum(len(w.sequences) for w in watched)
    lost = sum(len(set(range(1, w.last_sequence + 1)) - set(w.sequences)) for w in watched)
    duplicated = sum(len(w.sequences) - len(set(w.sequences)) for w in watched)
    incomplete = sum(w.state != pb.JOB_STATE_COMPLETED for w in watched)
    if incomplete:
        print(f"bench/api.py: {incomplete} jobs did not complete", file=sys.stderr)
    return Figures(
        grpc_get_status_p50_ms=round(grpc_figures[0], 3),
        grpc_get_status_p99_ms=round(grpc_figures[1], 3),
        grpc_get_status_rps=round(grpc_figures[2]),
        rest_get_status_p50_ms=round(rest_figures[0], 3),
        rest_get_status_p99_ms=round(rest_figures[1], 3),
        rest_get_status_rps=round(rest_figures[2]),
        jobs=jobs,
        jobs_per_s=round(jobs / elapsed, 1),
        transitions_per_s=round(sum(w.last_sequence for w in watched) / elapsed),
        watchers=jobs,
        delivery_p50_ms=round(quantile(delays, 0.5), 1),
        delivery_p99_ms=round(quantile(delays, 0.99), 1),
        events_delivered=delivered,
        events_lost=lost + incomplete,
        events_duplicated=duplicated,
        server_peak_rss_mib=round(server.peak_rss_mib(), 1),
    )


def table(figures: Figures) -> str:
    f = figures
    rows = [
        ("GetStatus over gRPC: p50 / p99", f"{f.grpc_get_status_p50_ms} / {f.grpc_get_status_p99_ms} ms"),
        ("GetStatus over gRPC: throughput", f"{f.grpc_get_status_rps} req/s"),
        (
            "GetStatus via Envoy (REST): p50 / p99",
            f"{f.rest_get_status_p50_ms} / {f.rest_get_status_p99_ms} ms",
        ),
        ("GetStatus via Envoy (REST): throughput", f"{f.rest_get_status_rps} req/s"),
        (f"{f.jobs} concurrent Provision + watch: jobs/s", f"{f.jobs_per_s}"),
        ("durable transitions/s, end to end", f"{f.transitions_per_s}"),
        (
            f"{f.watchers} watchers: commit-to-delivery p50 / p99",
            f"{f.delivery_p50_ms} / {f.delivery_p99_ms} ms",
        ),
        (
            "events delivered / lost / duplicated",
            f"{f.events_delivered} / {f.events_lost} / {f.events_duplicated}",
        ),
        ("server peak RSS", f"{f.server_peak_rss_mib} MiB"),
        *([("spans exported (--traces)", str(f.spans_exported))] if f.spans_exported else []),
    ]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=2000, help="sequential GetStatus calls timed")
    parser.add_argument("--concurrency", type=int, default=16, help="callers for the throughput figure")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the throughput run")
    parser.add_argument(
        "--traces",
        action="store_true",
        help="with OpenTelemetry tracing on, exported over OTLP/HTTP to bench/otlp_sink.py",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sink: subprocess.Popen[str] | None = None
    settings: dict[str, str] = {}
    if args.traces:
        port = free_port()
        sink = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("otlp_sink.py")), str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as root:
        server = Server(Path(root) / "var", steps="noop", settings=settings)
        server.start()
        try:
            figures = asyncio.run(measure(server, args.jobs, args.samples, args.concurrency, args.seconds))
        finally:
            server.stop()
    if sink is not None:
        sink.terminate()
        figures.spans_exported = int(sink.communicate(timeout=30)[0].strip() or 0)
    print(json.dumps(asdict(figures)) if args.json else table(figures))
    return 1 if figures.events_lost or figures.events_duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
