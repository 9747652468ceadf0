//! Guardrails: a revocation that would cut off the mesh itself is refused, and a burst of
//! revocations (a bad rule, an attack meant to make Verity lock everyone out) is capped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use verity_model::alert::Severity;

/// Why a revocation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{principal:?} is not one complete identity: {reason}")]
    NotAnIdentity { principal: String, reason: &'static str },
    #[error("{principal} is protected (matches {pattern})")]
    Protected { principal: String, pattern: String },
    #[error("the cap of {cap} {origin} revocations per {window_secs}s is reached")]
    Cap {
        cap: usize,
        window_secs: u64,
        origin: &'static str,
    },
    #[error("the cap of {cap} {origin} revocations in namespace {namespace} per {window_secs}s is reached")]
    NamespaceCap {
        namespace: String,
        cap: usize,
        window_secs: u64,
        origin: &'static str,
    },
    #[error("the telemetry of {reporter} already led to {cap} revocations in {window_secs}s")]
    ReporterCap {
        reporter: String,
        cap: usize,
        window_secs: u64,
    },
    #[error("severity {severity} is below the minimum {minimum}")]
    Severity {
        severity: &'static str,
        minimum: &'static str,
    },
    #[error(
        "{principal} is an intermediary (matches {pattern}) and the evidence names no single end user behind its requests: review by hand"
    )]
    Intermediary { principal: String, pattern: String },
    #[error("not acted on: {0}")]
    Evidence(String),
}

impl Refusal {
    /// Every [`Refusal::reason`], for metric series that exist from the start.
    pub const REASONS: &'static [&'static str] = &[
        "not_an_identity",
        "protected",
        "intermediary",
        "severity",
        "cap",
        "namespace_cap",
        "reporter_cap",
        "evidence",
    ];

    /// The metric label for this refusal.
    pub const fn reason(&self) -> &'static str {
        match self {
            Refusal::NotAnIdentity { .. } => "not_an_identity",
            Refusal::Protected { .. } => "protected",
            Refusal::Intermediary { .. } => "intermediary",
            Refusal::Severity { .. } => "severity",
            Refusal::Cap { .. } => "cap",
            Refusal::NamespaceCap { .. } => "namespace_cap",
            Refusal::ReporterCap { .. } => "reporter_cap",
            Refusal::Evidence(_) => "evidence",
        }
    }
}

/// Gateways and waypoints: they forward other identities' requests, so what they carry is
/// not their own doing.
pub const DEFAULT_INTERMEDIARIES: &[&str] = &[
    "*/sa/istio-ingressgateway*",
    "*/sa/istio-egressgateway*",
    "*/sa/istio-eastwestgateway*",
    "*-gateway-service-account",
    "*/sa/*-istio",
    "*/sa/*waypoint*",
    "*/sa/ztunnel",
];

/// A revocation target must name exactly one identity: for `principal`, a SPIFFE ID
/// `<trust-domain>/ns/<namespace>/sa/<service-account>` (with or without `spiffe://`) with no
/// empty segment; for `request_principal`, an exact JWT `iss/sub`. Anything Istio would
/// expand (`*`, a prefix or suffix form) or that names no one is refused: revoking `*` would
/// deny every caller in the mesh.
pub fn check_identity(kind: &str, principal: &str) -> Result<(), Refusal> {
    let refuse = |reason: &'static str| {
        Err(Refusal::NotAnIdentity {
            principal: principal.chars().take(256).collect(),
            reason,
        })
    };
    if principal.contains('*') {
        return refuse("contains `*`, which Istio expands to many identities");
    }
    if principal.is_empty() || principal.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("empty, or contains whitespace or control characters");
    }
    if kind == "request_principal" {
        // The deny list holds both kinds: an end user named like a workload would deny that
        // workload.
        if principal.starts_with("spiffe://") || check_identity("principal", principal).is_ok() {
            return refuse("a request principal named like a workload identity (SPIFFE ID)");
        }
        return match principal.rsplit_once('/') {
            Some((iss, sub)) if !iss.is_empty() && !sub.is_empty() => Ok(()),
            _ => refuse("a request principal is a JWT `iss/sub` with both parts"),
        };
    }
    let p = crate::normalize_principal(principal);
    let segments: Vec<&str> = p.split('/').collect();
    let [trust_domain, ns, namespace, sa, account] = segments.as_slice() else {
        return refuse("a principal is a SPIFFE ID <trust-domain>/ns/<namespace>/sa/<service-account>");
    };
    let name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if *ns != "ns" || *sa != "sa" || !name(trust_domain) || !name(namespace) || !name(account) {
        return refuse("a principal is a SPIFFE ID <trust-domain>/ns/<namespace>/sa/<service-account>");
    }
    Ok(())
}

