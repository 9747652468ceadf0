//! Column builders that append a run of NULLs in one call.
//!
//! An access event fills only some of its ~50 columns: a ztunnel connection has no method,
//! path or user agent, a sidecar request no workload names. Appending each missing value on
//! its own (one offset, one validity bit, through a call per column per row) was about a
//! quarter of building a batch. [`NullRuns`] counts consecutive NULLs instead and appends the
//! run at once when the next value, or the end of the batch, comes.

use arrow::array::{
    ArrowPrimitiveType, BooleanArray, BooleanBuilder, PrimitiveArray, PrimitiveBuilder, StringArray, StringBuilder,
};

/// A builder that can append many NULLs at once.
pub(crate) trait AppendNulls {
    type Array;
    fn append_nulls(&mut self, n: usize);
    fn finish(&mut self) -> Self::Array;
}

impl AppendNulls for StringBuilder {
    type Array = StringArray;
    fn append_nulls(&mut self, n: usize) {
        StringBuilder::append_nulls(self, n);
    }
    fn finish(&mut self) -> StringArray {
        StringBuilder::finish(self)
    }
}

impl<T: ArrowPrimitiveType> AppendNulls for PrimitiveBuilder<T> {
    type Array = PrimitiveArray<T>;
    fn append_nulls(&mut self, n: usize) {
        PrimitiveBuilder::append_nulls(self, n);
    }
    fn finish(&mut self) -> PrimitiveArray<T> {
        PrimitiveBuilder::finish(self)
    }
}

impl AppendNulls for BooleanBuilder {
    type Array = BooleanArray;
    fn append_nulls(&mut self, n: usize) {
        BooleanBuilder::append_nulls(self, n);
    }
    fn finish(&mut self) -> BooleanArray {
        BooleanBuilder::finish(self)
    }
}

/// A nullable column: `builder` holds every row before the last `nulls`.
pub(crate) struct NullRuns<B> {
    builder: B,
    nulls: usize,
}

impl<B: AppendNulls> NullRuns<B> {
    pub(crate) fn new(builder: B) -> Self {
        Self { builder, nulls: 0 }
    }

    /// Appends `value`, or a NULL for None, with `put` appending a present value.
    #[inline]
    pub(crate) fn append<V>(&mut self, value: Option<V>, put: impl FnOnce(&mut B, V)) {
        match value {
            None => self.nulls += 1,
            Some(v) => {
                self.flush();
                put(&mut self.builder, v);
            }
        }
    }

    fn flush(&mut self) {
        if self.nulls > 0 {
            self.builder.append_nulls(self.nulls);
            self.nulls = 0;
        }
    }

    /// The rows appended so far, NULLs included; the builder is left empty.
    pub(crate) fn finish(&mut self) -> B::Array {
        self.flush();
        self.builder.finish()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, Int32Builder};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any mix of values and NULLs, over several batches of one builder, gives the array
        /// that appending them one by one gives.
        #[test]
        fn runs_are_the_rows_one_by_one(batches in proptest::collection::vec(
            proptest::collection::vec(proptest::option::of(0i32..5), 0..40), 1..4)
        ) {
            let mut text = NullRuns::new(StringBuilder::new());
            let mut number = NullRuns::new(Int32Builder::new());
            let mut flag = NullRuns::new(BooleanBuilder::new());
            for rows in batches {
                let mut want_text = StringBuilder::new();
                let mut want_number = Int32Builder::new();
                let mut want_flag = BooleanBuilder::new();
                for v in &rows {
                    let s = v.map(|n| "x".repeat(n as usize));
                    text.append(s.as_deref(), |b, v| b.append_value(v));
                    want_text.append_option(s.as_deref());
                    number.append(*v, |b, v| b.append_value(v));
                    want_number.append_option(*v);
                    flag.append(v.map(|n| n > 2), |b, v| b.append_value(v));
                    want_flag.append_option(v.map(|n| n > 2));
                }
                let got = text.finish();
                prop_assert_eq!(got.len(), rows.len());
                prop_assert_eq!(got, want_text.finish());
                prop_assert_eq!(number.finish(), want_number.finish());
                prop_assert_eq!(flag.finish(), want_flag.finish());
            }
        }
    }
}
