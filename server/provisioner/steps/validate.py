"""The validate step: the spec's rules and a region this platform runs.

The edge already refused a spec breaking the contract's rules; they are checked again
here because a job may come from another replica or an older server. Uniqueness of the
department id is the engine's (one live provisioning per department, conflicting specs
refused), and so is the quota: the job store reserves it in the transaction that creates
the job, so concurrent provisionings on any replicas never exceed it.
"""

from __future__ import annotations

from collections.abc import Sequence

from provisioner.core.errors import InvalidSpecError, StepError
from provisioner.core.spec import validate
from provisioner.core.states import StepName
from provisioner.steps.base import Condition, StepContext


class ValidateSpec:
    name = StepName.VALIDATE

    def __init__(self, *, regions: Sequence[str]) -> None:
        self._regions = tuple(regions)

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        try:
            validate(ctx.spec)
        except InvalidSpecError as exc:
            raise StepError(exc.message) from exc
        if self._regions and ctx.spec.region not in self._regions:
            raise StepError(
                f"region {ctx.spec.region!r} is not one this platform runs in: {', '.join(self._regions)}"
            )
        return {"region": ctx.spec.region}

    async def compensate(self, ctx: StepContext) -> None:
        return

    async def check(self, ctx: StepContext) -> Condition:
        return Condition(self.name, True, "VALID", f"region {ctx.spec.region}")
