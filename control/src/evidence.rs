//! Who a rule-driven revocation may name, and whether the evidence behind the alert is good
//! enough to act on.
//!
//! Telemetry can be forged by any workload that can reach Verity, so an alert alone is not
//! enough to cut an identity off:
//! - **Intermediaries** (gateways, waypoints, `control.intermediaries`) carry other
//!   identities' requests. An alert about one revokes the end user (`request_principal`) the
//!   evidence names, never the intermediary; with no single end user, a person decides.
//! - **Evidence** must come from senders Verity verified, each entitled to report the event:
//!   a node or aggregator it trusts, the proxy that received the request (it enforced the
//!   decision), or the revoked identity itself. At least `control.min_evidence` events, from
//!   at least `control.min_reporters` distinct senders.

use std::collections::BTreeSet;

use verity_model::alert::{Alert, Evidence};

use crate::config::ControlConfig;
use crate::guard::{Guardrails, Refusal};
use crate::normalize_principal;

/// The identity a revocation will name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `principal` or `request_principal`.
    pub kind: &'static str,
    pub principal: String,
}

/// The alert's entity, or the end user behind it when the entity is an intermediary.
pub fn target(alert: &Alert, cfg: &ControlConfig) -> Option<Result<Target, Refusal>> {
    let entity = alert.entity.as_ref()?;
    if entity.kind == "request_principal" {
        return Some(Ok(Target {
            kind: "request_principal",
            principal: entity.value.clone(),
        }));
    }
    let Some(pattern) = Guardrails::intermediary(&entity.value, &cfg.intermediaries) else {
        return Some(Ok(Target {
            kind: "principal",
            principal: entity.value.clone(),
        }));
    };
    let users: BTreeSet<&str> = alert
        .evidence
        .iter()
        .map(|e| e.request_principal.as_deref().unwrap_or(""))
        .collect();
    Some(match users.into_iter().collect::<Vec<_>>().as_slice() {
        [user] if !user.is_empty() => Ok(Target {
            kind: "request_principal",
            principal: (*user).to_string(),
        }),
        _ => Err(Refusal::Intermediary {
            principal: normalize_principal(&entity.value).chars().take(256).collect(),
            pattern: pattern.into_owned(),
        }),
    })
}

/// Whether one event is evidence its sender was entitled to report about `target`.
fn entitled(e: &Evidence, target: &Target) -> Result<(), String> {
    let sender = e.sender.as_deref().unwrap_or("");
    if !e.sender_verified || sender.is_empty() {
        return Err(format!(
            "an event from {} is not verified as its sender's own",
            if sender.is_empty() {
                "no authenticated sender"
            } else {
                sender
            }
        ));
    }
    if e.sender_binding.as_deref() == Some("trusted") {
        return Ok(());
    }
    let sender = normalize_principal(sender);
    let enforcer = e.destination_principal.as_deref().map(normalize_principal);
    if enforcer == Some(sender) || (target.kind == "principal" && normalize_principal(&target.principal) == sender) {
        return Ok(());
    }
    Err(format!(
        "{sender} reported an event it did not enforce (destination {})",
        enforcer.unwrap_or("unknown")
    ))
}

/// Checks the evidence behind a rule-driven revocation of `target`.
pub fn check(alert: &Alert, target: &Target, cfg: &ControlConfig) -> Result<(), Refusal> {
    if alert.count < cfg.min_evidence {
        return Err(Refusal::Evidence(format!(
            "{} event(s) behind the alert, control.min_evidence is {}",
            alert.count, cfg.min_evidence
        )));
    }
    // Every event behind the alert, when the rules counted them (the evidence below is only
    // a sample of the first few).
    if let Some(b) = alert.respond.as_ref().and_then(|r| r.backing.as_ref()) {
        if b.unentitled > 0 {
            return Err(Refusal::Evidence(format!(
                "unverified evidence: {} of {} events were not reported by a verified sender entitled to report them",
                b.unentitled, b.events
            )));
        }
        let reporters: BTreeSet<&str> = b
            .reporters
            .iter()
            .map(|r| normalize_principal(r))
            .filter(|r| target.kind == "request_principal" || *r != normalize_principal(&target.principal))
            .collect();
        // The identity acted on reporting itself is good evidence, but not a second opinion.
        if cfg.min_reporters > 1 && reporters.len() < cfg.min_reporters {
            return Err(Refusal::Evidence(format!(
                "{} distinct sender(s) besides the identity itself reported it, control.min_reporters is {}",
                reporters.len(),
                cfg.min_reporters
            )));
        }
    }
    if alert.evidence.is_empty() {
        return Err(Refusal::Evidence("the alert carries no evidence".into()));
    }
    for e in &alert.evidence {
        entitled(e, target).map_err(|why| Refusal::Evidence(format!("unverified evidence: {why}")))?;
    }
    let reporters: BTreeSet<&str> = alert
        .evidence
        .iter()
        .filter_map(|e| e.sender.as_deref())
        .map(normalize_principal)
        .collect();
    let backed = alert.respond.as_ref().is_some_and(|r| r.backing.is_some());
    if !backed && reporters.len() < cfg.min_reporters {
        return Err(Refusal::Evidence(format!(
            "{} distinct sender(s) reported it, control.min_reporters is {}",
            reporters.len(),
            cfg.min_reporters
        )));
    }
    Ok(())
}

