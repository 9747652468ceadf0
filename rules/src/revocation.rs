//! The revocation list rules consult through `is_revoked(principal)` and
//! `is_revoked(principal, event_time)`. Fed from config and by the control plane; shared, so
//! an update is visible to the next batch.
//!
//! The control plane adds a principal with the time its revocation took effect (applied,
//! plus the grace period for the mesh to pick it up). The two-argument form is true only for
//! events at or after that time, so a request that happened before (late Kafka data, a
//! backlog) never reads as "still succeeds after revocation". Entries from the config hold
//! for all time.

use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, StringArray};
use arrow::buffer::BooleanBuffer;
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    /// Principal → event time from which it counts as revoked.
    inner: Arc<RwLock<Revoked>>,
}

/// The principals on the list, looked up for every event's principal.
#[derive(Debug)]
struct Revoked {
    /// Principal → event time from which it counts as revoked. Keyed by a per-process seed
    /// (see `state_key.rs`).
    since: std::collections::HashMap<String, i64, crate::state_key::KeyHasher>,
    /// How many principals on the list are `n` bytes long, at index `n` (the last index counts
    /// every length from there up). Most events' principals have a length no revoked principal
    /// has, and are answered without hashing them. Counts, not flags, so that removing one
    /// (a revocation's TTL ending) costs the same however long the list.
    lengths: Vec<u32>,
}

/// Lengths counted one by one; longer principals share the last count.
const COUNTED_LENGTHS: usize = 512;

impl Default for Revoked {
    fn default() -> Self {
        Self::new(std::collections::HashMap::default())
    }
}

impl Revoked {
    fn new(since: std::collections::HashMap<String, i64, crate::state_key::KeyHasher>) -> Self {
        let mut lengths = vec![0u32; COUNTED_LENGTHS];
        for p in since.keys() {
            if let Some(c) = lengths.get_mut(Self::length_index(p)) {
                *c = c.saturating_add(1);
            }
        }
        Self { since, lengths }
    }

    fn length_index(principal: &str) -> usize {
        principal.len().min(COUNTED_LENGTHS.saturating_sub(1))
    }

    fn insert(&mut self, principal: String, since_ns: i64, keep_first: bool) {
        let index = Self::length_index(&principal);
        match self.since.entry(principal) {
            Entry::Occupied(mut e) if !keep_first => {
                e.insert(since_ns);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(since_ns);
                if let Some(c) = self.lengths.get_mut(index) {
                    *c = c.saturating_add(1);
                }
            }
        }
    }

    fn remove(&mut self, principal: &str) {
        if self.since.remove(principal).is_some()
            && let Some(c) = self.lengths.get_mut(Self::length_index(principal))
        {
            *c = c.saturating_sub(1);
        }
    }

    fn get(&self, principal: &str) -> Option<i64> {
        if self.lengths.get(Self::length_index(principal)).is_some_and(|c| *c > 0) {
            self.since.get(principal).copied()
        } else {
            None
        }
    }

    /// Whether an event of `principal` at `at_ns` counts as revoked; without a time, whether
    /// the principal is on the list at all.
    fn revoked_at(&self, principal: &str, at_ns: Option<i64>) -> bool {
        match (self.get(principal), at_ns) {
            (Some(since), Some(t)) => t >= since,
            (since, None) => since.is_some(),
            (None, Some(_)) => false,
        }
    }
}

impl RevocationList {
    pub fn new(principals: impl IntoIterator<Item = String>) -> Self {
        let list = Self::default();
        list.replace(principals);
        list
    }

    pub fn replace(&self, principals: impl IntoIterator<Item = String>) {
        let map = Revoked::new(principals.into_iter().map(|p| (normalize(&p), i64::MIN)).collect());
        match self.inner.write() {
            Ok(mut g) => *g = map,
            Err(poisoned) => *poisoned.into_inner() = map,
        }
    }

    /// Revoked for all time.
    pub fn add(&self, principal: &str) {
        self.add_since(principal, i64::MIN);
    }

    /// Revoked for events at or after `since_ns`, unless it is on the list already (the time
    /// it first took effect stays).
    pub fn add_since_if_absent(&self, principal: &str, since_ns: i64) {
        let key = normalize(principal);
        match self.inner.write() {
            Ok(mut g) => g.insert(key, since_ns, true),
            Err(poisoned) => poisoned.into_inner().insert(key, since_ns, true),
        };
    }

    /// Revoked for events at or after `since_ns`.
    pub fn add_since(&self, principal: &str, since_ns: i64) {
        match self.inner.write() {
            Ok(mut g) => g.insert(normalize(principal), since_ns, false),
            Err(poisoned) => poisoned.into_inner().insert(normalize(principal), since_ns, false),
        };
    }

    pub fn remove(&self, principal: &str) {
        match self.inner.write() {
            Ok(mut g) => g.remove(&normalize(principal)),
            Err(poisoned) => poisoned.into_inner().remove(&normalize(principal)),
        };
    }

    pub fn contains(&self, principal: &str) -> bool {
        self.since(principal).is_some()
    }

    /// Whether `principal` counts as revoked for an event at `at_ns`.
    pub fn contains_at(&self, principal: &str, at_ns: i64) -> bool {
        self.since(principal).is_some_and(|s| at_ns >= s)
    }

    fn since(&self, principal: &str) -> Option<i64> {
        self.read().get(principal)
    }

