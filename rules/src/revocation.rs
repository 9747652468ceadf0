//! The revocation list rules consult through `is_revoked(principal)`. Fed from config now and
//! by the control plane later; shared, so an update is visible to the next batch.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, ArrayRef, BooleanArray, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};

#[derive(Debug, Clone, Default)]
pub struct RevocationList {
    inner: Arc<RwLock<HashSet<String>>>,
}

impl RevocationList {
    pub fn new(principals: impl IntoIterator<Item = String>) -> Self {
        let list = Self::default();
        list.replace(principals);
        list
    }

    pub fn replace(&self, principals: impl IntoIterator<Item = String>) {
        let set: HashSet<String> = principals.into_iter().map(|p| normalize(&p)).collect();
        match self.inner.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    pub fn add(&self, principal: &str) {
        match self.inner.write() {
            Ok(mut g) => g.insert(normalize(principal)),
            Err(poisoned) => poisoned.into_inner().insert(normalize(principal)),
        };
    }

    pub fn remove(&self, principal: &str) {
        match self.inner.write() {
            Ok(mut g) => g.remove(&normalize(principal)),
            Err(poisoned) => poisoned.into_inner().remove(&normalize(principal)),
        };
    }

    pub fn contains(&self, principal: &str) -> bool {
        match self.inner.read() {
            Ok(g) => g.contains(principal),
            Err(poisoned) => poisoned.into_inner().contains(principal),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().map(|g| g.len()).unwrap_or(0)
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

/// `is_revoked(text) -> boolean`: true when the value is on the revocation list.
#[derive(Debug)]
pub struct IsRevoked {
    list: RevocationList,
    signature: Signature,
}

impl IsRevoked {
    pub fn new(list: RevocationList) -> Self {
        Self {
            list,
            signature: Signature::any(1, Volatility::Volatile),
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
                let strings: ArrayRef = cast(&a, &DataType::Utf8)?;
                let strings = strings
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .cloned()
                    .unwrap_or_else(|| StringArray::from(Vec::<Option<&str>>::new()));
                if self.list.is_empty() {
                    let out: BooleanArray = (0..strings.len())
                        .map(|i| (!strings.is_null(i)).then_some(false))
                        .collect();
                    return Ok(ColumnarValue::Array(Arc::new(out)));
                }
                let out: BooleanArray = strings.iter().map(|v| v.map(|v| self.list.contains(v))).collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}
