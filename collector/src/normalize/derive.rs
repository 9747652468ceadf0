//! Derived zero-trust facts: direction, reporter, SPIFFE principals, mTLS, destination
//! service and the policy decision. Runs once per record after every field source applied.
//!
//! The rules follow how Istio and ztunnel report (see `docs/schema.md`, "Derived columns"):
//! - direction from the upstream cluster (`inbound|…`, `outbound|…`, `PassthroughCluster`);
//! - the caller's identity at an inbound proxy is `%DOWNSTREAM_PEER_URI_SAN%` (or the URI in
//!   `x-forwarded-client-cert`); ztunnel prints identities only for mutual TLS;
//! - an inbound sidecar that received mutual TLS from a mesh client saw the SNI
//!   `outbound_.<port>_.<subset>_.<host>`, so no SNI at an inbound sidecar means plaintext;
//! - RBAC, ext_authz, JWT and ztunnel policy denials each leave a recognizable trace.

use std::borrow::Cow;

use verity_model::event::Text;
use verity_model::{AccessEvent, Decision, Direction, InputFormat, Reporter};

use super::Extras;
use super::fields::{split_addr_cow, sub_cow};

pub fn derive<'a>(ev: &mut AccessEvent<'a>, ex: &Extras<'a>) {
    let is_ztunnel = matches!(
        ev.format,
        InputFormat::ZtunnelText | InputFormat::ZtunnelTextLegacy | InputFormat::ZtunnelJson
    );

    if ev.direction == Direction::Unknown {
        ev.direction = direction_from_cluster(ev.upstream_cluster.as_deref());
    }
    if ev.reporter == Reporter::Unknown {
        ev.reporter = match ev.direction {
            Direction::Inbound => Reporter::Destination,
            Direction::Outbound => Reporter::Source,
            Direction::Unknown => Reporter::Unknown,
        };
    }
    let inbound_side = matches!(ev.direction, Direction::Inbound)
        || matches!(
            ev.reporter,
            Reporter::Destination | Reporter::Waypoint | Reporter::Gateway
        );

    // Addresses: the downstream peer is always the source; the destination is the local
    // address on an inbound proxy and the chosen upstream host on an outbound one.
    if ev.source_ip.is_none()
        && let Some(addr) = ex.downstream_remote_address.as_ref()
    {
        let (ip, port) = split_addr_cow(addr);
        ev.source_ip = ip;
        ev.source_port = port;
    }
    if ev.destination_ip.is_none() {
        let from = if inbound_side {
            ex.downstream_local_address.as_ref()
        } else {
            ev.upstream_host.as_ref().or(ex.downstream_local_address.as_ref())
        };
        if let Some(addr) = from {
            let (ip, port) = split_addr_cow(addr);
            ev.destination_ip = ip;
            ev.destination_port = port;
        }
    }

    // Pod labels name the reporting proxy's own workload.
    if let Some(pod) = &ex.pod {
        let slot = if inbound_side {
            &mut ev.destination_workload
        } else {
            &mut ev.source_workload
        };
        if slot.is_none() {
            *slot = Some(pod.clone());
        }
    }
    if let Some(ns) = &ex.pod_namespace {
        let slot = if inbound_side {
            &mut ev.destination_namespace
        } else {
            &mut ev.source_namespace
        };
        if slot.is_none() {
            *slot = Some(ns.clone());
        }
    }

    // Principals.
    if ev.source_principal.is_none() && inbound_side {
        ev.source_principal = ex.downstream_peer_uri_san.clone().or_else(|| {
            ex.x_forwarded_client_cert
                .as_deref()
                .and_then(xfcc_uri)
                .map(|u| Cow::Owned(u.to_string()))
        });
    }
    if ev.destination_principal.is_none() {
        ev.destination_principal = if inbound_side {
            ex.downstream_local_uri_san.clone()
        } else {
            ex.upstream_peer_uri_san.clone()
        };
    }
    normalize_principal(&mut ev.source_principal);
    normalize_principal(&mut ev.destination_principal);

    // Destination service and port from the cluster name or, inbound, from the SNI.
    if ev.destination_service.is_none() {
        ev.destination_service = sub_cow(&ev.upstream_cluster, service_from_cluster)
            .or_else(|| sub_cow(&ev.requested_server_name, service_from_sni));
    }
    if ev.destination_port.is_none() {
        ev.destination_port = ev.upstream_cluster.as_deref().and_then(port_from_cluster);
    }
    if ev.destination_namespace.is_none() {
        ev.destination_namespace = sub_cow(&ev.destination_service, namespace_from_host);
    }

    if ev.mtls.is_none() {
        ev.mtls = derive_mtls(ev, ex, is_ztunnel, inbound_side);
    }

    let (decision, policy, reason) = decide(ev, is_ztunnel);
    ev.decision = decision;
    if ev.decision_policy.is_none() {
        ev.decision_policy = policy;
    }
    if ev.decision_reason.is_none() {
        ev.decision_reason = reason;
    }
}

