//! The verbs: list, delete, delete of a collection, patch, put and post.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::patches::{json_patch, merge_patch_into};
use super::query::{Query, check_options, decode_json, decode_object, dry_run_causes, manager_name};
use super::routing::view;
use super::selectors::{FieldRequirement, Requirement, parse_field_selector, parse_label_selector};
use super::server::{Answer, Req};
use super::state::{Operation, Owner, Shared, api_version, quote, random, resource_name};
use super::status::{
    MODIFIED, bad_request, cause, conflict, failure, invalid_object, invalid_options, namespace_not_found, not_found,
    unsupported_media,
};
use super::writes::{Outcome, Write, apply, check_name, check_type, commit, managed_part, prune_object, update};
use super::{APPLY_PATCH, GROUP, JSON_PATCH, KIND, MERGE_PATCH, PLURAL};

pub(super) fn list(shared: &Shared, q: &Query, version: &str, namespace: Option<&str>) -> Answer {
    let labels = match q.label_selector.as_deref().map(parse_label_selector).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return Answer::fail(bad_request(&e)),
    };
    let fields = match q.field_selector.as_deref().map(parse_field_selector).transpose() {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => return Answer::fail(bad_request(&e)),
    };
    let inner = shared.lock();
    let items: Vec<Value> = inner
        .objects
        .iter()
        .filter(|((ns, _), o)| namespace.is_none_or(|n| n == ns) && selects(&labels, &fields, &o.live))
        .map(|(_, o)| view(&o.live, version))
        .collect();
    Answer::ok(
        200,
        json!({"apiVersion": api_version(version), "kind": format!("{KIND}List"),
            "metadata": {"resourceVersion": inner.resource_version.to_string()}, "items": items}),
    )
}

fn selects(labels: &[Requirement], fields: &[FieldRequirement], live: &Value) -> bool {
    labels.iter().all(|r| r.matches(&live["metadata"]["labels"])) && fields.iter().all(|f| f.matches(live))
}

/// `DeleteOptions` from the query and the body.
struct DeleteOptions {
    dry_run: bool,
    uid: Option<String>,
    resource_version: Option<String>,
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, Value> {
    let mut dry_run = q.dry_run.clone();
    let mut opts = DeleteOptions {
        dry_run: false,
        uid: None,
        resource_version: None,
    };
    let mut causes = Vec::new();
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v = decode_json(body)?;
        if let Some(d) = v["dryRun"].as_array() {
            dry_run.extend(d.iter().map(|x| x.as_str().unwrap_or_default().to_string()));
        }
        opts.uid = v["preconditions"]["uid"].as_str().map(str::to_string);
        opts.resource_version = v["preconditions"]["resourceVersion"].as_str().map(str::to_string);
        if let Some(p) = v["propagationPolicy"].as_str()
            && !["Orphan", "Background", "Foreground"].contains(&p)
        {
            causes.push(cause(
                "FieldValueNotSupported",
                "propagationPolicy",
                format!(
                    "Unsupported value: {}: supported values: \"Background\", \"Foreground\", \"Orphan\"",
                    quote(p)
                ),
            ));
        }
    }
    causes.extend(dry_run_causes(&dry_run));
    if !causes.is_empty() {
        return Err(invalid_options("DeleteOptions", &causes));
    }
    opts.dry_run = !dry_run.is_empty();
    Ok(opts)
}

