//! Group keys of rule state, looked up from a row without building an owned key.
//!
//! Every stateful rule keeps its state per group key (a window's groups, suppression, an
//! assertion's keys, first_seen's learned set, absence's watched keys). Most rows belong to a
//! key that already has state, so building an owned [`Key`] per row (one `String` per key
//! column and a `Vec`) only to find that state was the engine's largest cost. A [`RowKey`]
//! borrows the row's values from the batch, hashes exactly like the owned [`Key`] and compares
//! equal to it, so the owned key is built only when a key is new.
//!
//! An owned [`Key`] keeps all its values in one allocation (each value's length, then its
//! bytes), not a `String` per value in a `Vec`: a flood of new keys (a first_seen rule under
//! a spray of new edges) was mostly allocating and freeing those.
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

/// A group key: the values of the key columns, in rule order, packed in one allocation.
/// Each value is a little-endian `u32` (0 for NULL, else its length plus one) followed by
/// its bytes. It orders, hashes and serializes as the list of values it holds.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Box<[u8]>);

/// The width of a value's length prefix in a packed [`Key`].
const PREFIX: usize = 4;

impl Key {
    /// The key holding `values`, in order.
    pub fn from_values<'v>(values: impl IntoIterator<Item = Option<&'v str>> + Clone) -> Self {
        let size: usize = values
            .clone()
            .into_iter()
            .map(|v| PREFIX.saturating_add(v.map_or(0, str::len)))
            .fold(0, usize::saturating_add);
        let mut packed = Vec::with_capacity(size);
        for v in values {
            // Arrow text values are shorter than 2 GiB, so a length plus one fits a u32; a
            // longer one (never built from a batch) is cut rather than wrapped.
            let (prefix, bytes) = match v {
                None => (0u32, &[][..]),
                Some(s) => {
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX - 1).min(u32::MAX - 1);
                    (len + 1, s.as_bytes().get(..len as usize).unwrap_or_default())
                }
            };
            packed.extend_from_slice(&prefix.to_le_bytes());
            packed.extend_from_slice(bytes);
        }
        Self(packed.into_boxed_slice())
    }

    /// The values' bytes, in order; None for NULL.
    fn raw(&self) -> RawValues<'_> {
        RawValues(&self.0)
    }

    /// The values, in order; None for NULL.
    pub fn values(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        // Packed from `&str`s, so every value is UTF-8.
        self.raw()
            .map(|v| v.map(|b| std::str::from_utf8(b).unwrap_or_default()))
    }

    /// How many values the key holds.
    pub fn len(&self) -> usize {
        self.raw().count()
    }
}

impl From<Vec<Option<String>>> for Key {
    fn from(values: Vec<Option<String>>) -> Self {
        Self::from_values(values.iter().map(Option::as_deref))
    }
}

/// The values of a packed [`Key`] as bytes.
#[derive(Clone)]
struct RawValues<'k>(&'k [u8]);

impl<'k> Iterator for RawValues<'k> {
    type Item = Option<&'k [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        let (prefix, rest) = self.0.split_first_chunk::<PREFIX>()?;
        let prefix = u32::from_le_bytes(*prefix);
        if prefix == 0 {
            self.0 = rest;
            return Some(None);
        }
        let len = usize::try_from(prefix - 1).unwrap_or(usize::MAX).min(rest.len());
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Some(Some(value))
    }
}

/// Hashes a key's values: the same calls for a [`Key`] and a [`RowKey`], so they agree.
fn hash_values<'v, H: Hasher>(values: impl Iterator<Item = Option<&'v [u8]>>, state: &mut H) {
    for v in values {
        match v {
            None => state.write_u8(0),
            Some(b) => {
                state.write_u8(1);
                state.write(b);
                state.write_u8(0xff);
            }
        }
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_values(self.raw(), state);
    }
}

impl Ord for Key {
    /// As the list of values: NULL first, text byte-wise (as `str` orders), a shorter key
    /// before a longer one it starts.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw().cmp(other.raw())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.values())
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Option<String>>::deserialize(deserializer).map(Self::from)
    }
}

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
        Key::from_values(self.parts.iter().map(|p| p.as_deref()))
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
    let mut cutoff = Cutoff::new(map, n, &seen);
    map.extract_if(|_, v| cutoff.goes(seen(v))).collect()
}

/// As [`evict_least_recent`], for state that needs nothing done with what goes: the keys
/// are dropped where they are, without collecting them. Returns how many went.
pub fn forget_least_recent<V>(map: &mut KeyMap<V>, n: usize, seen: impl Fn(&V) -> i64) -> usize {
    let before = map.len();
    if n >= before {
        map.clear();
        return before;
    }
    if n > 0 {
        let mut cutoff = Cutoff::new(map, n, &seen);
        map.retain(|_, v| !cutoff.goes(seen(v)));
    }
    before - map.len()
}

