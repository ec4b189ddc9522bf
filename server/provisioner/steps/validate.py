"""The validate step: the spec's rules, a region this platform runs, and the quota.

The edge already refused a spec breaking the contract's rules; they are checked again
here because a job may come from another replica or an older server. Uniqueness of the
department id is the engine's (one live provisioning per department, conflicting specs
refused); the quota counts every other department that holds resources.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from provisioner.core.errors import InvalidSpecError, StepError
from provisioner.core.spec import validate
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext


class ValidateSpec:
    name = StepName.VALIDATE

    def __init__(
        self,
        *,
        regions: Sequence[str],
        max_departments: int,
        departments_holding_resources: Callable[[], Awaitable[set[str]]],
    ) -> None:
        self._regions = tuple(regions)
        self._max = max_departments
        self._holding = departments_holding_resources

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        try:
            validate(ctx.spec)
        except InvalidSpecError as exc:
            raise StepError(exc.message) from exc
        if self._regions and ctx.spec.region not in self._regions:
            raise StepError(
                f"region {ctx.spec.region!r} is not one this platform runs in: {', '.join(self._regions)}"
            )
        others = await self._holding() - {ctx.department_id}
        if len(others) >= self._max:
            raise StepError(f"the quota of {self._max} departments is reached; deprovision one first")
        return {"region": ctx.spec.region}

    async def compensate(self, ctx: StepContext) -> None:
        return

    async def check(self, ctx: StepContext) -> Condition:
        return Condition(self.name, True, "VALID", f"region {ctx.spec.region}")