pub(super) fn check_preconditions(name: &str, live: &Value, uid: Option<&str>, rv: Option<&str>) -> Result<(), Value> {
    let meta = &live["metadata"];
    if let Some(uid) = uid.filter(|u| !u.is_empty())
        && meta["uid"] != uid
    {
        return Err(conflict(
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    if let Some(rv) = rv.filter(|r| !r.is_empty())
        && meta["resourceVersion"] != rv
    {
        return Err(conflict(name, MODIFIED));
    }
    Ok(())
}

pub(super) fn delete(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    let opts = delete_options(q, req.body)?;
    let mut inner = shared.lock();
    let key = (namespace.to_string(), name.to_string());
    let Some(o) = inner.objects.get(&key) else {
        return Err(not_found(name));
    };
    check_preconditions(name, &o.live, opts.uid.as_deref(), opts.resource_version.as_deref())?;
    if opts.dry_run {
        return Ok((200, view(&o.live, version), Vec::new()));
    }
    let mut live = inner.objects.remove(&key).map(|o| o.live).unwrap_or_default();
    inner.resource_version += 1;
    live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
    Ok((200, view(&live, version), Vec::new()))
}

pub(super) fn delete_collection(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str) -> Outcome {
    let opts = delete_options(q, req.body)?;
    let labels = q
        .label_selector
        .as_deref()
        .map(parse_label_selector)
        .transpose()
        .map_err(|e| bad_request(&e))?
        .unwrap_or_default();
    let fields = q
        .field_selector
        .as_deref()
        .map(parse_field_selector)
        .transpose()
        .map_err(|e| bad_request(&e))?
        .unwrap_or_default();
    let mut inner = shared.lock();
    let keys: Vec<(String, String)> = inner
        .objects
        .iter()
        .filter(|((ns, _), o)| ns == namespace && selects(&labels, &fields, &o.live))
        .map(|(k, _)| k.clone())
        .collect();
    let mut items = Vec::new();
    for k in keys {
        if opts.dry_run {
            if let Some(o) = inner.objects.get(&k) {
                items.push(view(&o.live, version));
            }
        } else if let Some(o) = inner.objects.remove(&k) {
            inner.resource_version += 1;
            let mut live = o.live;
            live["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
            items.push(view(&live, version));
        }
    }
    Ok((
        200,
        json!({"apiVersion": api_version(version), "kind": format!("{KIND}List"),
            "metadata": {"resourceVersion": inner.resource_version.to_string()}, "items": items}),
        Vec::new(),
    ))
}

pub(super) fn patch(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    let media = req.media_type();
    let apply_patch = media == APPLY_PATCH;
    if !(apply_patch || media == MERGE_PATCH || media == JSON_PATCH) {
        return Err(unsupported_media(&[JSON_PATCH, MERGE_PATCH, APPLY_PATCH]));
    }
    check_options("PatchOptions", q, apply_patch)?;
    let manager = if apply_patch {
        q.field_manager.clone().unwrap_or_default()
    } else {
        manager_name(q, req)
    };
    let w = Write {
        version,
        namespace,
        name,
        manager: &manager,
        force: q.force(),
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    if apply_patch {
        let text = String::from_utf8_lossy(req.body);
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => serde_yaml::from_str(&text).map_err(|e| bad_request(&format!("error decoding YAML: {e}")))?,
        };
        if !body.is_object() {
            return Err(bad_request(
                "error decoding YAML: the apply configuration is not an object",
            ));
        }
        let mut inner = shared.lock();
        return apply(shared, &mut inner, &w, body);
    }
    let patch = decode_json(req.body)?;
    let mut inner = shared.lock();
    let Some(existing) = inner.objects.get(&(namespace.to_string(), name.to_string())).cloned() else {
        return Err(not_found(name));
    };
    let mut doc = view(&existing.live, version);
    if media == MERGE_PATCH {
        merge_patch_into(&mut doc, &patch);
    } else {
        json_patch(&mut doc, &patch).map_err(|e| failure(422, "Invalid", &e, None))?;
    }
    update(shared, &mut inner, &w, doc, &existing)
}

pub(super) fn put(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str, name: &str) -> Outcome {
    check_options("UpdateOptions", q, false)?;
    let body = decode_object(req)?;
    let manager = manager_name(q, req);
    let w = Write {
        version,
        namespace,
        name,
        manager: &manager,
        force: false,
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    let mut inner = shared.lock();
    let Some(existing) = inner.objects.get(&(namespace.to_string(), name.to_string())).cloned() else {
        return Err(not_found(name));
    };
    update(shared, &mut inner, &w, body, &existing)
}

pub(super) fn post(shared: &Shared, req: &Req<'_>, q: &Query, version: &str, namespace: &str) -> Outcome {
    check_options("CreateOptions", q, false)?;
    let mut body = decode_object(req)?;
    check_type(&body, version)?;
    let meta = &body["metadata"];
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let suffix: String = random::<5>()
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect();
            format!("{g}{suffix}")
        }
        _ => {
            return Err(invalid_object(
                "",
                &[cause(
                    "FieldValueRequired",
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
    };
    body["metadata"]["name"] = json!(name);
    let manager = manager_name(q, req);
    let w = Write {
        version,
        namespace,
        name: &name,
        manager: &manager,
        force: false,
        dry_run: q.dry_run(),
        validation: q.validation(),
    };
    check_name(&body, &w)?;
    let mut inner = shared.lock();
    if inner.objects.contains_key(&(namespace.to_string(), name.clone())) {
        return Err(failure(
            409,
            "AlreadyExists",
            &format!("{} {} already exists", resource_name(), quote(&name)),
            Some(json!({"name": name, "group": GROUP, "kind": PLURAL})),
        ));
    }
    if !inner.namespaces.contains(namespace) {
        return Err(namespace_not_found(namespace));
    }
    let warnings = prune_object(shared, version, &mut body, w.validation)?;
    let managed = managed_part(&body);
    let me = (manager.clone(), Operation::Update);
    let mut owners = BTreeMap::new();
    owners.insert(
        me.clone(),
        Owner {
            api_version: api_version(version),
            time: String::new(),
            config: managed.clone(),
        },
    );
    commit(shared, &mut inner, &w, None, owners, &me, managed, warnings)
}
