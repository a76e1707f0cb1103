#!/usr/bin/env python3
"""A real OTLP/HTTP trace receiver for the tests: decodes each ExportTraceServiceRequest
(protobuf, optionally gzip) posted to /v1/traces with PyPI's opentelemetry-proto, and appends
one JSON line per span to OUT: service, instance, trace_id, span_id, parent_span_id, name and
attributes. Listens on HOST:PORT (PORT 0: any free port) and writes the port it got to
OUT.port once it is ready.

Usage: otlp_receiver.py HOST PORT OUT
"""
import gzip
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

HOST, PORT, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        req = trace_service_pb2.ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # a malformed request is the exporter's bug: answer 400
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(e).encode())
            return
        lines = []
        for rs in req.resource_spans:
            res = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    lines.append(json.dumps({
                        "service": res.get("service.name", ""),
                        "instance": res.get("service.instance.id", ""),
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "start_ns": s.start_time_unix_nano,
                        "end_ns": s.end_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }))
        with open(OUT, "a") as f:
            for line in lines:
                f.write(line + "\n")
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer((HOST, PORT), Handler)
with open(OUT + ".port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(OUT + ".port.tmp", OUT + ".port")
server.serve_forever()
