//! Retried OTLP requests are evaluated once.
//!
//! A client resends a request when it got no answer or a retryable one (503 / UNAVAILABLE),
//! including when Verity had already evaluated it (the answer was lost, or the alerts it
//! produced were held because a spool's disk failed). Counting those records again would
//! fire a burst from four real denials delivered three times. Every request is identified by
//! a digest of its sender and its bytes as received (decompressed, not decoded: a resend
//! carries the same bytes, and hashing them costs one pass where encoding the decoded request
//! again cost two); what became of it is kept here, bounded:
//! - in flight: a resend is answered "retry later" (it will be settled soon);
//! - evaluated, alerts held: a resend is acknowledged once nothing is held any more;
//! - done: a resend is acknowledged at once, without evaluating it again.
//!
//! Two different requests with the same digest would need a collision of a 128-bit keyed
//! hash (SipHash-1-3 with a random key per process), which a sender cannot steer.

#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::pipeline::{HandoffError, HeldAlerts};

/// How many request digests are remembered (about 40 bytes each).
pub const REMEMBERED: usize = 65_536;

/// A request's identity.
pub type Digest = (u64, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    InFlight,
    Evaluated,
    Done,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Never seen (or forgotten): evaluate it.
    New,
    /// Already evaluated and its alerts are spooled: acknowledge without evaluating.
    Duplicate,
    /// Being evaluated, or its alerts are still held: answer "retry later".
    RetryLater,
}

pub struct Deliveries {
    keys: (u64, u64),
    inner: Mutex<Remembered>,
    held: HeldAlerts,
}

#[derive(Default)]
struct Remembered {
    fate: HashMap<Digest, Fate>,
    order: VecDeque<Digest>,
}

impl Deliveries {
    pub fn new(held: HeldAlerts) -> Self {
        // Two words from the standard library's per-process random hash keys: unpredictable
        // outside this process, and no new source of randomness to depend on.
        let word = |i: u64| std::collections::hash_map::RandomState::new().hash_one(i);
        Self {
            keys: (word(0), word(1)),
            inner: Mutex::new(Remembered::default()),
            held,
        }
    }

    /// The digest of a sender and a request's bytes, in one pass.
    pub fn digest(&self, sender: &str, body: &[u8]) -> Digest {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        // Length-prefixed, so no sender and body can be re-split into another pair.
        h.write_usize(sender.len());
        h.write(sender.as_bytes());
        h.write(body);
        let d = h.finish128();
        (d.h1, d.h2)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Looks a request up; a new one is remembered as in flight.
    pub fn begin(&self, d: Digest) -> Verdict {
        let mut r = self.lock();
        match r.fate.get(&d).copied() {
            Some(Fate::Done) => Verdict::Duplicate,
            Some(Fate::InFlight) => Verdict::RetryLater,
            Some(Fate::Evaluated) if self.held.get() == 0 => {
                r.fate.insert(d, Fate::Done);
                Verdict::Duplicate
            }
            Some(Fate::Evaluated) => Verdict::RetryLater,
            None => {
                // Forget the oldest settled request; one still in flight or with alerts held
                // goes to the back instead (there are few: the pipeline's queues are bounded).
                let mut turns = r.order.len();
                while r.order.len() >= REMEMBERED && turns > 0 {
                    turns = turns.saturating_sub(1);
                    let Some(old) = r.order.pop_front() else { break };
                    match r.fate.get(&old) {
                        Some(Fate::InFlight | Fate::Evaluated) => r.order.push_back(old),
                        _ => {
                            r.fate.remove(&old);
                        }
                    }
                }
                r.fate.insert(d, Fate::InFlight);
                r.order.push_back(d);
                Verdict::New
            }
        }
    }

    /// Records how the hand-off of a new request ended.
    pub fn settle(&self, d: Digest, outcome: &Result<(), HandoffError>) {
        let mut r = self.lock();
        let Some(fate) = r.fate.get_mut(&d) else { return };
        match outcome {
            Ok(()) => *fate = Fate::Done,
            Err(e) if e.evaluated => *fate = Fate::Evaluated,
            // Not evaluated (rare: a stage failed first): a resend is new work.
            Err(_) => {
                r.fate.remove(&d);
                r.order.retain(|o| *o != d);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn a_resend_is_evaluated_once() {
        let held = HeldAlerts::default();
        let d = Deliveries::new(held.clone());
        let a = d.digest("spiffe://td/ns/a/sa/b", b"request");
        assert_ne!(
            a,
            d.digest("spiffe://td/ns/a/sa/c", b"request"),
            "the sender is part of it"
        );
        assert_eq!(d.begin(a), Verdict::New);
        assert_eq!(d.begin(a), Verdict::RetryLater, "in flight");
        d.settle(a, &Ok(()));
        assert_eq!(d.begin(a), Verdict::Duplicate);

        let b = d.digest("s", b"other");
        assert_eq!(d.begin(b), Verdict::New);
        held.set(3);
        d.settle(
            b,
            &Err(HandoffError {
                message: "held".into(),
                evaluated: true,
            }),
        );
        assert_eq!(d.begin(b), Verdict::RetryLater, "its alerts are held");
        held.set(0);
        assert_eq!(d.begin(b), Verdict::Duplicate);

        let c = d.digest("s", b"third");
        assert_eq!(d.begin(c), Verdict::New);
        d.settle(c, &Err(HandoffError::new("pipeline full")));
        assert_eq!(d.begin(c), Verdict::New, "not evaluated: evaluate the resend");
    }

    #[test]
    fn memory_is_bounded() {
        let d = Deliveries::new(HeldAlerts::default());
        for i in 0..(REMEMBERED + 100) {
            let k = d.digest("s", &i.to_le_bytes());
            d.begin(k);
            d.settle(k, &Ok(()));
        }
        let r = d.lock();
        assert!(r.fate.len() <= REMEMBERED && r.order.len() <= REMEMBERED);
    }
}
