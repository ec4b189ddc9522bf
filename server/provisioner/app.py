"""The composition root: builds the store, hub, steps and orchestrator from settings.

`provisioning-server` runs the control plane until SIGTERM or SIGINT, then drains: new
work is refused, running jobs stop at a commit boundary and stay resumable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from provisioner import logs
from provisioner.core.errors import ConfigurationError, ProvisioningError
from provisioner.core.states import StepName
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.settings import Settings, load_settings
from provisioner.steps.base import Step
from provisioner.steps.faults import FaultInjectingStep
from provisioner.steps.local import LocalMarkerStep
from provisioner.steps.noop import NoopStep
from provisioner.store.sql import SqlJobStore

log = logging.getLogger("provisioner")


def build_steps(settings: Settings) -> dict[StepName, Step]:
    steps: dict[StepName, Step]
    if settings.steps == "noop":
        steps = {name: NoopStep(name) for name in StepName}
    else:
        root = settings.state_dir / "resources"
        root.mkdir(parents=True, exist_ok=True)
        steps = {name: LocalMarkerStep(name, root, settings.local_step_delay) for name in StepName}
    if settings.faults:
        log.warning(
            "FAULT INJECTION IS ON (%s): steps will fail on purpose; never use this outside tests",
            ", ".join(f"{s}={f.mode}" for s, f in settings.faults.items()),
        )
        steps = {
            n: FaultInjectingStep(s, settings.faults[n]) if n in settings.faults else s
            for n, s in steps.items()
        }
    return steps


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: SqlJobStore
    hub: EventHub
    orchestrator: Orchestrator


def _replica_id(settings: Settings) -> str:
    """A stable id for this state directory: after a crash the restarted server recognises
    its own leases and resumes their jobs at once instead of waiting for them to expire."""
    if settings.replica_id:
        return settings.replica_id
    path = settings.state_dir / "replica-id"
    if path.exists():
        return path.read_text().strip()
    replica = f"replica-{uuid.uuid4()}"
    path.write_text(replica + "\n")
    return replica


def _lock_state_dir(state_dir: Path) -> IO[str]:
    handle = (state_dir / "server.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigurationError(
            f"another provisioning-server already uses PROVISIONER_STATE_DIR={state_dir}"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


@contextlib.asynccontextmanager
async def runtime(
    settings: Settings, *, steps: Mapping[StepName, Step] | None = None
) -> AsyncIterator[Runtime]:
    """Build and start everything; stop it all, in reverse, on exit."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock_state_dir(settings.state_dir)
    store = SqlJobStore(settings.effective_database_url)
    try:
        await store.initialize()
        hub = EventHub(store)
        orchestrator = Orchestrator(
            store,
            hub,
            steps if steps is not None else build_steps(settings),
            settings.engine,
            owner=_replica_id(settings),
        )
        await orchestrator.start()
        try:
            yield Runtime(settings, store, hub, orchestrator)
        finally:
            hub.close()
            await orchestrator.stop()
    finally:
        await store.close()
        lock.close()


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with runtime(settings) as rt:
        log.info(
            "control plane ready",
            extra={
                "fields": {
                    "replica": rt.orchestrator.owner,
                    "state_dir": str(settings.state_dir.resolve()),
                    "steps": settings.steps,
                    "resumed_jobs": rt.orchestrator.running_jobs,
                }
            },
        )
        await stop.wait()
        log.info("shutting down: refusing new work, leaving running jobs resumable")
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="provisioning-server",
        description="Run the provisioning control plane. Settings come from PROVISIONER_* variables.",
    )
    parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"provisioning-server: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (ConfigurationError, ProvisioningError) as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
