//! The revoker end to end over a deny list: enforcement, verification, expiry, guardrails,
//! restarts, and evidence that must not revoke anyone.

use super::*;
use crate::denylist::DenyList;
use crate::evidence::parse_ttl_ns;
use crate::responder::{Applied, DenyListResponder};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use verity_model::alert::{Evidence, Response};

const S: i64 = 1_000_000_000;

fn alert(principal: &str) -> Alert {
    Alert {
        // Reported by the proxy that denied it, verified as its sender.
        evidence: vec![Evidence {
            sender: Some("spiffe://cluster.local/ns/pay/sa/api".into()),
            sender_verified: true,
            sender_binding: Some("bound".into()),
            destination_principal: Some("spiffe://cluster.local/ns/pay/sa/api".into()),
            ..Evidence::default()
        }],
        entity: Some(Entity {
            kind: "source_principal".into(),
            value: principal.into(),
        }),
        respond: Some(Response {
            action: "revoke".into(),
            ttl: "1h".into(),
            backing: None,
        }),
        // A firing zt-rbac-denial-burst detection with 12 events.
        ..Alert::sample()
    }
}

type Verified = Arc<Mutex<Vec<(String, bool)>>>;

fn revoker(dir: &std::path::Path, mode: Mode) -> (Revoker, DenyList, Verified) {
    let deny = DenyList::default();
    let verified = Arc::new(Mutex::new(Vec::new()));
    let v = verified.clone();
    let cfg = ControlConfig {
        mode,
        store_path: dir.join("revocations.json"),
        max_per_window: 2,
        grace_secs: 10,
        ..ControlConfig::default()
    };
    let m = Revoker::open(
        cfg,
        vec![Box::new(DenyListResponder(deny.clone()))],
        Box::new(move |p, on| v.lock().unwrap().push((p.to_string(), on.is_some()))),
    )
    .unwrap();
    (m, deny, verified)
}

#[test]
fn validate_reports_every_problem_with_its_key() {
    assert!(ControlConfig::default().validate().is_empty());
    let bad = ControlConfig {
        ext_authz_listen: Some("localhost".into()),
        window_secs: 0,
        max_per_window: 0,
        reconcile_interval_secs: 0,
        istio: Some(crate::config::IstioConfig {
            root_namespace: "Istio_System".into(),
            ..Default::default()
        }),
        ..ControlConfig::default()
    };
    let keys: Vec<String> = bad.validate().into_iter().map(|e| e.path).collect();
    assert_eq!(
        keys,
        [
            "control.ext_authz_listen",
            "control.window_secs",
            "control.istio.root_namespace",
            "control.max_per_window",
            "control.reconcile_interval_secs",
        ]
    );
}

#[test]
fn enforce_applies_verifies_after_grace_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (m, deny, verified) = revoker(dir.path(), Mode::Enforce);
    let events = m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], 0);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].rule_id, "verity-revocation-applied");
    assert!(
        deny.check("cluster.local/ns/shop/sa/cart", 1).is_some(),
        "effective at once"
    );
    // The same alert again does not stack revocations.
    assert!(
        m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], S)
            .is_empty()
    );
    assert!(m.reconcile(5 * S).is_empty());
    assert!(verified.lock().unwrap().is_empty(), "still in its grace period");
    m.reconcile(11 * S);
    assert_eq!(
        verified.lock().unwrap()[0],
        ("cluster.local/ns/shop/sa/cart".to_string(), true)
    );
    let expired = m.reconcile(3600 * S);
    assert_eq!(expired[0].rule_id, "verity-revocation-expired");
    assert!(deny.check("cluster.local/ns/shop/sa/cart", 3600 * S).is_none());
    assert!(!verified.lock().unwrap().last().unwrap().1);
}

