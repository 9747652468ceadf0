//! Guardrails: a revocation that would cut off the mesh itself is refused, and a burst of
//! revocations (a bad rule, an attack meant to make Verity lock everyone out) is capped.

use std::collections::VecDeque;
use std::sync::Mutex;

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
    #[error("severity {severity} is below the minimum {minimum}")]
    Severity {
        severity: &'static str,
        minimum: &'static str,
    },
}

/// Identities no revocation may touch by default: the control plane, gateways, kube-system.
pub const DEFAULT_PROTECTED: &[&str] = &[
    "*/ns/istio-system/*",
    "*/ns/kube-system/*",
    "*/sa/istiod*",
    "*/sa/istio-ingressgateway*",
    "*/sa/istio-egressgateway*",
    "*/sa/istio-eastwestgateway*",
    "*-gateway-service-account",
    // Gateway API gateways get a `<gateway>-istio` service account.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    window_ns: i64,
    min_severity: Severity,
    recent: Mutex<VecDeque<i64>>,
    recent_operator: Mutex<VecDeque<i64>>,
}

/// `*` matches any run of characters (the same matching as sink routing's rule patterns).
pub use verity_sinks::routing::glob_match as glob;

impl Guardrails {
    /// `cap` rule-driven and `operator_cap` operator revocations per window.
    pub fn new(
        protected: Vec<String>,
        cap: usize,
        operator_cap: usize,
        window_secs: u64,
        min_severity: Severity,
    ) -> Self {
        Self {
            protected,
            cap,
            operator_cap,
            window_ns: i64::try_from(window_secs).unwrap_or(i64::MAX / 1_000_000_000) * 1_000_000_000,
            min_severity,
            recent: Mutex::new(VecDeque::new()),
            recent_operator: Mutex::new(VecDeque::new()),
        }
    }

    /// Checks a revocation of `principal` at `now_ns`; on success it counts toward the cap.
    pub fn admit(&self, principal: &str, severity: Severity, origin: Origin, now_ns: i64) -> Result<(), Refusal> {
        let p = crate::normalize_principal(principal);
        if let Some(pattern) = self.protected.iter().find(|g| glob(g, p)) {
            return Err(Refusal::Protected {
                principal: p.to_string(),
                pattern: pattern.clone(),
            });
        }
        if severity < self.min_severity {
            return Err(Refusal::Severity {
                severity: severity.as_str(),
                minimum: self.min_severity.as_str(),
            });
        }
        let (recent, cap) = match origin {
            Origin::Rule => (&self.recent, self.cap),
            Origin::Operator => (&self.recent_operator, self.operator_cap),
        };
        let mut recent = match recent.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        while recent
            .front()
            .is_some_and(|t| *t <= now_ns.saturating_sub(self.window_ns))
        {
            recent.pop_front();
        }
        if recent.len() >= cap {
            return Err(Refusal::Cap {
                cap,
                window_secs: u64::try_from(self.window_ns / 1_000_000_000).unwrap_or(0),
                origin: origin.as_str(),
            });
        }
        recent.push_back(now_ns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn g() -> Guardrails {
        Guardrails::new(
            DEFAULT_PROTECTED.iter().map(|s| s.to_string()).collect(),
            2,
            3,
            60,
            Severity::High,
        )
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
                    g.admit(p, Severity::Critical, Origin::Rule, 0),
                    Err(Refusal::Protected { .. })
                ),
                "{p}"
            );
        }
        assert!(
            g.admit("cluster.local/ns/shop/sa/cart", Severity::Critical, Origin::Rule, 0)
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
        assert!(g.admit("a/ns/x/sa/1", Severity::High, Origin::Rule, 0).is_ok());
        assert!(g.admit("a/ns/x/sa/2", Severity::High, Origin::Rule, 0).is_ok());
        assert!(matches!(
            g.admit("a/ns/x/sa/3", Severity::High, Origin::Rule, 0),
            Err(Refusal::Cap {
                origin: "rule-driven",
                ..
            })
        ));
        for i in 0..3 {
            assert!(
                g.admit(&format!("a/ns/x/sa/op{i}"), Severity::Critical, Origin::Operator, 0)
                    .is_ok()
            );
        }
        assert!(matches!(
            g.admit("a/ns/x/sa/op3", Severity::Critical, Origin::Operator, 0),
            Err(Refusal::Cap { origin: "operator", .. })
        ));
    }

    #[test]
    fn cap_per_window_and_minimum_severity() {
        let g = g();
        assert!(matches!(
            g.admit("a/ns/x/sa/y", Severity::Medium, Origin::Rule, 0),
            Err(Refusal::Severity { .. })
        ));
        assert!(g.admit("a/ns/x/sa/1", Severity::High, Origin::Rule, 0).is_ok());
        assert!(g.admit("a/ns/x/sa/2", Severity::High, Origin::Rule, S).is_ok());
        assert!(matches!(
            g.admit("a/ns/x/sa/3", Severity::High, Origin::Rule, 2 * S),
            Err(Refusal::Cap { cap: 2, .. })
        ));
        // The window slides.
        assert!(g.admit("a/ns/x/sa/3", Severity::High, Origin::Rule, 61 * S).is_ok());
    }
}