/// Which keys go when the `n` least recently seen of a map go: everything older than the
/// n-th least recent time, and as many at that time as make up `n`.
struct Cutoff {
    at: i64,
    ties: usize,
}

impl Cutoff {
    /// For 0 < `n` < the map's length.
    fn new<V>(map: &KeyMap<V>, n: usize, seen: &impl Fn(&V) -> i64) -> Self {
        let mut times: Vec<i64> = map.values().map(seen).collect();
        let (_, at, _) = times.select_nth_unstable(n.saturating_sub(1));
        let at = *at;
        let older = times.iter().filter(|t| **t < at).count();
        Self {
            at,
            ties: n.saturating_sub(older),
        }
    }

    /// Whether a key last seen at `t` goes; asked once per key, in one pass over the map.
    fn goes(&mut self, t: i64) -> bool {
        if t < self.at {
            return true;
        }
        if t == self.at && self.ties > 0 {
            self.ties -= 1;
            return true;
        }
        false
    }
}

impl Hash for RowKey<'_> {
    /// Hashes as the owned [`Key`] with the same values does.
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_values(self.parts.iter().map(|p| p.as_deref().map(str::as_bytes)), state);
    }
}

impl Equivalent<Key> for RowKey<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.parts.iter().map(|p| p.as_deref().map(str::as_bytes)).eq(key.raw())
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
            let (key_a, key_b) = (Key::from(a.clone()), Key::from(b.clone()));
            prop_assert_eq!(hasher.hash_one(borrowed(&a)), hasher.hash_one(&key_a));
            prop_assert_eq!(&borrowed(&a).to_key(), &key_a);
            prop_assert_eq!(borrowed(&a).equivalent(&key_b), a == b);
            let mut map = KeyMap::default();
            map.insert(key_a.clone(), 1);
            prop_assert_eq!(map.get(&borrowed(&a)), Some(&1));
            prop_assert_eq!(map.get(&borrowed(&b)).is_some(), a == b);
        }

        /// A packed key holds, orders and serializes as the list of its values, so state
        /// sorted by key (the order alerts come out in) and checkpoints are what they were
        /// when keys were lists.
        #[test]
        fn a_key_is_its_list_of_values(
            a in proptest::collection::vec(proptest::option::of(".{0,6}"), 0..4),
            b in proptest::collection::vec(proptest::option::of(".{0,6}"), 0..4),
        ) {
            let (key_a, key_b) = (Key::from(a.clone()), Key::from(b.clone()));
            let values: Vec<Option<String>> = key_a.values().map(|v| v.map(str::to_owned)).collect();
            prop_assert_eq!(&values, &a);
            prop_assert_eq!(key_a.len(), a.len());
            prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
            prop_assert_eq!(key_a == key_b, a == b);
            let json = serde_json::to_string(&key_a).expect("serialize");
            prop_assert_eq!(&json, &serde_json::to_string(&a).expect("serialize"));
            prop_assert_eq!(serde_json::from_str::<Key>(&json).expect("deserialize"), key_a);
        }
    }

    #[test]
    fn eviction_takes_exactly_the_least_recent() {
        let mut map = KeyMap::default();
        for (i, t) in [5, 1, 3, 3, 3, 9, 2].into_iter().enumerate() {
            map.insert(Key::from(vec![Some(i.to_string())]), t);
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
    fn forgetting_drops_exactly_the_least_recent() {
        let mut map = KeyMap::default();
        for (i, t) in [5, 1, 3, 3, 3, 9, 2].into_iter().enumerate() {
            map.insert(Key::from(vec![Some(i.to_string())]), t);
        }
        assert_eq!(forget_least_recent(&mut map, 4, |t| *t), 4);
        let mut left: Vec<i64> = map.values().copied().collect();
        left.sort();
        assert_eq!(left, [3, 5, 9], "the oldest went, ties at the cutoff counted");
        assert_eq!(forget_least_recent(&mut map, 0, |t| *t), 0);
        assert_eq!(forget_least_recent(&mut map, 10, |t| *t), 3);
        assert!(map.is_empty());
    }

    #[test]
    fn null_and_empty_are_different_keys() {
        let null = vec![None];
        let empty = vec![Some(String::new())];
        let mut map = KeyMap::default();
        map.insert(Key::from(null.clone()), 1);
        assert_eq!(map.get(&borrowed(&empty)), None);
        assert_eq!(map.get(&borrowed(&null)), Some(&1));
        assert!(borrowed(&null).is_all_null());
        assert!(!borrowed(&empty).is_all_null());
    }
}
