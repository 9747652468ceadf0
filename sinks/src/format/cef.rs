//! ArcSight Common Event Format (CEF 0): one line per alert, for SIEMs fed over syslog
//! (ArcSight, QRadar, Sentinel's CEF connector).
//!
//! This file also holds the few readings of an alert that every encoder in `format` shares
//! (the 0–10 severity scale, epoch times, group columns, the access outcome), so that all
//! formats agree on them.

use std::fmt::Write as _;
use std::net::IpAddr;

use verity_model::alert::{Alert, Severity};
use verity_model::event::col;
use verity_model::time;

/// What the CEF header says produced the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CefOptions {
    pub vendor: String,
    pub product: String,
    pub version: String,
}

impl Default for CefOptions {
    fn default() -> Self {
        Self {
            vendor: "Verity".to_string(),
            product: "Verity".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// `CEF:0|Vendor|Product|Version|rule id|title|severity|extensions`, extensions in a fixed order.
pub fn encode(alert: &Alert, opts: &CefOptions) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("CEF:0");
    for field in [&opts.vendor, &opts.product, &opts.version, &alert.rule_id, &alert.title] {
        out.push('|');
        push_header(&mut out, field);
    }
    let _ = write!(out, "|{}|", severity_0_10(alert.severity));

    let mut ext = Extension { out, empty: true };
    if let Some(ms) = epoch_ms(&alert.last_seen) {
        ext.pair("rt", &ms.to_string());
    }
    if let Some(ms) = alert.window_start.as_deref().and_then(epoch_ms) {
        ext.pair("start", &ms.to_string());
    }
    if let Some(ms) = alert.window_end.as_deref().and_then(epoch_ms) {
        ext.pair("end", &ms.to_string());
    }
    ext.pair("cnt", &alert.count.to_string());
    ext.pair("externalId", &alert.id);
    ext.pair("cat", &alert.kind);
    ext.pair("act", alert.status.as_str());
    if let Some(access) = access(alert) {
        ext.pair("outcome", access.outcome());
    }
    if let Some(ip) = ip_column(alert, col::SOURCE_IP) {
        ext.pair("src", &ip.to_string());
    }
    if let Some(ip) = ip_column(alert, col::DESTINATION_IP) {
        ext.pair("dst", &ip.to_string());
    }
    if let Some(port) = port_column(alert, col::DESTINATION_PORT) {
        ext.pair("dpt", &port.to_string());
    }
    ext.opt("suser", column(alert, col::SOURCE_PRINCIPAL));
    ext.opt("duser", column(alert, col::REQUEST_PRINCIPAL));
    ext.opt("dhost", column(alert, col::DESTINATION_SERVICE));
    ext.opt("destinationServiceName", column(alert, col::DESTINATION_SERVICE));
    ext.pair("msg", &alert.summary);
    ext.custom("cs1", "tags", Some(&alert.tags.join(",")));
    ext.custom("cs2", "destinationNamespace", column(alert, col::DESTINATION_NAMESPACE));
    ext.custom("cs3", "ruleId", Some(&alert.rule_id));
    ext.custom("cs4", "sourceNamespace", column(alert, col::SOURCE_NAMESPACE));
    ext.out
}

/// Header fields: `|` separates them and `\` escapes; a line break would end the event, and
/// the spec has no escape for it in the header, so it becomes a space.
fn push_header(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
}

/// The `k=v k=v` tail. Values may hold spaces: a parser finds the next key by its `=`, which
/// is why `=` in a value is escaped.
struct Extension {
    out: String,
    empty: bool,
}

impl Extension {
    /// Empty values are left out rather than sent as `key=`, which some parsers mis-read.
    fn pair(&mut self, key: &str, value: &str) {
        if value.is_empty() {
            return;
        }
        if !self.empty {
            self.out.push(' ');
        }
        self.empty = false;
        self.out.push_str(key);
        self.out.push('=');
        for c in value.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '=' => self.out.push_str("\\="),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                c => self.out.push(c),
            }
        }
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.pair(key, v);
        }
    }

    /// A `csN` custom string with its `csNLabel`; the label only travels with a value.
    fn custom(&mut self, key: &str, label: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.pair(&format!("{key}Label"), label);
            self.pair(key, v);
        }
    }
}