#[test]
fn guardrails_and_log_only() {
    let dir = tempfile::tempdir().unwrap();
    let (m, deny, _) = revoker(dir.path(), Mode::LogOnly);
    let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/istio-system/sa/istiod")], 0);
    assert_eq!(e[0].rule_id, "verity-revocation-refused");
    let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/1")], 0);
    assert_eq!(e[0].rule_id, "verity-revocation-recorded");
    assert!(deny.is_empty(), "log-only applies nothing");
    m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/2")], 0);
    let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/a/sa/3")], 0);
    assert_eq!(e[0].rule_id, "verity-revocation-refused");
    assert_eq!(e[0].severity, Severity::Critical, "reaching the cap is an incident");
}

#[test]
fn state_survives_a_restart_and_is_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (m, _, _) = revoker(dir.path(), Mode::Enforce);
        m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], 0);
    }
    let (m, deny, _) = revoker(dir.path(), Mode::Enforce);
    assert!(deny.is_empty());
    let _ = m.restore(S);
    assert!(deny.check("cluster.local/ns/shop/sa/cart", 2 * S).is_some());
    let id = m.store().list()[0].id.clone();
    let e = m.lift(&id, 3 * S).unwrap();
    assert_eq!(e[0].rule_id, "verity-revocation-lifted");
    assert!(deny.is_empty());
    assert_eq!(parse_ttl_ns("90s"), Some(90 * S));
    assert_eq!(parse_ttl_ns("1h"), Some(3600 * S));
    assert_eq!(parse_ttl_ns("x"), None);
}

/// Fails until told otherwise, and counts what it was asked to apply.
struct Flaky {
    up: Arc<AtomicBool>,
    applied: Arc<AtomicUsize>,
}

impl Responder for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn apply(&self, _: &Revocation) -> Result<Applied, ResponderError> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        if self.up.load(Ordering::SeqCst) {
            Ok(Applied::Now("applied".into()))
        } else {
            Err(ResponderError::retry("down"))
        }
    }
    fn remove(&self, _: &Revocation) -> Result<String, ResponderError> {
        Ok("removed".into())
    }
}

#[test]
fn a_restart_restores_failed_revocations_to_every_responder() {
    let dir = tempfile::tempdir().unwrap();
    let (up, applied) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let open = |deny: &DenyList| {
        Revoker::open(
            ControlConfig {
                mode: Mode::Enforce,
                store_path: dir.path().join("revocations.json"),
                ..ControlConfig::default()
            },
            vec![
                Box::new(DenyListResponder(deny.clone())),
                Box::new(Flaky {
                    up: up.clone(),
                    applied: applied.clone(),
                }),
            ],
            Box::new(|_, _| {}),
        )
        .unwrap()
    };
    {
        let m = open(&DenyList::default());
        let e = m.on_alerts(&[alert("spiffe://cluster.local/ns/shop/sa/cart")], 0);
        assert_eq!(e[0].rule_id, "verity-revocation-failed");
    }
    up.store(true, Ordering::SeqCst);
    let deny = DenyList::default();
    let m = open(&deny);
    let e = m.restore(S);
    assert_eq!(e[0].rule_id, "verity-revocation-applied", "{e:?}");
    assert!(deny.check("cluster.local/ns/shop/sa/cart", 2 * S).is_some());
    assert_eq!(applied.load(Ordering::SeqCst), 2);
    assert_eq!(m.store().list()[0].state, State::Applied);
}

#[test]
fn lifting_an_old_revocation_leaves_a_newer_one_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (m, deny, _) = revoker(dir.path(), Mode::Enforce);
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    m.on_alerts(&[alert(cart)], 0);
    let old = m.store().list()[0].id.clone();
    m.lift(&old, S).unwrap();
    assert!(deny.is_empty());
    m.on_alerts(&[alert(cart)], 2 * S);
    assert!(deny.check("cluster.local/ns/shop/sa/cart", 3 * S).is_some());
    assert!(
        m.lift(&old, 3 * S).unwrap().is_empty(),
        "no longer in force: nothing to lift"
    );
    assert!(
        deny.check("cluster.local/ns/shop/sa/cart", 4 * S).is_some(),
        "the newer revocation stays in force"
    );
}

