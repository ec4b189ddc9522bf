"""A department's route through the gateway, as the job store keeps it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    """`/departments/<id>/` leads to `host:port` (over TLS if `tls`).

    `replica` names the only replica whose Envoy serves the route (a service on that
    replica's machine, reached on its loopback); None means every replica's Envoy does
    (a service on a shared platform).
    """

    department_id: str
    host: str
    port: int
    tls: bool = False
    replica: str | None = None
