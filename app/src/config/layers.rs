//! The layers of the configuration: the embedded defaults, then the file, then
//! `VERITY__SECTION__KEY` variables, merged as YAML trees and read into [`Config`] with the
//! path of every key that does not fit.

use super::*;

/// Loads the layers: defaults, then `file` if given, then `env` (pass `std::env::vars()`).
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Vec<ConfigError>> {
    let Some(path) = file else {
        return load_text(None, env);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read: {e}"),
        )]
    })?;
    load_text(Some((&path.display().to_string(), &text)), env)
}

/// [`load`] with the file's text already read: `file` is `(name used in errors, YAML text)`.
pub fn load_text(
    file: Option<(&str, &str)>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, Vec<ConfigError>> {
    let mut tree: Value = serde_yaml::from_str(DEFAULTS_YAML)
        .map_err(|e| vec![ConfigError::new("<embedded defaults>", e.to_string())])?;
    if let Some((name, text)) = file {
        let overlay: Value =
            serde_yaml::from_str(text).map_err(|e| vec![ConfigError::new(name, format!("invalid YAML: {e}"))])?;
        if !overlay.is_null() {
            merge(&mut tree, overlay);
        }
    }
    let mut env_errors = Vec::new();
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in env {
        if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
            overrides.insert(rest.to_string(), v);
        }
    }
    for (rest, v) in overrides {
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            env_errors.push(ConfigError::new(
                format!("{ENV_PREFIX}{rest}"),
                "malformed variable name",
            ));
            continue;
        }
        let value: Value = serde_yaml::from_str(&v).unwrap_or(Value::String(v));
        set_path(&mut tree, &path, value);
    }
    if !env_errors.is_empty() {
        return Err(env_errors);
    }
    deserialize_sections(tree)
}

/// Deserializes section by section so that one bad section does not hide errors in others.
fn deserialize_sections(tree: Value) -> Result<Config, Vec<ConfigError>> {
    let Value::Mapping(map) = tree else {
        return Err(vec![ConfigError::new("<root>", "the configuration must be a mapping")]);
    };
    let mut errors = Vec::new();
    let mut cfg = Config::default();
    fn section<T: serde::de::DeserializeOwned>(name: &str, v: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}.{inner}")
                };
                errors.push(ConfigError::new(path, e.into_inner().to_string()));
                None
            }
        }
    }
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            errors.push(ConfigError::new("<root>", format!("non-string key {k:?}")));
            continue;
        };
        match key {
            "otlp" => cfg.otlp = section(key, v, &mut errors).unwrap_or_default(),
            "intake" => cfg.intake = section(key, v, &mut errors).unwrap_or_default(),
            "pipeline" => cfg.pipeline = section(key, v, &mut errors).unwrap_or_default(),
            "admin" => cfg.admin = section(key, v, &mut errors).unwrap_or_default(),
            "archive" => cfg.archive = section(key, v, &mut errors).unwrap_or_default(),
            "dead_letter" => cfg.dead_letter = section(key, v, &mut errors).unwrap_or_default(),
            "log" => cfg.log = section(key, v, &mut errors).unwrap_or_default(),
            "shutdown" => cfg.shutdown = section(key, v, &mut errors).unwrap_or_default(),
            "rules" => cfg.rules = section(key, v, &mut errors).unwrap_or_default(),
            "sinks" => cfg.sinks = section(key, v, &mut errors).unwrap_or_default(),
            "kafka" => cfg.kafka = section(key, v, &mut errors).unwrap_or_default(),
            "telemetry" => cfg.telemetry = section(key, v, &mut errors).unwrap_or_default(),
            "control" => cfg.control = section(key, v, &mut errors).unwrap_or_default(),
            "policy" => cfg.policy = section(key, v, &mut errors).unwrap_or_default(),
            other => errors.push(ConfigError::new(
                other,
                "unknown section; expected one of otlp, intake, pipeline, admin, archive, dead_letter, log, shutdown, rules, sinks, kafka, telemetry, control, policy",
            )),
        }
    }
    if errors.is_empty() { Ok(cfg) } else { Err(errors) }
}

fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(tree: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *tree = value;
        return;
    };
    if !tree.is_mapping() {
        *tree = Value::Mapping(Default::default());
    }
    if let Value::Mapping(m) = tree {
        let key = Value::String(first.clone());
        let child = m.entry(key).or_insert(Value::Null);
        set_path(child, rest, value);
    }
}
