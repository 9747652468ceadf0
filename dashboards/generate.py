#!/usr/bin/env python3
"""Generates the Grafana dashboards in this directory from one description, so that panel
layout, datasource wiring and uids stay consistent. Run it after editing; the JSON files are
what Grafana provisions and what the Prometheus test checks.

    python3 dashboards/generate.py
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
HERE = pathlib.Path(__file__).resolve().parent


def variables(extra=()):
    v = [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
        "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
    }, {
        "name": "instance", "label": "Verity instance", "type": "query", "datasource": DS,
        "query": {"query": "label_values(verity_build_info, instance)", "refId": "instance"},
        "definition": "label_values(verity_build_info, instance)",
        "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2,
    }]
    v.extend(extra)
    return {"list": v}


NAMESPACE = {
    "name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
    "query": {"query": "label_values(verity_mesh_requests_total, namespace)", "refId": "namespace"},
    "definition": "label_values(verity_mesh_requests_total, namespace)",
    "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2,
}


class Layout:
    """Places panels left to right in rows of 24 units, never overlapping."""

    def __init__(self):
        self.x, self.y, self.row_h, self.next_id = 0, 0, 0, 1

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        self.next_id += 1
        return pos, self.next_id - 1


def target(expr, legend="", instant=False, ref="A"):
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend}
    if instant:
        t["instant"] = True
        t["range"] = False
        t["format"] = "table"
    return t


def panel(layout, kind, title, targets, w=12, h=8, unit=None, description="", options=None, mappings=None):
    pos, pid = layout.place(w, h)
    defaults = {}
    if unit:
        defaults["unit"] = unit
    if mappings:
        defaults["mappings"] = mappings
    p = {
        "id": pid, "type": kind, "title": title, "description": description,
        "datasource": DS, "gridPos": pos, "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": []},
    }
    if options:
        p["options"] = options
    return p


STATE_MAP = [{"type": "value", "options": {
    "0": {"text": "holding", "color": "green"},
    "1": {"text": "violated", "color": "red"},
    "2": {"text": "unknown", "color": "orange"},
}}]

I = 'instance=~"$instance"'


def posture():
    l = Layout()
    ns = f'{I}, namespace=~"$namespace"'
    panels = [
        panel(l, "stat", "Assertions violated now", [target(f'sum(verity_assertion_keys{{{I}, state="violated"}}) or vector(0)')], w=6, h=4,
              description="Assertion keys whose policy is violated by live traffic."),
        panel(l, "stat", "Assertions unknown (no telemetry)", [target(f'sum(verity_assertion_keys{{{I}, state="unknown"}}) or vector(0)')], w=6, h=4,
              description="Keys Verity cannot vouch for: their telemetry stopped."),
        panel(l, "stat", "Assertions holding", [target(f'sum(verity_assertion_keys{{{I}, state="holding"}}) or vector(0)')], w=6, h=4),
        panel(l, "stat", "mTLS share, all traffic", [target(
            f'sum(rate(verity_mesh_requests_total{{{I}, mtls="true"}}[$__rate_interval])) / sum(rate(verity_mesh_requests_total{{{I}}}[$__rate_interval]))')],
            w=6, h=4, unit="percentunit"),
        panel(l, "table", "Assertion grid", [target(f"max by (assertion, key) (verity_assertion_state{{{I}}})", instant=True)],
              w=24, h=10, mappings=STATE_MAP,
              description="Every assertion key: holding, violated or unknown."),
        panel(l, "timeseries", "mTLS share by destination namespace", [target(
            f'sum by (namespace) (rate(verity_mesh_requests_total{{{ns}, mtls="true"}}[$__rate_interval])) / sum by (namespace) (rate(verity_mesh_requests_total{{{ns}}}[$__rate_interval]))',
            "{{namespace}}")], unit="percentunit"),
        panel(l, "timeseries", "Plaintext and unknown-TLS requests by namespace", [target(
            f'sum by (namespace, mtls) (rate(verity_mesh_requests_total{{{ns}, mtls!="true"}}[$__rate_interval]))',
            "{{namespace}} mtls={{mtls}}")], unit="reqps"),
        panel(l, "timeseries", "Denials by decision", [target(
            f"sum by (decision) (rate(verity_mesh_denials_total{{{I}}}[$__rate_interval]))", "{{decision}}")], unit="reqps"),
        panel(l, "bargauge", "Top denying policies", [target(
            f"topk(10, sum by (policy) (increase(verity_mesh_denials_total{{{I}}}[$__range])))", "{{policy}}", instant=True)]),
        panel(l, "timeseries", "Assertion coverage: violating share of checked events", [target(
            f"sum by (assertion) (rate(verity_assertion_events_violating_total{{{I}}}[$__rate_interval])) / sum by (assertion) (rate(verity_assertion_events_checked_total{{{I}}}[$__rate_interval]))",
            "{{assertion}}")], unit="percentunit"),
        panel(l, "table", "Top offenders: violating keys", [target(
            f"topk(20, verity_assertion_state{{{I}}} == 1)", instant=True)], mappings=STATE_MAP),
        panel(l, "stat", "Rules in force no request matched", [target(
            f"sum(verity_policy_rules_unused{{{I}}}) or vector(0)")], w=6, h=4,
            description="Rules of the AuthorizationPolicies in force (policy.drift) that no request has matched: over-broad or dead."),
        panel(l, "stat", "Requests to workloads without an ALLOW policy", [target(
            f"sum(increase(verity_policy_unprotected_requests_total{{{I}}}[$__range])) or vector(0)")], w=6, h=4,
            description="Requests (range) to destinations no ALLOW policy in force applies to: anything in the mesh may reach them."),
        panel(l, "stat", "Candidate policies violated", [target(
            f'sum(verity_policy_shadow_state{{{I}, state="violated"}}) or vector(0)')], w=6, h=4,
            description="Candidate policies (shadow mode) that would have denied legitimate traffic within their window."),
        panel(l, "stat", "Candidate policies holding", [target(
            f'sum(verity_policy_shadow_state{{{I}, state="holding"}}) or vector(0)')], w=6, h=4),
        panel(l, "table", "Candidate policies (shadow mode)", [target(
            f"max by (policy, state) (verity_policy_shadow_state{{{I}}} == 1)", instant=True)],
            description="Each candidate AuthorizationPolicy's assertion: would it deny observed legitimate traffic?"),
        panel(l, "timeseries", "Legitimate requests candidates would deny", [target(
            f'sum by (policy) (rate(verity_policy_shadow_requests_total{{{I}, outcome="would_deny"}}[$__rate_interval]))',
            "{{policy}}")], unit="reqps"),
        panel(l, "table", "Unused rules of the policies in force", [target(
            f"max by (policy, rule, action) (verity_policy_rule_matches_total{{{I}}}) == 0", instant=True)], w=24,
            description="Rules no request matched since Verity started (verity policy drift gives the same over recorded logs)."),
    ]
    return dashboard("verity-posture", "Verity / Zero-trust posture", panels, [NAMESPACE],
                     "Which zero-trust policies hold, which are violated, and where Verity is blind.")


def alerts():
    l = Layout()
    panels = [
        panel(l, "stat", "Alerts firing (range)", [target(
            f'sum(increase(verity_alerts_total{{{I}, status="firing"}}[$__range]))')], w=6, h=4),
        panel(l, "stat", "Active revocations", [target(f"sum(verity_revocations_active{{{I}}})")], w=6, h=4),
        panel(l, "stat", "Alerts dropped (must be 0)", [target(f"sum(verity_alerts_dropped_total{{{I}}})")], w=6, h=4),
        panel(l, "stat", "Alerts dead-lettered (range)", [target(
            f"sum(increase(verity_sink_dead_lettered_total{{{I}}}[$__range]))")], w=6, h=4),
        panel(l, "timeseries", "Alerts by severity", [target(
            f"sum by (severity) (rate(verity_alerts_total{{{I}}}[$__rate_interval]))", "{{severity}}")], unit="short"),
        panel(l, "timeseries", "Alerts by status", [target(
            f"sum by (status) (rate(verity_alerts_total{{{I}}}[$__rate_interval]))", "{{status}}")]),
        panel(l, "bargauge", "Alerts by rule", [target(
            f"topk(15, sum by (rule) (increase(verity_alerts_total{{{I}}}[$__range])))", "{{rule}}", instant=True)], w=24),
        panel(l, "timeseries", "Revocations in effect", [target(f"verity_revocations_active{{{I}}}", "{{instance}}")]),
        panel(l, "timeseries", "Enforcement verification: revoked identities still succeeding", [target(
            f'sum by (rule) (increase(verity_alerts_total{{{I}, rule="zt-revoked-identity-succeeds", status="firing"}}[$__rate_interval])) or vector(0)',
            "not enforced")],
            description="Requests from identities on the revocation list that were allowed: each is a revocation the mesh does not enforce. Should stay at 0."),
        panel(l, "timeseries", "Revocation actions", [target(
            f"sum by (action) (increase(verity_revocation_events_total{{{I}}}[$__rate_interval]))", "{{action}}")],
            description="Recorded, applied, failed, refused (guardrails), expired (TTL) and lifted revocations."),
        panel(l, "timeseries", "Revocation apply latency (p99)", [target(
            f"histogram_quantile(0.99, sum by (le) (rate(verity_revocation_apply_seconds_bucket{{{I}}}[$__range])))", "p99")],
            unit="s"),
        panel(l, "timeseries", "Alerts delivered per output", [target(
            f"sum by (sink) (rate(verity_sink_sent_total{{{I}}}[$__rate_interval]))", "{{sink}}")]),
    ]
    return dashboard("verity-alerts", "Verity / Alerts & revocations", panels, [],
                     "What Verity raised, how severe, and whether it reached the SIEMs.")


def pipeline():
    l = Layout()
    panels = [
        panel(l, "timeseries", "Records received by source", [target(
            f"sum by (source, signal) (rate(verity_records_received_total{{{I}}}[$__rate_interval]))", "{{source}} {{signal}}")], unit="short"),
        panel(l, "timeseries", "Records accepted by format", [target(
            f"sum by (format) (rate(verity_records_accepted_total{{{I}}}[$__rate_interval]))", "{{format}}")]),
        panel(l, "timeseries", "Records rejected by reason", [target(
            f"sum by (reason) (rate(verity_records_rejected_total{{{I}}}[$__rate_interval]))", "{{reason}}")]),
        panel(l, "timeseries", "OTLP requests by outcome", [target(
            f"sum by (transport, outcome) (rate(verity_otlp_requests_total{{{I}}}[$__rate_interval]))", "{{transport}} {{outcome}}")]),
        panel(l, "timeseries", "Queue depth", [target(f"max by (queue) (verity_queue_depth{{{I}}})", "{{queue}}")]),
        panel(l, "timeseries", "Batch size (p90 rows)", [target(
            f"histogram_quantile(0.9, sum by (le) (rate(verity_pipeline_batch_rows_bucket{{{I}}}[$__rate_interval])))", "p90")]),
        panel(l, "timeseries", "Pipeline latency (intake to alerts spooled)", [
            target(f"histogram_quantile(0.5, sum by (le) (rate(verity_pipeline_latency_seconds_bucket{{{I}, signal=\"logs\"}}[$__rate_interval])))", "p50"),
            target(f"histogram_quantile(0.99, sum by (le) (rate(verity_pipeline_latency_seconds_bucket{{{I}, signal=\"logs\"}}[$__rate_interval])))", "p99", ref="B"),
        ], unit="s", description="From a batch's oldest rows entering the pipeline (decoded and normalized) to every stage having processed it: its alerts are then in the outputs' spools."),
        panel(l, "timeseries", "Event-time lag (now − watermark)", [target(
            f"time() - max(verity_event_time_watermark_seconds{{{I}}})", "lag")], unit="s"),
        panel(l, "timeseries", "Dead-lettered records", [target(
            f"sum(rate(verity_dead_letter_records_total{{{I}}}[$__rate_interval]))", "records/s")]),
        panel(l, "timeseries", "Kafka consumer lag", [target(
            f"sum by (topic) (verity_kafka_consumer_lag{{{I}}})", "{{topic}}")], unit="short"),
        panel(l, "timeseries", "Kafka messages consumed", [target(
            f"sum by (topic) (rate(verity_kafka_messages_total{{{I}}}[$__rate_interval]))", "{{topic}}")]),
        panel(l, "timeseries", "Output spool depth", [target(
            f"sum by (sink) (verity_sink_spool_events{{{I}}})", "{{sink}}")]),
        panel(l, "timeseries", "Oldest spooled alert", [target(
            f"max by (sink) (verity_sink_spool_oldest_age_seconds{{{I}}})", "{{sink}}")], unit="s"),
        panel(l, "timeseries", "Output failures", [target(
            f"sum by (sink, class) (rate(verity_sink_failed_total{{{I}}}[$__rate_interval]))", "{{sink}} {{class}}")]),
        panel(l, "timeseries", "Output request latency (p99)", [target(
            f"histogram_quantile(0.99, sum by (sink, le) (rate(verity_sink_request_duration_seconds_bucket{{{I}}}[$__rate_interval])))", "{{sink}}")], unit="s"),
    ]
    return dashboard("verity-pipeline", "Verity / Pipeline", panels, [],
                     "Ingest, rejects, lag, queues and alert delivery of Verity itself.")


def dashboard(uid, title, panels, extra_vars, description):
    return {
        "uid": uid, "title": title, "description": description, "tags": ["verity", "zero-trust"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "utc",
        "templating": variables(extra_vars), "panels": panels,
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
    }


if __name__ == "__main__":
    for name, d in [("zero-trust-posture", posture()), ("alerts-revocations", alerts()), ("pipeline", pipeline())]:
        (HERE / f"{name}.json").write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote dashboards/{name}.json ({len(d['panels'])} panels)")
