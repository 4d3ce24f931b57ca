"""An OTLP/HTTP trace receiver, decoding with the OpenTelemetry project's own
protobuf classes (opentelemetry-proto), as a collector would.

usage: otlp_receiver.py PORT LOG

Every span of every POST /v1/traces is appended to LOG as one JSON line:
service, name, kind, trace_id, span_id, parent_span_id (hex), status code,
and its attributes as strings.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

port, log_path = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return "" if kind is None else str(getattr(v, kind))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        lines = []
        for rs in request.resource_spans:
            attrs = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "service": attrs.get("service.name"),
                        "name": s.name,
                        "kind": s.kind,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "status": s.status.code,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }, ensure_ascii=False))
        with lock, open(log_path, "a") as f:
            for line in lines:
                f.write(line + "\n")
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
