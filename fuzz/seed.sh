#!/usr/bin/env bash
# Builds the fuzzing corpora, fuzz/corpus/<target>/ (git-ignored), from the repository's own
# fixtures, then adds every committed regression input (fuzz/regressions/<target>/).
#
#   fuzz/seed.sh                         # writes fuzz/corpus/
#   fuzz/seed.sh --out DIR               # writes DIR/<target>/ instead
#   fuzz/seed.sh --samples REF --out DIR # also REF/samples/*.log and REF/otlp/*.json (e.g. the
#                                        # upstream reference samples); keep DIR outside the
#                                        # repository and pass it as a second corpus directory
#
# Sources: collector/tests/cases/*.yaml (every `line`), tests/fixtures/mesh.log and
# otlp-logs.json, rules/pack/*.yaml (the rules, and their test lines as log lines), app/config/default.yaml, deploy/config/verity.yaml.
# OTLP protobuf seeds are encoded from the same JSON by the small encoder below (no protobuf
# library needed); the metric seeds are written here (the repository has no metrics fixture).
# spiffe_cert seeds are certificates made with `openssl`, when it is installed.
# Needs python3 with PyYAML. Files are named by content hash, so re-running is idempotent.
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$FUZZ/.." && pwd)"
OUT="$FUZZ/corpus"
SAMPLES=""
while (($#)); do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --samples) SAMPLES="$2"; shift 2 ;;
        *) echo "usage: $0 [--out DIR] [--samples REFERENCE_DIR]" >&2; exit 2 ;;
    esac
done
python3 -c 'import yaml' 2>/dev/null || { echo "seed.sh needs python3 with PyYAML (pip install pyyaml)" >&2; exit 1; }
mkdir -p "$OUT"

# spiffe_cert: self-signed certificates with URI SANs, DER.
if command -v openssl >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$OUT/spiffe_cert"
    i=0
    for san in "URI:spiffe://cluster.local/ns/shop/sa/orders" \
        "URI:spiffe://cluster.local/ns/a/sa/b,URI:spiffe://cluster.local/ns/c/sa/d" \
        "URI:https://example.com/x,DNS:verity.test" "DNS:verity.test"; do
        i=$((i + 1))
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
            -subj "/CN=verity-fuzz-$i" -addext "subjectAltName=$san" \
            -keyout "$tmp/k$i.pem" -out "$tmp/c$i.pem" >/dev/null 2>&1
        openssl x509 -in "$tmp/c$i.pem" -outform DER -out "$OUT/spiffe_cert/openssl-$i.der"
    done
fi

python3 - "$REPO" "$OUT" "$SAMPLES" <<'PY'
import base64, glob, hashlib, json, os, struct, sys
import yaml

repo, out, samples = sys.argv[1], sys.argv[2], sys.argv[3]

def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)

def read(path):
    with open(path, "rb") as f:
        return f.read()

# --- a minimal protobuf encoder for the OTLP messages Verity reads ---------------------------
def varint(n):
    n &= (1 << 64) - 1
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)

def key(field, wire):
    return varint(field << 3 | wire)

def ld(field, payload):  # length-delimited
    return key(field, 2) + varint(len(payload)) + payload

def s(field, text):
    return ld(field, text.encode()) if text else b""

def vi(field, n):
    return key(field, 0) + varint(int(n)) if n else b""

def f64(field, n):  # fixed64
    return key(field, 1) + struct.pack("<Q", int(n)) if n else b""

def sf64(field, n):  # sfixed64
    return key(field, 1) + struct.pack("<q", int(n))

def dbl(field, x):
    return key(field, 1) + struct.pack("<d", float(x))

def any_value(v):
    if "stringValue" in v: return ld(1, v["stringValue"].encode())
    if "boolValue" in v: return key(2, 0) + varint(1 if v["boolValue"] else 0)
    if "intValue" in v: return key(3, 0) + varint(int(v["intValue"]))
    if "doubleValue" in v: return dbl(4, v["doubleValue"])
    if "arrayValue" in v: return ld(5, b"".join(ld(1, any_value(x)) for x in v["arrayValue"].get("values", [])))
    if "kvlistValue" in v: return ld(6, b"".join(ld(1, kv(x)) for x in v["kvlistValue"].get("values", [])))
    if "bytesValue" in v: return ld(7, base64.b64decode(v["bytesValue"]))
    return b""

