"""Which steps the control plane runs, built from settings (part of the composition root).

`provisioning-server` (app.py) builds its runtime from a `StepKit`: the seven steps of
the chosen backend, wrapped by the test-only fault injection and delay when those are
set, plus what the embedded steps need run beside them (the credential issuer, the
department-service supervisor, the gateway's route sync, the directories to sweep).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from provisioner.core.errors import ConfigurationError, StepError
from provisioner.core.oauth import audience_of
from provisioner.core.states import StepName
from provisioner.engine.orchestrator import CredentialIssuer
from provisioner.oauth.keys import jwks_path
from provisioner.settings import Settings
from provisioner.steps.base import Step
from provisioner.steps.container import LocalProcessContainer
from provisioner.steps.container_railway import RailwayContainer
from provisioner.steps.database import SqliteTenantDatabase
from provisioner.steps.departments import DepartmentDirs
from provisioner.steps.faults import FaultInjectingStep, SlowedStep
from provisioner.steps.gateway import EnvoyGateway, RouteStore
from provisioner.steps.local import LocalMarkerStep
from provisioner.steps.noop import NoopStep
from provisioner.steps.oauth import OAuthCredentials, VaultIssuer
from provisioner.steps.oauth_registration import ClientRegistrar, RegisteringIssuer
from provisioner.steps.tenant_postgres import PostgresTenantDatabase
from provisioner.steps.validate import ValidateSpec
from provisioner.steps.validation import (
    DeploymentValidation,
    PlatformValidation,
    TokenEndpoint,
    builtin_tokens,
)
from provisioner.steps.vault import CredentialVault, KeySource, SecretStore
from provisioner.steps.workflows import EmbeddedWorkflows
from provisioner.steps.workflows_n8n import N8nWorkflows

log = logging.getLogger("provisioner")


@dataclass(slots=True)
class StepKit:
    """The steps, plus what some backends need run beside them."""

    steps: dict[StepName, Step]
    issuer: CredentialIssuer | None = None
    #: Department secrets; its key is checked against the store's at start.
    vault: CredentialVault | None = None
    #: The steps keep resources on this machine: each department is run by its home replica.
    pinned: bool = False
    container: LocalProcessContainer | None = None
    gateway: EnvoyGateway | None = None
    #: Directories whose atomic writes a crash may have cut short.
    state_roots: tuple[Path, ...] = ()
    #: Adapters holding connections, closed after the engine has stopped.
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()
    #: Departments' clients get tokens from the control plane's own authorization server
    #: (not from an external one they are registered at).
    builtin_oauth: bool = True

    async def close(self) -> None:
        for close in self.closers:
            await close()


@dataclass(frozen=True, slots=True)
class Shared:
    """What the steps keep in the job store, for every replica: secrets and routes."""

    secrets: SecretStore
    routes: RouteStore
    #: This replica's id (the lease owner).
    replica: str


def build_steps(settings: Settings, shared: Shared) -> StepKit:
    kit = StepKit({})
    if settings.steps == "noop":
        kit.steps = {name: NoopStep(name) for name in StepName}
    elif settings.steps == "local":
        root = settings.state_dir / "resources"
        root.mkdir(parents=True, exist_ok=True)
        kit.steps = {name: LocalMarkerStep(name, root) for name in StepName}
        kit.pinned = True
    else:
        kit = embedded_steps(settings, shared)
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


def vault_of(settings: Settings, secrets: SecretStore) -> CredentialVault:
    """Department secrets, sealed in the job store with PROVISIONER_ENCRYPTION_KEY (or,
    without it, a key file under the state dir)."""
    keys = (
        KeySource(value=settings.encryption_key)
        if settings.encryption_key
        else KeySource(path=settings.state_dir.absolute() / "encryption-keys.json")
    )
    return CredentialVault(secrets, keys)


def embedded_steps(settings: Settings, shared: Shared) -> StepKit:
    """The real steps: on this machine, except where a production adapter's settings are set.

    `PROVISIONER_TENANT_DATABASE_URL` puts each department's data in a schema of that
    PostgreSQL; `PROVISIONER_RAILWAY_*` runs each department's service on Railway; and
    `PROVISIONER_N8N_*` deploys its workflows to n8n. Settings refuse the combinations that
    cannot work (see `settings._adapter_problems`). See `provisioner.steps` and docs/steps.md.
    """
    state = settings.state_dir.absolute()
    dirs = DepartmentDirs(state / "departments")
    vault = vault_of(settings, shared.secrets)
    database, database_url = _tenant_database(settings, dirs, vault)
    registrar = (
        ClientRegistrar(settings.oauth_provider, settings.oauth_registration_token)
        if settings.oauth_provider
        else None
    )
    token_issuer = _token_issuer(settings, registrar)
    local: LocalProcessContainer | None = None
    container: LocalProcessContainer | RailwayContainer
    if settings.railway:
        container = _railway(settings, vault, database_url, token_issuer)
    else:
        container = local = LocalProcessContainer(
            dirs, environment=_service_environment(settings, database_url, token_issuer)
        )
    gateway = EnvoyGateway(
        dirs,
        routes=shared.routes,
        replica=shared.replica,
        local_services=local is not None,
        services=container,
        dynamic_dir=state / "envoy" / "dynamic",
        http_addr=settings.http_addr,
        admin_addr=settings.envoy_admin_addr,
        cors_origins=settings.cors_origins,
        ca_file=settings.upstream_ca_file,
        listener_cert_file=settings.tls.cert_file if settings.tls else None,
    )
    tokens = builtin_tokens(gateway, settings.issuer)
    issuer: VaultIssuer | RegisteringIssuer = VaultIssuer(vault)
    if registrar is not None:
        tokens = TokenEndpoint(registrar.token_endpoint, settings.issuer)
        issuer = RegisteringIssuer(vault, registrar)
    workflows: EmbeddedWorkflows | N8nWorkflows
    validation: DeploymentValidation | PlatformValidation
    if settings.n8n_url:
        workflows = N8nWorkflows(settings.n8n_url, settings.n8n_api_key, smtp_url=settings.smtp_url)
        validation = PlatformValidation(gateway, vault, workflows, tokens)
    else:
        workflows = EmbeddedWorkflows(dirs)
        validation = DeploymentValidation(database, gateway, vault, tokens)

    steps: dict[StepName, Step] = {
        StepName.VALIDATE: ValidateSpec(regions=settings.regions),
        StepName.DATABASE: database,
        # On Railway the container step publishes the client as the service's variables.
        StepName.OAUTH: OAuthCredentials(
            dirs,
            vault,
            publish=not settings.railway,
            deregister=issuer.revoke if isinstance(issuer, RegisteringIssuer) else None,
        ),
        StepName.CONTAINER: container,
        StepName.WORKFLOWS: workflows,
        StepName.GATEWAY: gateway,
        StepName.VALIDATION: validation,
    }
    if local is not None:
        local.on_moved = gateway.sync
    roots = (dirs.root, state / "envoy" / "dynamic")
    closers = tuple(
        step.close for step in (database, container, workflows) if not isinstance(step, _LOCAL_STEPS)
    )
    # With services on Railway (and so, by the settings' rules, data in PostgreSQL and
    # workflows on n8n) nothing of a department is on this machine: any replica runs its
    # jobs. Otherwise it is pinned to the replica that made it (see docs/replicas.md).
    pinned = local is not None
    return StepKit(
        steps, issuer, vault, pinned, local, gateway, roots, closers, builtin_oauth=registrar is None
    )


_LOCAL_STEPS = (SqliteTenantDatabase, LocalProcessContainer, EmbeddedWorkflows)


TokenIssuer = Callable[[str], Awaitable[dict[str, str]]]


def _token_issuer(settings: Settings, registrar: ClientRegistrar | None) -> TokenIssuer:
    """What a department's service is told about its callers' tokens: who issues them,
    where the keys are, and its own audience."""

    async def told(department_id: str) -> dict[str, str]:
        audience = {"OAUTH_AUDIENCE": audience_of(settings.issuer, department_id)}
        if registrar is not None:
            provider = await registrar.metadata()
            return {"OAUTH_ISSUER": provider.issuer, "OAUTH_JWKS_URL": provider.jwks_uri, **audience}
        keys = (
            {"OAUTH_JWKS_URL": f"{settings.issuer}/.well-known/jwks.json"}
            if settings.railway
            else {"OAUTH_JWKS_FILE": str(jwks_path(settings.state_dir))}
        )
        return {"OAUTH_ISSUER": settings.issuer, **keys, **audience}

    return told


def _service_environment(
    settings: Settings, database_url: Callable[[str], Awaitable[str]] | None, token_issuer: TokenIssuer
) -> Callable[[str], Awaitable[dict[str, str]]]:
    """A local service's extra environment: who issues its callers' tokens, its
    `DATABASE_URL` when departments are on PostgreSQL, and the SMTP relay its email
    workflow sends through."""
    relay = {"SMTP_URL": settings.smtp_url} if settings.smtp_url else {}
    if settings.smtp_ca_file is not None:
        relay["SMTP_CA_FILE"] = str(settings.smtp_ca_file.absolute())

    async def environment(department_id: str) -> dict[str, str]:
        database = {} if database_url is None else {"DATABASE_URL": await database_url(department_id)}
        return {**database, **await token_issuer(department_id), **relay}

    return environment


def _railway(
    settings: Settings,
    vault: CredentialVault,
    database_url: Callable[[str], Awaitable[str]] | None,
    token_issuer: TokenIssuer,
) -> RailwayContainer:
    """Department services on Railway, told who they are, where their data is and who may call."""
    if database_url is None:  # settings refuse this; the type checker wants it said
        raise ConfigurationError("Railway needs PROVISIONER_TENANT_DATABASE_URL")
    url_of = database_url

    async def variables(department_id: str) -> dict[str, str]:
        client = await vault.active(department_id)
        if client is None:
            raise StepError("the department has no active OAuth client to give its service")
        return {
            "DEPARTMENT_ID": department_id,
            "DATABASE_URL": await url_of(department_id),
            "CLIENT_ID": client.client_id,
            **await token_issuer(department_id),
        }

    return RailwayContainer(
        settings.railway_token,
        settings.railway_project_id,
        settings.railway_environment_id,
        settings.railway_image,
        endpoint=settings.railway_endpoint,
        variables=variables,
        auth=settings.railway_token_kind,
    )


def _tenant_database(
    settings: Settings, dirs: DepartmentDirs, vault: CredentialVault
) -> tuple[SqliteTenantDatabase | PostgresTenantDatabase, Callable[[str], Awaitable[str]] | None]:
    """The database step, and the `DATABASE_URL` of each department's service (None: data.db).

    With `PROVISIONER_TENANT_DATABASE_URL`, a schema and login role per department on that
    PostgreSQL; the role's password is a random secret in the vault, forgotten when the
    role is dropped, and reaches the service only in its environment.
    """
    if not settings.tenant_database_url:
        return SqliteTenantDatabase(dirs), None
    database = PostgresTenantDatabase(
        settings.tenant_database_url,
        password_for=functools.partial(vault.secret, name="database"),
        forget_password=functools.partial(vault.forget, name="database"),
    )
    return database, database.department_url


async def rotate_key(settings: Settings, secrets: SecretStore) -> str:
    """Move every sealed secret to a new key, without stopping a running server.

    A running server re-reads the key file when it changes, so from the moment the new
    key is added it seals with it; the old keys are dropped only once nothing stored is
    sealed with them any more. The store then records the new key as the one every
    replica must hold.
    """
    vault = vault_of(settings, secrets)
    await vault.check_key()
    if vault.keys.rotatable:
        new = vault.keys.add_primary()
        resealed = 0
        # Again until nothing old is left: a server may have sealed with an old key just
        # before it noticed the new one.
        for _ in range(10):
            if not await vault.sealed_key_ids() - {new}:
                break
            resealed += await vault.reseal_all()
        else:
            raise ConfigurationError("secrets kept appearing sealed with old keys; old keys are kept")
        await vault.record_primary()
        dropped = vault.keys.keep_only_primary()
        return f"new primary key {new}; resealed {resealed} secrets; dropped keys {', '.join(dropped) or '-'}"
    resealed = await vault.reseal_all()
    await vault.record_primary()
    primary = vault.keys.keyring().primary
    return (
        f"resealed {resealed} secrets with key {primary}; "
        "other keys may now be removed from PROVISIONER_ENCRYPTION_KEY"
    )
