"""The composition root: builds the store, hub, steps, orchestrator and edge from settings.

`provisioning-server` runs the control plane (the gRPC server, and Envoy as the REST
gateway beside it) until SIGTERM or SIGINT, then drains: health turns NOT_SERVING, new
work is refused, watchers get a resumable end, and running jobs stop at a commit
boundary and stay resumable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import fcntl
import logging
import os
import secrets
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from provisioner import logs
from provisioner.compose import Shared, StepKit, build_steps, rotate_key
from provisioner.core.errors import ConfigurationError, ProvisioningError
from provisioner.core.states import StepName
from provisioner.edge.auth import Authenticator
from provisioner.edge.concurrency import ConcurrencyLimiter, LoopLag
from provisioner.edge.gateway import EnvoyProcess
from provisioner.edge.interceptors import server_interceptors
from provisioner.edge.jwks_url import JwksUrl
from provisioner.edge.ratelimit import RateLimiter
from provisioner.edge.server import GrpcEdge
from provisioner.edge.tls import ReloadingCredentials
from provisioner.engine.orchestrator import Orchestrator
from provisioner.engine.runner import cancel_and_wait
from provisioner.events.hub import EventHub
from provisioner.oauth import http as oauth_http
from provisioner.oauth.keys import SigningKeys, jwks_path, publish
from provisioner.oauth.server import AuthorizationServer, TokenPolicy
from provisioner.settings import Address, Settings, load_settings, production_problems
from provisioner.steps.base import Step
from provisioner.steps.container import LocalProcessContainer
from provisioner.steps.departments import DepartmentDirs, sweep_interrupted_writes
from provisioner.store.protocol import Outbox
from provisioner.store.sql import SqlJobStore
from provisioner.telemetry.exporter import exporting
from provisioner.telemetry.tracing import tracing
from provisioner.webhooks import WebhookConfig, WebhookDelivery, WebhookSender

log = logging.getLogger("provisioner")


@dataclass(slots=True)
class Runtime:
    settings: Settings
    store: SqlJobStore
    hub: EventHub
    orchestrator: Orchestrator
    #: The department clients' authorization server (None when the steps issue no clients).
    authorization: AuthorizationServer | None = None


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


#: Linux's limit on a Unix socket's path (108 bytes with the final NUL), with a margin.
_MAX_SOCKET_PATH = 100


def _private_dir(path: Path) -> None:
    """Make `path` if needed, readable by this user alone (it holds the job store and keys)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except PermissionError:
            log.warning("PROVISIONER_STATE_DIR=%s is readable by others and is not ours to restrict", path)


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
    _private_dir(settings.state_dir)
    lock = _lock_state_dir(settings.state_dir)
    store = SqlJobStore(settings.effective_database_url)
    replica = _replica_id(settings)
    kit = (
        StepKit(dict(steps))
        if steps is not None
        else build_steps(settings, Shared(store.secrets, store.routes, replica))
    )
    background: list[asyncio.Task[None]] = []
    try:
        await store.initialize()
        if kit.vault is not None:
            await kit.vault.check_key()
        swept = await asyncio.to_thread(sweep_interrupted_writes, *kit.state_roots)
        if swept:
            log.warning("removed %d files of writes an earlier crash interrupted", len(swept))
        if kit.gateway is not None:
            if adopted := await kit.gateway.adopt_route_files():
                log.info("moved %d gateway routes from route.json files into the job store", adopted)
            # Envoy's route files follow the store, whatever happened before, and keep
            # following it: other replicas add and remove routes too.
            await kit.gateway.sync()
            background.append(asyncio.create_task(kit.gateway.follow(), name="gateway-routes"))
        if kit.container is not None:
            # Adopt the department services still running; restart those that died.
            await kit.container.reconcile()
            background.append(asyncio.create_task(kit.container.supervise(), name="department-supervisor"))
        hub = EventHub(store)
        listener = store.listener(on_heads=hub.notify, on_state=hub.pushed)
        if listener is not None:
            background.append(asyncio.create_task(listener.run(), name="event-notifications"))
        orchestrator = Orchestrator(
            store, hub, kit.steps, settings.engine, owner=replica, issuer=kit.issuer, pinned=kit.pinned
        )
        await orchestrator.start()
        if settings.webhook_url:
            background.append(
                asyncio.create_task(_send_webhooks(store.outbox, settings, replica), name="webhooks")
            )
        authorization = None
        if kit.vault is not None and kit.builtin_oauth:
            keys = SigningKeys(store.secrets, kit.vault.keys, rotation=settings.oauth_key_rotation)
            jwks_file = jwks_path(settings.state_dir)
            background.append(asyncio.create_task(publish(keys, jwks_file), name="oauth-keys"))
            policy = TokenPolicy(settings.issuer, int(settings.oauth_token_ttl), settings.oauth_token_rate)
            authorization = AuthorizationServer(kit.vault, keys, policy)
        try:
            yield Runtime(settings, store, hub, orchestrator, authorization)
        finally:
            hub.close()
            await orchestrator.stop()
    finally:
        for task in background:
            await cancel_and_wait(task)
        if kit.container is not None and (left := kit.container.running()):
            _say_what_keeps_running(settings, left)
        await kit.close()
        await store.close()
        lock.close()


