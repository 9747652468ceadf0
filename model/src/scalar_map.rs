//! Settings maps whose values may be written as strings, numbers or booleans, such as the
//! librdkafka properties of the Kafka source and the Kafka output.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A map of settings whose values may be written as strings, numbers or booleans (librdkafka
/// properties such as `linger.ms: 5`); they are passed on as strings.
pub fn scalar_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    let raw = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_yaml::Value::String(s) => s,
                serde_yaml::Value::Number(n) => n.to_string(),
                serde_yaml::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(D::Error::custom(format!(
                        "{k}: expected a string, number or boolean, got {other:?}"
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
}