    /// The list as it is now, held for a whole batch: one lock per batch, not per row.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revoked> {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|g| g.since.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Revocations name workload principals with or without `spiffe://`; events carry it.
fn normalize(p: &str) -> String {
    let p = p.trim();
    if !p.contains("://") && p.contains("/ns/") && p.contains("/sa/") {
        format!("spiffe://{p}")
    } else {
        p.to_string()
    }
}

/// `is_revoked(text) -> boolean`: true when the value is on the revocation list;
/// `is_revoked(text, event_time) -> boolean`: … and the event is not older than the
/// revocation.
#[derive(Debug)]
pub struct IsRevoked {
    list: RevocationList,
    signature: Signature,
}

impl IsRevoked {
    pub fn new(list: RevocationList) -> Self {
        Self {
            list,
            signature: Signature::one_of(vec![TypeSignature::Any(1), TypeSignature::Any(2)], Volatility::Volatile),
        }
    }
}

impl PartialEq for IsRevoked {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.list.inner, &other.list.inner)
    }
}

impl Eq for IsRevoked {}

impl Hash for IsRevoked {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.list.inner) as usize).hash(state);
    }
}

fn as_strings(a: &ArrayRef) -> DfResult<StringArray> {
    let strings: ArrayRef = cast(a, &DataType::Utf8)?;
    Ok(strings
        .as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .unwrap_or_else(|| StringArray::from(Vec::<Option<&str>>::new())))
}

impl IsRevoked {
    /// The two-argument form: principal and event time.
    fn revoked_at(&self, args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let (Some(principals), Some(times)) = (arrays.first(), arrays.get(1)) else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
        };
        let strings = as_strings(principals)?;
        let times: ArrayRef = cast(times, &DataType::Int64)?;
        let times = times
            .as_any()
            .downcast_ref::<Int64Array>()
            .cloned()
            .unwrap_or_else(|| Int64Array::from(Vec::<Option<i64>>::new()));
        if times.len() != strings.len() {
            return Err(DataFusionError::Internal(format!(
                "is_revoked: {} principals and {} event times",
                strings.len(),
                times.len()
            )));
        }
        let revoked = self.list.read();
        let values = BooleanBuffer::collect_bool(strings.len(), |i| {
            let at = times.is_valid(i).then(|| times.value(i));
            strings.is_valid(i) && revoked.revoked_at(strings.value(i), at)
        });
        let out = BooleanArray::new(values, strings.nulls().cloned());
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

impl ScalarUDFImpl for IsRevoked {
    fn name(&self) -> &str {
        "is_revoked"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if args.args.len() == 2 {
            return self.revoked_at(&args.args);
        }
        let Some(arg) = args.args.into_iter().next() else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
        };
        match arg {
            ColumnarValue::Scalar(s) => {
                let v = match s {
                    ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => {
                        Some(self.list.contains(&v))
                    }
                    _ => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(v)))
            }
            ColumnarValue::Array(a) => {
                let strings = as_strings(&a)?;
                let revoked = self.list.read();
                let values = BooleanBuffer::collect_bool(strings.len(), |i| {
                    strings.is_valid(i) && revoked.get(strings.value(i)).is_some()
                });
                let out = BooleanArray::new(values, strings.nulls().cloned());
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_counts_from_when_it_took_effect() {
        let list = RevocationList::new(["cluster.local/ns/a/sa/always".to_string()]);
        list.add_since("cluster.local/ns/shop/sa/cart", 1_000);
        let cart = "spiffe://cluster.local/ns/shop/sa/cart";
        assert!(list.contains(cart));
        assert!(!list.contains_at(cart, 999), "before it took effect");
        assert!(list.contains_at(cart, 1_000));
        assert!(list.contains_at("spiffe://cluster.local/ns/a/sa/always", i64::MIN));
        list.add_since("https://idp.example.com/user-7", 5);
        assert!(list.contains_at("https://idp.example.com/user-7", 6));
    }

    #[test]
    fn principals_of_every_length_are_found_and_removed() {
        let list = RevocationList::default();
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "x".repeat(600));
        let longer = format!("{long}y");
        for p in ["", "a", &long] {
            list.add(p);
        }
        assert!(list.contains("") && list.contains("a") && list.contains(&long));
        assert!(!list.contains("b"), "same length as a revoked one, not revoked");
        assert!(
            !list.contains(&longer),
            "past the last length bit, looked up and not found"
        );
        list.add(&longer);
        list.remove(&long);
        assert!(list.contains(&longer) && !list.contains(&long));
        list.remove("a");
        assert!(!list.contains("a") && list.contains(""));
        list.replace(["cluster.local/ns/b/sa/c".to_string()]);
        assert!(!list.contains(&longer) && list.contains("spiffe://cluster.local/ns/b/sa/c"));
    }

    proptest::proptest! {
        /// After any sequence of additions and removals, a lookup answers as the plain map
        /// of what is on the list.
        #[test]
        fn lookups_agree_with_the_plain_list(
            ops in proptest::collection::vec((proptest::bool::ANY, "[ab]{0,3}", 0i64..3), 0..30),
            probes in proptest::collection::vec(("[ab]{0,4}", 0i64..3), 0..20),
        ) {
            let list = RevocationList::default();
            let mut plain = std::collections::HashMap::new();
            for (add, p, since) in ops {
                if add {
                    list.add_since(&p, since);
                    plain.insert(p, since);
                } else {
                    list.remove(&p);
                    plain.remove(&p);
                }
            }
            for (p, at) in probes {
                proptest::prop_assert_eq!(list.contains_at(&p, at), plain.get(&p).is_some_and(|s| at >= *s));
            }
        }
    }
}
