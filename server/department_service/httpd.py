"""The HTTP edge: a standard-library threading server, JSON errors, one log line per request.

This is the one place where `ServiceError`s become responses and unexpected exceptions
become a generic 500 (the traceback goes to the log, never to the client). Every response
closes its connection: Envoy and the control plane reach the service over loopback, where a
new connection costs little, and shutdown then never waits on an idle keep-alive.

At most `MAX_IN_FLIGHT` requests hold a thread at once; a connection accepted beyond that
is answered 503 `overloaded` by the accept loop itself, without a thread or a read of its
request, so a flood costs a bounded number of threads and every caller still gets an answer.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
import traceback
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from department_service.errors import (
    BadRequest,
    Forbidden,
    LengthRequired,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
)
from department_service.logs import emit
from department_service.routes import Department, Request, Response

_DRAIN_LIMIT = 1024 * 1024
MAX_IN_FLIGHT = 64
_LINGER_S = 1.0
_MAX_LINGERING = 256  # refused connections kept half-open at once; beyond, the oldest is closed


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The JSON body every error has: `{"error": {"code": ..., "message": ...}}`."""
    return Response(status, {"error": {"code": code, "message": message}}, headers or {})


def _overloaded() -> bytes:
    """The whole 503 the accept loop writes when every request slot is taken."""
    body = error_response(503, "overloaded", "too many requests in progress; retry shortly").body
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


_OVERLOADED = _overloaded()


class DepartmentHTTPServer(ThreadingHTTPServer):
    """A thread per request, serving one `Department`."""

    request_queue_size = 128  # the default backlog of 5 refuses bursts
    # Non-daemon request threads are the ones server_close() waits for: that wait is what
    # lets a request in flight at SIGTERM finish (ThreadingHTTPServer's default is daemon).
    daemon_threads = False

    def __init__(
        self, address: tuple[str, int], department: Department, *, max_in_flight: int = MAX_IN_FLIGHT
    ) -> None:
        self.department = department
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._lingering: deque[tuple[float, socket.socket]] = deque()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, RequestHandler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the host, which can stall start-up."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the request's thread if a slot is free; otherwise refuse it from here."""
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started to give the slot back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, connection: socket.socket) -> None:
        """503 on a connection no thread will serve, written by the accept loop without
        waiting (a few hundred bytes fit any new socket's buffer). The connection then
        lingers, half-closed, for `_LINGER_S`: closed at once, the request the caller is
        still sending would reset it and destroy the answer before it is read."""
        with contextlib.suppress(OSError):
            connection.setblocking(False)
            connection.send(_OVERLOADED)
            connection.shutdown(socket.SHUT_WR)
        self._lingering.append((time.monotonic(), connection))
        if len(self._lingering) > _MAX_LINGERING:
            self._lingering.popleft()[1].close()
        emit(department_id=self.department.department_id, status=503, error="overloaded")

    def service_actions(self) -> None:
        """Between accepts (and at least every poll interval): close refused connections
        whose callers have had their time to read the answer."""
        super().service_actions()
        deadline = time.monotonic() - _LINGER_S
        while self._lingering and self._lingering[0][0] < deadline:
            self._lingering.popleft()[1].close()

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            self._lingering.popleft()[1].close()


class RequestHandler(BaseHTTPRequestHandler):
    """Reads and size-checks the body, hands a `Request` to the department, writes JSON back."""

    server: DepartmentHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "department-service"
    timeout = 10  # seconds a silent client may hold its thread (and delay shutdown)

    def do_GET(self) -> None:
        """Serve any method the same way; the department decides what is allowed where."""
        started = time.perf_counter()
        fields: dict[str, Any] = {}
        try:
            request = Request(
                method=self.command,
                path=self.path.partition("?")[0],
                query=self.path.partition("?")[2],
                authorization=self.headers.get("Authorization"),
                body=self._read_body(self.server.department.body_limit(self.path.partition("?")[0])),
            )
            response = self.server.department.handle(request)
        except ServiceError as exc:
            if isinstance(exc, Unauthorized | Forbidden):
                fields["auth"] = exc.reason  # why, for the operator; the client only sees 401
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception:  # noqa: BLE001 - the edge is where everything is mapped
            fields["exc"] = traceback.format_exc()
            response = error_response(500, "internal", "internal error")
        self._finish(response, started, fields)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, unknown method...), as JSON."""
        status = HTTPStatus(code)
        self._finish(error_response(code, status.name.lower(), message or status.phrase), None, {})

    def version_string(self) -> str:
        """The Server header: no Python version for the world to read."""
        return self.server_version

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silenced: `_finish` logs one JSON line per request instead."""

    def log_error(self, format: str, *args: Any) -> None:
        """Connection-level trouble (timeouts) as a JSON line."""
        emit(event="connection_error", message=format % args)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise LengthRequired("send the body with a Content-Length")
        declared = self.headers.get("Content-Length")
        if declared is None:
            return b""
        if not (declared.strip().isascii() and declared.strip().isdigit()):
            raise BadRequest("Content-Length is not a number")
        length = int(declared)
        if length > limit:
            self._discard(length)
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise BadRequest("the body ended before Content-Length bytes")
        return body

    def _discard(self, length: int) -> None:
        """Read (a bounded amount of) an unwanted body, so closing does not reset the connection.

        A close with unread input sends a TCP reset, which can destroy the 413 before the
        client reads it.
        """
        remaining = min(length, _DRAIN_LIMIT)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 65536))
                if not chunk:
                    return
                remaining -= len(chunk)
        except OSError:
            return

    def _finish(self, response: Response, started: float | None, fields: dict[str, Any]) -> None:
        if response.raw is None:
            payload = json.dumps(response.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            response.headers.setdefault("Content-Type", "application/json")
        else:
            payload = response.raw
        try:
            self.send_response(response.status)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(payload)
        except OSError as exc:  # the client went away; nothing more to tell it
            fields["write_error"] = str(exc)
        error = response.body.get("error")
        if isinstance(error, dict):
            fields["error"] = error.get("code")
        emit(
            department_id=self.server.department.department_id,
            # http.server may reject a request before it has parsed a method or path.
            method=getattr(self, "command", None) or None,
            path=getattr(self, "path", "").partition("?")[0][:200] or None,
            status=response.status,
            latency_ms=round((time.perf_counter() - started) * 1000, 2) if started is not None else None,
            execution_id=response.execution_id,
            **fields,
        )
