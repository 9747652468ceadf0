//! Shadow assertions on a stream of batches: holding while the candidate allows what the mesh
//! allowed, violated (with the requests as evidence) when a new edge appears, resolved after
//! the window, unknown when its traffic stops.

use std::borrow::Cow;

use verity_model::alert::AlertStatus;
use verity_model::event::{Decision, Direction, Reporter, SenderBinding};
use verity_model::{AccessEvent, EventBatchBuilder};
use verity_policy::object::parse_documents;
use verity_policy::shadow::{ShadowAssertions, ShadowState};
use verity_policy::{Inventory, PolicySet};

const CANDIDATE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-allow, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/frontend]}}]
"#;

const SECOND: i64 = 1_000_000_000;

fn request(peer: &str, at_s: i64) -> AccessEvent<'static> {
    AccessEvent {
        event_time_ns: 1_800_000_000 * SECOND + at_s * SECOND,
        reporter: Reporter::Destination,
        direction: Direction::Inbound,
        protocol: Some(Cow::Borrowed("HTTP/1.1")),
        method: Some(Cow::Borrowed("GET")),
        path: Some(Cow::Borrowed("/cart")),
        destination_namespace: Some(Cow::Borrowed("shop")),
        destination_workload: Some(Cow::Borrowed("cart")),
        source_principal: Some(Cow::Owned(format!("spiffe://cluster.local/ns/shop/sa/{peer}"))),
        mtls: Some(true),
        decision: Decision::Allow,
        raw: Cow::Owned(format!("GET /cart from {peer}")),
        ..AccessEvent::default()
    }
}

fn batch(events: &[AccessEvent<'_>]) -> arrow::array::RecordBatch {
    let mut b = EventBatchBuilder::with_capacity(events.len());
    for e in events {
        b.append(e);
    }
    b.finish().expect("batch")
}

#[test]
fn a_new_edge_violates_the_candidate_and_the_window_resolves_it() {
    let mut policies = Vec::new();
    parse_documents(CANDIDATE, std::path::Path::new("candidate.yaml"), &mut policies).expect("policy");
    let inventory =
        Inventory::parse("workloads: [{namespace: shop, name: cart, labels: {app: cart}}]").expect("inventory");
    let set = PolicySet::compile(&policies, "istio-system", inventory).expect("compile");
    let mut shadow = ShadowAssertions::new(set, 1, 60 * SECOND);
    assert_eq!(shadow.candidates()[0].state, ShadowState::Unknown);

    let mut seen = Vec::new();
    let alerts = shadow.process(&batch(&[request("frontend", 0), request("frontend", 1)]), |i, o| {
        seen.push((i, o))
    });
    assert!(alerts.is_empty(), "unknown → holding is not an alert: {alerts:?}");
    assert_eq!(shadow.candidates()[0].state, ShadowState::Holding);
    assert_eq!(shadow.candidates()[0].holding_since_ns, Some(1_800_000_001 * SECOND));
    assert_eq!(seen.len(), 2);

    let alerts = shadow.process(&batch(&[request("frontend", 10), request("intruder", 11)]), |_, _| {});
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(
        (a.status, a.count, a.kind.as_str()),
        (AlertStatus::Firing, 1, "assertion")
    );
    assert_eq!(a.group.get("policy"), Some(&Some("shop/cart-allow".to_string())));
    assert_eq!(a.evidence.len(), 1);
    assert_eq!(
        a.evidence[0].source_principal.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/intruder")
    );
    assert_eq!(shadow.candidates()[0].state, ShadowState::Violated);
    assert_eq!(shadow.candidates()[0].holding_since_ns, None);

    // Still violated within the window; resolved once the violation is older than it.
    assert!(shadow.process(&batch(&[request("frontend", 40)]), |_, _| {}).is_empty());
    let alerts = shadow.process(&batch(&[request("frontend", 80)]), |_, _| {});
    assert_eq!(
        alerts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Resolved]
    );
    assert_eq!(shadow.candidates()[0].holding_since_ns, Some(1_800_000_080 * SECOND));

    // Traffic elsewhere only: the candidate has nothing to judge.
    let mut other = request("frontend", 200);
    other.destination_workload = Some(Cow::Borrowed("pay"));
    let alerts = shadow.process(&batch(&[other]), |_, _| {});
    assert_eq!(
        alerts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Unknown]
    );
    let c = &shadow.candidates()[0];
    assert_eq!((c.allowed, c.would_deny), (5, 1));
}

