"""A container platform on this machine, for the fake Railway's deployments to really run.

`LocalPlatform` is the fake's runtime (see `tests/integration/fake_railway.py`): a
deployment starts the department service the way the image would (`python -m
department_service`, configured only by its variables plus `PORT`), and each service's
public domain is `localhost:<port>` of a TLS front of its own, as Railway's edge
terminates TLS in front of a service. The front's certificate comes from a throwaway
authority (`ca_file`), which the control plane is told to trust; nothing else is.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import free_port

HOST = "localhost"


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (issuer or (subject,))[0])]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_tls(root: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate authority (its PEM file) and a server context for `localhost` it signed."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("department platform test CA", ca_key, None)
    leaf = _certificate(HOST, leaf_key, ("department platform test CA", ca_key))
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = root / "ca.pem", root / "localhost.pem", root / "localhost.key"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file.write_bytes(leaf.public_bytes(pem))
    key_file.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


class TlsFront:
    """Terminates TLS on a port of its own and relays each connection to the service's port."""

    def __init__(self, context: ssl.SSLContext, backend: Callable[[], int | None]) -> None:
        self._context = context
        self._backend = backend
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True, name=f"tls-front-{self.port}").start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            client = self._context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()
            return
        self.handshakes += 1
        port = self._backend()
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5) if port else None
        except OSError:
            upstream = None
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        for end in (client, upstream):
            end.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side ends, then shut both down, so the other direction ends too.

    Closing is left to the relay once both directions are done: a socket closed while
    another thread still reads it frees its descriptor, which the next socket of this
    process (a database connection of the test's) may get, and that thread would then
    read the new socket's bytes.
    """
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


class LocalPlatform:
    """The fake Railway's runtime: one service process and one TLS front per service."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ca_file, self._context = make_tls(root)
        self.fronts: dict[str, TlsFront] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._ports: dict[str, int] = {}

    def domain(self, service: str) -> str:
        front = TlsFront(self._context, lambda: self._ports.get(service))
        self.fronts[service] = front
        return f"{HOST}:{front.port}"

    def run(self, service: str, variables: dict[str, str], healthcheck_path: str | None) -> bool:
        self._stop(service)
        port = free_port()
        # Only what a platform gives a container: its variables and PORT.
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME", "LANG")}
        with (self.root / f"{service}.log").open("ab") as log:
            self.processes[service] = subprocess.Popen(
                [sys.executable, "-m", "department_service", "--host", "127.0.0.1"],
                env={**base, **variables, "PORT": str(port)},
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._ports[service] = port
        return self._healthy(service, f"http://127.0.0.1:{port}{healthcheck_path or '/'}")

    def remove(self, service: str) -> None:
        self._stop(service)
        front = self.fronts.pop(service, None)
        if front is not None:
            front.close()

    def running(self) -> list[str]:
        return sorted(name for name, process in self.processes.items() if process.poll() is None)

    def close(self) -> None:
        for service in list({*self.processes, *self.fronts}):
            self.remove(service)

    def _healthy(self, service: str, url: str) -> bool:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.processes[service].poll() is not None:
                return False
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    return True
            time.sleep(0.05)
        return False

    def _stop(self, service: str) -> None:
        process = self.processes.pop(service, None)
        self._ports.pop(service, None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