#[test]
fn evidence_from_a_bystander_or_about_a_gateway_revokes_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (m, deny, _) = revoker(dir.path(), Mode::Enforce);
    let mut forged = alert("spiffe://cluster.local/ns/shop/sa/cart");
    forged.evidence[0].sender = Some("spiffe://cluster.local/ns/x/sa/mallory".into());
    let e = m.on_alerts(&[forged], 0);
    assert_eq!(e[0].rule_id, "verity-revocation-refused");
    assert!(e[0].summary.contains("not acted on"), "{}", e[0].summary);
    let gateway = alert("spiffe://cluster.local/ns/edge/sa/istio-ingressgateway-service-account");
    let e = m.on_alerts(std::slice::from_ref(&gateway), 0);
    assert_eq!(e[0].rule_id, "verity-revocation-review");
    let mut with_user = gateway;
    with_user.evidence[0].request_principal = Some("https://idp.example.com/user-7".into());
    let e = m.on_alerts(&[with_user], 0);
    assert_eq!(e[0].rule_id, "verity-revocation-applied");
    assert_eq!(e[0].entity.as_ref().unwrap().value, "https://idp.example.com/user-7");
    assert_eq!(e[0].entity.as_ref().unwrap().kind, "request_principal");
    assert!(deny.check("https://idp.example.com/user-7", S).is_some());
}

/// What one instance shared, standing in for the compacted topic.
type SharedLog = Arc<Mutex<Vec<Revocation>>>;

/// Two instances sharing revocations.
fn shared_pair(a: &std::path::Path, b: &std::path::Path) -> [(Revoker, DenyList, Verified, SharedLog); 2] {
    [a, b].map(|dir| {
        let (m, deny, verified) = revoker(dir, Mode::Enforce);
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let m = m.with_feed(Arc::new(move |r: &Revocation| l.lock().unwrap().push(r.clone())));
        (m, deny, verified, log)
    })
}

/// Hands everything `from` shared since the last call to `to`.
fn deliver_shared(from: &Mutex<Vec<Revocation>>, to: &Revoker, now: i64) -> Vec<Alert> {
    let shared: Vec<Revocation> = std::mem::take(&mut *from.lock().unwrap());
    shared.into_iter().flat_map(|r| to.absorb(r, now)).collect()
}

#[test]
fn a_revocation_shared_by_one_instance_is_enforced_and_lifted_at_the_other() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(a, deny_a, _, log_a), (b, deny_b, verified_b, log_b)] = shared_pair(da.path(), db.path());
    let cart = "cluster.local/ns/shop/sa/cart";
    let t0 = 1_000 * S;
    a.on_alerts(&[alert(cart)], t0);
    assert!(deny_a.check(cart, t0).is_some());
    assert!(deny_b.check(cart, t0).is_none(), "not shared yet");
    assert!(
        deliver_shared(&log_a, &b, t0).is_empty(),
        "the owner audits, not the others"
    );
    assert!(deny_b.check(cart, t0).is_some(), "enforced at the other instance");
    let id = a.store().list()[0].id.clone();
    assert_eq!(b.get(&id).unwrap().state, State::Applied);
    assert!(b.store().list().is_empty(), "b does not own it");
    // b does not revoke the same principal again.
    b.on_alerts(&[alert(cart)], t0 + S);
    assert!(b.store().list().is_empty());
    // Its own word coming back changes nothing at the owner.
    let echoed = a.get(&id).unwrap();
    assert!(a.absorb(echoed, t0).is_empty());
    // Verification starts at b after the grace period, as at the owner.
    b.reconcile(t0 + 11 * S);
    assert!(verified_b.lock().unwrap().contains(&(cart.to_string(), true)));
    // An operator lifts it at b: b stops at once, the owner lifts it on hearing.
    let events = b.lift(&id, t0 + 20 * S).unwrap();
    assert_eq!(events.len(), 1);
    assert!(deny_b.check(cart, t0 + 20 * S).is_none());
    let events = deliver_shared(&log_b, &a, t0 + 20 * S);
    assert_eq!(events.len(), 1, "the owner audits the lift");
    assert_eq!(a.store().get(&id).unwrap().state, State::Lifted);
    assert!(deny_a.check(cart, t0 + 20 * S).is_none());
    assert!(deliver_shared(&log_a, &b, t0 + 20 * S).is_empty());
    assert!(b.get(&id).is_none());
}

