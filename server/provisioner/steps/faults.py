"""Test-only fault injection (`PROVISIONER_FAULT_INJECTION`), wrapped around real steps.

Modes: `fail` (fatal error on every attempt), `transient:N` (a retryable error on the
first N attempts per department), `hang` (never returns, so the step timeout fires),
`fail-compensate` (compensation always fails, leaving the resource behind).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from provisioner.core.errors import ConfigurationError, StepError, TransientStepError
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, Step, StepContext

MODES = ("fail", "transient:N", "hang", "fail-compensate")


@dataclass(frozen=True, slots=True)
class Fault:
    mode: str
    times: int = 0


def parse_fault_plan(text: str) -> dict[StepName, Fault]:
    """Parse `step=mode,...`; raise `ConfigurationError` naming what is wrong."""
    plan: dict[StepName, Fault] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        step_text, sep, mode = item.partition("=")
        try:
            step = StepName(step_text.strip())
        except ValueError:
            raise ConfigurationError(
                f"PROVISIONER_FAULT_INJECTION: unknown step {step_text.strip()!r} "
                f"(steps: {', '.join(StepName)})"
            ) from None
        mode = mode.strip()
        if not sep or not mode:
            raise ConfigurationError(f"PROVISIONER_FAULT_INJECTION: {item!r} needs step=mode")
        if mode.startswith("transient:"):
            count = mode.removeprefix("transient:")
            if not count.isdigit() or int(count) < 1:
                raise ConfigurationError(
                    f"PROVISIONER_FAULT_INJECTION: {item!r}: transient needs a positive count"
                )
            plan[step] = Fault("transient", int(count))
        elif mode in ("fail", "hang", "fail-compensate"):
            plan[step] = Fault(mode)
        else:
            raise ConfigurationError(
                f"PROVISIONER_FAULT_INJECTION: unknown mode {mode!r} (modes: {', '.join(MODES)})"
            )
    return plan


class FaultInjectingStep:
    """Wraps a real step and misbehaves as told, then (where the mode allows) delegates."""

    def __init__(self, inner: Step, fault: Fault) -> None:
        self.name = inner.name
        self._inner = inner
        self._fault = fault
        self._failures: Counter[str] = Counter()

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        mode = self._fault.mode
        if mode == "fail":
            raise StepError(f"injected fault: {self.name} failed")
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "transient" and self._failures[ctx.department_id] < self._fault.times:
            self._failures[ctx.department_id] += 1
            raise TransientStepError(
                f"injected fault: {self.name} transient failure "
                f"{self._failures[ctx.department_id]} of {self._fault.times}"
            )
        return await self._inner.apply(ctx)

    async def compensate(self, ctx: StepContext) -> None:
        if self._fault.mode == "fail-compensate":
            raise TransientStepError(f"injected fault: {self.name} compensation failed")
        await self._inner.compensate(ctx)

    async def check(self, ctx: StepContext) -> Condition:
        return await self._inner.check(ctx)
