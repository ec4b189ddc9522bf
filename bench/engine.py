"""How fast the engine commits durable transitions, against what SQLite itself can do.

Engine: provisions N departments at once through the real `Orchestrator` with no-op steps
and the durable SQLite store (`SqlJobStore` and its group-commit writer), waits for every
job with `Orchestrator.wait`, checks that each one COMPLETED with a gap-free event log, and
reports jobs/s, durable transitions (stored events)/s, p50/p99 latency from submission to
finished, the peak RSS of the process and how many warnings the engine logged (a healthy
run logs none).

Floor: the same transitions written with the standard library's `sqlite3` into a fresh
database with the store's pragmas (WAL, synchronous=NORMAL), one INSERT and one commit per
transition: the price of a durable transition with no engine around it. The floor is run
`--floor-runs` times on fresh files and its median is used. The aim is engine >= 25%
of the floor (docs/benchmarks.md).

Run from the repository root:

    .venv/bin/python bench/engine.py [--jobs 1000] [--state-dir DIR] [--json]

Without `--state-dir` the databases go to a temporary directory that is removed at the
end; with it they go to a fresh subdirectory of DIR, kept for inspection. Both databases
live in the same directory, so engine and floor pay for the same disk. Exits 1 if a job
does not complete within `--timeout` seconds or ends in any state but COMPLETED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from provisioner.core.job import Event
from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import State, StepName
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.noop import NoopStep
from provisioner.store.sql import SqlJobStore

#: The aim: the engine commits at least this share of the floor's transitions/s.
TARGET_SHARE = 0.25

#: The store's `job_events` table, as the floor writes it.
_FLOOR_SCHEMA = """
CREATE TABLE job_events (
    job_id VARCHAR(36) NOT NULL,
    sequence INTEGER NOT NULL,
    type VARCHAR(40) NOT NULL,
    state VARCHAR(32) NOT NULL,
    progress INTEGER NOT NULL,
    step VARCHAR(32),
    attempt INTEGER NOT NULL,
    message TEXT NOT NULL,
    detail JSON NOT NULL,
    at DATETIME NOT NULL,
    PRIMARY KEY (job_id, sequence)
)
"""
_FLOOR_INSERT = "INSERT INTO job_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

#: What `provisioner.store.sql._sqlite_pragmas` sets on every connection of the store.
_STORE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
)

_FloorRow = tuple[str, int, str, str, int, str | None, int, str, str, str]


class BenchError(Exception):
    """The engine did not do what the benchmark asked of it; the figures would lie."""


class _WarningCounter(logging.Handler):
    """Counts the engine's warnings and errors instead of printing hundreds of them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@dataclass(frozen=True, slots=True)
class EngineRun:
    jobs: int
    seconds: float
    #: Until the last `provision` call returned (every job accepted and durably created).
    accept_seconds: float
    transitions: int
    latencies: list[float]
    rows: list[_FloorRow]
    warnings: int


@dataclass(frozen=True, slots=True)
class Figures:
    """What one run of the benchmark reports."""

    jobs: int
    wall_s: float
    accept_s: float
    jobs_per_s: float
    transitions: int
    transitions_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    peak_rss_mib: float
    engine_warnings: int
    floor_transitions: int
    floor_runs: int
    floor_s: float
    floor_transitions_per_s: float
    engine_share_of_floor_pct: float
    target_pct: float
    target_met: bool


def department_spec(index: int) -> DepartmentSpec:
    """A valid spec whose id is distinct per index ("dept-0001", ...)."""
    return DepartmentSpec(
        department_id=f"dept-{index:04d}",
        department_name=f"Bench department {index}",
        workflows=("email", "database"),
        data_retention="90d",
        region="us-west",
        admin_email=f"admin+{index}@example.com",
    )


def floor_row(event: Event) -> _FloorRow:
    """An event as the store's `job_events` row holds it, in plain SQLite types."""
    return (
        event.job_id,
        event.sequence,
        event.type.value,
        event.state.value,
        event.progress,
        event.step.value if event.step else None,
        event.attempt,
        event.message,
        json.dumps(event.detail),
        event.at.replace(tzinfo=None).isoformat(sep=" "),
    )


def check_log(job_id: str, state: State, events: Sequence[Event]) -> None:
    """Raise unless the job COMPLETED and its stored log runs 1..n, ending with the terminal event."""
    if state is not State.COMPLETED:
        raise BenchError(f"job {job_id} ended {state}, not COMPLETED")
    sequences = [e.sequence for e in events]
    if sequences != list(range(1, len(events) + 1)):
        raise BenchError(f"job {job_id} has a gap or disorder in its stored events: {sequences}")
    if not events[-1].is_terminal:
        raise BenchError(f"job {job_id} has no terminal event")