def _private_socket(settings: Settings, name: str) -> Path:
    """A Unix socket in the state dir, for Envoy alone to connect to."""
    path = settings.state_dir.absolute() / name
    if len(str(path).encode()) > _MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"PROVISIONER_STATE_DIR is too long for Envoy's Unix socket ({path}); use a shorter path"
        )
    return path


def _say_what_keeps_running(settings: Settings, departments: list[str]) -> None:
    """Department services outlive the control plane, so their departments stay up
    through its restarts: say so, and how to stop them."""
    shown = ", ".join(departments[:10]) + (
        f" and {len(departments) - 10} more" if len(departments) > 10 else ""
    )
    log.info("department services keep running", extra={"fields": {"departments": departments[:100]}})
    state = "" if settings.state_dir == Path("var") else f"PROVISIONER_STATE_DIR={settings.state_dir} "
    print(
        f"department services keep running, so their departments stay up: {shown}\n"
        f"  stop them:  {state}.venv/bin/provisioning-server stop-departments"
        "   (they start again with the control plane)",
        flush=True,
    )


async def _stop_departments(settings: Settings) -> list[str]:
    container = LocalProcessContainer(DepartmentDirs(settings.state_dir / "departments"))
    return await container.stop_all()


def _webhook_config(settings: Settings) -> WebhookConfig:
    return WebhookConfig(
        settings.webhook_url,
        settings.webhook_secret,
        timeout=settings.webhook_timeout,
        max_attempts=settings.webhook_max_attempts,
        base_delay=settings.webhook_retry_base,
        max_delay=max(settings.webhook_retry_base, 4 * 3600.0),
        ca_file=settings.upstream_ca_file,
    )


async def _send_webhooks(outbox: Outbox, settings: Settings, owner: str) -> None:
    config = _webhook_config(settings)
    sender = WebhookSender(config)
    try:
        await WebhookDelivery(outbox, sender, config, owner=owner).run()
    finally:
        await sender.close()


async def _rotate_key(settings: Settings) -> str:
    store = SqlJobStore(settings.effective_database_url)
    try:
        await store.initialize()
        return await rotate_key(settings, store.secrets)
    finally:
        await store.close()


#: How long unary calls in flight may take to finish once draining starts.
DRAIN_GRACE_SECONDS = 5.0
DEV_SECRET_FILE = "jwt-secret"  # noqa: S105 - a file name, not a secret