def kv(x):
    return s(1, x["key"]) + (ld(2, any_value(x["value"])) if "value" in x else b"")

def attrs(field, items):
    return b"".join(ld(field, kv(x)) for x in items or [])

def resource(r):
    return ld(1, attrs(1, r.get("attributes"))) if r is not None else b""

def scope(sc):
    return ld(1, s(1, sc.get("name", "")) + s(2, sc.get("version", ""))) if sc else b""

def hexbytes(field, h):
    return ld(field, bytes.fromhex(h)) if h else b""

def log_record(r):
    return (f64(1, r.get("timeUnixNano", 0)) + vi(2, r.get("severityNumber", 0)) + s(3, r.get("severityText", ""))
            + (ld(5, any_value(r["body"])) if "body" in r else b"") + attrs(6, r.get("attributes"))
            + vi(8, r.get("flags", 0)) + hexbytes(9, r.get("traceId", "")) + hexbytes(10, r.get("spanId", ""))
            + f64(11, r.get("observedTimeUnixNano", 0)))

def logs_request(j):
    return b"".join(
        ld(1, resource(rl.get("resource")) + b"".join(
            ld(2, scope(sl.get("scope")) + b"".join(ld(2, log_record(r)) for r in sl.get("logRecords", [])))
            for sl in rl.get("scopeLogs", [])))
        for rl in j.get("resourceLogs", []))

def number_point(p):
    v = dbl(4, p["asDouble"]) if "asDouble" in p else (sf64(6, p["asInt"]) if "asInt" in p else b"")
    return f64(2, p.get("startTimeUnixNano", 0)) + f64(3, p.get("timeUnixNano", 0)) + v + attrs(7, p.get("attributes"))

def packed_fixed64(field, xs):
    return ld(field, b"".join(struct.pack("<Q", int(x)) for x in xs)) if xs else b""

def packed_double(field, xs):
    return ld(field, b"".join(struct.pack("<d", float(x)) for x in xs)) if xs else b""

def histogram_point(p):
    return (f64(2, p.get("startTimeUnixNano", 0)) + f64(3, p.get("timeUnixNano", 0)) + f64(4, p.get("count", 0))
            + (dbl(5, p["sum"]) if "sum" in p else b"") + packed_fixed64(6, p.get("bucketCounts", []))
            + packed_double(7, p.get("explicitBounds", [])) + attrs(9, p.get("attributes")))

def buckets(b):
    return key(1, 0) + varint((b.get("offset", 0) << 1) ^ (b.get("offset", 0) >> 31)) + ld(2, b"".join(varint(int(c)) for c in b.get("bucketCounts", [])))

def exp_point(p):
    return (attrs(1, p.get("attributes")) + f64(2, p.get("startTimeUnixNano", 0)) + f64(3, p.get("timeUnixNano", 0))
            + f64(4, p.get("count", 0)) + (dbl(5, p["sum"]) if "sum" in p else b"")
            + key(6, 0) + varint((p.get("scale", 0) << 1) ^ (p.get("scale", 0) >> 31)) + f64(7, p.get("zeroCount", 0))
            + (ld(8, buckets(p["positive"])) if "positive" in p else b"")
            + (ld(9, buckets(p["negative"])) if "negative" in p else b""))

def summary_point(p):
    q = b"".join(ld(6, dbl(1, x["quantile"]) + dbl(2, x["value"])) for x in p.get("quantileValues", []))
    return (f64(2, p.get("startTimeUnixNano", 0)) + f64(3, p.get("timeUnixNano", 0)) + f64(4, p.get("count", 0))
            + dbl(5, p.get("sum", 0)) + q + attrs(7, p.get("attributes")))

