"""Who is calling, and which request this is: per-RPC values for handlers and the error mapping.

The interceptors set them at the start of each RPC; grpc.aio runs an RPC's interceptors and
its handler in one task of their own, so a value set for one RPC never leaks into another.
"""

from __future__ import annotations

from contextvars import ContextVar

#: The caller's principal (the token's `sub`); "anonymous" until authentication says.
principal: ContextVar[str] = ContextVar("principal", default="anonymous")

#: Whether the caller may see where things are (the resources steps record: paths, pids,
#: addresses): admins only. Everyone else sees what was made and its state, never where.
internals: ContextVar[bool] = ContextVar("internals", default=False)

#: The request id of the RPC in progress (the caller's `x-request-id`, or one we made up);
#: empty outside an RPC.
request_id: ContextVar[str] = ContextVar("request_id", default="")

#: The full gRPC method name of the RPC in progress; empty outside an RPC.
method: ContextVar[str] = ContextVar("method", default="")