pub fn direction_from_cluster(cluster: Option<&str>) -> Direction {
    match cluster {
        Some(c) if c.starts_with("inbound|") || c == "InboundPassthroughCluster" => Direction::Inbound,
        Some(c) if c.starts_with("outbound|") || c == "PassthroughCluster" || c == "BlackHoleCluster" => {
            Direction::Outbound
        }
        _ => Direction::Unknown,
    }
}

/// `outbound|8000||httpbin.foo.svc.cluster.local` → `httpbin.foo.svc.cluster.local`.
fn service_from_cluster(c: &str) -> Option<&str> {
    let mut parts = c.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let host = parts.nth(2)?;
    (!host.is_empty()).then_some(host)
}

fn port_from_cluster(c: &str) -> Option<i32> {
    let mut parts = c.split('|');
    let dir = parts.next()?;
    if dir != "outbound" && dir != "inbound" {
        return None;
    }
    parts.next()?.parse::<u16>().ok().map(i32::from)
}

/// Istio's mTLS SNI `outbound_.8000_._.httpbin.foo.svc.cluster.local` → the host.
fn service_from_sni(sni: &str) -> Option<&str> {
    let rest = sni.strip_prefix("outbound_.")?;
    let mut parts = rest.splitn(3, "_.");
    let _port = parts.next()?;
    let _subset = parts.next()?;
    let host = parts.next()?;
    (!host.is_empty()).then_some(host)
}

/// `name.ns.svc.cluster.local` → `ns`.
fn namespace_from_host(host: &str) -> Option<&str> {
    let mut parts = host.split('.');
    let _name = parts.next()?;
    let ns = parts.next()?;
    (parts.next()? == "svc").then_some(ns)
}

/// The last URI in an `x-forwarded-client-cert` header (the closest hop's client).
pub fn xfcc_uri(xfcc: &str) -> Option<&str> {
    xfcc.split(',').rev().find_map(|element| {
        element.split(';').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.trim().eq_ignore_ascii_case("uri").then(|| v.trim().trim_matches('"'))
        })
    })
}

/// Puts workload identities in the `spiffe://` form; leaves other principals alone.
pub fn normalize_principal(p: &mut Text<'_>) {
    let Some(v) = p.as_deref() else { return };
    let t = v.trim();
    if t.is_empty() || t == "-" {
        *p = None;
    } else if t.starts_with("spiffe://") {
        if t.len() != v.len() {
            *p = Some(Cow::Owned(t.to_string()));
        }
    } else if t.contains("/ns/") && t.contains("/sa/") && !t.contains("://") {
        *p = Some(Cow::Owned(format!("spiffe://{t}")));
    }
}

fn derive_mtls(ev: &AccessEvent<'_>, ex: &Extras<'_>, is_ztunnel: bool, inbound_side: bool) -> Option<bool> {
    if let Some(policy) = ex.connection_security_policy.as_deref() {
        match policy {
            "mutual_tls" => return Some(true),
            "none" => return Some(false),
            _ => {}
        }
    }
    if is_ztunnel {
        return Some(ev.source_principal.is_some());
    }
    if !inbound_side {
        // An outbound sidecar only knows if it was told the upstream's certificate SAN.
        return ex.upstream_peer_uri_san.as_ref().map(|_| true);
    }
    if ev.source_principal.is_some() {
        return Some(true);
    }
    if ex.peer_san_reported {
        // The proxy was asked for the peer certificate and there was none.
        return Some(false);
    }
    if ev.direction == Direction::Inbound && ev.upstream_cluster.is_some() {
        return Some(
            ev.requested_server_name
                .as_deref()
                .is_some_and(|s| s.starts_with("outbound_.")),
        );
    }
    None
}

type DecisionParts<'a> = (Decision, Text<'a>, Text<'a>);