/// CEF's 0–10 scale; LEEF and ECS reuse it so every SIEM ranks an alert the same.
pub(super) fn severity_0_10(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// Milliseconds since the epoch; `None` for a malformed time, which encoders then leave out
/// rather than send a wrong instant.
pub(super) fn epoch_ms(rfc3339: &str) -> Option<i64> {
    time::parse_rfc3339_ns(rfc3339).map(|ns| ns.div_euclid(1_000_000))
}

/// A group-key column's value, or the entity's when the entity came from that column: an
/// assertion keyed on something else may still name whom to act on.
pub(super) fn column<'a>(alert: &'a Alert, name: &str) -> Option<&'a str> {
    alert
        .group
        .get(name)
        .and_then(|v| v.as_deref())
        .or_else(|| {
            alert
                .entity
                .as_ref()
                .filter(|e| e.kind == name)
                .map(|e| e.value.as_str())
        })
        .filter(|v| !v.is_empty())
}

/// Only a well-formed address: SIEMs type these fields as IPs and reject the whole event
/// over a bad one.
pub(super) fn ip_column(alert: &Alert, name: &str) -> Option<IpAddr> {
    column(alert, name)?.parse().ok()
}

pub(super) fn port_column(alert: &Alert, name: &str) -> Option<u16> {
    column(alert, name)?.parse().ok()
}

/// What the proxies did with the accesses behind an alert, when all the evidence agrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Allowed,
    Denied,
}

impl Access {
    /// The outcome of the access attempt, as CEF's `outcome` spells it: a denied access is a
    /// failed attempt.
    pub(super) fn outcome(self) -> &'static str {
        match self {
            Access::Allowed => "success",
            Access::Denied => "failure",
        }
    }
}