/// Who asked for a revocation. Each has its own budget, so an attacker who makes rules fire
/// cannot use up what an operator needs, and operator revocations never count against rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A rule's `respond`, from telemetry.
    Rule,
    /// A person, through the revocation API.
    Operator,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Rule => "rule-driven",
            Origin::Operator => "operator",
        }
    }
}

pub struct Guardrails {
    protected: Vec<String>,
    cap: usize,
    operator_cap: usize,
    namespace_cap: usize,
    operator_namespace_cap: usize,
    reporter_cap: usize,
    window_ns: i64,
    min_severity: Severity,
    recent: Mutex<Budgets>,
}

/// When each recent revocation was admitted, globally and per namespace, for each origin.
#[derive(Default)]
struct Budgets {
    global: HashMap<Origin, VecDeque<i64>>,
    namespaces: HashMap<(Origin, String), VecDeque<i64>>,
    /// Rule-driven revocations each sender's telemetry led to.
    reporters: HashMap<String, VecDeque<i64>>,
}

/// The namespace a revocation counts against: a SPIFFE ID's, else the alert's destination.
fn namespace_of<'a>(principal: &'a str, fallback: Option<&'a str>) -> Option<&'a str> {
    let mut parts = crate::normalize_principal(principal).split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => fallback.filter(|n| !n.is_empty()),
    }
}

/// `*` matches any run of characters (the same matching as sink routing's rule patterns).
pub use verity_model::glob::glob_match as glob;

impl Guardrails {
    pub fn new(cfg: &crate::config::ControlConfig) -> Self {
        Self {
            protected: cfg.protected.clone(),
            cap: cfg.max_per_window,
            operator_cap: cfg.max_operator_per_window,
            namespace_cap: cfg.max_per_namespace_per_window,
            operator_namespace_cap: cfg.max_operator_per_namespace_per_window,
            reporter_cap: cfg.max_per_reporter_per_window,
            window_ns: i64::try_from(cfg.window_secs)
                .unwrap_or(i64::MAX / 1_000_000_000)
                .saturating_mul(1_000_000_000),
            min_severity: cfg.min_severity,
            recent: Mutex::new(Budgets::default()),
        }
    }

