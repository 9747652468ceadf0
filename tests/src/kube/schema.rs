//! Validation against the CRD schema: loading the served versions' `openAPIV3Schema`, pruning
//! unknown fields and checking the object.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::state::{quote, resource_name};
use super::status::{Cause, cause};

/// The CRD's schemas by served version, and its patterns compiled once.
pub(super) struct Schemas {
    pub(super) versions: BTreeMap<String, Value>,
    pub(super) patterns: BTreeMap<String, regex::Regex>,
}

pub(super) fn load_schemas(path: &Path) -> Result<Schemas, String> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut versions = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        if v["metadata"]["name"] != resource_name().as_str() {
            continue;
        }
        for version in v["spec"]["versions"].as_array().into_iter().flatten() {
            if version["served"] == false {
                continue;
            }
            if let (Some(name), Some(schema)) = (version["name"].as_str(), version["schema"].get("openAPIV3Schema")) {
                versions.insert(name.to_string(), schema.clone());
            }
        }
    }
    if versions.is_empty() {
        return Err(format!("{}: no {} CRD", path.display(), resource_name()));
    }
    let mut patterns = BTreeMap::new();
    fn collect(v: &Value, out: &mut BTreeMap<String, regex::Regex>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(p)) = m.get("pattern")
                    && let Ok(re) = regex::Regex::new(p)
                {
                    out.insert(p.clone(), re);
                }
                m.values().for_each(|c| collect(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| collect(c, out)),
            _ => {}
        }
    }
    versions.values().for_each(|s| collect(s, &mut patterns));
    Ok(Schemas { versions, patterns })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn is_integer(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) if is_integer(v) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => is_integer(v),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Whether a schema node describes an object's fields (so other fields are unknown).
fn is_object_schema(schema: &Value) -> bool {
    schema["type"] == "object" || schema.get("properties").is_some() || schema.get("additionalProperties").is_some()
}

