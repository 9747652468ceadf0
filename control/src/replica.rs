//! Revocations other instances of the same deployment made, as learnt from the shared topic
//! (`kafka.repartition.share_revocations`). Only those in force are kept: the others are
//! forgotten as soon as their end arrives, so the replica holds at most what the deployment
//! enforces, and never more than [`MAX_REPLICATED`].
//!
//! The instance that made a revocation owns it: it applies it to the control plane, audits
//! it, expires it and answers the webhook. Every other instance enforces it at its own
//! ext_authz deny list, writes the same Istio policies (level-triggered and idempotent), lets
//! the rules verify it, and refuses a second revocation of the same principal.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::Revocation;

/// More revocations in force than this across a deployment is not a response any more; the
/// excess is refused and counted (a writer that floods the shared topic cannot grow memory).
pub const MAX_REPLICATED: usize = 100_000;

/// What [`Replica::learn`] did with a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learnt {
    /// Now in force here (new, or changed while in force).
    InForce,
    /// Its end (expired, lifted): the revocation it ends, if it was in force here.
    Ended(Option<Box<Revocation>>),
    /// Nothing new.
    Unchanged,
    /// Refused: the replica is full.
    Full,
}

#[derive(Default)]
struct Known {
    /// In force.
    active: BTreeMap<String, Revocation>,
    /// Ended before their TTL (lifted), with that TTL: a revocation never comes back, so a
    /// replayed copy of an older message about one of these is refused. Past the TTL a
    /// replay is refused anyway.
    ended: BTreeMap<String, i64>,
}

#[derive(Default)]
pub struct Replica {
    items: Mutex<Known>,
}

impl Replica {
    fn lock(&self) -> MutexGuard<'_, Known> {
        match self.items.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Takes another instance's latest word on a revocation.
    pub fn learn(&self, r: Revocation, now_ns: i64) -> Learnt {
        let mut known = self.lock();
        if !r.state.is_active() || r.expires_ns <= now_ns {
            if r.expires_ns > now_ns && known.ended.len() < MAX_REPLICATED {
                known.ended.insert(r.id.clone(), r.expires_ns);
            }
            return Learnt::Ended(known.active.remove(&r.id).map(Box::new));
        }
        if known.ended.contains_key(&r.id) {
            return Learnt::Unchanged;
        }
        match known.active.get(&r.id) {
            Some(k) if *k == r => Learnt::Unchanged,
            None if known.active.len() >= MAX_REPLICATED => Learnt::Full,
            _ => {
                known.active.insert(r.id.clone(), r);
                Learnt::InForce
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<Revocation> {
        self.lock().active.get(id).cloned()
    }

    pub fn active(&self) -> Vec<Revocation> {
        self.lock().active.values().cloned().collect()
    }

    pub fn active_for(&self, principal: &str) -> Option<Revocation> {
        self.lock().active.values().find(|r| r.principal == principal).cloned()
    }

    /// Forgets every revocation whose TTL has passed (its owner may be gone); returns those
    /// that were in force.
    pub fn expire(&self, now_ns: i64) -> Vec<Revocation> {
        let mut known = self.lock();
        known.ended.retain(|_, expires_ns| *expires_ns > now_ns);
        let due: Vec<String> = known
            .active
            .values()
            .filter(|r| r.expires_ns <= now_ns)
            .map(|r| r.id.clone())
            .collect();
        due.iter().filter_map(|id| known.active.remove(id)).collect()
    }

    /// Revocations in force.
    pub fn len(&self) -> usize {
        self.lock().active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mode, State};

    fn rev(id: &str, state: State, expires_ns: i64) -> Revocation {
        Revocation {
            id: id.into(),
            kind: "principal".into(),
            principal: format!("cluster.local/ns/shop/sa/{id}"),
            reason: "test".into(),
            alert_id: None,
            rule_id: None,
            namespace: None,
            mode: Mode::Enforce,
            created_ns: 0,
            expires_ns,
            applied_ns: None,
            state,
            results: BTreeMap::new(),
        }
    }

    #[test]
    fn keeps_only_what_is_in_force() {
        let r = Replica::default();
        assert_eq!(r.learn(rev("a", State::Pending, 100), 10), Learnt::InForce);
        assert_eq!(r.learn(rev("a", State::Pending, 100), 10), Learnt::Unchanged);
        assert_eq!(r.learn(rev("a", State::Applied, 100), 10), Learnt::InForce);
        assert!(r.active_for("cluster.local/ns/shop/sa/a").is_some());
        let ended = r.learn(rev("a", State::Lifted, 100), 10);
        assert!(matches!(ended, Learnt::Ended(Some(_))), "{ended:?}");
        assert!(r.is_empty());
        // An end never seen in force, or a revocation already past its TTL, is not kept.
        assert_eq!(r.learn(rev("b", State::Expired, 100), 10), Learnt::Ended(None));
        assert_eq!(r.learn(rev("c", State::Applied, 10), 10), Learnt::Ended(None));
        assert!(r.is_empty());
        // A replayed copy of an older message does not bring a lifted revocation back.
        assert_eq!(r.learn(rev("a", State::Applied, 100), 20), Learnt::Unchanged);
        assert!(r.is_empty());
    }

    #[test]
    fn expires_by_ttl_and_is_bounded() {
        let r = Replica::default();
        r.learn(rev("a", State::Applied, 100), 10);
        r.learn(rev("b", State::Applied, 200), 10);
        let gone = r.expire(150);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, "a");
        for i in 0..MAX_REPLICATED {
            r.learn(rev(&format!("x{i}"), State::Applied, 1000), 10);
        }
        assert_eq!(r.len(), MAX_REPLICATED);
        assert_eq!(r.learn(rev("one-more", State::Applied, 1000), 10), Learnt::Full);
        // A known one still changes.
        assert_eq!(
            r.learn(rev("b", State::Lifted, 200), 10),
            Learnt::Ended(Some(Box::new(rev("b", State::Applied, 200))))
        );
    }
}
