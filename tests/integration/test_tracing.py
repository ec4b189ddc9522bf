"""Traces on a real grpc.aio server: a call's span continues its caller's trace, and the
job it creates runs in that trace, a span per step attempt and per compensation.

Spans go to the SDK's in-memory exporter; the OTLP path through Envoy is in
tests/e2e/test_tracing.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from provisioner.core.errors import ConfigurationError
from provisioner.core.states import StepName
from provisioner.edge.interceptors import RequestLoggingInterceptor
from provisioner.edge.server import GrpcEdge
from provisioner.engine.orchestrator import Orchestrator
from provisioner.events.hub import EventHub
from provisioner.logs import JsonFormatter
from provisioner.steps.faults import FaultInjectingStep, parse_fault_plan
from provisioner.steps.local import LocalMarkerStep
from provisioner.store.memory import InMemoryJobStore
from provisioner.telemetry import tracing
from provisioner_api.provisioning.v1 import provisioning_pb2 as pb
from provisioner_api.provisioning.v1 import provisioning_pb2_grpc as pb_grpc
from tests.integration.test_grpc_api import CONFIG, request

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    with tracing.tracing({}, instance="test", extra=[SimpleSpanProcessor(exporter)]):
        yield exporter


@pytest.fixture
def logged() -> Iterator[io.StringIO]:
    """The server's log lines, as its JSON formatter writes them."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    server = logging.getLogger("provisioner")
    server.addHandler(handler)
    level = server.level
    server.setLevel(logging.INFO)  # setLevel, which clears the loggers' cached answers
    yield sink
    server.removeHandler(handler)
    server.setLevel(level)


@pytest.fixture
async def stub(spans: InMemorySpanExporter, tmp_path: Path) -> AsyncIterator[pb_grpc.ProvisioningServiceStub]:
    store = InMemoryJobStore()
    plan = parse_fault_plan("database=transient:1@broken,validation=fail@broken")
    marked = {n: LocalMarkerStep(n, tmp_path) for n in StepName}
    steps = {n: FaultInjectingStep(s, plan[n]) if n in plan else s for n, s in marked.items()}
    orchestrator = Orchestrator(store, EventHub(store), steps, CONFIG)
    await orchestrator.start()
    edge = GrpcEdge(orchestrator, interceptors=[RequestLoggingInterceptor()])
    port = await edge.start("127.0.0.1:0")
    await edge.serving()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.ProvisioningServiceStub(channel)
    await edge.stop(None)
    orchestrator.hub.close()
    await orchestrator.stop()


async def provisioned(stub: pb_grpc.ProvisioningServiceStub, department: str) -> str:
    job = await stub.Provision(request(department), metadata=(("traceparent", TRACEPARENT),))
    async for _ in stub.WatchProgress(pb.WatchProgressRequest(job_id=job.job_id)):
        pass
    return str(job.job_id)


def hex_id(value: int, width: int = 16) -> str:
    return format(value, f"0{width}x")


def by_name(exporter: InMemorySpanExporter, job_id: str = "") -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        attributes = span.attributes or {}
        if job_id and attributes.get("provisioner.job_id", job_id) != job_id:
            continue
        found.setdefault(span.name, []).append(span)
    return found


async def test_a_call_continues_its_callers_trace_and_its_job_runs_inside_it(
    stub: pb_grpc.ProvisioningServiceStub, spans: InMemorySpanExporter
) -> None:
    job_id = await provisioned(stub, "traced")
    found = by_name(spans, job_id)
    (call,) = found["provisioning.v1.ProvisioningService/Provision"]
    assert call.kind is SpanKind.SERVER
    assert hex_id(call.context.trace_id, 32) == TRACE
    assert call.parent is not None and hex_id(call.parent.span_id) == PARENT
    assert call.attributes == {
        "rpc.system": "grpc",
        "rpc.service": "provisioning.v1.ProvisioningService",
        "rpc.method": "Provision",
        "rpc.grpc.status_code": "OK",
    }

    (job,) = found["job provision"]
    assert job.context.trace_id == call.context.trace_id
    assert job.parent is not None and job.parent.span_id == call.context.span_id
    assert job.attributes == {"provisioner.department_id": "traced", "provisioner.job_id": job_id}

    for name in StepName:
        (step,) = found[f"step {name}"]
        assert step.context.trace_id == call.context.trace_id
        assert step.parent is not None and step.parent.span_id == job.context.span_id
        assert step.attributes == {
            "provisioner.department_id": "traced",
            "provisioner.job_id": job_id,
            "provisioner.step": str(name),
            "provisioner.attempt": 1,
            "provisioner.outcome": "succeeded",
        }
    assert not [name for name in found if name.startswith("compensate")]


async def test_retries_failures_and_compensations_are_spans_with_their_outcome(
    stub: pb_grpc.ProvisioningServiceStub, spans: InMemorySpanExporter
) -> None:
    job_id = await provisioned(stub, "broken")
    found = by_name(spans, job_id)
    outcomes = {
        name: [(s.attributes or {}).get("provisioner.outcome") for s in found[name]]
        for name in ("step database", "step validation", "compensate database", "compensate container")
    }
    assert outcomes == {
        "step database": ["retrying", "succeeded"],
        "step validation": ["failed"],
        "compensate database": ["compensated"],
        "compensate container": ["compensated"],
    }
    attempts = [(s.attributes or {}).get("provisioner.attempt") for s in found["step database"]]
    assert attempts == [1, 2]
    (failed,) = found["step validation"]
    assert not failed.status.is_ok
    engine = [s for name, spans_ in found.items() if not name.startswith("provisioning.") for s in spans_]
    assert {s.context.trace_id for s in engine} == {int(TRACE, 16)}


async def test_log_lines_carry_the_trace_id(
    stub: pb_grpc.ProvisioningServiceStub, spans: InMemorySpanExporter, logged: io.StringIO
) -> None:
    await provisioned(stub, "broken")
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    request_line = next(line for line in lines if line.get("method", "").endswith("/Provision"))
    assert request_line["trace_id"] == TRACE
    # Said by the engine, inside the job's run.
    failure = next(line for line in lines if "FAILED" in line["msg"])
    assert failure["trace_id"] == TRACE


async def test_without_a_traceparent_a_call_starts_a_trace_of_its_own(
    stub: pb_grpc.ProvisioningServiceStub, spans: InMemorySpanExporter
) -> None:
    await stub.ListDepartments(pb.ListDepartmentsRequest())
    name = "provisioning.v1.ProvisioningService/ListDepartments"
    # The server ends its span after the response is on its way: the client can be first.
    for _ in range(200):
        if name in by_name(spans):
            break
        await asyncio.sleep(0.01)
    (call,) = by_name(spans)[name]
    assert call.parent is None and call.context.trace_id != int(TRACE, 16)


def test_tracing_is_off_unless_the_otel_variables_ask_for_it() -> None:
    assert tracing.processors({}) == []
    assert tracing.processors({"OTEL_TRACES_EXPORTER": "none"}) == []
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert len(tracing.processors(endpoint)) == 1
    assert tracing.processors({**endpoint, "OTEL_SDK_DISABLED": "true"}) == []
    assert len(tracing.processors({"OTEL_TRACES_EXPORTER": "otlp,console"})) == 2
    with pytest.raises(ConfigurationError, match="unknown exporter jaeger"):
        tracing.processors({"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        tracing.processors({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert not tracing.enabled and tracing.current_traceparent() is None
