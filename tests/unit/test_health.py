"""Health checks: shared while one is in flight, kept briefly, bounded by their own budget."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from provisioner.core.states import StepName
from provisioner.engine.config import EngineConfig
from provisioner.engine.health import HealthCache
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.base import Condition, Step, StepContext
from provisioner.steps.noop import NoopStep
from provisioner.store.memory import InMemoryJobStore
from tests.unit.factories import spec


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_callers_during_a_check_share_it_and_later_ones_get_its_answer_until_it_is_old() -> None:
    clock = Clock()
    cache: HealthCache[int] = HealthCache(ttl=2.0, monotonic=clock)
    release = asyncio.Event()
    calls = 0

    async def check() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    waiting = [asyncio.create_task(cache.get("hr", check)) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    clock.now = 1.9
    assert await cache.get("hr", check) == 1
    assert await cache.get("it", check) == 2  # another department is its own check
    clock.now = 2.1
    assert await cache.get("hr", check) == 3
    assert calls == 3


async def test_a_caller_that_leaves_does_not_cancel_the_check_others_wait_for() -> None:
    cache: HealthCache[str] = HealthCache()
    release = asyncio.Event()

    async def check() -> str:
        await release.wait()
        return "ok"

    leaver = asyncio.create_task(cache.get("hr", check))
    stayer = asyncio.create_task(cache.get("hr", check))
    await asyncio.sleep(0)
    leaver.cancel()
    release.set()
    assert await stayer == "ok"


async def test_a_failed_check_is_not_kept() -> None:
    cache: HealthCache[str] = HealthCache()
    outcomes = iter([RuntimeError("down"), "ok"])

    async def check() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(RuntimeError):
        await cache.get("hr", check)
    assert await cache.get("hr", check) == "ok"


async def test_the_cache_holds_at_most_its_capacity() -> None:
    cache: HealthCache[str] = HealthCache(capacity=2)
    calls: list[str] = []

    async def check_of(name: str) -> str:
        calls.append(name)
        return name

    for name in ("a", "b", "c", "a"):
        await cache.get(name, lambda n=name: check_of(n))  # type: ignore[misc]
    assert calls == ["a", "b", "c", "a"]  # "a" was the oldest, pushed out by "c"


class CountedStep(NoopStep):
    def __init__(self, name: StepName, hang: bool = False) -> None:
        super().__init__(name)
        self.checks = 0
        self.hang = hang

    async def check(self, ctx: StepContext) -> Condition:
        self.checks += 1
        if self.hang:
            await asyncio.Event().wait()
        return await super().check(ctx)


async def test_many_callers_of_one_department_cost_one_check_and_a_hanging_check_its_budget() -> None:
    store = InMemoryJobStore()
    steps: dict[StepName, CountedStep] = {n: CountedStep(n, hang=n is StepName.GATEWAY) for n in StepName}
    config = dataclasses.replace(EngineConfig(), step_timeout=60.0, health_timeout=0.2)
    typed: dict[StepName, Step] = dict(steps)
    orchestrator = Orchestrator(store, EventHub(store), typed, config)
    await orchestrator.start()
    try:
        job, _ = await orchestrator.provision(spec("hr"), principal="alice")
        steps[StepName.GATEWAY].hang = False
        await orchestrator.wait(job.job_id)
        steps[StepName.GATEWAY].hang = True
        began = asyncio.get_running_loop().time()
        answers = await asyncio.gather(*(orchestrator.health("hr") for _ in range(100)))
        took = asyncio.get_running_loop().time() - began
        assert {s.checks for s in steps.values()} == {1}
        assert all(a == answers[0] for a in answers)
        gateway = next(c for c, _ in answers[0] if c.step is StepName.GATEWAY)
        assert (gateway.healthy, gateway.reason) == (False, "CHECK_TIMEOUT")
        assert took < 5  # the health budget (0.2 s), not the step timeout (60 s)
    finally:
        await orchestrator.stop()