#[test]
fn candidates_are_judged_with_the_policies_in_force_and_promoted_denials_count() {
    const IN_FORCE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/batch]}}]
"#;
    let mut policies = Vec::new();
    parse_documents(IN_FORCE, std::path::Path::new("in-force.yaml"), &mut policies).expect("policy");
    parse_documents(CANDIDATE, std::path::Path::new("candidate.yaml"), &mut policies).expect("policy");
    let inventory =
        Inventory::parse("workloads: [{namespace: shop, name: cart, labels: {app: cart}}]").expect("inventory");
    let set = PolicySet::compile(&policies, "istio-system", inventory).expect("compile");
    let mut shadow = ShadowAssertions::new(set, 1, 60 * SECOND);
    assert_eq!(shadow.candidates().len(), 1);
    // batch is allowed by the policy in force: adding the candidate denies nothing.
    let alerts = shadow.process(&batch(&[request("frontend", 0), request("batch", 1)]), |_, _| {});
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!(shadow.candidates()[0].state, ShadowState::Holding);
    assert_eq!(shadow.candidates()[0].would_deny, 0);

    // Promoted, the candidate is enforced: a denial with no ALLOW policy matched at its
    // destination is its doing.
    shadow.set_promoted("shop/cart-allow", true);
    let mut denied = request("intruder", 2);
    denied.decision = Decision::DenyRbac;
    denied.decision_policy = Some(Cow::Borrowed("none"));
    let alerts = shadow.process(&batch(&[denied.clone()]), |_, _| {});
    assert_eq!(
        alerts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![AlertStatus::Firing]
    );
    // Not promoted, the same denial is someone else's.
    let mut fresh = {
        let mut p = Vec::new();
        parse_documents(CANDIDATE, std::path::Path::new("c.yaml"), &mut p).expect("policy");
        let inventory =
            Inventory::parse("workloads: [{namespace: shop, name: cart, labels: {app: cart}}]").expect("inventory");
        ShadowAssertions::new(
            PolicySet::compile(&p, "istio-system", inventory).expect("compile"),
            1,
            60 * SECOND,
        )
    };
    assert!(fresh.process(&batch(&[denied]), |_, _| {}).is_empty());
    assert_eq!(fresh.candidates()[0].would_deny, 0);
}

#[test]
fn forged_records_neither_violate_nor_hold_a_candidate() {
    let mut policies = Vec::new();
    parse_documents(CANDIDATE, std::path::Path::new("candidate.yaml"), &mut policies).expect("policy");
    let inventory =
        Inventory::parse("workloads: [{namespace: shop, name: cart, labels: {app: cart}}]").expect("inventory");
    let mut shadow = ShadowAssertions::new(
        PolicySet::compile(&policies, "istio-system", inventory).expect("compile"),
        1,
        60 * SECOND,
    );
    // A compromised workload reports traffic between others that the candidate would deny.
    let mut forged = request("intruder", 0);
    forged.sender = Some(Cow::Borrowed("spiffe://cluster.local/ns/web/sa/compromised"));
    forged.sender_binding = SenderBinding::NotParty;
    assert!(shadow.process(&batch(&[forged]), |_, _| {}).is_empty());
    let c = &shadow.candidates()[0];
    assert_eq!((c.state, c.would_deny, c.allowed), (ShadowState::Unknown, 0, 0));
}
