"""The gRPC server: the provisioning API, health and reflection, and its lifecycle.

Health says NOT_SERVING until `start` has bound the port and the engine is ready, and
again from the first moment of `drain`: load balancers and Envoy stop sending new work
before anything is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from provisioner.edge.servicer import ProvisioningServicer
from provisioner.engine.orchestrator import Orchestrator
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProvisioningService"].full_name
#: The empty name is the server as a whole, as `grpc_health_probe` asks by default.
_HEALTH_NAMES = ("", SERVICE_NAME)

# A watch can outlive any sensible deadline; keepalives find dead peers instead.
_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 10_000),
    # Above `edge.errors.MAX_REQUEST_BYTES`, which refuses larger requests as
    # INVALID_ARGUMENT; what grpc refuses itself is RESOURCE_EXHAUSTED. Metadata: above
    # what Envoy forwards (`steps.envoy_config`), so REST callers get 431 from Envoy.
    ("grpc.max_receive_message_length", 1024 * 1024),
    # grpc's own default cancels calls past 1,000 waiting to start, whoever made them: a
    # burst from one caller would cancel everybody's. Every call reaches the limits of
    # `edge.concurrency` instead, which refuse the one caller and shed load by name.
    ("grpc.server.max_pending_requests", 10_000),
    ("grpc.server.max_pending_requests_hard_limit", 10_000),
    ("grpc.max_metadata_size", 32 * 1024),
    ("grpc.absolute_max_metadata_size", 32 * 1024),
)


class GrpcEdge:
    """The grpc.aio server for one orchestrator, with health and reflection."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        heartbeat_seconds: float = 15.0,
    ) -> None:
        self.health = HealthServicer()
        self.server = grpc.aio.server(interceptors=list(interceptors), options=_OPTIONS)
        # The generated registration function has no annotations.
        pb_grpc.add_ProvisioningServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ProvisioningServicer(orchestrator, heartbeat_seconds=heartbeat_seconds), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), self.server)

    async def start(
        self,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        private_socket: Path | None = None,
    ) -> int:
        """Bind `address` (port 0 picks a free one), start serving, return the port.

        With `credentials` the port speaks TLS only. A `private_socket` is a Unix socket
        for Envoy, plaintext, in the server's 0700 state directory: its permissions are
        its authentication, so Envoy needs no client certificate where the port asks one.
        """
        for name in _HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        if private_socket is not None:
            self.server.add_insecure_port(f"unix:{private_socket}")
        await self.server.start()
        return port

    async def serving(self) -> None:
        for name in _HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self) -> None:
        """Say NOT_SERVING to health checkers; every later `set` is ignored."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float | None) -> None:
        """Let calls finish for up to `grace` seconds (None: none at all), then cancel the rest."""
        await self.server.stop(grace)
