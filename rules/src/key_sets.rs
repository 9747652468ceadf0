//! Key sets: the distinct sets of columns that stateful rules keep state per, and the keyed
//! stream each set's rows travel in when several instances share the work.
//!
//! With Kafka repartitioning, an instance sends every row once per key set to a stream (a
//! topic) partitioned by a hash of that set's columns, so all rows of one key meet on one
//! instance. There, a stateful rule sees only the rows of its own set's stream: a row that
//! came through another set's stream would otherwise count twice.

use arrow::array::{Array, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch};
use arrow::datatypes::Int32Type;
use verity_model::event::col;

use crate::rule::RuleFile;

/// A key set as a set: the columns sorted and without repeats, so `[a, b]` and `[b, a]` are
/// one set (and one stream).
pub fn key_set(keys: &[String]) -> Vec<String> {
    let mut set = keys.to_vec();
    set.sort();
    set.dedup();
    set
}

/// The distinct key sets of the stateful rules among `rules`, sorted.
pub fn key_sets<'r>(rules: impl IntoIterator<Item = &'r RuleFile>) -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> = rules
        .into_iter()
        .filter_map(|r| r.body.state_keys().map(key_set))
        .collect();
    sets.sort();
    sets.dedup();
    sets
}

/// Longest stream name: Kafka allows 249 characters in a topic name.
const MAX_NAME: usize = 200;

/// The name of the stream (topic) carrying the rows of `keys` for `application`:
/// `<application>-repartition-<columns joined by '.'>`, or `global` for a rule keyed by
/// nothing. A name that would be too long for a topic ends in a hash of the set instead.
pub fn keyed_stream_name(application: &str, keys: &[String]) -> String {
    let set = key_set(keys);
    let joined = if set.is_empty() {
        "global".to_string()
    } else {
        set.join(".")
    };
    let name = format!("{application}-repartition-{joined}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = fnv1a(joined.as_bytes());
    format!("{application}-repartition-{hash:016x}")
}

/// FNV-1a, 64 bits: stable across processes, versions and machines (every instance must
/// send a key to the same place), unlike the standard library's hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition (of `partitions`) a key's values, in key-set order, go to: FNV-1a over each
/// value tagged (0 for null; 1, its length as u64 little-endian and its bytes otherwise), so
/// (null) is apart from any text and ("a", "bc") from ("ab", "c"). Stable across instances
/// and versions: the rows a repartitioner sends and the state an instance hands over must
/// agree on it. `scratch` is reused between calls.
pub fn key_partition<'v>(
    values: impl IntoIterator<Item = Option<&'v [u8]>>,
    partitions: usize,
    scratch: &mut Vec<u8>,
) -> usize {
    scratch.clear();
    for v in values {
        match v {
            None => scratch.push(0),
            Some(v) => {
                scratch.push(1);
                scratch.extend_from_slice(&(v.len() as u64).to_le_bytes());
                scratch.extend_from_slice(v);
            }
        }
    }
    usize::try_from(fnv1a(scratch) % partitions.max(1) as u64).unwrap_or(0)
}

/// Per row of `batch`: whether it came through the keyed stream `stream` (its
/// `ingest_partition` is `<stream>/<partition>`). Rows of other streams, and of none, are
/// `false`.
pub fn rows_of_stream(batch: &RecordBatch, stream: &str) -> BooleanArray {
    let n = batch.num_rows();
    let mut out = BooleanBufferBuilder::new(n);
    let partitions = batch
        .column_by_name(col::INGEST_PARTITION)
        .and_then(|c| c.as_dictionary_opt::<Int32Type>())
        .and_then(|d| Some((d.keys(), d.values().as_string_opt::<i32>()?)));
    let Some((keys, values)) = partitions else {
        out.append_n(n, false);
        return BooleanArray::new(out.finish(), None);
    };
    // Decided once per distinct value, then looked up per row.
    let in_stream: Vec<bool> = values
        .iter()
        .map(|v| {
            v.and_then(|v| v.strip_prefix(stream))
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .collect();
    for i in 0..n {
        let yes = keys.is_valid(i)
            && usize::try_from(keys.value(i))
                .ok()
                .and_then(|k| in_stream.get(k))
                .copied()
                .unwrap_or(false);
        out.append(yes);
    }
    BooleanArray::new(out.finish(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn a_key_set_is_a_set() {
        assert_eq!(key_set(&s(&["b", "a", "b"])), s(&["a", "b"]));
        assert_eq!(
            keyed_stream_name("verity", &s(&["source_ip", "destination_service"])),
            keyed_stream_name("verity", &s(&["destination_service", "source_ip"]))
        );
        assert_eq!(
            keyed_stream_name("verity", &s(&["source_principal"])),
            "verity-repartition-source_principal"
        );
        assert_eq!(keyed_stream_name("v", &[]), "v-repartition-global");
    }

    #[test]
    fn long_names_are_hashed_to_a_topic_sized_name() {
        let keys: Vec<String> = (0..40).map(|i| format!("column_{i}")).collect();
        let name = keyed_stream_name("verity", &keys);
        assert!(name.len() <= MAX_NAME, "{name}");
        assert!(name.starts_with("verity-repartition-"));
        assert_ne!(name, keyed_stream_name("verity", &keys[1..]));
    }

    #[test]
    fn the_hash_is_fixed() {
        // Instances of different builds must agree: these values may never change.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn rows_are_matched_to_their_stream_by_whole_name() {
        use arrow::array::DictionaryArray;
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let partitions: DictionaryArray<Int32Type> = vec![
            Some("v-repartition-source_principal/0"),
            Some("v-repartition-source_principal.x/0"),
            None,
            Some("v-repartition-source_principal/5"),
            Some("mesh/0"),
        ]
        .into_iter()
        .collect();
        let schema = Schema::new(vec![Field::new(
            col::INGEST_PARTITION,
            partitions.data_type().clone(),
            true,
        )]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(partitions)]).unwrap();
        let rows = rows_of_stream(&batch, "v-repartition-source_principal");
        assert_eq!(
            rows.iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false), Some(false), Some(true), Some(false)]
        );
    }
}