    fn budgets(&self) -> MutexGuard<'_, Budgets> {
        match self.recent.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Refuses a protected identity, whoever asks for its revocation.
    pub fn check_protected(&self, principal: &str) -> Result<(), Refusal> {
        let p = crate::normalize_principal(principal);
        match self.protected.iter().find(|g| glob(g, p)) {
            Some(pattern) => Err(Refusal::Protected {
                principal: p.to_string(),
                pattern: pattern.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Checks a revocation of `principal` at `now_ns`; on success it counts toward the caps
    /// (global, and the namespace's: the principal's own, else `namespace`).
    pub fn admit(
        &self,
        principal: &str,
        namespace: Option<&str>,
        severity: Severity,
        origin: Origin,
        now_ns: i64,
    ) -> Result<(), Refusal> {
        self.admit_reported(principal, namespace, severity, origin, &[], now_ns)
    }

    /// [`Guardrails::admit`] for a revocation backed by telemetry from `reporters`: each
    /// may have led to at most `max_per_reporter_per_window` rule-driven revocations, so one
    /// compromised workload cannot frame caller after caller.
    pub fn admit_reported(
        &self,
        principal: &str,
        namespace: Option<&str>,
        severity: Severity,
        origin: Origin,
        reporters: &[String],
        now_ns: i64,
    ) -> Result<(), Refusal> {
        self.check_protected(principal)?;
        let p = crate::normalize_principal(principal);
        if severity < self.min_severity {
            return Err(Refusal::Severity {
                severity: severity.as_str(),
                minimum: self.min_severity.as_str(),
            });
        }
        let (cap, namespace_cap) = match origin {
            Origin::Rule => (self.cap, self.namespace_cap),
            Origin::Operator => (self.operator_cap, self.operator_namespace_cap),
        };
        let window_secs = u64::try_from(self.window_ns / 1_000_000_000).unwrap_or(0);
        let horizon = now_ns.saturating_sub(self.window_ns);
        let slide = |q: &mut VecDeque<i64>| {
            while q.front().is_some_and(|t| *t <= horizon) {
                q.pop_front();
            }
        };
        let mut budgets = self.budgets();
        let Budgets {
            global,
            namespaces,
            reporters: by_reporter,
        } = &mut *budgets;
        // Namespaces and reporters come from telemetry: keep only those with revocations in
        // the window, so the maps are bounded by the global caps.
        namespaces.retain(|_, q| {
            slide(q);
            !q.is_empty()
        });
        by_reporter.retain(|_, q| {
            slide(q);
            !q.is_empty()
        });
        if origin == Origin::Rule
            && let Some(busy) = reporters.iter().find(|r| {
                by_reporter
                    .get(r.as_str())
                    .is_some_and(|q| q.len() >= self.reporter_cap)
            })
        {
            return Err(Refusal::ReporterCap {
                reporter: busy.chars().take(256).collect(),
                cap: self.reporter_cap,
                window_secs,
            });
        }
        let global = global.entry(origin).or_default();
        slide(global);
        if global.len() >= cap {
            return Err(Refusal::Cap {
                cap,
                window_secs,
                origin: origin.as_str(),
            });
        }
        if let Some(ns) = namespace_of(p, namespace) {
            let q = namespaces.entry((origin, ns.to_string())).or_default();
            if q.len() >= namespace_cap {
                return Err(Refusal::NamespaceCap {
                    namespace: ns.chars().take(63).collect(),
                    cap: namespace_cap,
                    window_secs,
                    origin: origin.as_str(),
                });
            }
            q.push_back(now_ns);
        }
        global.push_back(now_ns);
        if origin == Origin::Rule {
            for r in reporters {
                by_reporter.entry(r.clone()).or_default().push_back(now_ns);
            }
        }
        Ok(())
    }

    /// The intermediary pattern `principal` matches, if any: the defaults and `extra`.
    pub fn intermediary<'a>(principal: &str, extra: &'a [String]) -> Option<std::borrow::Cow<'a, str>> {
        let p = crate::normalize_principal(principal);
        DEFAULT_INTERMEDIARIES
            .iter()
            .find(|g| glob(g, p))
            .map(|g| std::borrow::Cow::Borrowed(*g))
            .or_else(|| {
                extra
                    .iter()
                    .find(|g| glob(g, p))
                    .map(|g| std::borrow::Cow::Borrowed(g.as_str()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn g() -> Guardrails {
        Guardrails::new(&crate::config::ControlConfig {
            max_per_window: 2,
            max_operator_per_window: 3,
            max_per_namespace_per_window: 2,
            max_operator_per_namespace_per_window: 3,
            window_secs: 60,
            min_severity: Severity::High,
            ..Default::default()
        })
    }

    #[test]
    fn protected_identities_are_never_revoked() {
        let g = g();
        for p in [
            "spiffe://cluster.local/ns/istio-system/sa/istiod",
            "cluster.local/ns/kube-system/sa/coredns",
            "cluster.local/ns/gw/sa/istio-ingressgateway-service-account",
            "cluster.local/ns/shop/sa/public-gateway-istio",
            "cluster.local/ns/shop/sa/waypoint",
            "cluster.local/ns/edge/sa/istio-eastwestgateway",
        ] {
            assert!(
                matches!(
                    g.admit(p, None, Severity::Critical, Origin::Rule, 0),
                    Err(Refusal::Protected { .. })
                ),
                "{p}"
            );
        }
        assert!(
            g.admit(
                "cluster.local/ns/shop/sa/cart",
                None,
                Severity::Critical,
                Origin::Rule,
                0
            )
            .is_ok()
        );
    }

    #[test]
    fn only_complete_identities_can_be_revoked() {
        for ok in [
            "spiffe://cluster.local/ns/shop/sa/cart",
            "cluster.local/ns/shop/sa/cart",
            "td.example/ns/a-b/sa/c_d.e",
        ] {
            assert_eq!(check_identity("principal", ok), Ok(()), "{ok}");
        }
        for bad in [
            "*",
            "spiffe://*",
            "cluster.local/ns/shop/*",
            "*/ns/shop/sa/cart",
            "cluster.local/ns/shop/sa/",
            "cluster.local/ns//sa/cart",
            "cluster.local/ns/shop/sa/cart/extra",
            "cluster.local/namespace/shop/sa/cart",
            "",
            "cluster.local/ns/shop/sa/ca rt",
            "10.0.0.1",
        ] {
            assert!(
                matches!(check_identity("principal", bad), Err(Refusal::NotAnIdentity { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_identity("request_principal", "https://issuer.example.com/user-42"),
            Ok(())
        );
        for bad in [
            "*",
            "cluster.local/ns/shop/sa/frontend",
            "spiffe://cluster.local/ns/shop/sa/frontend",
            "https://issuer.example.com/*",
            "user-42",
            "https://issuer.example.com/",
            "/x",
        ] {
            assert!(check_identity("request_principal", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rules_cannot_use_up_the_operator_budget() {
        let g = g();
        assert!(g.admit("a/ns/x/sa/1", None, Severity::High, Origin::Rule, 0).is_ok());
        assert!(g.admit("a/ns/x/sa/2", None, Severity::High, Origin::Rule, 0).is_ok());
        assert!(matches!(
            g.admit("a/ns/x/sa/3", None, Severity::High, Origin::Rule, 0),
            Err(Refusal::Cap {
                origin: "rule-driven",
                ..
            })
        ));
        for i in 0..3 {
            assert!(
                g.admit(
                    &format!("a/ns/x/sa/op{i}"),
                    None,
                    Severity::Critical,
                    Origin::Operator,
                    0
                )
                .is_ok()
            );
        }
        assert!(matches!(
            g.admit("a/ns/x/sa/op3", None, Severity::Critical, Origin::Operator, 0),
            Err(Refusal::Cap { origin: "operator", .. })
        ));
    }

    #[test]
    fn cap_per_window_and_minimum_severity() {
        let g = g();
        assert!(matches!(
            g.admit("a/ns/x/sa/y", None, Severity::Medium, Origin::Rule, 0),
            Err(Refusal::Severity { .. })
        ));
        assert!(g.admit("a/ns/x/sa/1", None, Severity::High, Origin::Rule, 0).is_ok());
        assert!(g.admit("a/ns/x/sa/2", None, Severity::High, Origin::Rule, S).is_ok());
        assert!(matches!(
            g.admit("a/ns/x/sa/3", None, Severity::High, Origin::Rule, 2 * S),
            Err(Refusal::Cap { cap: 2, .. })
        ));
        // The window slides.
        assert!(
            g.admit("a/ns/x/sa/3", None, Severity::High, Origin::Rule, 61 * S)
                .is_ok()
        );
    }

    #[test]
    fn a_namespace_has_a_budget_of_its_own() {
        let g = Guardrails::new(&crate::config::ControlConfig {
            max_per_window: 10,
            max_per_namespace_per_window: 2,
            window_secs: 60,
            min_severity: Severity::High,
            ..Default::default()
        });
        assert!(g.admit("td/ns/pay/sa/1", None, Severity::High, Origin::Rule, 0).is_ok());
        assert!(g.admit("td/ns/pay/sa/2", None, Severity::High, Origin::Rule, 0).is_ok());
        assert!(matches!(
            g.admit("td/ns/pay/sa/3", None, Severity::High, Origin::Rule, 0),
            Err(Refusal::NamespaceCap { ref namespace, .. }) if namespace == "pay"
        ));
        assert!(
            g.admit("td/ns/shop/sa/1", None, Severity::High, Origin::Rule, 0)
                .is_ok()
        );
        // An end user counts against the alert's namespace.
        assert!(
            g.admit("https://idp/u1", Some("shop"), Severity::High, Origin::Rule, 0)
                .is_ok()
        );
        assert!(
            g.admit("https://idp/u2", Some("shop"), Severity::High, Origin::Rule, 0)
                .is_err()
        );
        // Operators have their own.
        assert!(
            g.admit("td/ns/pay/sa/9", None, Severity::High, Origin::Operator, 0)
                .is_ok()
        );
    }

    #[test]
    fn one_reporter_cannot_frame_caller_after_caller() {
        let g = Guardrails::new(&crate::config::ControlConfig {
            max_per_reporter_per_window: 2,
            window_secs: 60,
            ..Default::default()
        });
        let pay = ["spiffe://td/ns/pay/sa/api".to_string()];
        for i in 0..2 {
            let p = format!("td/ns/shop{i}/sa/caller");
            assert!(
                g.admit_reported(&p, None, Severity::High, Origin::Rule, &pay, 0)
                    .is_ok()
            );
        }
        assert!(matches!(
            g.admit_reported("td/ns/shop9/sa/caller", None, Severity::High, Origin::Rule, &pay, 0),
            Err(Refusal::ReporterCap { .. })
        ));
        let other = ["spiffe://td/ns/pay/sa/ledger".to_string()];
        assert!(
            g.admit_reported("td/ns/shop9/sa/caller", None, Severity::High, Origin::Rule, &other, 0)
                .is_ok()
        );
    }
}
