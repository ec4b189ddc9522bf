"""OpenTelemetry traces: one per API call, and each job's run inside its creator's trace.

Off unless the standard variables ask for it: `OTEL_TRACES_EXPORTER` (`otlp`, `console`,
or several, comma-separated) or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); `OTEL_SDK_DISABLED=true` wins over both. The OTLP
protocol is `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`
(`http/protobuf` by default, or `grpc`); the exporters, the sampler (`OTEL_TRACES_SAMPLER`)
and the resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) read the rest of their
variables themselves. While off, nothing here does any work beyond one flag test.

A job's spans may be made long after, and on another replica than, the call that created
it: the creator's context travels with the job as its W3C `traceparent`, stored beside it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from provisioner.core.errors import ConfigurationError

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.NoOpTracer()
#: Whether spans are being made; read on every call, so a plain module flag.
enabled = False

_EXPORTERS = ("otlp", "console", "none")


def _exporters(env: Mapping[str, str]) -> list[str]:
    named = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    unknown = sorted(set(named) - set(_EXPORTERS))
    if unknown:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)} (use otlp, console or none)"
        )
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not named and endpoint:
        named = ["otlp"]
    return [n for n in named if n != "none"]


def _otlp(env: Mapping[str, str]) -> SpanExporter:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or "http/protobuf"
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc()
    raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not http/protobuf or grpc")


def processors(env: Mapping[str, str]) -> list[SpanProcessor]:
    """The span processors the environment asks for; none when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    return [
        BatchSpanProcessor(_otlp(env) if name == "otlp" else ConsoleSpanExporter())
        for name in _exporters(env)
    ]


@contextlib.contextmanager
def tracing(env: Mapping[str, str], *, instance: str, extra: Sequence[SpanProcessor] = ()) -> Iterator[bool]:
    """Trace while the block runs if `env` (or `extra`, for tests) asks for it; True if so.
    Spans still buffered are exported when the block ends."""
    global _tracer, enabled
    chosen = [*processors(env), *extra]
    if not chosen:
        yield False
        return
    resource = Resource.create({SERVICE_INSTANCE_ID: instance}).merge(
        Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or "provisioning-orchestrator"})
    )
    provider = TracerProvider(resource=resource)
    for processor in chosen:
        provider.add_span_processor(processor)
    _tracer, enabled = provider.get_tracer("provisioner"), True
    try:
        yield True
    finally:
        _tracer, enabled = trace.NoOpTracer(), False
        provider.shutdown()


# -- API calls ------------------------------------------------------------------------------------


def start_call(method: str, metadata: Sequence[tuple[str, Any]] | None) -> Span | None:
    """A SERVER span for the gRPC call `method`, child of the caller's `traceparent` if
    it sent one, made current for the rest of the call's task. None while tracing is off."""
    if not enabled:
        return None
    carrier = {k: str(v) for k, v in metadata or () if k in ("traceparent", "tracestate")}
    service, _, name = method.lstrip("/").rpartition("/")
    span = _tracer.start_span(
        method.lstrip("/"),
        context=_propagator.extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    )
    # The call runs in a task of its own: what is attached here is seen by its handler only.
    otel_context.attach(trace.set_span_in_context(span))
    return span


def end_call(span: Span | None, code: str, *, server_fault: bool) -> None:
    if span is None:
        return
    span.set_attribute("rpc.grpc.status_code", code)
    if server_fault:
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()


def trace_id(span: Span | None = None) -> str | None:
    """The hex trace id of `span` (default: the current one), or None if there is none."""
    found = (span or trace.get_current_span()).get_span_context()
    return format(found.trace_id, "032x") if found.is_valid else None


def current_traceparent() -> str | None:
    """The current span's context as a W3C `traceparent`, to store with what it creates."""
    if not enabled:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


# -- jobs -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def job_span(name: str, traceparent: str | None, attributes: Mapping[str, str]) -> Iterator[None]:
    """The span of one run of a job (a replica's, until it ends or loses the lease), in the
    trace of the call that created the job."""
    if not enabled:
        yield
        return
    parent = _propagator.extract({"traceparent": traceparent} if traceparent else {})
    with _tracer.start_as_current_span(name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes):
        yield


@contextlib.contextmanager
def step_span(name: str, attributes: Mapping[str, str | int]) -> Iterator[Span | None]:
    """A span per step attempt or compensation; the caller sets its outcome."""
    if not enabled:
        yield None
        return
    with _tracer.start_as_current_span(name, attributes=attributes, record_exception=False) as span:
        yield span


def outcome(span: Span | None, value: str, error: BaseException | None = None) -> None:
    if span is None:
        return
    span.set_attribute("provisioner.outcome", value)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
