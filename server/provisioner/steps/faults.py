"""Test-only fault injection (`PROVISIONER_FAULT_INJECTION`), wrapped around real steps.

Modes: `fail` (fatal error on every attempt), `transient:N` (a retryable error on the
first N attempts per department), `hang` (never returns, so the step timeout fires),
`fail-compensate` (compensation always fails, leaving the resource behind).

`step=mode@department` limits a fault to one department, so one server can run a
whole matrix of faults side by side; a department's own fault wins over a general one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.spec import check_department_id
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, Step, StepContext

MODES = ("fail", "transient:N", "hang", "fail-compensate")


@dataclass(frozen=True, slots=True)
class Fault:
    mode: str
    times: int = 0
    department: str | None = None


def parse_fault_plan(text: str) -> dict[StepName, tuple[Fault, ...]]:
    """Parse `step=mode[@department],...`; raise `ConfigurationError` naming what is wrong."""
    plan: dict[StepName, tuple[Fault, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step_text, sep, mode = item.partition("=")
        try:
            step = StepName(step_text.strip())
        except ValueError:
            raise ConfigurationError(
                f"PROVISIONER_FAULT_INJECTION: unknown step {step_text.strip()!r} "
                f"(steps: {', '.join(StepName)})"
            ) from None
        mode, at, department = (part.strip() for part in mode.partition("@"))
        if at and check_department_id(department):
            raise ConfigurationError(f"PROVISIONER_FAULT_INJECTION: {item!r}: not a department id after @")
        if not sep or not mode:
            raise ConfigurationError(f"PROVISIONER_FAULT_INJECTION: {item!r} needs step=mode")
        if mode.startswith("transient:"):
            count = mode.removeprefix("transient:")
            if not count.isdigit() or int(count) < 1:
                raise ConfigurationError(
                    f"PROVISIONER_FAULT_INJECTION: {item!r}: transient needs a positive count"
                )
            fault = Fault("transient", int(count), department or None)
        elif mode in ("fail", "hang", "fail-compensate"):
            fault = Fault(mode, 0, department or None)
        else:
            raise ConfigurationError(
                f"PROVISIONER_FAULT_INJECTION: unknown mode {mode!r} (modes: {', '.join(MODES)})"
            )
        plan[step] = (*plan.get(step, ()), fault)
    return plan


class FaultInjectingStep:
    """Wraps a real step and misbehaves as told, then (where the mode allows) delegates."""

    def __init__(self, inner: Step, faults: Fault | Sequence[Fault]) -> None:
        self.name = inner.name
        self._inner = inner
        self._faults = (faults,) if isinstance(faults, Fault) else tuple(faults)
        self._failures: Counter[str] = Counter()

    def _fault(self, department_id: str) -> Fault | None:
        own = [f for f in self._faults if f.department == department_id]
        general = [f for f in self._faults if f.department is None]
        return next(iter(own or general), None)

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        fault = self._fault(ctx.department_id)
        if fault is None:
            return await self._inner.apply(ctx)
        mode = fault.mode
        if mode == "fail":
            raise StepError(f"injected fault: {self.name} failed")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "transient" and self._failures[ctx.department_id] < fault.times:
            self._failures[ctx.department_id] += 1
            raise TransientStepError(
                f"injected fault: {self.name} transient failure "
                f"{self._failures[ctx.department_id]} of {fault.times}"
            )
        return await self._inner.apply(ctx)

    async def compensate(self, ctx: StepContext) -> None:
        fault = self._fault(ctx.department_id)
        if fault is not None and fault.mode == "fail-compensate":
            raise TransientStepError(f"injected fault: {self.name} compensation failed")
        await self._inner.compensate(ctx)

    async def check(self, ctx: StepContext) -> Condition:
        return await self._inner.check(ctx)


class SlowedStep:
    """Test-only (`PROVISIONER_STEP_DELAY`): waits after each side effect of the real step,
    so a test can kill the server while the step is in flight. A crash in the wait leaves
    the resource made, to be adopted when the step runs again. No delay, no wait."""

    def __init__(self, inner: Step, delay: float) -> None:
        self.name = inner.name
        self._inner = inner
        self._delay = delay

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        made = await self._inner.apply(ctx)
        if self._delay:
            await asyncio.sleep(self._delay)
        return made

    async def compensate(self, ctx: StepContext) -> None:
        await self._inner.compensate(ctx)
        if self._delay:
            await asyncio.sleep(self._delay)

    async def check(self, ctx: StepContext) -> Condition:
        return await self._inner.check(ctx)