#[test]
fn shared_revocations_end_at_their_ttl_and_never_name_a_wildcard_or_protected_identity() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(a, _, _, log_a), (b, deny_b, _, _)] = shared_pair(da.path(), db.path());
    let cart = "cluster.local/ns/shop/sa/cart";
    let t0 = 1_000 * S;
    a.on_alerts(&[alert(cart)], t0);
    let mut forged = a.store().list()[0].clone();
    deliver_shared(&log_a, &b, t0);
    assert!(deny_b.check(cart, t0).is_some());
    // The owner is gone: b forgets it at its TTL all the same.
    b.reconcile(t0 + 3601 * S);
    assert!(b.list().is_empty());
    assert!(deny_b.is_empty());
    // A writer of the topic that is not Verity cannot deny everyone or the control plane.
    for principal in ["*", "cluster.local/ns/istio-system/sa/istiod"] {
        forged.id = format!("rev-{principal}");
        forged.principal = principal.into();
        forged.expires_ns = t0 + 7200 * S;
        b.absorb(forged.clone(), t0);
        assert!(deny_b.is_empty(), "{principal}");
    }
}

#[test]
fn a_replayed_message_about_an_owned_revocation_is_answered_with_the_latest() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(a, _, _, log_a), (b, deny_b, _, _)] = shared_pair(da.path(), db.path());
    let cart = "cluster.local/ns/shop/sa/cart";
    let t0 = 1_000 * S;
    a.on_alerts(&[alert(cart)], t0);
    let applied = a.store().list()[0].clone();
    deliver_shared(&log_a, &b, t0);
    a.lift(&applied.id, t0 + S).unwrap();
    deliver_shared(&log_a, &b, t0 + S);
    assert!(deny_b.is_empty());
    // Someone replays the old "applied" message: b does not enforce it again, and a writes
    // the latest state once more.
    assert!(a.absorb(applied.clone(), t0 + 2 * S).is_empty());
    assert!(b.absorb(applied, t0 + 2 * S).is_empty());
    assert!(deny_b.is_empty());
    let republished = std::mem::take(&mut *log_a.lock().unwrap());
    assert_eq!(republished.len(), 1);
    assert_eq!(republished[0].state, State::Lifted);
}

#[test]
fn when_one_of_two_revocations_of_a_principal_ends_the_other_stays_enforced() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [(a, _, _, log_a), (b, deny_b, _, _)] = shared_pair(da.path(), db.path());
    let cart = "cluster.local/ns/shop/sa/cart";
    let t0 = 1_000 * S;
    // Both revoke CART before hearing of each other (a race); a's has the shorter TTL and
    // reaches b last, so b's deny entry is a's.
    let short = RevokeRequest {
        principal: cart,
        kind: "principal",
        reason: "short",
        severity: Severity::Critical,
        ttl_ns: 60 * S,
        alert: None,
        namespace: None,
        refusal: None,
        reporters: &[],
    };
    b.revoke(
        &RevokeRequest {
            ttl_ns: 3600 * S,
            ..short.clone()
        },
        t0,
    )
    .unwrap();
    a.revoke(&short, t0 + 1).unwrap();
    deliver_shared(&log_a, &b, t0);
    assert_eq!(a.store().list().len(), 1, "a made its own");
    assert_eq!(b.list().len(), 2, "b holds its own and a's");
    assert_eq!(
        deny_b.check(cart, t0).unwrap().expires_ns,
        t0 + 1 + 60 * S,
        "a's, applied last"
    );
    // a's expires: b's own is enforced again with its own expiry.
    a.reconcile(t0 + 62 * S);
    deliver_shared(&log_a, &b, t0 + 62 * S);
    let denial = deny_b.check(cart, t0 + 62 * S).expect("still denied");
    assert_eq!(denial.expires_ns, t0 + 3600 * S);
}
