"""The contract every provisioning step keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from provisioner.core.spec import DepartmentSpec
from provisioner.core.states import StepName


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step knows when it runs: the job, the spec, and what it recorded before."""

    job_id: str
    spec: DepartmentSpec
    attempt: int
    resources: Mapping[str, str] = field(default_factory=dict)

    @property
    def department_id(self) -> str:
        return self.spec.department_id


@dataclass(frozen=True, slots=True)
class Condition:
    """A live health observation of what one step made."""

    step: StepName
    healthy: bool
    reason: str
    message: str = ""


class Step(Protocol):
    """A provisioning step.

    `apply` is idempotent by construction: every resource it makes is named from the
    department id, so a re-run after a crash adopts what exists instead of duplicating it.
    It returns the names/ids of what it made (never secrets). `compensate` removes exactly
    what `apply` makes and succeeds when there is nothing left to remove. Retryable
    failures raise `TransientStepError`; anything else is fatal for the step.

    Neither may leave work running once it returns or is cancelled: a side effect that
    lands after its step was cancelled would escape the rollback (see `settle`).
    """

    name: StepName

    async def apply(self, ctx: StepContext) -> dict[str, str]: ...

    async def compensate(self, ctx: StepContext) -> None: ...

    async def check(self, ctx: StepContext) -> Condition: ...


T = TypeVar("T")


async def settle(work: Awaitable[T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile, then re-raise.

    For side effects that cannot be interrupted halfway (a thread writing files, a
    process being spawned): cancellation waits for them, so a rollback that follows
    sees everything they made.
    """
    future = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
