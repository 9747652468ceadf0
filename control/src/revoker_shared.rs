//! Revocations shared between the instances of one deployment (see [`crate::replica`]):
//! this instance's go out through a feed after every durable write, other instances' come in
//! through [`Revoker::absorb`].

use verity_model::alert::Alert;

use super::Revoker;
use crate::replica::Learnt;
use crate::store::Feed;
use crate::{Mode, Revocation, State};

impl Revoker {
    /// Shares every revocation this instance writes through `feed` (a compacted topic).
    pub fn with_feed(mut self, feed: Feed) -> Self {
        self.store.set_feed(feed.clone());
        self.feed = Some(feed);
        self
    }

    /// Shares everything this instance holds again (at start: the topic may have been
    /// recreated, or have missed a change while the brokers were unreachable).
    pub fn publish_all(&self) {
        if let Some(feed) = &self.feed {
            for r in self.store.list() {
                feed(&r);
            }
        }
    }

    fn count_shared(&self, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            m.shared(outcome);
        }
    }

    /// Takes another instance's latest word on one of its revocations: enforced at this
    /// instance's per-instance responders (the ext_authz deny list) while it is in force,
    /// removed when it ends. A lift of one of this instance's own revocations, asked on
    /// another instance, lifts it here (the owner). Returns the audit events.
    pub fn absorb(&self, r: Revocation, now_ns: i64) -> Vec<Alert> {
        if let Some(own) = self.store.get(&r.id) {
            if r.state == State::Lifted && own.state.is_active() {
                return match self.lift_as(&r.id, now_ns, "lifted by an operator on another instance") {
                    Ok(events) => events,
                    Err(error) => {
                        tracing::error!(%error, id = %r.id, "could not lift a revocation lifted elsewhere");
                        Vec::new()
                    }
                };
            }
            // Our own word coming back, or an older one: the store has the latest. An older
            // one (replayed into the topic) is answered with the latest, so that compaction
            // keeps that.
            if own != r
                && let Some(feed) = &self.feed
            {
                feed(&own);
            }
            self.count_shared("unchanged");
            return Vec::new();
        }
        // Defence in depth: whoever wrote it, never deny a wildcard or a protected identity.
        let admissible =
            crate::guard::check_identity(&r.kind, &r.principal).and_then(|()| self.guard.check_protected(&r.principal));
        if let Err(refusal) = admissible {
            tracing::warn!(id = %r.id, %refusal, "refusing a shared revocation");
            self.count_shared("refused");
            return Vec::new();
        }
        match self.replica.learn(r.clone(), now_ns) {
            Learnt::InForce => {
                if r.mode == Mode::Enforce {
                    for resp in self.responders.iter().filter(|p| p.per_instance()) {
                        if let Err(e) = resp.apply(&r) {
                            tracing::warn!(responder = resp.name(), error = %e, id = %r.id,
                                "could not enforce a shared revocation");
                        }
                    }
                }
                self.wake_deferred(&r.id);
                tracing::info!(principal = %r.principal, id = %r.id, state = ?r.state, "shared revocation in force");
                self.count_shared("in_force");
            }
            Learnt::Ended(Some(ended)) => {
                self.end_replicated(&ended);
                self.count_shared("ended");
            }
            Learnt::Ended(None) | Learnt::Unchanged => self.count_shared("unchanged"),
            Learnt::Full => {
                tracing::error!(id = %r.id, max = crate::replica::MAX_REPLICATED,
                    "too many shared revocations in force; refusing more");
                self.count_shared("refused");
            }
        }
        Vec::new()
    }

    /// Lifts another instance's revocation: shares the lift (its owner removes it from the
    /// control plane) and stops enforcing it here. `None` if no such revocation is in force.
    pub(super) fn lift_replicated(&self, id: &str, now_ns: i64) -> Option<Vec<Alert>> {
        let mut r = self.replica.get(id)?;
        r.state = State::Lifted;
        if let Some(feed) = &self.feed {
            feed(&r);
        }
        if let Learnt::Ended(Some(ended)) = self.replica.learn(r.clone(), now_ns) {
            self.end_replicated(&ended);
        }
        Some(vec![self.audit(
            &r,
            "lifted",
            verity_model::alert::Severity::Medium,
            "lifted by an operator; the instance that made it removes it from the control plane",
            now_ns,
        )])
    }

    /// A shared revocation is no longer in force: this instance stops enforcing it, unless
    /// another revocation of the same principal still is.
    fn end_replicated(&self, ended: &Revocation) {
        if let Some(newer) = self.active_for(&ended.principal).filter(|n| n.id != ended.id) {
            tracing::info!(old = %ended.id, newer = %newer.id, "shared revocation ended; a newer one stays in force");
            self.reapply_here(&newer);
            return;
        }
        for resp in self.responders.iter().filter(|p| p.per_instance()) {
            if let Err(e) = resp.remove(ended) {
                tracing::warn!(responder = resp.name(), error = %e, "could not remove a shared revocation");
            }
        }
        (self.verify)(&ended.principal, None);
        self.wake_deferred(&ended.id);
    }

    /// Applies `survivor` again at the per-instance responders: the deny list holds one entry
    /// per principal, which may have been the ended revocation's (with its expiry).
    pub(super) fn reapply_here(&self, survivor: &Revocation) {
        if survivor.mode != Mode::Enforce {
            return;
        }
        for resp in self.responders.iter().filter(|p| p.per_instance()) {
            if let Err(e) = resp.apply(survivor) {
                tracing::warn!(responder = resp.name(), error = %e, id = %survivor.id,
                    "could not enforce the revocation still in force");
            }
        }
    }

    /// Deferred responders (Istio) compare the revocations in force with what exists.
    fn wake_deferred(&self, id: &str) {
        for resp in self.responders.iter().filter(|p| !p.per_instance()) {
            resp.stored(id);
        }
    }

    /// Forgets shared revocations past their TTL (their owner may be gone) and hands those
    /// applied a grace period ago to verification, like this instance's own.
    pub(super) fn reconcile_replica(&self, grace_ns: i64, now_ns: i64) {
        for ended in self.replica.expire(now_ns) {
            self.end_replicated(&ended);
            self.count_shared("ended");
        }
        for r in self.replica.active() {
            let effective = r.applied_ns.unwrap_or(r.created_ns).saturating_add(grace_ns);
            if r.state == State::Applied && r.mode == Mode::Enforce && effective <= now_ns {
                (self.verify)(&r.principal, Some(effective));
            }
        }
    }
}
