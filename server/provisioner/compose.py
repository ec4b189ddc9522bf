"""Which steps the control plane runs, built from settings (part of the composition root).

`provisioning-server` (app.py) builds its runtime from a `StepKit`: the seven steps of
the chosen backend, wrapped by the test-only fault injection and delay when those are
set, plus what the embedded steps need run beside them (the credential issuer, the
department-service supervisor, the gateway's route sync, the directories to sweep).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from provisioner.core.errors import ConfigurationError
from provisioner.core.states import StepName
from provisioner.engine.orchestrator import CredentialIssuer
from provisioner.settings import Settings
from provisioner.steps.base import Step
from provisioner.steps.container import LocalProcessContainer
from provisioner.steps.database import SqliteTenantDatabase
from provisioner.steps.departments import DepartmentDirs
from provisioner.steps.faults import FaultInjectingStep, SlowedStep
from provisioner.steps.gateway import EnvoyGateway
from provisioner.steps.local import LocalMarkerStep
from provisioner.steps.noop import NoopStep
from provisioner.steps.oauth import OAuthCredentials, VaultIssuer
from provisioner.steps.tenant_postgres import PostgresTenantDatabase
from provisioner.steps.validate import ValidateSpec
from provisioner.steps.validation import DeploymentValidation
from provisioner.steps.vault import CredentialVault, KeySource
from provisioner.steps.workflows import EmbeddedWorkflows

log = logging.getLogger("provisioner")


@dataclass(slots=True)
class StepKit:
    """The steps, plus what some backends need run beside them."""

    steps: dict[StepName, Step]
    issuer: CredentialIssuer | None = None
    container: LocalProcessContainer | None = None
    gateway: EnvoyGateway | None = None
    #: Directories whose atomic writes a crash may have cut short.
    state_roots: tuple[Path, ...] = ()


def build_steps(settings: Settings) -> StepKit:
    kit = StepKit({})
    if settings.steps == "noop":
        kit.steps = {name: NoopStep(name) for name in StepName}
    elif settings.steps == "local":
        root = settings.state_dir / "resources"
        root.mkdir(parents=True, exist_ok=True)
        kit.steps = {name: LocalMarkerStep(name, root) for name in StepName}
    else:
        kit = embedded_steps(settings)
    if settings.step_delay:
        kit.steps = {n: SlowedStep(s, settings.step_delay) for n, s in kit.steps.items()}
    if settings.faults:
        log.warning(
            "FAULT INJECTION IS ON (%s): steps will fail on purpose; never use this outside tests",
            ", ".join(
                f"{s}={f.mode}" + (f"@{f.department}" if f.department else "")
                for s, faults in settings.faults.items()
                for f in faults
            ),
        )
        kit.steps = {
            n: FaultInjectingStep(s, settings.faults[n]) if n in settings.faults else s
            for n, s in kit.steps.items()
        }
    return kit


def vault_of(settings: Settings) -> CredentialVault:
    state = settings.state_dir.absolute()
    keys = (
        KeySource(value=settings.encryption_key)
        if settings.encryption_key
        else KeySource(path=state / "encryption-keys.json")
    )
    return CredentialVault(state / "vault", keys)


def embedded_steps(settings: Settings) -> StepKit:
    """The real steps, all on this machine: see `provisioner.steps` and the README."""
    state = settings.state_dir.absolute()
    dirs = DepartmentDirs(state / "departments")
    vault = vault_of(settings)
    database, environment = _tenant_database(settings, dirs, vault)
    container = LocalProcessContainer(dirs, environment=environment)
    gateway = EnvoyGateway(
        dirs,
        dynamic_dir=state / "envoy" / "dynamic",
        http_addr=settings.http_addr,
        admin_addr=settings.envoy_admin_addr,
        cors_origins=settings.cors_origins,
    )

    async def holding() -> set[str]:
        return set(await asyncio.to_thread(dirs.ids))

    steps: dict[StepName, Step] = {
        StepName.VALIDATE: ValidateSpec(
            regions=settings.regions,
            max_departments=settings.max_departments,
            departments_holding_resources=holding,
        ),
        StepName.DATABASE: database,
        StepName.OAUTH: OAuthCredentials(dirs, vault),
        StepName.CONTAINER: container,
        StepName.WORKFLOWS: EmbeddedWorkflows(dirs),
        StepName.GATEWAY: gateway,
        StepName.VALIDATION: DeploymentValidation(database, gateway, vault),
    }
    container.on_moved = gateway.sync
    roots = (dirs.root, vault.root, state / "envoy" / "dynamic")
    return StepKit(steps, VaultIssuer(vault), container, gateway, roots)


def _tenant_database(
    settings: Settings, dirs: DepartmentDirs, vault: CredentialVault
) -> tuple[SqliteTenantDatabase | PostgresTenantDatabase, Callable[[str], Mapping[str, str]] | None]:
    """The database step, and the environment it gives each department's service.

    With `PROVISIONER_TENANT_DATABASE_URL`, a schema and login role per department on that
    PostgreSQL; the role's password is a random secret in the vault, forgotten when the
    role is dropped, and reaches the service only as its `DATABASE_URL`.
    """
    if not settings.tenant_database_url:
        return SqliteTenantDatabase(dirs), None
    database = PostgresTenantDatabase(
        settings.tenant_database_url,
        password_for=lambda department_id: vault.secret(department_id, "database"),
        forget_password=lambda department_id: vault.forget(department_id, "database"),
    )
    return database, lambda department_id: {"DATABASE_URL": database.department_url(department_id)}


def rotate_key(settings: Settings) -> str:
    """Move every sealed secret to a new key, without stopping a running server.

    A running server re-reads the key file when it changes, so from the moment the new
    key is added it seals with it; the old keys are dropped only once nothing stored is
    sealed with them any more.
    """
    vault = vault_of(settings)
    if vault.keys.rotatable:
        new = vault.keys.add_primary()
        resealed = 0
        # Again until nothing old is left: a server may have sealed with an old key just
        # before it noticed the new one.
        for _ in range(10):
            if not vault.sealed_key_ids() - {new}:
                break
            resealed += vault.reseal_all()
        else:
            raise ConfigurationError("secrets kept appearing sealed with old keys; old keys are kept")
        dropped = vault.keys.keep_only_primary()
        return f"new primary key {new}; resealed {resealed} secrets; dropped keys {', '.join(dropped) or '-'}"
    resealed = vault.reseal_all()
    primary = vault.keys.keyring().primary
    return (
        f"resealed {resealed} secrets with key {primary}; "
        "other keys may now be removed from PROVISIONER_ENCRYPTION_KEY"
    )