/// Pruning as the apiserver does it for structural schemas: unknown fields are dropped (and
/// reported), nulls of non-nullable fields are dropped silently.
pub(super) fn prune(schema: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-int-or-string"] == true {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let object_schema = is_object_schema(schema);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props
                    .and_then(|p| p.get(&k))
                    .or_else(|| additional.filter(|a| a.is_object()));
                match sub {
                    Some(s) => {
                        if m.get(&k).is_some_and(Value::is_null) && s["nullable"] != true {
                            m.remove(&k);
                        } else if let Some(c) = m.get_mut(&k) {
                            prune(s, c, &join(path, &k), unknown);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) || !object_schema => {}
                    None => {
                        unknown.push(join(path, &k));
                        m.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(s, item, &format!("{path}[{i}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

/// Checks a value against an OpenAPI v3 (structural) schema, collecting the apiserver's causes.
pub(super) struct Checker<'a> {
    pub(super) patterns: &'a BTreeMap<String, regex::Regex>,
    pub(super) causes: Vec<Cause>,
    /// CEL rules met, not evaluated.
    pub(super) cel: u64,
}

impl Checker<'_> {
    fn satisfies(&self, schema: &Value, v: &Value) -> bool {
        let mut probe = Checker {
            patterns: self.patterns,
            causes: Vec::new(),
            cel: 0,
        };
        probe.check(schema, v, "");
        probe.causes.is_empty()
    }

    fn invalid(&mut self, path: &str, value: &Value, why: String) {
        let shown = match value {
            Value::Object(_) | Value::Array(_) => quote(type_name(value)),
            other => other.to_string(),
        };
        self.causes.push(cause(
            "FieldValueInvalid",
            path,
            format!("Invalid value: {shown}: {why}"),
        ));
    }

    pub(super) fn check(&mut self, schema: &Value, v: &Value, path: &str) {
        if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
            self.cel += rules.len() as u64;
        }
        if v.is_null() && schema["nullable"] == true {
            return;
        }
        let body_path = if path.is_empty() {
            "body".to_string()
        } else {
            format!("{path} in body")
        };
        if schema["x-kubernetes-int-or-string"] == true {
            if !(v.is_string() || is_integer(v)) {
                self.causes.push(cause(
                    "FieldValueTypeInvalid",
                    path,
                    format!(
                        "Invalid value: {}: {body_path} must be of type integer or string: {}",
                        quote(type_name(v)),
                        quote(type_name(v))
                    ),
                ));
            }
            return;
        }
        if let Some(t) = schema["type"].as_str()
            && !type_matches(t, v)
        {
            let actual = type_name(v);
            self.causes.push(cause(
                "FieldValueTypeInvalid",
                path,
                format!(
                    "Invalid value: {}: {body_path} must be of type {t}: {}",
                    quote(actual),
                    quote(actual)
                ),
            ));
            return;
        }
        if let Some(options) = schema["enum"].as_array()
            && !options.contains(v)
        {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            self.causes.push(cause(
                "FieldValueNotSupported",
                path,
                format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
            ));
        }
        for sub in schema["allOf"].as_array().into_iter().flatten() {
            self.check(sub, v, path);
        }
        if let Some(subs) = schema["oneOf"].as_array() {
            let n = subs.iter().filter(|s| self.satisfies(s, v)).count();
            if n != 1 {
                self.invalid(
                    path,
                    v,
                    format!("{body_path} must validate one and only one schema (oneOf)"),
                );
            }
        }
        if let Some(subs) = schema["anyOf"].as_array()
            && !subs.iter().any(|s| self.satisfies(s, v))
        {
            self.invalid(
                path,
                v,
                format!("{body_path} must validate at least one schema (anyOf)"),
            );
        }
        if let Some(not) = schema.get("not")
            && self.satisfies(not, v)
        {
            self.invalid(path, v, format!("{body_path} must not validate the schema (not)"));
        }
        match v {
            Value::String(s) => self.check_string(schema, s, v, path, &body_path),
            Value::Number(_) => self.check_number(schema, v, path, &body_path),
            Value::Array(items) => self.check_array(schema, items, v, path, &body_path),
            Value::Object(m) => self.check_object(schema, m, v, path, &body_path),
            _ => {}
        }
    }

    fn check_string(&mut self, schema: &Value, s: &str, v: &Value, path: &str, body_path: &str) {
        let len = s.chars().count() as u64;
        if let Some(max) = schema["maxLength"].as_u64()
            && len > max
        {
            self.causes.push(cause(
                "FieldValueTooLong",
                path,
                format!("Too long: may not be more than {max} bytes"),
            ));
        }
        if let Some(min) = schema["minLength"].as_u64()
            && len < min
        {
            self.invalid(path, v, format!("{body_path} should be at least {min} chars long"));
        }
        if let Some(p) = schema["pattern"].as_str()
            && let Some(re) = self.patterns.get(p)
            && !re.is_match(s)
        {
            self.invalid(path, v, format!("{body_path} should match '{p}'"));
        }
    }

    fn check_number(&mut self, schema: &Value, v: &Value, path: &str, body_path: &str) {
        let Some(n) = v.as_f64() else { return };
        if let Some(max) = schema["maximum"].as_f64() {
            if schema["exclusiveMaximum"] == true && n >= max {
                self.invalid(path, v, format!("{body_path} should be less than {max}"));
            } else if n > max {
                self.invalid(path, v, format!("{body_path} should be less than or equal to {max}"));
            }
        }
        if let Some(min) = schema["minimum"].as_f64() {
            if schema["exclusiveMinimum"] == true && n <= min {
                self.invalid(path, v, format!("{body_path} should be greater than {min}"));
            } else if n < min {
                self.invalid(path, v, format!("{body_path} should be greater than or equal to {min}"));
            }
        }
        if let Some(m) = schema["multipleOf"].as_f64()
            && m > 0.0
            && (n / m).fract() != 0.0
        {
            self.invalid(path, v, format!("{body_path} should be a multiple of {m}"));
        }
    }

    /// `maxItems`/`minItems` or `maxProperties`/`minProperties` (`[max key, min key, noun]`):
    /// the apiserver says "must have at most N items" for both, and names the noun for the
    /// minimum.
    fn check_count(
        &mut self,
        schema: &Value,
        [max_key, min_key, noun]: [&str; 3],
        len: usize,
        v: &Value,
        path: &str,
        body_path: &str,
    ) {
        if let Some(max) = schema[max_key].as_u64()
            && len as u64 > max
        {
            self.causes.push(cause(
                "FieldValueTooMany",
                path,
                format!("Too many: {len}: must have at most {max} items"),
            ));
        }
        if let Some(min) = schema[min_key].as_u64()
            && (len as u64) < min
        {
            self.invalid(path, v, format!("{body_path} should have at least {min} {noun}"));
        }
    }

    fn check_array(&mut self, schema: &Value, items: &[Value], v: &Value, path: &str, body_path: &str) {
        self.check_count(
            schema,
            ["maxItems", "minItems", "items"],
            items.len(),
            v,
            path,
            body_path,
        );
        match schema["x-kubernetes-list-type"].as_str() {
            Some("set") => {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        self.causes.push(cause(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {item}"),
                        ));
                    }
                }
            }
            Some("map") => {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let key_of = |item: &Value| -> Map<String, Value> {
                    keys.iter()
                        .filter_map(|k| item.get(*k).map(|v| (k.to_string(), v.clone())))
                        .collect()
                };
                for (i, item) in items.iter().enumerate() {
                    let k = key_of(item);
                    if items[..i].iter().any(|o| key_of(o) == k) {
                        self.causes.push(cause(
                            "FieldValueDuplicate",
                            format!("{path}[{i}]"),
                            format!("Duplicate value: {}", Value::Object(k)),
                        ));
                    }
                }
            }
            _ => {}
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                self.check(item_schema, item, &format!("{path}[{i}]"));
            }
        }
    }

    fn check_object(&mut self, schema: &Value, m: &Map<String, Value>, v: &Value, path: &str, body_path: &str) {
        self.check_count(
            schema,
            ["maxProperties", "minProperties", "properties"],
            m.len(),
            v,
            path,
            body_path,
        );
        for r in schema["required"].as_array().into_iter().flatten() {
            if let Some(k) = r.as_str()
                && !m.contains_key(k)
            {
                self.causes
                    .push(cause("FieldValueRequired", join(path, k), "Required value"));
            }
        }
        let props = schema["properties"].as_object();
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        for (k, child) in m {
            if let Some(s) = props.and_then(|p| p.get(k)).or(additional) {
                self.check(s, child, &join(path, k));
            }
        }
    }
}
