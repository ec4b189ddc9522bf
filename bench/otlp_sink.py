"""An OTLP/HTTP endpoint that takes every export and keeps nothing: what the server's
traces are sent to while `bench/api.py --traces` measures tracing's cost.

It counts the spans it is sent (one protobuf parse per export) and prints the count
when stopped (SIGTERM or Ctrl-C).

Run:  .venv/bin/python bench/otlp_sink.py PORT
"""

from __future__ import annotations

import contextlib
import http.server
import signal
import sys
import threading
from types import FrameType

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

spans = 0
lock = threading.Lock()


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        global spans
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        request = ExportTraceServiceRequest.FromString(body)
        found = sum(len(scope.spans) for r in request.resource_spans for scope in r.scope_spans)
        with lock:
            spans += found
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    print(spans, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
