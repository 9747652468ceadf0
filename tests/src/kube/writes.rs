//! Writes: server-side apply and updates, field ownership (`managedFields`) and conflicts, and the
//! commit that validates and stores the result.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value, json};

use super::metadata::validate_metadata;
use super::query::FieldValidation;
use super::routing::view;
use super::schema::{Checker, prune, type_name};
use super::state::{FieldPath, Inner, ManagerKey, Object, Operation, Owner, Shared, api_version, now_rfc3339, quote};
use super::status::{bad_request, failure, invalid_object, namespace_not_found};
use super::verbs::check_preconditions;
use super::{KIND, META_FIELDS, STORAGE_VERSION};
use crate::siem::pseudo_guid;

/// What a write is about.
pub(super) struct Write<'a> {
    pub(super) version: &'a str,
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) manager: &'a str,
    pub(super) force: bool,
    pub(super) dry_run: bool,
    pub(super) validation: FieldValidation,
}

/// Ok: (status, object, warnings); Err: a `Status`.
pub(super) type Outcome = Result<(u16, Value, Vec<String>), Value>;

/// `apiVersion` and `kind` of a full object (`POST`, `PUT`, patched objects).
pub(super) fn check_type(obj: &Value, version: &str) -> Result<(), Value> {
    let expected = api_version(version);
    let given = obj["apiVersion"].as_str().unwrap_or("");
    if given != expected {
        return Err(bad_request(&format!(
            "the API version in the data ({given}) does not match the expected API version ({expected})"
        )));
    }
    let kind = obj["kind"].as_str().unwrap_or("");
    if kind != KIND {
        return Err(bad_request(&format!(
            "the kind in the data ({kind}) does not match the expected kind ({KIND})"
        )));
    }
    Ok(())
}

