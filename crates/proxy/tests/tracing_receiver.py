"""Span receivers for crates/proxy/tests/tracing_export.rs, built on libraries sluice did not write:
the standard library's HTTP server for Zipkin JSON v2 (POST /api/v2/spans), and the OpenTelemetry
project's generated OTLP messages and gRPC stubs (PyPI opentelemetry-proto, grpcio) for OTLP over
gRPC (TraceService/Export) and OTLP/HTTP (POST /v1/traces, protobuf).

    python tracing_receiver.py zipkin|otlp-grpc|otlp-http [--status CODE] [--bind IP] [--port N]

Listens on --bind (default 127.0.0.1) and --port (default: a free one), prints `port <n>` on the first line, then one JSON line per
span received, in one shape for the three protocols:
    {"traceId", "id", "parentId", "name", "kind", "serviceName", "tags": {...},
     "timestamp" (µs), "duration" (µs), "path", "contentType", "authority", "headers": {...}}
`--status` makes the HTTP receivers answer every export with that code (a failing backend).
"""

import json
import sys
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

mode = sys.argv[1]


def option(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


status = int(option("--status")) if option("--status") else None
bind = option("--bind", "127.0.0.1")
listen_port = int(option("--port", "0"))


def emit(span):
    sys.stdout.write(json.dumps(span, sort_keys=True) + "\n")
    sys.stdout.flush()


def otlp_spans(req, meta):
    kinds = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
    for rs in req.resource_spans:
        service = ""
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                service = kv.value.string_value
        for ss in rs.scope_spans:
            for s in ss.spans:
                span = {
                    "traceId": s.trace_id.hex(),
                    "id": s.span_id.hex(),
                    "name": s.name,
                    "kind": kinds.get(s.kind, str(s.kind)),
                    "serviceName": service,
                    "tags": {kv.key: kv.value.string_value for kv in s.attributes},
                    "timestamp": s.start_time_unix_nano // 1000,
                    "duration": (s.end_time_unix_nano - s.start_time_unix_nano) // 1000,
                    "statusCode": s.status.code,
                }
                if s.parent_span_id:
                    span["parentId"] = s.parent_span_id.hex()
                span.update(meta)
                emit(span)


class Http(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        meta = {
            "path": self.path,
            "contentType": self.headers.get("content-type", ""),
            "authority": self.headers.get("host", ""),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }
        if status is not None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if mode == "zipkin":
            for s in json.loads(body):
                s["serviceName"] = s.get("localEndpoint", {}).get("serviceName", "")
                s.update(meta)
                emit(s)
            code = 202
        else:
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            otlp_spans(req, meta)
            code = 200
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()


def serve_http():
    server = ThreadingHTTPServer((bind, listen_port), Http)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


def serve_grpc():
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            md = dict(context.invocation_metadata())
            meta = {
                "path": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                "contentType": "application/grpc",
                "authority": md.get(":authority", ""),
                "headers": md,
            }
            otlp_spans(request, meta)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port(f"{bind}:{listen_port}")
    server.start()
    print(f"port {port}", flush=True)
    server.wait_for_termination()


if mode.startswith("otlp"):
    from opentelemetry.proto.trace.v1 import trace_pb2

    if not hasattr(trace_pb2, "ScopeSpans"):
        sys.exit(
            "opentelemetry.proto is an old copy (xds-protos bundles one): "
            "run scripts/install-test-deps.sh, which reinstalls opentelemetry-proto last"
        )

if mode == "otlp-grpc":
    serve_grpc()
elif mode in ("zipkin", "otlp-http"):
    serve_http()
else:
    sys.exit(f"unknown mode {mode}")
