#!/usr/bin/env python3
"""Send OTLP logs and/or Istio-style metrics to a Verity endpoint with the real
OpenTelemetry Python SDK exporters (gRPC or HTTP/protobuf).

Run it with the interpreter from scripts/python-env.sh, e.g.

    PY="$(scripts/python-env.sh | tail -n1)"
    "$PY" tests/python/send_otlp.py --protocol grpc --endpoint http://127.0.0.1:4317 \
        --logs shared/reference/samples/istio-text.log --attr log_name=accesslog
    "$PY" tests/python/send_otlp.py --protocol http --endpoint http://127.0.0.1:4318 --metrics

Logs: every line of --logs FILE ('-' = stdin) that is not blank becomes one
log record whose body is that line as a string. All records go out in ONE synchronous
export call of the low-level OTLPLogExporter (no batch processor, so exactly these records,
in file order, in one request).

Metrics (--metrics): three metrics, one data point each, collected once from a MeterProvider
with an InMemoryMetricReader and handed to the OTLP metric exporter in ONE export call:
  * istio_requests_total                (Sum, monotonic, cumulative, value 7,
                                         connection_security_policy=mutual_tls)
  * istio_request_duration_milliseconds (Histogram, cumulative, unit ms, values 3, 12, 40
                                         -> count 3, sum 55, Istio's default buckets)
  * istio_tcp_sent_bytes_total          (Sum, monotonic, cumulative, value 1024, unit By,
                                         request_protocol=tcp, connection_security_policy=none,
                                         no response_code label)
All carry reporter=destination and the sleep -> httpbin workload labels (see ISTIO_LABELS).

Resource: exactly the --resource key=value pairs (nothing else) unless --sdk-resource is
given, which merges the SDK's default resource (service.name, telemetry.sdk.*,
OTEL_RESOURCE_ATTRIBUTES).

Output: one line per signal on stdout, e.g. "logs: SUCCESS (3 records via grpc to ...)".
Exit status: 0 when every requested export returned SUCCESS, 1 when one returned FAILURE,
2 for usage errors. Note that the SDK exporters ignore the OTLP partial_success field of the
response: a 2xx/OK answer is SUCCESS even when the server rejected some records.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

TIMEOUT_S_DEFAULT = 10.0
DEFAULT_ENDPOINTS = {"grpc": "http://127.0.0.1:4317", "http": "http://127.0.0.1:4318"}
SCOPE_NAME = "verity-e2e.send_otlp"
SCOPE_VERSION = "1"

ISTIO_LABELS = {
    "reporter": "destination",
    "source_workload": "sleep",
    "source_workload_namespace": "default",
    "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
    "destination_workload": "httpbin",
    "destination_workload_namespace": "default",
    "destination_principal": "spiffe://cluster.local/ns/default/sa/httpbin",
    "destination_service": "httpbin.default.svc.cluster.local",
    "request_protocol": "http",
    "response_code": "200",
    "connection_security_policy": "mutual_tls",
}
REQUESTS_TOTAL_VALUE = 7
DURATION_VALUES_MS = (3, 12, 40)
TCP_SENT_BYTES_VALUE = 1024
# Istio's default buckets for istio_request_duration_milliseconds.
ISTIO_DURATION_BUCKETS_MS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Send OTLP logs/metrics to Verity with the OpenTelemetry Python SDK exporters.",
        epilog="Exit status: 0 all exports SUCCESS, 1 an export FAILED, 2 usage error.",
    )
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                   help="OTLP transport (default: grpc)")
    p.add_argument("--endpoint",
                   help="grpc: http://HOST:PORT (default http://127.0.0.1:4317); "
                        "http: base URL, /v1/logs and /v1/metrics are appended "
                        "(default http://127.0.0.1:4318)")
    p.add_argument("--logs", metavar="FILE",
                   help="send each non-empty line of FILE ('-' for stdin) as one log record")
    p.add_argument("--metrics", action="store_true",
                   help="send the Istio sample metrics (istio_requests_total, "
                        "istio_request_duration_milliseconds, istio_tcp_sent_bytes_total)")
    p.add_argument("--attr", metavar="KEY=VALUE", type=key_value, action="append", default=[],
                   help="string attribute added to every log record (repeatable)")
    p.add_argument("--resource", metavar="KEY=VALUE", type=key_value, action="append", default=[],
                   help="string resource attribute (repeatable)")
    p.add_argument("--sdk-resource", action="store_true",
                   help="also send the SDK's default resource attributes "
                        "(service.name, telemetry.sdk.*, OTEL_RESOURCE_ATTRIBUTES)")
    p.add_argument("--timeout", type=float, default=TIMEOUT_S_DEFAULT,
                   help=f"per-export timeout in seconds (default {TIMEOUT_S_DEFAULT:g})")
    args = p.parse_args(argv)
    if not args.logs and not args.metrics:
        p.error("nothing to send: give --logs FILE and/or --metrics")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    args.endpoint = (args.endpoint or DEFAULT_ENDPOINTS[args.protocol]).rstrip("/")
    return args


def make_resource(args: argparse.Namespace):
    from opentelemetry.sdk.resources import Resource

    attrs = dict(args.resource)
    return Resource.create(attrs) if args.sdk_resource else Resource(attrs)


def read_lines(path: str) -> list[str]:
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    # Split on "\n" only (str.splitlines would also split on \v, \f, U+2028, ...); each line
    # that is not empty or whitespace-only, minus a trailing "\r", is one record, verbatim.
    return [line.removesuffix("\r") for line in text.split("\n") if line.strip()]


def build_log_records(lines: list[str], attrs: dict[str, str], resource) -> list:
    """Builds what OTLPLogExporter.export() takes in the installed SDK.

    SDK >= 1.39: opentelemetry.sdk._logs.ReadableLogRecord(log_record=<API LogRecord>,
    resource=..., instrumentation_scope=...). Older SDKs: LogData(log_record=<SDK LogRecord
    carrying the resource>, instrumentation_scope=...).
    """
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    scope = InstrumentationScope(SCOPE_NAME, SCOPE_VERSION)
    now = time.time_ns()
    records = []
    try:
        from opentelemetry._logs import LogRecord as APILogRecord
        from opentelemetry.sdk._logs import ReadableLogRecord
    except ImportError:  # pre-1.39 SDK
        from opentelemetry.sdk._logs import LogData, LogRecord as SDKLogRecord

        for line in lines:
            rec = SDKLogRecord(timestamp=now, observed_timestamp=now, body=line,
                               attributes=dict(attrs), resource=resource)
            records.append(LogData(log_record=rec, instrumentation_scope=scope))
        return records
    for line in lines:
        rec = APILogRecord(timestamp=now, observed_timestamp=now, body=line, attributes=dict(attrs))
        records.append(ReadableLogRecord(log_record=rec, resource=resource, instrumentation_scope=scope))
    return records


def log_exporter(args: argparse.Namespace):
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter(endpoint=args.endpoint, timeout=args.timeout)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter(endpoint=f"{args.endpoint}/v1/logs", timeout=args.timeout)


def metric_exporter(args: argparse.Namespace):
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter(endpoint=args.endpoint, timeout=args.timeout)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=f"{args.endpoint}/v1/metrics", timeout=args.timeout)


def target(args: argparse.Namespace, signal: str) -> str:
    return args.endpoint if args.protocol == "grpc" else f"{args.endpoint}/v1/{signal}"


def send_logs(args: argparse.Namespace) -> bool:
    lines = read_lines(args.logs)
    if not lines:
        print(f"logs: nothing to send ({args.logs} has no non-empty line)", file=sys.stderr)
        return False
    records = build_log_records(lines, dict(args.attr), make_resource(args))
    exporter = log_exporter(args)
    try:
        result = exporter.export(records)
    finally:
        exporter.shutdown()
    ok = getattr(result, "name", str(result)) == "SUCCESS"
    print(f"logs: {result.name} ({len(records)} records via {args.protocol} to {target(args, 'logs')})")
    return ok


def collect_metrics(resource):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    # InMemoryMetricReader's default temporality is cumulative for every instrument.
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter(SCOPE_NAME, SCOPE_VERSION)

    requests_total = meter.create_counter("istio_requests_total", unit="1",
                                          description="Total number of requests")
    requests_total.add(REQUESTS_TOTAL_VALUE, ISTIO_LABELS)

    duration = meter.create_histogram(
        "istio_request_duration_milliseconds", unit="ms", description="Request duration",
        explicit_bucket_boundaries_advisory=ISTIO_DURATION_BUCKETS_MS,
    )
    for v in DURATION_VALUES_MS:
        duration.record(v, ISTIO_LABELS)

    # Istio's TCP metrics have no response_code label.
    tcp_labels = {k: v for k, v in ISTIO_LABELS.items() if k != "response_code"}
    tcp_labels.update(request_protocol="tcp", connection_security_policy="none")
    tcp_sent = meter.create_counter("istio_tcp_sent_bytes_total", unit="By",
                                    description="Bytes sent during TCP connections")
    tcp_sent.add(TCP_SENT_BYTES_VALUE, tcp_labels)

    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def count_points(data) -> int:
    return sum(
        len(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    )


def send_metrics(args: argparse.Namespace) -> bool:
    data = collect_metrics(make_resource(args))
    if data is None:
        print("metrics: FAILURE (SDK collected nothing)", file=sys.stderr)
        return False
    exporter = metric_exporter(args)
    try:
        result = exporter.export(data, timeout_millis=args.timeout * 1000)
    finally:
        exporter.shutdown()
    ok = result.name == "SUCCESS"
    print(f"metrics: {result.name} ({count_points(data)} data points via {args.protocol} "
          f"to {target(args, 'metrics')})")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The exporters report transport errors through the logging module.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    ok = True
    if args.logs:
        ok = send_logs(args) and ok
    if args.metrics:
        ok = send_metrics(args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