def metric(m):
    body = s(1, m.get("name", "")) + s(2, m.get("description", "")) + s(3, m.get("unit", ""))
    if "gauge" in m:
        body += ld(5, b"".join(ld(1, number_point(p)) for p in m["gauge"].get("dataPoints", [])))
    if "sum" in m:
        x = m["sum"]
        body += ld(7, b"".join(ld(1, number_point(p)) for p in x.get("dataPoints", []))
                   + vi(2, x.get("aggregationTemporality", 0)) + vi(3, 1 if x.get("isMonotonic") else 0))
    if "histogram" in m:
        x = m["histogram"]
        body += ld(9, b"".join(ld(1, histogram_point(p)) for p in x.get("dataPoints", [])) + vi(2, x.get("aggregationTemporality", 0)))
    if "exponentialHistogram" in m:
        x = m["exponentialHistogram"]
        body += ld(10, b"".join(ld(1, exp_point(p)) for p in x.get("dataPoints", [])) + vi(2, x.get("aggregationTemporality", 0)))
    if "summary" in m:
        body += ld(11, b"".join(ld(1, summary_point(p)) for p in m["summary"].get("dataPoints", [])))
    return body

def metrics_request(j):
    return b"".join(
        ld(1, resource(rm.get("resource")) + b"".join(
            ld(2, scope(sm.get("scope")) + b"".join(ld(2, metric(m)) for m in sm.get("metrics", [])))
            for sm in rm.get("scopeMetrics", [])))
        for rm in j.get("resourceMetrics", []))

# --- sources ---------------------------------------------------------------------------------
lines = []
for path in sorted(glob.glob(os.path.join(repo, "collector/tests/cases/*.yaml"))):
    for case in yaml.safe_load(read(path)) or []:
        if isinstance(case, dict) and isinstance(case.get("line"), str):
            lines.append(case["line"])
# The test lines of the built-in rules (the first few of each test case).
for path in sorted(glob.glob(os.path.join(repo, "rules/pack/*.yaml"))):
    for case in (yaml.safe_load(read(path)) or {}).get("tests") or []:
        lines += [l for l in (case.get("lines") or [])[:3] if isinstance(l, str)]
mesh = read(os.path.join(repo, "tests/fixtures/mesh.log")).decode()
lines += [l for l in mesh.splitlines() if l.strip()]
logs_json = [json.loads(read(os.path.join(repo, "tests/fixtures/otlp-logs.json")))]
if samples:
    for path in sorted(glob.glob(os.path.join(samples, "samples/*.log"))):
        lines += [l for l in read(path).decode().splitlines() if l.strip()]
    p = os.path.join(samples, "otlp/logs.json")
    if os.path.exists(p):
        logs_json.append(json.loads(read(p)))

def sv(x):
    return {"stringValue": x}

attr = lambda k, v: {"key": k, "value": sv(v)}
# Lines as OTLP log bodies: all in one request, and one request per line with Envoy's
# OpenTelemetry access logger attributes.
logs_json.append({"resourceLogs": [{"resource": {"attributes": [attr("k8s.cluster.name", "prod")]},
    "scopeLogs": [{"scope": {"name": "envoy"}, "logRecords": [
        {"timeUnixNano": "1709287200000000000", "body": sv(l)} for l in lines]}]}]})
for l in lines[:12]:
    logs_json.append({"resourceLogs": [{"resource": {"attributes": [attr("k8s.pod.name", "orders-1"), attr("k8s.namespace.name", "shop")]},
        "scopeLogs": [{"logRecords": [{"body": sv(l), "attributes": [attr("upstream_peer_uri_san", "spiffe://cluster.local/ns/pay/sa/pay")],
                                       "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174"}]}]}]})
# A key/value body and an attribute-only record (Envoy's OpenTelemetry access logger).
logs_json.append({"resourceLogs": [{"scopeLogs": [{"logRecords": [
    {"body": {"kvlistValue": {"values": [attr("method", "GET"), attr("path", "/x"), {"key": "response_code", "value": {"intValue": "200"}},
                                         {"key": "nested", "value": {"kvlistValue": {"values": [attr("a", "b")]}}},
                                         {"key": "list", "value": {"arrayValue": {"values": [sv("x"), {"boolValue": True}]}}}]}}},
    {"attributes": [attr("source_principal", "spiffe://cluster.local/ns/a/sa/b"), attr("response_code", "403"),
                    attr("response_flags", "-"), attr("start_time", "2024-03-01T10:00:00Z")]},
    {"body": {"bytesValue": base64.b64encode(lines[0].encode()).decode()}},
]}]}]})