def _development_secret(settings: Settings) -> Settings:
    """With no key configured, make (once) a random HS256 secret under the state dir.

    The file is created with mode 0600 and never printed: `provisionctl token` reads the
    secret from PROVISIONER_JWT_SECRET, which the start-up banner shows how to set.
    """
    if settings.jwt_secret or settings.jwks_file or settings.jwks_url:
        return settings
    path = settings.state_dir / DEV_SECRET_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(48) + "\n")
    log.warning("development mode, no JWT secret or JWKS configured: using the secret in %s", path)
    return dataclasses.replace(settings, jwt_secret=path.read_text().strip())


def _banner(
    settings: Settings, grpc_port: int, envoy: EnvoyProcess | None, metrics_url: str, *, traced: bool = False
) -> str:
    grpc_target = f"{settings.grpc_addr.host}:{grpc_port}"
    how = "-cacert <your CA file>" if settings.tls else "-plaintext"
    if settings.tls and settings.tls.client_ca_file:
        how += " -cert <client cert> -key <client key>"
    lines = [
        "provisioning control plane ready",
        f"  gRPC         {grpc_target}   (grpcurl {how} {grpc_target} list)",
    ]
    if envoy is not None:
        lines += [
            f"  REST         {envoy.url}/api/departments",
            f"  Envoy admin  {envoy.admin_url}",
        ]
    lines.append(f"  Metrics      {metrics_url}")
    if traced:
        lines.append("  Traces       exported as the OTEL_* variables say")
    if not (settings.jwks_file or settings.jwks_url):
        secret = (
            "$PROVISIONER_JWT_SECRET"
            if os.environ.get("PROVISIONER_JWT_SECRET")
            else f'"$(cat {settings.state_dir / DEV_SECRET_FILE})"'
        )
        lines += [
            "  Token        export PROVISIONER_JWT_SECRET=" + secret,
            '               export PROVISIONER_TOKEN="$(.venv/bin/provisionctl token --role admin)"',
        ]
    lines.append("  Stop         Ctrl-C")
    return "\n".join(lines)