/// The destination namespace an alert is about: its group's `destination_namespace`, else the
/// one namespace every piece of evidence's destination service (`svc.ns.svc.domain`) is in.
pub fn alert_namespace(a: &Alert) -> Option<String> {
    if let Some(Some(ns)) = a.group.get("destination_namespace") {
        return Some(ns.clone());
    }
    let mut found: Option<&str> = None;
    for e in &a.evidence {
        let ns = e.destination_service.as_deref().and_then(|s| {
            let mut parts = s.split('.');
            let (_svc, ns, kind) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "svc" && !ns.is_empty()).then_some(ns)
        })?;
        match found {
            Some(f) if f != ns => return None,
            _ => found = Some(ns),
        }
    }
    found.map(str::to_string)
}

/// The workload proxies whose telemetry an alert rests on (not trusted nodes or aggregators):
/// its backing's, else those among the senders of its evidence (without `spiffe://`).
pub(crate) fn alert_reporters(a: &Alert) -> Vec<String> {
    let mut out: Vec<String> = match a.respond.as_ref().and_then(|r| r.backing.as_ref()) {
        Some(b) => b.proxies.iter().map(|r| normalize_principal(r).to_string()).collect(),
        None => a
            .evidence
            .iter()
            .filter(|e| e.sender_binding.as_deref() != Some("trusted"))
            .filter_map(|e| e.sender.as_deref())
            .map(|s| normalize_principal(s).to_string())
            .collect(),
    };
    out.sort();
    out.dedup();
    out
}