/// Decisions are `allow` or `deny_<why>` (see `Decision` in the model).
pub(super) fn access(alert: &Alert) -> Option<Access> {
    let mut decisions = alert.evidence.iter().map(|e| {
        if e.decision == "allow" {
            Some(Access::Allowed)
        } else if e.decision.starts_with("deny") {
            Some(Access::Denied)
        } else {
            None
        }
    });
    let first = decisions.next()??;
    decisions.all(|d| d == Some(first)).then_some(first)
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use verity_model::alert::{Entity, Evidence};

    use super::*;

    /// A firing alert keyed on a SPIFFE principal and a destination, with two denied accesses.
    pub(in crate::format) fn sample() -> Alert {
        let mut group = BTreeMap::new();
        group.insert(
            "source_principal".to_string(),
            Some("spiffe://cluster.local/ns/shop/sa/cart".to_string()),
        );
        group.insert(
            "destination_service".to_string(),
            Some("payments.prod.svc.cluster.local".to_string()),
        );
        group.insert("destination_namespace".to_string(), Some("prod".to_string()));
        group.insert("source_namespace".to_string(), None);
        let evidence = |t: &str| Evidence {
            event_time: t.to_string(),
            source_principal: Some("spiffe://cluster.local/ns/shop/sa/cart".to_string()),
            destination_service: Some("payments.prod.svc.cluster.local".to_string()),
            status: Some(403),
            decision: "deny_rbac".to_string(),
            raw: format!("[{t}] \"POST /charge HTTP/1.1\" 403 - rbac_access_denied_matched_policy[none]"),
            sender: None,
            sender_verified: false,
            ..Evidence::default()
        };
        Alert {
            id: "unauth-payments-00000000deadbeef".to_string(),
            rule_id: "unauth-payments".to_string(),
            title: "Unauthorized calls to payments".to_string(),
            severity: Severity::High,
            tags: vec!["attack.t1078".to_string(), "pci".to_string()],
            description: "A workload called payments without an ALLOW policy.".to_string(),
            group,
            count: 2,
            aggregates: BTreeMap::from([("count()".to_string(), 2.0)]),
            window_start: Some("2026-11-22T09:55:00Z".to_string()),
            window_end: Some("2026-11-22T10:00:00Z".to_string()),
            first_seen: "2026-11-22T09:59:58.001Z".to_string(),
            last_seen: "2026-11-22T10:00:00.123Z".to_string(),
            evidence: vec![
                evidence("2026-11-22T09:59:58.001Z"),
                evidence("2026-11-22T10:00:00.123Z"),
            ],
            summary: "spiffe://cluster.local/ns/shop/sa/cart was denied 2 times".to_string(),
            // A firing detection on the source principal spiffe://cluster.local/ns/shop/sa/cart.
            ..Alert::sample()
        }
    }

    fn opts() -> CefOptions {
        CefOptions {
            vendor: "Verity".to_string(),
            product: "Verity".to_string(),
            version: "1.0".to_string(),
        }
    }

    #[test]
    fn encodes_a_whole_alert_in_a_fixed_order() {
        assert_eq!(
            encode(&sample(), &opts()),
            "CEF:0|Verity|Verity|1.0|unauth-payments|Unauthorized calls to payments|8|\
             rt=1795341600123 start=1795341300000 end=1795341600000 cnt=2 \
             externalId=unauth-payments-00000000deadbeef cat=detection act=firing outcome=failure \
             suser=spiffe://cluster.local/ns/shop/sa/cart dhost=payments.prod.svc.cluster.local \
             destinationServiceName=payments.prod.svc.cluster.local \
             msg=spiffe://cluster.local/ns/shop/sa/cart was denied 2 times \
             cs1Label=tags cs1=attack.t1078,pci cs2Label=destinationNamespace cs2=prod \
             cs3Label=ruleId cs3=unauth-payments"
        );
    }

    #[test]
    fn escapes_pipes_and_backslashes_in_the_header_and_flattens_newlines() {
        let mut a = sample();
        a.rule_id = "r|1\\x".to_string();
        a.title = "line one\r\nline|two".to_string();
        let o = CefOptions {
            vendor: "Acme|Corp".to_string(),
            ..opts()
        };
        let line = encode(&a, &o);
        assert!(
            line.starts_with("CEF:0|Acme\\|Corp|Verity|1.0|r\\|1\\\\x|line one  line\\|two|8|rt="),
            "{line}"
        );
    }

    #[test]
    fn escapes_equals_backslashes_and_newlines_in_extension_values() {
        let mut a = sample();
        a.summary = "a=b\\c|d\nnext\rline".to_string();
        let line = encode(&a, &opts());
        assert!(line.contains(" msg=a\\=b\\\\c|d\\nnext\\rline cs1Label="), "{line}");
        assert!(!line.contains('\n') && !line.contains('\r'));
    }

    #[test]
    fn keeps_non_ascii_as_utf8() {
        let mut a = sample();
        a.title = "ünïcødé 🚨".to_string();
        a.summary = "ünïcødé=🚨".to_string();
        let line = encode(&a, &opts());
        assert!(line.contains("|ünïcødé 🚨|8|"), "{line}");
        assert!(line.contains(" msg=ünïcødé\\=🚨 "), "{line}");
    }

    #[test]
    fn maps_every_severity() {
        let got: Vec<u8> = Severity::ALL.iter().map(|s| severity_0_10(*s)).collect();
        assert_eq!(got, [1, 3, 5, 8, 10]);
        let mut a = sample();
        a.severity = Severity::Critical;
        assert!(encode(&a, &opts()).contains("|10|rt="));
    }

    #[test]
    fn leaves_out_what_the_alert_lacks() {
        let mut a = sample();
        a.window_start = None;
        a.window_end = None;
        a.last_seen = "not a time".to_string();
        a.tags.clear();
        a.group.clear();
        a.entity = None;
        a.evidence.clear();
        a.summary.clear();
        assert_eq!(
            encode(&a, &opts()),
            "CEF:0|Verity|Verity|1.0|unauth-payments|Unauthorized calls to payments|8|\
             cnt=2 externalId=unauth-payments-00000000deadbeef cat=detection act=firing \
             cs3Label=ruleId cs3=unauth-payments"
        );
    }

    #[test]
    fn takes_principals_from_the_entity_and_addresses_only_when_valid() {
        let mut a = sample();
        a.group.clear();
        a.group.insert("source_ip".to_string(), Some("10.0.0.7".to_string()));
        a.group
            .insert("destination_ip".to_string(), Some("not-an-ip".to_string()));
        a.group.insert("destination_port".to_string(), Some("8443".to_string()));
        a.entity = Some(Entity {
            kind: "request_principal".to_string(),
            value: "https://issuer.example/alice".to_string(),
        });
        let line = encode(&a, &opts());
        assert!(
            line.contains(" outcome=failure src=10.0.0.7 dpt=8443 duser=https://issuer.example/alice msg="),
            "{line}"
        );
        assert!(!line.contains(" dst=") && !line.contains("suser="), "{line}");
    }

    #[test]
    fn outcome_needs_evidence_that_agrees() {
        let mut a = sample();
        assert_eq!(access(&a), Some(Access::Denied));
        a.evidence[1].decision = "allow".to_string();
        assert_eq!(access(&a), None);
        a.evidence[0].decision = "allow".to_string();
        assert_eq!(access(&a), Some(Access::Allowed));
        a.evidence.clear();
        assert_eq!(access(&a), None);
    }

    #[test]
    fn default_options_name_verity_and_this_build() {
        let o = CefOptions::default();
        assert_eq!((o.vendor.as_str(), o.product.as_str()), ("Verity", "Verity"));
        assert_eq!(o.version, env!("CARGO_PKG_VERSION"));
    }
}