async def serve(settings: Settings, *, with_envoy: bool = True) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _private_dir(settings.state_dir)
    settings = _development_secret(settings)
    jwks_url = (
        JwksUrl(settings.jwks_url, min_interval=settings.jwks_min_refresh) if settings.jwks_url else None
    )
    if jwks_url is not None:
        await jwks_url.load()
    authenticator = Authenticator(
        secret=settings.jwt_secret,
        jwks_file=settings.jwks_file,
        jwks_url=jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway=settings.jwt_leeway,
    )
    metrics_addr = settings.metrics_addr
    with tracing(os.environ, instance=_replica_id(settings)) as traced:
        async with runtime(settings) as rt, exporting(metrics_addr.host, metrics_addr.port) as metrics_url:
            # The provision and deprovision windows are in the job store: every replica
            # counts the same calls, and a restart forgets none.
            limiter = RateLimiter(
                provision=settings.rate_provision,
                deprovision=settings.rate_deprovision,
                read=settings.rate_read,
                shared=rt.store.admissions,
            )
            lag = LoopLag()
            edge = GrpcEdge(
                rt.orchestrator,
                interceptors=server_interceptors(
                    authenticator, limiter, ConcurrencyLimiter(settings.concurrency, lag=lag)
                ),
                heartbeat_seconds=settings.heartbeat_seconds,
            )
            tls = settings.tls
            # With TLS Envoy reaches the server on a private Unix socket; without, on the port.
            private_socket = _private_socket(settings, "grpc.sock") if tls and with_envoy else None
            try:
                port = await edge.start(
                    str(settings.grpc_addr),
                    credentials=ReloadingCredentials(tls).credentials if tls else None,
                    private_socket=private_socket,
                )
            except RuntimeError as exc:
                raise ConfigurationError(
                    f"cannot listen on PROVISIONER_GRPC_ADDR={settings.grpc_addr}: {exc}"
                ) from exc
            lag.start()
            envoy: EnvoyProcess | None = None
            envoy_keeper: asyncio.Task[None] | None = None
            oauth = contextlib.AsyncExitStack()
            try:
                if with_envoy:
                    oauth_socket = None
                    if rt.authorization is not None:
                        # The token endpoint and the key set, on a private socket behind Envoy.
                        oauth_socket = await oauth.enter_async_context(
                            oauth_http.serving(rt.authorization, _private_socket(settings, "oauth.sock"))
                        )
                    envoy = EnvoyProcess(
                        settings.state_dir / "envoy",
                        http_addr=settings.http_addr,
                        admin_addr=settings.envoy_admin_addr,
                        grpc_addr=private_socket or Address(settings.grpc_addr.host, port),
                        oauth_addr=oauth_socket,
                        cors_origins=settings.cors_origins,
                        certificate=(tls.cert_file, tls.key_file) if tls else None,
                    )
                    await envoy.start()
                    envoy_keeper = asyncio.create_task(envoy.supervise(), name="envoy-supervisor")
                await edge.serving()
                log.info(
                    "control plane ready",
                    extra={
                        "fields": {
                            "replica": rt.orchestrator.owner,
                            "grpc_port": port,
                            "envoy": with_envoy,
                            "state_dir": str(settings.state_dir.resolve()),
                            "steps": settings.steps,
                            "metrics": metrics_url,
                            "resumed_jobs": rt.orchestrator.running_jobs,
                        }
                    },
                )
                print(_banner(settings, port, envoy, metrics_url, traced=traced), flush=True)
                await stop.wait()
                log.info("shutting down: refusing new work, leaving running jobs resumable")
            finally:
                await edge.drain()
                rt.orchestrator.refuse_new_work()
                rt.hub.close()
                await edge.stop(DRAIN_GRACE_SECONDS)
                if envoy_keeper is not None:
                    await cancel_and_wait(envoy_keeper)
                if envoy is not None:
                    await envoy.stop()
                await oauth.aclose()
                await lag.stop()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="provisioning-server",
        description="Run the provisioning control plane. Settings come from PROVISIONER_* variables.",
    )
    parser.add_argument(
        "--no-envoy", action="store_true", help="serve gRPC only, without the Envoy REST gateway"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "stop-departments",
        help="stop the department services a development server left running (they start again with it)",
    )
    commands.add_parser(
        "rotate-key",
        help="seal every department secret with a new key (safe while the server runs)",
        description="With a key file: add a new primary key, reseal every stored secret with it, then "
        "drop the old keys. With PROVISIONER_ENCRYPTION_KEY: reseal with its first key; drop the "
        "others from the variable afterwards.",
    )
    args = parser.parse_args(argv)
    # Everything the server writes (the job store, keys, Envoy's config, logs) is for its
    # user alone: files 0600, directories 0700.
    os.umask(0o077)
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"provisioning-server: {exc.message}", file=sys.stderr)
        return 2
    refused = production_problems(settings)
    if refused:
        print(
            "provisioning-server: production mode needs real secrets:\n  "
            + "\n  ".join(refused)
            + "\nOr set PROVISIONER_MODE=development to try it on this machine (`make run` does).",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level)
    if args.command == "stop-departments":
        stopped = asyncio.run(_stop_departments(settings))
        print(f"stopped {len(stopped)} department services" + (f": {', '.join(stopped)}" if stopped else ""))
        return 0
    if args.command == "rotate-key":
        try:
            print(asyncio.run(_rotate_key(settings)))
        except ProvisioningError as exc:
            print(f"provisioning-server rotate-key: {exc.message}", file=sys.stderr)
            return 1
        return 0
    try:
        asyncio.run(serve(settings, with_envoy=not args.no_envoy))
    except (ConfigurationError, ProvisioningError) as exc:
        log.error("cannot start: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