/// `30s`, `5m`, `1h`, `1d` in nanoseconds.
pub fn parse_ttl_ns(s: &str) -> Option<i64> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_model::alert::Entity;

    const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
    const PAY: &str = "spiffe://cluster.local/ns/pay/sa/api";
    const GATEWAY: &str = "spiffe://cluster.local/ns/edge/sa/istio-ingressgateway-service-account";

    fn event(sender: &str, binding: &str, destination: &str, user: Option<&str>) -> Evidence {
        Evidence {
            sender: Some(sender.into()),
            sender_verified: binding != "unbound",
            sender_binding: Some(binding.into()),
            destination_principal: Some(destination.into()),
            request_principal: user.map(str::to_string),
            ..Evidence::default()
        }
    }

    fn alert(entity: &str, evidence: Vec<Evidence>) -> Alert {
        Alert {
            count: evidence.len() as u64,
            evidence,
            entity: Some(Entity {
                kind: "source_principal".into(),
                value: entity.into(),
            }),
            ..Alert::sample()
        }
    }

    #[test]
    fn the_enforcing_proxy_the_node_or_the_identity_itself_may_report() {
        let cfg = ControlConfig::default();
        let cart = Target {
            kind: "principal",
            principal: CART.into(),
        };
        for e in [
            event(PAY, "bound", PAY, None),
            event(
                "spiffe://cluster.local/ns/istio-system/sa/ztunnel",
                "trusted",
                PAY,
                None,
            ),
            event(CART, "bound", PAY, None),
        ] {
            assert_eq!(check(&alert(CART, vec![e.clone()]), &cart, &cfg), Ok(()), "{e:?}");
        }
        // A third workload's claims about traffic between two others are not evidence, and
        // neither is anything unverified.
        for e in [
            event("spiffe://cluster.local/ns/x/sa/mallory", "bound", PAY, None),
            event(PAY, "unbound", PAY, None),
            Evidence::default(),
        ] {
            assert!(
                matches!(
                    check(&alert(CART, vec![e.clone()]), &cart, &cfg),
                    Err(Refusal::Evidence(_))
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn thresholds_on_events_and_reporters() {
        let cart = Target {
            kind: "principal",
            principal: CART.into(),
        };
        let cfg = ControlConfig {
            min_evidence: 3,
            min_reporters: 2,
            ..ControlConfig::default()
        };
        let two = alert(CART, vec![event(PAY, "bound", PAY, None); 2]);
        assert!(check(&two, &cart, &cfg).is_err());
        let one_reporter = alert(CART, vec![event(PAY, "bound", PAY, None); 3]);
        assert!(check(&one_reporter, &cart, &cfg).is_err());
        let other = "spiffe://cluster.local/ns/pay/sa/ledger";
        let two_reporters = alert(
            CART,
            vec![
                event(PAY, "bound", PAY, None),
                event(PAY, "bound", PAY, None),
                event(other, "bound", other, None),
            ],
        );
        assert_eq!(check(&two_reporters, &cart, &cfg), Ok(()));
    }

    #[test]
    fn an_intermediary_is_never_the_target() {
        let cfg = ControlConfig {
            intermediaries: vec!["*/ns/shop/sa/frontend".into()],
            ..ControlConfig::default()
        };
        let user = "https://idp.example.com/user-7";
        let a = alert(GATEWAY, vec![event(PAY, "bound", PAY, Some(user)); 2]);
        assert_eq!(
            target(&a, &cfg),
            Some(Ok(Target {
                kind: "request_principal",
                principal: user.into()
            }))
        );
        let mixed = alert(
            GATEWAY,
            vec![event(PAY, "bound", PAY, Some(user)), event(PAY, "bound", PAY, None)],
        );
        assert!(matches!(target(&mixed, &cfg), Some(Err(Refusal::Intermediary { .. }))));
        let configured = alert(
            "spiffe://cluster.local/ns/shop/sa/frontend",
            vec![event(PAY, "bound", PAY, None)],
        );
        assert!(matches!(
            target(&configured, &cfg),
            Some(Err(Refusal::Intermediary { .. }))
        ));
        let waypoint = alert("cluster.local/ns/shop/sa/waypoint", vec![]);
        assert!(matches!(
            target(&waypoint, &cfg),
            Some(Err(Refusal::Intermediary { .. }))
        ));
        assert_eq!(
            target(&alert(CART, vec![]), &cfg),
            Some(Ok(Target {
                kind: "principal",
                principal: CART.into()
            }))
        );
    }

    #[test]
    fn every_event_counts_not_only_the_evidence_sample() {
        let cfg = ControlConfig::default();
        let cart = Target {
            kind: "principal",
            principal: CART.into(),
        };
        // Five genuine events kept as evidence, then forged ones from a bystander: the alert
        // says so in its backing, and nothing is revoked.
        let mut a = alert(CART, vec![event(PAY, "bound", PAY, None); 5]);
        a.count = 12;
        let mut backing = verity_model::alert::Backing::default();
        for _ in 0..5 {
            backing.add(true, Some(PAY), false);
        }
        for _ in 0..7 {
            backing.add(false, Some("spiffe://cluster.local/ns/x/sa/mallory"), false);
        }
        a.respond = Some(verity_model::alert::Response {
            action: "revoke".into(),
            ttl: "1h".into(),
            backing: Some(backing.clone()),
        });
        assert!(matches!(check(&a, &cart, &cfg), Err(Refusal::Evidence(_))));
        // Two reporters wanted: the identity reporting itself is not a second opinion.
        let mut own = verity_model::alert::Backing::default();
        own.add(true, Some(PAY), false);
        own.add(true, Some(CART), false);
        a.respond.as_mut().unwrap().backing = Some(own);
        let two = ControlConfig {
            min_reporters: 2,
            ..ControlConfig::default()
        };
        assert!(check(&a, &cart, &two).is_err());
        assert_eq!(check(&a, &cart, &cfg), Ok(()));
    }
}