async def run_engine(jobs: int, state_dir: Path, give_up_after: float) -> EngineRun:
    """Provision `jobs` departments at once and wait for all of them; checks every outcome."""
    counter = _WarningCounter()
    engine_log = logging.getLogger("provisioner")
    engine_log.addHandler(counter)
    store = SqlJobStore(f"sqlite+aiosqlite:///{state_dir / 'jobs.db'}")
    await store.initialize()
    hub = EventHub(store)
    orchestrator = Orchestrator(
        store,
        hub,
        {name: NoopStep(name) for name in StepName},
        EngineConfig(max_running_jobs=jobs),
        owner="bench",
    )
    await orchestrator.start()
    specs = [department_spec(i) for i in range(1, jobs + 1)]
    accepted_at: list[float] = []
    finished = 0

    async def one(spec: DepartmentSpec) -> tuple[str, State, float]:
        nonlocal finished
        submitted = time.perf_counter()
        job, created = await orchestrator.provision(spec, principal="bench")
        accepted_at.append(time.perf_counter())
        if not created:
            raise BenchError(f"{spec.department_id} was not a new job")
        done = await orchestrator.wait(job.job_id)
        finished += 1
        return done.job_id, done.state, time.perf_counter() - submitted

    try:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(give_up_after):
                outcomes = await asyncio.gather(*(one(spec) for spec in specs))
        except TimeoutError:
            raise BenchError(
                f"only {finished} of {jobs} jobs finished within {give_up_after:g}s "
                f"({len(accepted_at)} accepted)"
            ) from None
        seconds = time.perf_counter() - started
        rows: list[_FloorRow] = []
        for job_id, state, _ in outcomes:
            events = await store.events_after(job_id, 0)
            check_log(job_id, state, events)
            rows.extend(floor_row(e) for e in events)
    finally:
        await orchestrator.stop()
        hub.close()
        await store.close()
        engine_log.removeHandler(counter)
        for line in counter.first:
            print(f"engine logged: {line}", file=sys.stderr)
    return EngineRun(
        jobs=jobs,
        seconds=seconds,
        accept_seconds=max(accepted_at) - started,
        transitions=len(rows),
        latencies=[latency for _, _, latency in outcomes],
        rows=rows,
        warnings=counter.count,
    )


def run_floor(rows: Sequence[_FloorRow], path: Path) -> float:
    """Seconds to write `rows` to a fresh SQLite file, one INSERT and one commit each."""
    connection = sqlite3.connect(path)
    try:
        for pragma in _STORE_PRAGMAS:
            connection.execute(pragma)
        connection.execute(_FLOOR_SCHEMA)
        connection.commit()
        started = time.perf_counter()
        for row in rows:
            connection.execute(_FLOOR_INSERT, row)
            connection.commit()
        return time.perf_counter() - started
    finally:
        connection.close()


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1), interpolating linearly between the closest ranks."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1]


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def measure(engine: EngineRun, floor_seconds: Sequence[float], rss_mib: float) -> Figures:
    engine_rate = engine.transitions / engine.seconds
    floor_median = statistics.median(floor_seconds)
    floor_rate = len(engine.rows) / floor_median
    share = engine_rate / floor_rate
    return Figures(
        jobs=engine.jobs,
        wall_s=engine.seconds,
        accept_s=engine.accept_seconds,
        jobs_per_s=engine.jobs / engine.seconds,
        transitions=engine.transitions,
        transitions_per_s=engine_rate,
        latency_p50_ms=1000 * quantile(engine.latencies, 0.50),
        latency_p99_ms=1000 * quantile(engine.latencies, 0.99),
        peak_rss_mib=rss_mib,
        engine_warnings=engine.warnings,
        floor_transitions=len(engine.rows),
        floor_runs=len(floor_seconds),
        floor_s=floor_median,
        floor_transitions_per_s=floor_rate,
        engine_share_of_floor_pct=100 * share,
        target_pct=100 * TARGET_SHARE,
        target_met=share >= TARGET_SHARE,
    )


def table(figures: Figures) -> str:
    lines = [
        ("jobs", f"{figures.jobs}"),
        ("wall time", f"{figures.wall_s:.2f} s"),
        ("all accepted after", f"{figures.accept_s:.2f} s"),
        ("jobs/s", f"{figures.jobs_per_s:,.1f}"),
        ("durable transitions", f"{figures.transitions:,}"),
        ("transitions/s", f"{figures.transitions_per_s:,.0f}"),
        ("latency p50", f"{figures.latency_p50_ms:,.0f} ms"),
        ("latency p99", f"{figures.latency_p99_ms:,.0f} ms"),
        ("peak RSS", f"{figures.peak_rss_mib:,.1f} MiB"),
        ("engine warnings logged", f"{figures.engine_warnings}"),
        ("floor: sqlite3 transitions", f"{figures.floor_transitions:,}"),
        (f"floor: time (median of {figures.floor_runs})", f"{figures.floor_s:.2f} s"),
        ("floor: transitions/s", f"{figures.floor_transitions_per_s:,.0f}"),
        ("engine / floor", f"{figures.engine_share_of_floor_pct:.1f} %"),
        (f"target >= {figures.target_pct:g} %", "met" if figures.target_met else "NOT met"),
    ]
    width = max(len(label) for label, _ in lines)
    values = max(len(value) for _, value in lines)
    return "\n".join(f"{label:<{width}}  {value:>{values}}" for label, value in lines)


@contextmanager
def fresh_dir(parent: str | None) -> Iterator[Path]:
    """A new empty directory: kept under `parent` if given, else removed afterwards."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
        yield Path(tempfile.mkdtemp(prefix="bench-engine-", dir=parent))
        return
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as path:
        yield Path(path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Engine throughput against the SQLite floor.")
    parser.add_argument("--jobs", type=int, default=1000, help="departments to provision (default 1000)")
    parser.add_argument("--state-dir", help="where to put the databases (a fresh subdirectory is made)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for every job (default 120)"
    )
    parser.add_argument(
        "--floor-runs", type=int, default=3, help="floor repetitions, median used (default 3)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0 seconds")
    if args.floor_runs < 1:
        parser.error("--floor-runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with fresh_dir(args.state_dir) as state_dir:
        try:
            engine = asyncio.run(run_engine(args.jobs, state_dir, args.timeout))
        except BenchError as exc:
            print(f"bench/engine.py: {exc}", file=sys.stderr)
            return 1
        rss = peak_rss_mib()
        floor_seconds = [run_floor(engine.rows, state_dir / f"floor-{i}.db") for i in range(args.floor_runs)]
    figures = measure(engine, floor_seconds, rss)
    print(json.dumps(asdict(figures)) if args.json else table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