fn decide<'a>(ev: &AccessEvent<'a>, is_ztunnel: bool) -> DecisionParts<'a> {
    if is_ztunnel {
        if let Some(err) = ev.connection_termination_details.as_deref() {
            return ztunnel_decision(err);
        }
        return (Decision::Allow, None, None);
    }
    let details = ev.response_code_details.as_deref().unwrap_or("");
    let flags = ev.response_flags.as_deref().unwrap_or("");
    if let Some(policy) = rbac_policy(details) {
        return (Decision::DenyRbac, Some(Cow::Owned(policy)), None);
    }
    if let Some(policy) = ev.connection_termination_details.as_deref().and_then(rbac_policy) {
        return (Decision::DenyL4, Some(Cow::Owned(policy)), Some(Cow::Borrowed("rbac")));
    }
    if details.starts_with("ext_authz") || flags.split(',').any(|f| f == "UAEX") {
        let reason = if details.is_empty() {
            "ext_authz_denied"
        } else {
            details
        };
        return (Decision::DenyExtAuthz, None, Some(Cow::Owned(reason.to_string())));
    }
    if let Some(rest) = details.strip_prefix("jwt_authn_access_denied") {
        let reason = rest.trim_start_matches('{').trim_end_matches('}');
        let reason = if reason.is_empty() {
            "jwt_authn_access_denied"
        } else {
            reason
        };
        return (Decision::DenyJwt, None, Some(Cow::Owned(reason.to_string())));
    }
    (Decision::Allow, None, None)
}

/// `rbac_access_denied_matched_policy[ns[pay]-policy[deny-x]-rule[0]]` → `pay/deny-x`;
/// `…[none]` → `none` (no ALLOW policy matched).
fn rbac_policy(details: &str) -> Option<String> {
    let inner = details.strip_prefix("rbac_access_denied_matched_policy[")?;
    let inner = inner.strip_suffix(']').unwrap_or(inner);
    if inner == "none" {
        return Some("none".to_string());
    }
    let ns = between(inner, "ns[", "]");
    let name = between(inner, "policy[", "]");
    Some(match (ns, name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => inner.to_string(),
    })
}

fn between<'s>(s: &'s str, start: &str, end: &str) -> Option<&'s str> {
    let (_, after) = s.split_once(start)?;
    let (inside, _) = after.split_once(end)?;
    Some(inside)
}

fn ztunnel_decision<'a>(err: &str) -> DecisionParts<'a> {
    if let Some(at) = err.find("policy rejection") {
        let tail = err.get(at..).unwrap_or_default();
        if let Some(p) = tail.split_once("explicitly denied by: ").map(|(_, p)| p.trim()) {
            return (
                Decision::DenyL4,
                Some(Cow::Owned(p.to_string())),
                Some(Cow::Borrowed("explicit_deny")),
            );
        }
        if tail.contains("none allowed") {
            return (
                Decision::DenyL4,
                Some(Cow::Borrowed("none")),
                Some(Cow::Borrowed("no_allow_match")),
            );
        }
        return (Decision::DenyL4, None, Some(Cow::Borrowed("policy_rejection")));
    }
    if err.contains("policy change") {
        return (Decision::DenyL4, None, Some(Cow::Borrowed("policy_change")));
    }
    if err.contains("revoked") {
        return (Decision::DenyL4, None, Some(Cow::Borrowed("certificate_revoked")));
    }
    (Decision::Allow, None, None)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn principals_and_xfcc() {
        let mut p: Text<'_> = Some("cluster.local/ns/shop/sa/cart".into());
        normalize_principal(&mut p);
        assert_eq!(p.as_deref(), Some("spiffe://cluster.local/ns/shop/sa/cart"));
        let mut p: Text<'_> = Some("https://accounts.example.com/user1".into());
        normalize_principal(&mut p);
        assert_eq!(p.as_deref(), Some("https://accounts.example.com/user1"));
        assert_eq!(
            xfcc_uri(
                r#"By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=abc;Subject="";URI=spiffe://cluster.local/ns/foo/sa/sleep"#
            ),
            Some("spiffe://cluster.local/ns/foo/sa/sleep")
        );
    }

    #[test]
    fn rbac_details() {
        assert_eq!(
            rbac_policy("rbac_access_denied_matched_policy[ns[istio-system]-policy[external-deny]-rule[0]]").as_deref(),
            Some("istio-system/external-deny")
        );
        assert_eq!(
            rbac_policy("rbac_access_denied_matched_policy[none]").as_deref(),
            Some("none")
        );
        assert_eq!(rbac_policy("via_upstream"), None);
    }

    #[test]
    fn services() {
        assert_eq!(
            service_from_cluster("outbound|8000||httpbin.foo.svc.cluster.local"),
            Some("httpbin.foo.svc.cluster.local")
        );
        assert_eq!(service_from_cluster("inbound|8000||"), None);
        assert_eq!(
            service_from_sni("outbound_.8000_._.httpbin.foo.svc.cluster.local"),
            Some("httpbin.foo.svc.cluster.local")
        );
        assert_eq!(namespace_from_host("httpbin.foo.svc.cluster.local"), Some("foo"));
        assert_eq!(namespace_from_host("developer.yahoo.com"), None);
    }
}
