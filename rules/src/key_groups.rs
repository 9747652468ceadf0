//! A batch's matching rows grouped by a rule's key columns, once per batch.
//!
//! Stateful rules keep their state per key. Building an owned key (a `String` per key column)
//! for every matching row and hashing it against the state map was most of their cost. Here
//! the key columns of the matching rows are encoded with Arrow's row format in one vectorized
//! pass, each row's encoding is hashed once to find its group, and the owned [`Key`] the
//! state is indexed by is built once per distinct key in the batch.
//!
//! Rows keep their batch order within a group, and groups come in the order of their first
//! row, so a state update sees each key's rows in the order it would have one by one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::error::ArrowError;
use arrow::row::{Row, RowConverter, SortField};

use crate::evidence::{Key, Rows};

/// The rows of one distinct key.
#[derive(Debug, PartialEq)]
pub struct KeyGroup {
    pub key: Key,
    /// Row indices into the batch, in batch order.
    pub rows: Vec<usize>,
}

/// Groups `selected` (row indices into `rows`' batch, in batch order) by the values of
/// `columns`.
pub fn group_rows(
    rows: &Rows<'_>,
    columns: &[(String, usize)],
    selected: &[usize],
) -> Result<Vec<KeyGroup>, ArrowError> {
    if selected.is_empty() {
        return Ok(Vec::new());
    }
    if columns.is_empty() {
        return Ok(vec![KeyGroup {
            key: Vec::new(),
            rows: selected.to_vec(),
        }]);
    }
    let indices = selected
        .iter()
        .map(|&row| u32::try_from(row))
        .collect::<Result<UInt32Array, _>>()
        .map_err(|_| ArrowError::InvalidArgumentError("a batch of more than 2^32 rows".into()))?;
    let keys: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, c)| arrow::compute::take(rows.batch.column(*c).as_ref(), &indices, None))
        .collect::<Result<_, _>>()?;
    let converter = RowConverter::new(keys.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
    let encoded = converter.convert_columns(&keys)?;
    let mut index: HashMap<Row<'_>, usize> = HashMap::with_capacity(selected.len().min(1024));
    let mut groups: Vec<KeyGroup> = Vec::new();
    for (i, &row) in selected.iter().enumerate() {
        match index.entry(encoded.row(i)) {
            Entry::Occupied(e) => {
                if let Some(g) = groups.get_mut(*e.get()) {
                    g.rows.push(row);
                }
            }
            Entry::Vacant(e) => {
                e.insert(groups.len());
                groups.push(KeyGroup {
                    key: rows.key(columns, row),
                    rows: vec![row],
                });
            }
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use verity_model::event::col;
    use verity_model::{AccessEvent, EventBatchBuilder};

    use super::*;

    #[test]
    fn rows_group_by_their_key_values_in_first_seen_order() {
        let mut b = EventBatchBuilder::default();
        for (principal, status) in [
            (Some("a"), 200),
            (Some("b"), 403),
            (Some("a"), 403),
            (None, 200),
            (Some("b"), 403),
            (Some("a"), 200),
        ] {
            b.append(&AccessEvent {
                source_principal: principal.map(Into::into),
                status: Some(status),
                ..Default::default()
            });
        }
        let batch = b.finish().expect("batch");
        let rows = Rows::new(&batch).expect("rows");
        let schema = batch.schema();
        let column = |name: &str| (name.to_string(), schema.index_of(name).expect("column"));
        let by_principal = [column(col::SOURCE_PRINCIPAL)];
        let groups = group_rows(&rows, &by_principal, &[0, 1, 2, 3, 4, 5]).expect("groups");
        let got: Vec<(Key, Vec<usize>)> = groups.into_iter().map(|g| (g.key, g.rows)).collect();
        assert_eq!(
            got,
            vec![
                (vec![Some("a".to_string())], vec![0, 2, 5]),
                (vec![Some("b".to_string())], vec![1, 4]),
                (vec![None], vec![3]),
            ]
        );
        // Only the selected rows, and two key columns of different types.
        let both = [column(col::SOURCE_PRINCIPAL), column(col::STATUS)];
        let groups = group_rows(&rows, &both, &[1, 2, 4, 5]).expect("groups");
        let got: Vec<(Key, Vec<usize>)> = groups.into_iter().map(|g| (g.key, g.rows)).collect();
        assert_eq!(
            got,
            vec![
                (vec![Some("b".to_string()), Some("403".to_string())], vec![1, 4]),
                (vec![Some("a".to_string()), Some("403".to_string())], vec![2]),
                (vec![Some("a".to_string()), Some("200".to_string())], vec![5]),
            ]
        );
        // No key columns: one group of every selected row.
        assert_eq!(
            group_rows(&rows, &[], &[2, 3]).expect("groups"),
            vec![KeyGroup {
                key: Vec::new(),
                rows: vec![2, 3]
            }]
        );
        assert!(group_rows(&rows, &by_principal, &[]).expect("groups").is_empty());
    }
}