now = 1709287200000000000
labels = [attr("reporter", "destination"), attr("source_workload", "curl"), attr("destination_service", "orders.shop.svc.cluster.local"),
          attr("response_code", "200"), attr("connection_security_policy", "mutual_tls")]
metrics_json = [{"resourceMetrics": [{"resource": {"attributes": [attr("service.name", "istio-proxy")]}, "scopeMetrics": [{"metrics": [
    {"name": "istio_requests_total", "sum": {"aggregationTemporality": 2, "isMonotonic": True,
        "dataPoints": [{"startTimeUnixNano": str(now - 10**9), "timeUnixNano": str(now), "asInt": "42", "attributes": labels}]}},
    {"name": "istio_tcp_connections_opened_total", "sum": {"aggregationTemporality": 1,
        "dataPoints": [{"timeUnixNano": str(now), "asDouble": 3.5, "attributes": labels}]}},
    {"name": "envoy_server_live", "gauge": {"dataPoints": [{"timeUnixNano": str(now), "asDouble": 1.0}]}},
    {"name": "istio_request_duration_milliseconds", "unit": "ms", "histogram": {"aggregationTemporality": 2, "dataPoints": [
        {"timeUnixNano": str(now), "count": "6", "sum": 12.5, "bucketCounts": ["1", "2", "3"], "explicitBounds": [1.0, 5.0], "attributes": labels}]}},
    {"name": "latency_exp", "exponentialHistogram": {"aggregationTemporality": 2, "dataPoints": [
        {"timeUnixNano": str(now), "count": "3", "sum": 4.0, "scale": 2, "zeroCount": "1", "positive": {"offset": 1, "bucketCounts": ["1", "1"]}}]}},
    {"name": "rpc_latency", "summary": {"dataPoints": [
        {"timeUnixNano": str(now), "count": "2", "sum": 3.0, "quantileValues": [{"quantile": 0.5, "value": 1.0}, {"quantile": 0.99, "value": 2.0}]}]}},
]}]}]}]
if samples:
    p = os.path.join(samples, "otlp/metrics.json")
    if os.path.exists(p):
        metrics_json.append(json.loads(read(p)))

for l in lines:
    put("access_line", l)
put("access_line", mesh)
for j in logs_json:
    text = json.dumps(j)
    put("otlp_logs_json", text)
    put("otlp_logs_proto", logs_request(j))
    put("kafka_message", b"\x02" + text.encode())
    put("kafka_message", b"\x01" + logs_request(j))
for j in metrics_json:
    text = json.dumps(j)
    put("otlp_metrics", metrics_request(j))
    put("kafka_message", b"\x04" + text.encode())
    put("kafka_message", b"\x03" + metrics_request(j))
put("kafka_message", b"\x00" + mesh.encode())
for l in lines[:8]:
    put("kafka_message", b"\x00" + l.encode())
for path in sorted(glob.glob(os.path.join(repo, "rules/pack/*.yaml"))):
    put("rule_yaml", read(path))
for rel in ["app/config/default.yaml", "deploy/config/verity.yaml"]:
    put("config_yaml", read(os.path.join(repo, rel)))
PY

# The committed regression inputs are seeds too.
for dir in "$FUZZ"/regressions/*/; do
    [[ -d "$dir" ]] || continue
    target="$(basename "$dir")"
    mkdir -p "$OUT/$target"
    find "$dir" -maxdepth 1 -type f ! -name '.*' -exec cp {} "$OUT/$target/" \;
done

for d in "$OUT"/*/; do
    printf '%-16s %4d files %8s\n' "$(basename "$d")" "$(find "$d" -type f | wc -l)" "$(du -sh "$d" | cut -f1)"
done
