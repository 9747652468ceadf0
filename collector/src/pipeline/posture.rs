//! Zero-trust posture metrics from every event batch: requests by destination namespace and
//! mTLS state (the mTLS share per namespace), and denials by decision and policy.
//!
//! Namespaces and policies are label values from traffic, so their number is capped: past
//! [`MAX_LABEL_VALUES`] distinct values, further ones are counted under `other` (and the
//! overflow is counted), which keeps the series count bounded whatever the mesh sends.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use verity_model::event::col;

use crate::pipeline::{Batch, Stage, StageError};

/// Distinct namespaces (and, separately, policies) that get their own label value.
pub const MAX_LABEL_VALUES: usize = 256;
const OTHER: &str = "other";

#[derive(Clone)]
pub struct PostureMetrics {
    requests: Family<Vec<(&'static str, String)>, Counter>,
    denials: Family<Vec<(&'static str, String)>, Counter>,
    overflow: Counter,
}

impl PostureMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            denials: Family::default(),
            overflow: Counter::default(),
        };
        registry.register(
            "verity_mesh_requests",
            "Requests seen, by destination namespace and mTLS state (true, false, unknown)",
            m.requests.clone(),
        );
        registry.register(
            "verity_mesh_denials",
            "Requests the mesh denied, by decision (deny_rbac, deny_jwt, …) and matched policy",
            m.denials.clone(),
        );
        registry.register(
            "verity_posture_label_overflow",
            "Events counted under namespace or policy \"other\" because the label cap was reached",
            m.overflow.clone(),
        );
        m
    }
}

/// Caps a label's distinct values.
#[derive(Default)]
struct Capped {
    seen: HashMap<String, ()>,
}

impl Capped {
    fn label<'a>(&mut self, v: &'a str, overflow: &Counter) -> &'a str {
        if self.seen.contains_key(v) {
            return v;
        }
        if self.seen.len() < MAX_LABEL_VALUES {
            self.seen.insert(v.to_string(), ());
            return v;
        }
        overflow.inc();
        OTHER
    }
}

pub struct PostureStage {
    metrics: PostureMetrics,
    namespaces: Capped,
    policies: Capped,
}

impl PostureStage {
    pub fn new(metrics: PostureMetrics) -> Self {
        Self {
            metrics,
            namespaces: Capped::default(),
            policies: Capped::default(),
        }
    }

    fn count(&mut self, b: &RecordBatch) {
        let (Some(ns), Some(mtls), Some(decision), Some(policy)) = (
            b.column_by_name(col::DESTINATION_NAMESPACE)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::MTLS).and_then(|c| c.as_boolean_opt()),
            b.column_by_name(col::DECISION).and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::DECISION_POLICY)
                .and_then(|c| c.as_string_opt::<i32>()),
        ) else {
            return;
        };
        // Aggregate in the batch first: one metric update per distinct label set.
        let mut requests: HashMap<(&str, &'static str), u64> = HashMap::new();
        let mut denials: HashMap<(&str, &str), u64> = HashMap::new();
        for i in 0..b.num_rows() {
            let n = if ns.is_null(i) { "unknown" } else { ns.value(i) };
            let m = if mtls.is_null(i) {
                "unknown"
            } else if mtls.value(i) {
                "true"
            } else {
                "false"
            };
            *requests.entry((n, m)).or_default() += 1;
            let d = decision.value(i);
            if d != "allow" {
                let p = if policy.is_null(i) { "unknown" } else { policy.value(i) };
                *denials.entry((d, p)).or_default() += 1;
            }
        }
        for ((n, m), c) in requests {
            let n = self.namespaces.label(n, &self.metrics.overflow);
            self.metrics
                .requests
                .get_or_create(&vec![("namespace", n.to_string()), ("mtls", m.to_string())])
                .inc_by(c);
        }
        for ((d, p), c) in denials {
            let p = self.policies.label(p, &self.metrics.overflow);
            self.metrics
                .denials
                .get_or_create(&vec![("decision", d.to_string()), ("policy", p.to_string())])
                .inc_by(c);
        }
    }
}

impl Stage for PostureStage {
    fn name(&self) -> &'static str {
        "posture"
    }

    fn process(&mut self, batch: &Batch) -> Result<(), StageError> {
        if let Batch::Events(b) = batch {
            self.count(b);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{Ctx, FormatHint, normalize_line};
    use verity_model::EventBatchBuilder;
    use verity_model::event::IngestSource;

    #[test]
    fn counts_by_namespace_mtls_and_denials() {
        let mut registry = Registry::default();
        let m = PostureMetrics::register(&mut registry);
        let mut stage = PostureStage::new(m);
        let ctx = Ctx::now(IngestSource::File);
        let lines = [
            r#"{"start_time":"2026-11-22T10:00:00Z","method":"GET","path":"/","response_code":200,"upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/cart","connection_security_policy":"mutual_tls","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local"}"#,
            r#"{"start_time":"2026-11-22T10:00:01Z","method":"GET","path":"/admin","response_code":403,"response_code_details":"rbac_access_denied_matched_policy[ns[pay]-policy[deny-cart]-rule[0]]","upstream_cluster":"inbound|8080||","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/cart","requested_server_name":"outbound_.8080_._.pay.pay.svc.cluster.local"}"#,
        ];
        let mut b = EventBatchBuilder::default();
        for l in lines {
            b.append(&normalize_line(l, FormatHint::Auto, &ctx).unwrap());
        }
        stage.process(&Batch::Events(b.finish().unwrap())).unwrap();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"verity_mesh_requests_total{namespace="pay",mtls="true"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"verity_mesh_denials_total{decision="deny_rbac",policy="pay/deny-cart"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_capped() {
        let overflow = Counter::default();
        let mut c = Capped::default();
        for i in 0..MAX_LABEL_VALUES {
            assert_eq!(c.label(&format!("ns-{i}"), &overflow), format!("ns-{i}"));
        }
        assert_eq!(c.label("one-too-many", &overflow), "other");
        assert_eq!(c.label("ns-3", &overflow), "ns-3");
        assert_eq!(overflow.get(), 1);
    }
}
