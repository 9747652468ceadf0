//! Patches: JSON merge patch (RFC 7386) and JSON patch (RFC 6902).

use serde_json::{Map, Value};

use super::state::quote;

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch_into(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch_into(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn json_pointer(s: &str) -> Result<Vec<String>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("JSON pointer {} does not start with '/'", quote(s)));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn pointer_get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |cur, k| match cur {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn pointer_parent<'a>(doc: &'a mut Value, path: &[String]) -> Result<(&'a mut Value, String), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("the root has no parent".into());
    };
    let mut cur = doc;
    for k in parents {
        cur = match cur {
            Value::Object(m) => m.get_mut(k),
            Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("doc is missing path: {}", dotted_pointer(path)))?;
    }
    Ok((cur, last.clone()))
}

fn dotted_pointer(path: &[String]) -> String {
    path.iter().map(|k| format!("/{k}")).collect()
}

fn pointer_add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = pointer_parent(doc, path)?;
    match parent {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "add operation does not apply: doc is missing path: {}",
                dotted_pointer(path)
            )),
        },
        _ => Err(format!(
            "add operation does not apply: doc is missing path: {}",
            dotted_pointer(path)
        )),
    }
}

fn pointer_remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let missing = || {
        format!(
            "remove operation does not apply: doc is missing path: {}",
            dotted_pointer(path)
        )
    };
    let (parent, last) = pointer_parent(doc, path).map_err(|_| missing())?;
    match parent {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// RFC 6902 JSON patch.
pub(super) fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), String> {
    let ops = patch.as_array().ok_or("a JSON patch must be an array of operations")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("an operation has no \"op\"")?;
        let path = json_pointer(op["path"].as_str().ok_or("an operation has no \"path\"")?)?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| format!("{kind} operation has no \"value\""))
        };
        match kind {
            "add" => pointer_add(doc, &path, value()?)?,
            "remove" => {
                pointer_remove(doc, &path)?;
            }
            "replace" => {
                if path.is_empty() {
                    *doc = value()?;
                } else {
                    pointer_remove(doc, &path).map_err(|_| {
                        format!(
                            "replace operation does not apply: doc is missing key: {}",
                            dotted_pointer(&path)
                        )
                    })?;
                    pointer_add(doc, &path, value()?)?;
                }
            }
            "move" | "copy" => {
                let from = json_pointer(op["from"].as_str().ok_or("an operation has no \"from\"")?)?;
                let v = if kind == "move" {
                    pointer_remove(doc, &from)?
                } else {
                    pointer_get(doc, &from).cloned().ok_or_else(|| {
                        format!(
                            "copy operation does not apply: doc is missing from path: {}",
                            dotted_pointer(&from)
                        )
                    })?
                };
                pointer_add(doc, &path, v)?;
            }
            "test" => {
                if pointer_get(doc, &path) != Some(&value()?) {
                    return Err(format!("testing value {} failed: test failed", dotted_pointer(&path)));
                }
            }
            other => return Err(format!("Unexpected kind: {other}")),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch_into(&mut doc, &json!({"a": {"b": null, "e": true}, "d": "y"}));
        assert_eq!(doc, json!({"a": {"c": [1, 2], "e": true}, "d": "y"}));
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/a/c/-", "value": 3},
                {"op": "add", "path": "/a/c/0", "value": 0},
                {"op": "remove", "path": "/a/e"},
                {"op": "copy", "from": "/d", "path": "/f~1g"},
                {"op": "move", "from": "/d", "path": "/h"},
                {"op": "test", "path": "/h", "value": "y"}
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": {"c": [0, 1, 2, 3]}, "f/g": "y", "h": "y"}));
        assert!(json_patch(&mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }
}
