"""Who is calling: set by the authentication interceptor, read by the servicer."""

from __future__ import annotations

from contextvars import ContextVar

#: The caller's principal (the token's `sub`); "anonymous" until authentication says.
principal: ContextVar[str] = ContextVar("principal", default="anonymous")
