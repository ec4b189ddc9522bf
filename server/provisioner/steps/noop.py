"""Steps that do nothing, to measure the orchestration alone (`PROVISIONER_STEPS=noop`)."""

from __future__ import annotations

from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext


class NoopStep:
    def __init__(self, name: StepName) -> None:
        self.name = name

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        return {}

    async def compensate(self, ctx: StepContext) -> None:
        return None

    async def check(self, ctx: StepContext) -> Condition:
        return Condition(self.name, True, "NOOP", "no-op step backend")
