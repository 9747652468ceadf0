//! Group keys of rule state, looked up from a row without building an owned key.
//!
//! Every stateful rule keeps its state per group key (a window's groups, suppression, an
//! assertion's keys, first_seen's learned set, absence's watched keys). Most rows belong to a
//! key that already has state, so building an owned [`Key`] per row (one `String` per key
//! column and a `Vec`) only to find that state was the engine's largest cost. A [`RowKey`]
//! borrows the row's values from the batch, hashes exactly like the owned [`Key`] and compares
//! equal to it, so the owned key is built only when a key is new.
//!
//! Hasher: foldhash with a seed drawn per process ([`KeyHasher`]). Key values come from traffic
//! (principals, paths, hosts), so a fixed, well-known seed would let a sender aim collisions at
//! one bucket; a seed it cannot learn, together with the bound on keys per rule
//! (`rules.max_keys`, see [`crate::state_bound`]), keeps a flood of crafted keys from costing
//! more than a flood of ordinary ones. It replaces SipHash, which cost about a sixth of the
//! whole pack's time for the same protection in this setting.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use hashbrown::Equivalent;
use hashbrown::hash_map::EntryRef;

use crate::evidence::Rows;

/// A group key: the values of the key columns, in rule order.
pub type Key = Vec<Option<String>>;

/// The hasher of every map and set keyed by values from traffic.
pub type KeyHasher = hashbrown::DefaultHashBuilder;

/// Rule state by group key.
pub type KeyMap<V> = hashbrown::HashMap<Key, V, KeyHasher>;

/// A set of values from traffic (`count_distinct`).
pub type ValueSet = std::collections::HashSet<String, KeyHasher>;

/// The key of one row, borrowed from its batch. One is reused for every row of a batch, so
/// looking a row's key up allocates nothing when the key columns hold strings.
#[derive(Default)]
pub struct RowKey<'b> {
    parts: Vec<Option<Cow<'b, str>>>,
}

impl<'b> RowKey<'b> {
    /// Reads the key columns of `row`.
    pub fn read(&mut self, rows: &Rows<'b>, columns: &[(String, usize)], row: usize) -> &Self {
        self.parts.clear();
        self.parts.extend(columns.iter().map(|(_, c)| rows.text_value(*c, row)));
        self
    }

    /// The owned key, for state that is new.
    pub fn to_key(&self) -> Key {
        self.parts.iter().map(|p| p.as_deref().map(str::to_owned)).collect()
    }

    /// Whether every key column is null at this row.
    pub fn is_all_null(&self) -> bool {
        self.parts.iter().all(Option::is_none)
    }
}

/// The state of the row's key, made by `fresh` when the key is new: only then is the owned key
/// built.
pub fn state_of<'m, V>(map: &'m mut KeyMap<V>, key: &RowKey<'_>, fresh: impl FnOnce() -> V) -> &'m mut V {
    match map.entry_ref(key) {
        EntryRef::Occupied(e) => e.into_mut(),
        EntryRef::Vacant(e) => e.insert_with_key(key.to_key(), fresh()),
    }
}

/// Removes the `n` least recently seen keys of `map` (by `seen`) and returns them with their
/// state, moved out: no key is copied and none looked up again. Among keys seen at the same
/// time as the last one to go, which go is the map's order.
pub fn evict_least_recent<V>(map: &mut KeyMap<V>, n: usize, seen: impl Fn(&V) -> i64) -> Vec<(Key, V)> {
    if n == 0 {
        return Vec::new();
    }
    if n >= map.len() {
        return map.drain().collect();
    }
    let mut times: Vec<i64> = map.values().map(&seen).collect();
    let (_, cutoff, _) = times.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    // Everything older than the cutoff goes, and as many at the cutoff as make up `n`.
    let older = times.iter().filter(|t| **t < cutoff).count();
    let mut at_cutoff = n.saturating_sub(older);
    map.extract_if(|_, v| {
        let t = seen(v);
        if t < cutoff {
            return true;
        }
        if t == cutoff && at_cutoff > 0 {
            at_cutoff -= 1;
            return true;
        }
        false
    })
    .collect()
}

impl Hash for RowKey<'_> {
    /// Hashes as the owned [`Key`] does: a slice of options of strings, where `Cow<str>` and
    /// `String` both hash as their `str`.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts.hash(state);
    }
}

impl Equivalent<Key> for RowKey<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.parts.len() == key.len() && self.parts.iter().zip(key).all(|(a, b)| a.as_deref() == b.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use proptest::prelude::*;

    use super::*;

    fn borrowed(parts: &[Option<String>]) -> RowKey<'_> {
        RowKey {
            parts: parts.iter().map(|p| p.as_deref().map(Cow::Borrowed)).collect(),
        }
    }

    proptest! {
        /// A borrowed key finds the state of the owned key with the same values, and only that.
        #[test]
        fn a_row_key_hashes_and_compares_as_its_owned_key(
            a in proptest::collection::vec(proptest::option::of(".{0,6}"), 0..4),
            b in proptest::collection::vec(proptest::option::of(".{0,6}"), 0..4),
        ) {
            let hasher = KeyHasher::default();
            prop_assert_eq!(hasher.hash_one(borrowed(&a)), hasher.hash_one(&a));
            prop_assert_eq!(borrowed(&a).to_key(), a.clone());
            prop_assert_eq!(borrowed(&a).equivalent(&b), a == b);
            let mut map = KeyMap::default();
            map.insert(a.clone(), 1);
            prop_assert_eq!(map.get(&borrowed(&a)), Some(&1));
            prop_assert_eq!(map.get(&borrowed(&b)).is_some(), a == b);
        }
    }

    #[test]
    fn eviction_takes_exactly_the_least_recent() {
        let mut map = KeyMap::default();
        for (i, t) in [5, 1, 3, 3, 3, 9, 2].into_iter().enumerate() {
            map.insert(vec![Some(i.to_string())], t);
        }
        let gone = evict_least_recent(&mut map, 4, |t| *t);
        let mut times: Vec<i64> = gone.iter().map(|(_, t)| *t).collect();
        times.sort();
        assert_eq!(times, [1, 2, 3, 3], "the oldest, ties at the cutoff counted");
        assert_eq!(map.len(), 3);
        assert!(map.values().all(|t| *t >= 3));
        assert!(evict_least_recent(&mut map, 0, |t| *t).is_empty());
        assert_eq!(evict_least_recent(&mut map, 10, |t| *t).len(), 3);
        assert!(map.is_empty());
    }

    #[test]
    fn null_and_empty_are_different_keys() {
        let null: Key = vec![None];
        let empty: Key = vec![Some(String::new())];
        let mut map = KeyMap::default();
        map.insert(null.clone(), 1);
        assert_eq!(map.get(&borrowed(&empty)), None);
        assert_eq!(map.get(&borrowed(&null)), Some(&1));
        assert!(borrowed(&null).is_all_null());
        assert!(!borrowed(&empty).is_all_null());
    }
}
