//! Evidence as rule state keeps it until an alert needs it: every text of the event in one
//! allocation instead of ten `String`s.
//!
//! An open window, an assertion key or a suppressed group keeps up to five evidence events,
//! and a mesh has hundreds of thousands of keys: the ten separate strings of an [`Evidence`]
//! (each with its own heap block) were the largest part of a key's memory. A
//! [`PackedEvidence`] holds the same values and gives back an equal [`Evidence`]; it is
//! written to checkpoints as an [`Evidence`], so their format does not change.

use serde::{Deserialize, Serialize};
use verity_model::alert::Evidence;

/// The texts of an [`Evidence`], in the order [`PackedEvidence::new`] takes them.
const TEXTS: usize = 9;
const EVENT_TIME: usize = 0;
const SOURCE_PRINCIPAL: usize = 1;
const DESTINATION_SERVICE: usize = 2;
const DECISION: usize = 3;
const RAW: usize = 4;
const SENDER: usize = 5;
const SENDER_BINDING: usize = 6;
const DESTINATION_PRINCIPAL: usize = 7;
const REQUEST_PRINCIPAL: usize = 8;

/// The texts of one evidence event, in packing order: event time, source principal,
/// destination service, decision, raw line, sender, sender binding, destination principal,
/// request principal (`None` for one the event does not have).
pub type Texts<'a> = [Option<&'a str>; TEXTS];

/// One evidence event, packed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Evidence", into = "Evidence")]
pub struct PackedEvidence {
    /// The texts one after another.
    text: Box<str>,
    /// Where each text ends in `text`.
    ends: [u32; TEXTS],
    /// Bit i: text i is present.
    present: u16,
    status: Option<i32>,
    raw_bytes: Option<usize>,
    sender_verified: bool,
}

impl PackedEvidence {
    pub fn new(texts: Texts<'_>, status: Option<i32>, raw_bytes: Option<usize>, sender_verified: bool) -> Self {
        let mut text = String::with_capacity(texts.iter().flatten().map(|t| t.len()).sum());
        let mut ends = [0; TEXTS];
        let mut present = 0;
        for (i, (value, end)) in texts.iter().zip(&mut ends).enumerate() {
            if let Some(v) = value {
                text.push_str(v);
                present |= 1 << i;
            }
            *end = u32::try_from(text.len()).unwrap_or(u32::MAX);
        }
        Self {
            text: text.into_boxed_str(),
            ends,
            present,
            status,
            raw_bytes,
            sender_verified,
        }
    }

    fn text(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = i.checked_sub(1).and_then(|p| self.ends.get(p)).copied().unwrap_or(0);
        let end = self.ends.get(i).copied().unwrap_or(0);
        self.text.get(start as usize..end as usize)
    }

    fn owned(&self, i: usize) -> Option<String> {
        self.text(i).map(str::to_owned)
    }

    pub fn sender_verified(&self) -> bool {
        self.sender_verified
    }

    /// The evidence as alerts carry it.
    pub fn unpack(&self) -> Evidence {
        Evidence {
            event_time: self.owned(EVENT_TIME).unwrap_or_default(),
            source_principal: self.owned(SOURCE_PRINCIPAL),
            destination_service: self.owned(DESTINATION_SERVICE),
            status: self.status,
            decision: self.owned(DECISION).unwrap_or_default(),
            raw: self.owned(RAW).unwrap_or_default(),
            raw_bytes: self.raw_bytes,
            sender: self.owned(SENDER),
            sender_verified: self.sender_verified,
            sender_binding: self.owned(SENDER_BINDING),
            destination_principal: self.owned(DESTINATION_PRINCIPAL),
            request_principal: self.owned(REQUEST_PRINCIPAL),
        }
    }
}

impl From<Evidence> for PackedEvidence {
    fn from(e: Evidence) -> Self {
        let texts = [
            Some(e.event_time.as_str()),
            e.source_principal.as_deref(),
            e.destination_service.as_deref(),
            Some(e.decision.as_str()),
            Some(e.raw.as_str()),
            e.sender.as_deref(),
            e.sender_binding.as_deref(),
            e.destination_principal.as_deref(),
            e.request_principal.as_deref(),
        ];
        Self::new(texts, e.status, e.raw_bytes, e.sender_verified)
    }
}

impl From<PackedEvidence> for Evidence {
    fn from(p: PackedEvidence) -> Self {
        p.unpack()
    }
}

/// The evidence of a group as alerts carry it.
pub fn unpack_all(list: &[PackedEvidence]) -> Vec<Evidence> {
    list.iter().map(PackedEvidence::unpack).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,12}"
    }

    proptest! {
        /// Packing and unpacking gives back the same evidence, absent and empty texts apart.
        #[test]
        fn packed_evidence_unpacks_to_what_it_was_made_from(
            event_time in text(),
            source_principal in proptest::option::of(text()),
            destination_service in proptest::option::of(text()),
            status in proptest::option::of(any::<i32>()),
            decision in text(),
            raw in text(),
            raw_bytes in proptest::option::of(any::<usize>()),
            sender in proptest::option::of(text()),
            sender_verified in any::<bool>(),
            sender_binding in proptest::option::of(text()),
            destination_principal in proptest::option::of(text()),
            request_principal in proptest::option::of(text()),
        ) {
            let e = Evidence {
                event_time, source_principal, destination_service, status, decision, raw, raw_bytes,
                sender, sender_verified, sender_binding, destination_principal, request_principal,
            };
            let packed = PackedEvidence::from(e.clone());
            prop_assert_eq!(packed.unpack(), e.clone());
            // Checkpoints hold the evidence as before.
            let json = serde_json::to_string(&packed).expect("json");
            prop_assert_eq!(&json, &serde_json::to_string(&e).expect("json"));
            let back: PackedEvidence = serde_json::from_str(&json).expect("read back");
            prop_assert_eq!(back, packed);
        }
    }
}