/// The name and namespace in the body against the URL's.
pub(super) fn check_name(obj: &Value, w: &Write<'_>) -> Result<(), Value> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if name != w.name {
        return Err(bad_request(&format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            w.name
        )));
    }
    if let Some(ns) = obj["metadata"]["namespace"].as_str()
        && !ns.is_empty()
        && ns != w.namespace
    {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// The typed parts of `ObjectMeta` the server keeps: `labels` and `annotations` must be maps of
/// strings (a decoding error otherwise).
fn check_meta_types(obj: &Value) -> Result<(), Value> {
    for k in ["labels", "annotations"] {
        match &obj["metadata"][k] {
            Value::Null => {}
            Value::Object(m) => {
                if let Some((key, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(bad_request(&format!(
                        "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{k} of type string (key {})",
                        type_name(&m[key]),
                        quote(key)
                    )));
                }
            }
            other => {
                return Err(bad_request(&format!(
                    "json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{k} of type map[string]string",
                    type_name(other)
                )));
            }
        }
    }
    if !obj["metadata"].is_object() && !obj["metadata"].is_null() {
        return Err(bad_request(&format!(
            "json: cannot unmarshal {} into Go struct field .metadata of type v1.ObjectMeta",
            type_name(&obj["metadata"])
        )));
    }
    Ok(())
}

/// Drops unknown fields (metadata always; the rest against the schema when loaded) and nulls of
/// non-nullable fields. Strict: unknown fields are a 400; Warn: one warning each.
pub(super) fn prune_object(
    shared: &Shared,
    version: &str,
    obj: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, Value> {
    check_meta_types(obj)?;
    let mut unknown = Vec::new();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        let extra: Vec<String> = m
            .keys()
            .filter(|k| !META_FIELDS.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in extra {
            unknown.push(format!("metadata.{k}"));
            m.remove(&k);
        }
    }
    if let Some(schema) = shared.schemas.as_ref().and_then(|s| s.versions.get(version))
        && let Value::Object(map) = obj
    {
        let mut body: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
        let mut root = Value::Object(std::mem::take(&mut body));
        prune(schema, &mut root, "", &mut unknown);
        if let Value::Object(rest) = root {
            map.extend(rest);
        }
    }
    let texts: Vec<String> = unknown.iter().map(|f| format!("unknown field {}", quote(f))).collect();
    match validation {
        FieldValidation::Strict if !texts.is_empty() => {
            Err(bad_request(&format!("strict decoding error: {}", texts.join(", "))))
        }
        FieldValidation::Warn => Ok(texts),
        _ => Ok(Vec::new()),
    }
}

/// The part of an object field managers own: labels, annotations and spec (`status` belongs to
/// the status subresource; system metadata to the server).
pub(super) fn managed_part(object: &Value) -> Value {
    let mut m = Map::new();
    let mut meta = Map::new();
    for k in ["labels", "annotations"] {
        if let Some(v) = object["metadata"].get(k).filter(|v| v.is_object()) {
            meta.insert(k.to_string(), v.clone());
        }
    }
    if !meta.is_empty() {
        m.insert("metadata".into(), Value::Object(meta));
    }
    if let Some(s) = object.get("spec").filter(|s| !s.is_null()) {
        m.insert("spec".into(), s.clone());
    }
    Value::Object(m)
}

/// The leaves of a configuration: non-empty objects are walked; anything else (lists
/// included: they are atomic) is one leaf.
fn leaves(v: &Value) -> BTreeMap<FieldPath, Value> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeMap<FieldPath, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, c) in m {
                    path.push(k.clone());
                    walk(c, path, out);
                    path.pop();
                }
            }
            other => {
                out.insert(path.clone(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Removes a leaf, and the objects it leaves empty.
fn remove_path(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(m) = v else { return };
    if rest.is_empty() {
        m.remove(first);
    } else if let Some(c) = m.get_mut(first) {
        remove_path(c, rest);
        if c.as_object().is_some_and(Map::is_empty) {
            m.remove(first);
        }
    }
}

/// Sets a leaf, making the objects on the way.
fn set_path(v: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = value;
        return;
    };
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    if let Value::Object(m) = v {
        set_path(m.entry(first.clone()).or_insert(Value::Null), rest, value);
    }
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// `.spec.action`, as structured-merge-diff prints paths.
fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

fn fields_v1<'a>(paths: impl Iterator<Item = &'a FieldPath>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            let Value::Object(m) = cur else { break };
            cur = m.entry(format!("f:{k}")).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

fn managed_fields(owners: &BTreeMap<ManagerKey, Owner>) -> Vec<Value> {
    let mut entries: Vec<(&ManagerKey, &Owner)> = owners.iter().collect();
    entries.sort_by(|a, b| (a.0.1, &a.1.time, &a.0.0).cmp(&(b.0.1, &b.1.time, &b.0.0)));
    entries
        .into_iter()
        .map(|((manager, op), o)| {
            json!({"manager": manager, "operation": op.as_str(), "apiVersion": o.api_version,
                "time": o.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(leaves(&o.config).keys())})
        })
        .collect()
}

struct Conflict {
    manager: String,
    op: Operation,
    api_version: String,
    path: FieldPath,
}

/// How the apiserver names a manager in a conflict.
fn print_manager(c: &Conflict) -> String {
    match c.op {
        Operation::Apply => quote(&c.manager),
        Operation::Update => format!("{} using {}", quote(&c.manager), c.api_version),
    }
}

fn conflict_status(conflicts: &[Conflict]) -> Value {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"reason": "FieldManagerConflict", "message": format!("conflict with {}", print_manager(c)),
                "field": dotted(&c.path)})
        })
        .collect();
    let message = match conflicts {
        [c] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(c),
            dotted(&c.path)
        ),
        _ => {
            let mut by_manager: BTreeMap<(&str, Operation), Vec<&Conflict>> = BTreeMap::new();
            for c in conflicts {
                by_manager.entry((&c.manager, c.op)).or_default().push(c);
            }
            let mut lines = Vec::new();
            for list in by_manager.values() {
                lines.push(format!("conflicts with {}:", print_manager(list[0])));
                lines.extend(list.iter().map(|c| format!("- {}", dotted(&c.path))));
            }
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        }
    };
    failure(409, "Conflict", &message, Some(json!({"causes": causes})))
}

