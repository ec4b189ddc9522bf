"""Traces from the real `provisioning-server`, exported over OTLP/HTTP to a collector this
test runs: a REST caller's W3C `traceparent` passes through Envoy to the gRPC call's span,
the job's step spans are in the same trace, and the server's log lines carry its id."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from provisioner.core.states import StepName
from tests.e2e.conftest import provisioned, started_plane
from tests.ports import free_port

pytestmark = pytest.mark.slow

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
SPEC = {
    "departmentId": "traced",
    "departmentName": "Traced",
    "workflows": ["database"],
    "dataRetention": "90d",
    "region": "us-west",
    "adminEmail": "admin@example.com",
}


class Collector:
    """An OTLP/HTTP trace receiver: what a real collector would be sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self.lock = threading.Lock()

    def received(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource in request.resource_spans:
                named = {a.key: a.value.string_value for a in resource.resource.attributes}
                service = named["service.name"]
                for scope in resource.scope_spans:
                    self.spans += [(service, span) for span in scope.spans]

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [span for _, span in self.spans if span.name == name]


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    found = Collector()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                found.received(body)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def attributes(span: Span) -> dict[str, object]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_a_rest_callers_trace_reaches_the_jobs_step_spans(
    collector: tuple[Collector, str], tmp_path: Path
) -> None:
    spans, endpoint = collector
    with started_plane(
        tmp_path,
        PROVISIONER_STEPS="local",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="provisioner-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    ) as plane:
        assert "Traces" in plane.stdout
        with plane.http() as api:
            api.headers["traceparent"] = f"00-{TRACE}-{PARENT}-01"
            job = provisioned(api, SPEC)
        assert job["state"] == "JOB_STATE_COMPLETED", job
        deadline = time.monotonic() + 20
        while not spans.named("step gateway"):
            assert time.monotonic() < deadline, "the step spans never reached the collector"
            time.sleep(0.1)
        log = plane.log.read_text()

    (call,) = spans.named("provisioning.v1.ProvisioningService/Provision")
    assert call.trace_id.hex() == TRACE and call.parent_span_id.hex() == PARENT
    assert call.kind == Span.SPAN_KIND_SERVER
    (run,) = spans.named("job provision")
    assert run.trace_id.hex() == TRACE and run.parent_span_id == call.span_id
    for name in StepName:
        (step,) = spans.named(f"step {name}")
        assert step.trace_id.hex() == TRACE and step.parent_span_id == run.span_id
        assert attributes(step) == {
            "provisioner.department_id": "traced",
            "provisioner.job_id": job["jobId"],
            "provisioner.step": str(name),
            "provisioner.attempt": 1,
            "provisioner.outcome": "succeeded",
        }
    assert {service for service, _ in spans.spans} == {"provisioner-under-test"}

    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    provision = [line for line in lines if line.get("method", "").endswith("/Provision")]
    assert [line["trace_id"] for line in provision] == [TRACE]
