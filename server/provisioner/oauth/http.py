"""The authorization server over HTTP (aiohttp), on a private Unix socket Envoy routes to:
`POST /oauth2/token`, `GET /.well-known/jwks.json`, `GET /.well-known/oauth-authorization-server`.

This is where `OAuthError`s become RFC 6749 §5.2 responses (JSON `error` and
`error_description`, 400, or 401 with `WWW-Authenticate` when the client tried Basic,
429 with `Retry-After` over a limit), and anything unexpected a bare `server_error`: the
traceback goes to the log, never to the caller. Token responses are never cached (§5.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from provisioner.core.oauth import OAuthError
from provisioner.oauth.server import AuthorizationServer

log = logging.getLogger("provisioner.oauth")

MAX_BODY = 16 * 1024
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_PUBLIC = {"Cache-Control": "public, max-age=300"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_of(request: web.Request) -> str:
    """The caller's address: Envoy (the only client of the socket) appends it to X-Forwarded-For."""
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.rsplit(",", 1)[-1].strip() or request.remote or "unknown"


def application(server: AuthorizationServer) -> web.Application:
    async def token(request: web.Request) -> web.Response:
        body = await request.read()
        answer = await server.token(
            authorization=request.headers.get("Authorization"),
            content_type=request.headers.get("Content-Type"),
            body=body,
            peer=peer_of(request),
        )
        return web.json_response(answer, headers=_NO_STORE)

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(await server.jwks(), headers=_PUBLIC)

    async def metadata(request: web.Request) -> web.Response:
        return web.json_response(server.metadata(), headers=_PUBLIC)

    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors])
    app.router.add_post("/oauth2/token", token)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_get("/.well-known/oauth-authorization-server", metadata)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except OAuthError as exc:
        headers = dict(_NO_STORE)
        if exc.basic_challenge and exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="oauth", charset="UTF-8"'
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        body = {"error": exc.error, "error_description": exc.description}
        return web.json_response(body, status=exc.status, headers=headers)
    except web.HTTPRequestEntityTooLarge:
        body = {"error": "invalid_request", "error_description": f"the request is over {MAX_BODY} bytes"}
        return web.json_response(body, status=413, headers=_NO_STORE)
    except web.HTTPException as exc:  # no route (404), wrong method (405)
        body = {"error": "invalid_request", "error_description": exc.reason}
        return web.json_response(body, status=exc.status, headers={**_NO_STORE, **_allow(exc)})
    except Exception:
        log.exception("oauth: unexpected error answering %s %s", request.method, request.path)
        body = {"error": "server_error", "error_description": "internal error"}
        return web.json_response(body, status=500, headers=_NO_STORE)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


@contextlib.asynccontextmanager
async def serving(server: AuthorizationServer, socket_path: Path) -> AsyncIterator[Path]:
    """Serve on `socket_path` (mode 0600, in the private state dir) until the block ends."""
    await asyncio.to_thread(socket_path.unlink, missing_ok=True)  # left by a crash
    runner = web.AppRunner(application(server), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.UnixSite(runner, str(socket_path))
        await site.start()
        await asyncio.to_thread(socket_path.chmod, 0o600)
        yield socket_path
    finally:
        await runner.cleanup()
        await asyncio.to_thread(socket_path.unlink, missing_ok=True)