/// Server-side apply.
pub(super) fn apply(shared: &Shared, inner: &mut Inner, w: &Write<'_>, mut patch: Value) -> Outcome {
    let expected = api_version(w.version);
    let given = patch["apiVersion"].as_str().unwrap_or("");
    if given != expected {
        return Err(bad_request(&format!(
            "Incorrect version specified in apply patch. Specified patch version: {given}, expected: {expected}"
        )));
    }
    let kind = patch["kind"].as_str().unwrap_or("");
    if kind != KIND {
        return Err(bad_request(&format!(
            "Incorrect kind specified in apply patch. Specified patch kind: {kind}, expected: {KIND}"
        )));
    }
    check_name(&patch, w)?;
    if patch["metadata"]["managedFields"].is_array() {
        return Err(bad_request("metadata.managedFields must be nil"));
    }
    let warnings = prune_object(shared, w.version, &mut patch, w.validation)?;
    let key = (w.namespace.to_string(), w.name.to_string());
    let existing = inner.objects.get(&key).cloned();
    match &existing {
        None if !inner.namespaces.contains(w.namespace) => return Err(namespace_not_found(w.namespace)),
        None => {}
        Some(o) => check_preconditions(
            w.name,
            &o.live,
            patch["metadata"]["uid"].as_str(),
            patch["metadata"]["resourceVersion"].as_str(),
        )?,
    }
    let config = managed_part(&patch);
    let mine = leaves(&config);
    let me = (w.manager.to_string(), Operation::Apply);
    let mut owners = existing.as_ref().map(|o| o.owners.clone()).unwrap_or_default();
    let mut conflicts = Vec::new();
    for (key, owner) in owners.iter_mut().filter(|(k, _)| **k != me) {
        for (path, value) in leaves(&owner.config) {
            if mine.get(&path).is_some_and(|v| *v != value) {
                if w.force {
                    remove_path(&mut owner.config, &path);
                } else {
                    conflicts.push(Conflict {
                        manager: key.0.clone(),
                        op: key.1,
                        api_version: owner.api_version.clone(),
                        path,
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(conflict_status(&conflicts));
    }
    owners.insert(
        me.clone(),
        Owner {
            api_version: expected,
            time: String::new(),
            config,
        },
    );
    let mut managed = Value::Object(Map::new());
    for o in owners.values() {
        merge(&mut managed, &o.config);
    }
    commit(shared, inner, w, existing.as_ref(), owners, &me, managed, warnings)
}

/// A non-apply write of a whole new object (`PUT`, or a patch applied to the live object): an
/// `Update` by `w.manager`, which takes the leaves it changes.
pub(super) fn update(shared: &Shared, inner: &mut Inner, w: &Write<'_>, mut obj: Value, existing: &Object) -> Outcome {
    check_type(&obj, w.version)?;
    check_name(&obj, w)?;
    check_preconditions(
        w.name,
        &existing.live,
        obj["metadata"]["uid"].as_str(),
        obj["metadata"]["resourceVersion"].as_str(),
    )?;
    let warnings = prune_object(shared, w.version, &mut obj, w.validation)?;
    let managed = managed_part(&obj);
    let old = leaves(&managed_part(&existing.live));
    let new = leaves(&managed);
    let changed: Vec<&FieldPath> = new
        .iter()
        .filter(|(p, v)| old.get(*p) != Some(*v))
        .map(|(p, _)| p)
        .collect();
    let removed: Vec<&FieldPath> = old.keys().filter(|p| !new.contains_key(*p)).collect();
    let me = (w.manager.to_string(), Operation::Update);
    let mut owners = existing.owners.clone();
    for (k, o) in owners.iter_mut() {
        if *k != me {
            for p in changed.iter().chain(&removed) {
                remove_path(&mut o.config, p);
            }
        }
    }
    let mine = owners.entry(me.clone()).or_insert_with(|| Owner {
        api_version: api_version(w.version),
        time: String::new(),
        config: Value::Object(Map::new()),
    });
    for p in &removed {
        remove_path(&mut mine.config, p);
    }
    for p in &changed {
        set_path(&mut mine.config, p, new[*p].clone());
    }
    if !changed.is_empty() {
        mine.api_version = api_version(w.version);
    }
    commit(shared, inner, w, Some(existing), owners, &me, managed, warnings)
}

/// Validates the resulting object, sets the system metadata and stores it (unless a dry run).
#[allow(clippy::too_many_arguments)]
pub(super) fn commit(
    shared: &Shared,
    inner: &mut Inner,
    w: &Write<'_>,
    existing: Option<&Object>,
    mut owners: BTreeMap<ManagerKey, Owner>,
    me: &ManagerKey,
    managed: Value,
    warnings: Vec<String>,
) -> Outcome {
    owners.retain(|_, o| o.config.as_object().is_some_and(|m| !m.is_empty()));
    let mut candidate = json!({"apiVersion": api_version(w.version), "kind": KIND,
        "metadata": {"name": w.name, "namespace": w.namespace}});
    merge(&mut candidate, &managed);
    let mut causes = validate_metadata(&candidate["metadata"]);
    if let Some(s) = &shared.schemas
        && let Some(schema) = s.versions.get(w.version)
    {
        let mut body = candidate.clone();
        if let Value::Object(m) = &mut body {
            m.remove("apiVersion");
            m.remove("kind");
            m.remove("metadata");
        }
        let mut checker = Checker {
            patterns: &s.patterns,
            causes: Vec::new(),
            cel: 0,
        };
        checker.check(schema, &body, "");
        inner.validated += 1;
        inner.cel_skipped += checker.cel;
        causes.extend(checker.causes);
    }
    if !causes.is_empty() {
        return Err(invalid_object(w.name, &causes));
    }
    let now = now_rfc3339();
    for (k, o) in owners.iter_mut() {
        match existing.and_then(|e| e.owners.get(k)) {
            Some(old) if old.config == o.config => {
                o.time = old.time.clone();
                o.api_version = old.api_version.clone();
            }
            Some(old) if k != me => o.time = old.time.clone(),
            _ => o.time = now.clone(),
        }
    }
    let (uid, created, generation, rv, first_seen) = match existing {
        Some(o) => {
            let m = &o.live["metadata"];
            let spec_changed = o.live.get("spec") != managed.get("spec");
            (
                m["uid"].clone(),
                m["creationTimestamp"].clone(),
                m["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed),
                m["resourceVersion"].clone(),
                o.first_seen,
            )
        }
        None => (json!(pseudo_guid()), json!(now), 1, Value::Null, Instant::now()),
    };
    let mut live = json!({
        "apiVersion": api_version(STORAGE_VERSION),
        "kind": KIND,
        "metadata": {
            "name": w.name,
            "namespace": w.namespace,
            "uid": uid,
            "resourceVersion": rv,
            "generation": generation,
            "creationTimestamp": created,
            "managedFields": managed_fields(&owners),
        },
    });
    merge(&mut live, &managed);
    let changed = existing.is_none_or(|o| o.live != live);
    if changed && !w.dry_run {
        inner.resource_version += 1;
        live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
        inner.objects.insert(
            (w.namespace.to_string(), w.name.to_string()),
            Object {
                owners,
                live: live.clone(),
                first_seen,
            },
        );
    }
    if let Some(m) = live["metadata"].as_object_mut()
        && m.get("resourceVersion").is_some_and(Value::is_null)
    {
        // A dry-run create: nothing was stored, so there is no resourceVersion.
        m.remove("resourceVersion");
    }
    Ok((
        if existing.is_none() { 201 } else { 200 },
        view(&live, w.version),
        warnings,
    ))
}
