"""A real provisioning server for the client's tests: the real servicer and engine over an
in-memory store and local marker steps, on a real grpc.aio server.

`Harness` runs in the caller's event loop (async tests); `ThreadedServer` runs one on a
loop of its own in a background thread, so sync code (the sync SDK, `cli.main` with its
own `asyncio.run`) can talk to it. Departments misbehave by name:
`slow-*` spend `SLOW` seconds in each step, `doomed-*` fail at the gateway step and are
rolled back. Tokens `Bearer rate-limited` and `Bearer nobody` get RESOURCE_EXHAUSTED
(with a RetryInfo) and UNAUTHENTICATED on unary calls; every `authorization` header
received is recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from provisioner.core.errors import StepError
from provisioner.core.retry import RetryPolicy
from provisioner.core.states import StepName
from provisioner.edge.servicer import ProvisioningServicer
from provisioner.engine.config import EngineConfig
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.steps.base import Condition, StepContext
from provisioner.steps.local import LocalMarkerStep
from provisioner.store.memory import InMemoryJobStore
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from provisioner_client import DepartmentSpec

# Health answers are not kept (the CLI tests break a department and ask again at once).
CONFIG = EngineConfig(
    step_timeout=5, job_deadline=30, retry=RetryPolicy(base_delay=0.01, max_delay=0.02), health_ttl=0
)
SLOW = 0.1
T = TypeVar("T")


class MisbehavingStep:
    """A local marker step that is slow or fails for departments named to ask for it."""

    def __init__(self, inner: LocalMarkerStep) -> None:
        self.name = inner.name
        self._inner = inner

    async def apply(self, ctx: StepContext) -> dict[str, str]:
        if ctx.department_id.startswith("slow-"):
            await asyncio.sleep(SLOW)
        if ctx.department_id.startswith("doomed-") and self.name is StepName.GATEWAY:
            raise StepError("injected fault: the gateway refused the route")
        return await self._inner.apply(ctx)

    async def compensate(self, ctx: StepContext) -> None:
        await self._inner.compensate(ctx)

    async def check(self, ctx: StepContext) -> Condition:
        return await self._inner.check(ctx)


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return cast(
        grpc.Status, rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))
    )


_REJECTIONS = {
    "Bearer rate-limited": _status(
        code_pb2.RESOURCE_EXHAUSTED,
        "too many requests",
        error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="provisioning.v1"),
        error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=7)),
    ),
    "Bearer nobody": _status(code_pb2.UNAUTHENTICATED, "the token is not valid"),
}


class AuthRecorder(grpc.aio.ServerInterceptor):
    """Records each call's `authorization` header; rejects the test tokens above."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        self.seen.append(str(header))
        handler = await continuation(details)
        rejection = _REJECTIONS.get(str(header))
        if rejection is None or handler is None or handler.unary_unary is None:
            return handler

        async def reject(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort_with_status(rejection)

        return grpc.unary_unary_rpc_method_handler(
            reject, handler.request_deserializer, handler.response_serializer
        )


class Harness:
    """The server, in the running event loop; `restart` keeps the engine and the port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = InMemoryJobStore()
        steps = {n: MisbehavingStep(LocalMarkerStep(n, root)) for n in StepName}
        self.orchestrator = Orchestrator(self.store, EventHub(self.store), steps, CONFIG)
        self.auth = AuthRecorder()
        self.port = 0
        self._server: grpc.aio.Server | None = None
        #: More listeners in front of the same engine: replicas, as a client sees them.
        self.replicas: list[tuple[grpc.aio.Server, AuthRecorder, int]] = []

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.orchestrator.start()
        await self._serve()

    async def _serve(self) -> None:
        server, _ = self._grpc_server(self.auth)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def add_replica(self) -> tuple[AuthRecorder, int]:
        """Another listener on the same engine (its own port and call log)."""
        server, recorder = self._grpc_server(AuthRecorder())
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.replicas.append((server, recorder, port))
        return recorder, port

    async def stop_replica(self, index: int) -> None:
        await self.replicas[index][0].stop(None)

    def _grpc_server(self, auth: AuthRecorder) -> tuple[grpc.aio.Server, AuthRecorder]:
        server = grpc.aio.server(interceptors=[auth])
        pb_grpc.add_ProvisioningServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ProvisioningServicer(self.orchestrator, heartbeat_seconds=0.5), server
        )
        return server, auth

    async def stop_serving(self) -> None:
        """Cut every call off (clients see UNAVAILABLE); the engine keeps running jobs."""
        if self._server is not None:
            await self._server.stop(None)
            self._server = None

    async def restart(self, down_for: float = 0.2) -> None:
        await self.stop_serving()
        await asyncio.sleep(down_for)
        await self._serve()

    async def close(self) -> None:
        await self.stop_serving()
        for server, _, _ in self.replicas:
            await server.stop(None)
        self.orchestrator.hub.close()
        await self.orchestrator.stop()


class ThreadedServer:
    """A `Harness` on its own event loop in a daemon thread."""

    def __init__(self, root: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self._thread.start()
        self.harness = self.run(self._make(root))
        self.run(self.harness.start())

    @staticmethod
    async def _make(root: Path) -> Harness:
        return Harness(root)  # built in the server's loop, which its engine binds to

    @property
    def target(self) -> str:
        return self.harness.target

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def later(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Start `coro` on the server's loop without waiting."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        try:
            self.run(self.harness.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


def spec(department_id: str = "hr", **overrides: object) -> DepartmentSpec:
    """A valid spec (the seed's example), with `overrides`."""
    values: dict[str, object] = {
        "department_id": department_id,
        "department_name": "Human Resources",
        "workflows": ("email", "google_drive", "database"),
        "data_retention": "90d",
        "region": "us-west",
        "admin_email": "admin@synrgscaling.com",
    }
    values.update(overrides)
    return DepartmentSpec(**values)  # type: ignore[arg-type]
