//! Label and field selectors: parsing and matching.

use serde_json::Value;

use super::metadata::{label_value_errors, qualified_name_errors};
use super::state::quote;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Gt(String, i64),
    Lt(String, i64),
}

impl Requirement {
    pub(super) fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        let int = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
        match self {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::Ne(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Gt(k, n) => int(k).is_some_and(|x| x > *n),
            Requirement::Lt(k, n) => int(k).is_some_and(|x| x < *n),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Id(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Id(s) => s.clone(),
            Token::Not => "!".into(),
            Token::Eq => "=".into(),
            Token::DoubleEq => "==".into(),
            Token::NotEq => "!=".into(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
            Token::Comma => ",".into(),
            Token::Gt => ">".into(),
            Token::Lt => "<".into(),
        }
    }
}

fn lex(s: &str) -> Vec<Token> {
    let chars: Vec<char> = s.chars().collect();
    let special = |c: char| matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<');
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '!' if next == Some('=') => (Token::NotEq, 2),
            '!' => (Token::Not, 1),
            '=' if next == Some('=') => (Token::DoubleEq, 2),
            '=' => (Token::Eq, 1),
            '(' => (Token::Open, 1),
            ')' => (Token::Close, 1),
            ',' => (Token::Comma, 1),
            '>' => (Token::Gt, 1),
            '<' => (Token::Lt, 1),
            _ => {
                let start = i;
                let mut j = i;
                while j < chars.len() && !chars[j].is_whitespace() && !special(chars[j]) {
                    j += 1;
                }
                (Token::Id(chars[start..j].iter().collect()), j - start)
            }
        };
        out.push(tok);
        i += len;
    }
    out
}

/// Parses a label selector as `labels.Parse` does (`=`, `==`, `!=`, `in`, `notin`, `key`,
/// `!key`, `>`, `<`; requirements separated by commas, all of which must hold).
pub(super) fn parse_label_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let toks = lex(s);
    let mut pos = 0;
    let mut out = Vec::new();
    let found = |t: Option<&Token>| t.map_or_else(|| "end of string".to_string(), Token::text);
    let ident = |t: Option<&Token>, what: &str| match t {
        Some(Token::Id(s)) => Ok(s.clone()),
        other => Err(format!("found '{}', expected: {what}", found(other))),
    };
    if toks.is_empty() {
        return Ok(out);
    }
    loop {
        let req = if toks.get(pos) == Some(&Token::Not) {
            let key = ident(toks.get(pos + 1), "identifier after '!'")?;
            pos += 2;
            Requirement::NotExists(key)
        } else {
            let key = ident(toks.get(pos), "!, identifier, or 'end of string'")?;
            pos += 1;
            match toks.get(pos) {
                None | Some(Token::Comma) => Requirement::Exists(key),
                Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
                    let ne = toks.get(pos) == Some(&Token::NotEq);
                    pos += 1;
                    let value = match toks.get(pos) {
                        Some(Token::Id(v)) => {
                            pos += 1;
                            v.clone()
                        }
                        None | Some(Token::Comma) => String::new(),
                        other => return Err(format!("found '{}', expected: identifier", found(other))),
                    };
                    if ne {
                        Requirement::Ne(key, value)
                    } else {
                        Requirement::Eq(key, value)
                    }
                }
                Some(Token::Gt | Token::Lt) => {
                    let gt = toks.get(pos) == Some(&Token::Gt);
                    let v = ident(toks.get(pos + 1), "identifier")?;
                    pos += 2;
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("for 'Gt', 'Lt' operators, the value must be an integer: {v}"))?;
                    if gt {
                        Requirement::Gt(key, n)
                    } else {
                        Requirement::Lt(key, n)
                    }
                }
                Some(Token::Id(op)) if op == "in" || op == "notin" => {
                    let notin = op == "notin";
                    pos += 1;
                    if toks.get(pos) != Some(&Token::Open) {
                        return Err(format!("found '{}', expected: '('", found(toks.get(pos))));
                    }
                    pos += 1;
                    let mut values = Vec::new();
                    loop {
                        match toks.get(pos) {
                            Some(Token::Id(v)) => {
                                values.push(v.clone());
                                pos += 1;
                            }
                            Some(Token::Comma | Token::Close) => values.push(String::new()),
                            other => return Err(format!("found '{}', expected: ',', ')' or identifier", found(other))),
                        }
                        match toks.get(pos) {
                            Some(Token::Comma) => pos += 1,
                            Some(Token::Close) => {
                                pos += 1;
                                break;
                            }
                            other => return Err(format!("found '{}', expected: ',' or ')'", found(other))),
                        }
                    }
                    if notin {
                        Requirement::NotIn(key, values)
                    } else {
                        Requirement::In(key, values)
                    }
                }
                other => {
                    return Err(format!(
                        "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                        found(other)
                    ));
                }
            }
        };
        let (key, values): (&str, Vec<&str>) = match &req {
            Requirement::Eq(k, v) | Requirement::Ne(k, v) => (k, vec![v.as_str()]),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().map(String::as_str).collect()),
            Requirement::Exists(k) | Requirement::NotExists(k) | Requirement::Gt(k, _) | Requirement::Lt(k, _) => {
                (k, Vec::new())
            }
        };
        if let Some(m) = qualified_name_errors(key).first() {
            return Err(format!(
                "unable to parse requirement: key: Invalid value: {}: {m}",
                quote(key)
            ));
        }
        for v in values {
            if let Some(m) = label_value_errors(v).first() {
                return Err(format!(
                    "unable to parse requirement: values[0][{key}]: Invalid value: {}: {m}",
                    quote(v)
                ));
            }
        }
        out.push(req);
        match toks.get(pos) {
            None => return Ok(out),
            Some(Token::Comma) => pos += 1,
            other => return Err(format!("found '{}', expected: ',' or 'end of string'", found(other))),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
}

impl FieldRequirement {
    pub(super) fn matches(&self, live: &Value) -> bool {
        let actual = match self.field.as_str() {
            "metadata.name" => live["metadata"]["name"].as_str(),
            _ => live["metadata"]["namespace"].as_str(),
        };
        (actual == Some(self.value.as_str())) == self.equal
    }
}

/// Field selectors on what custom resources support: `metadata.name`, `metadata.namespace`.
pub(super) fn parse_field_selector(s: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{part}'"));
        };
        let field = field.trim();
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(format!(
                "{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"",
                quote(field)
            ));
        }
        out.push(FieldRequirement {
            field: field.to_string(),
            value: value.trim().to_string(),
            equal,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let labels = json!({"app.kubernetes.io/managed-by": "verity", "tier": "3", "empty": ""});
        let ok = |s: &str| parse_label_selector(s).unwrap().iter().all(|r| r.matches(&labels));
        assert!(ok(""));
        assert!(ok("app.kubernetes.io/managed-by=verity,tier"));
        assert!(ok("tier in (3, 4),!missing"));
        assert!(ok("tier notin (1),missing notin (x)"));
        assert!(ok("tier!=1,missing!=1"));
        assert!(ok("empty="));
        assert!(ok("tier>2,tier<4"));
        assert!(!ok("tier notin (3)"));
        assert!(!ok("tier!=3"));
        assert!(!ok("tier in (1,2)"));
        assert!(!ok("missing"));
        for bad in [
            "bad key!=x",
            "a=b=c",
            "a,",
            "a in b",
            "a in (b",
            "x=not a value!",
            "!",
            "a>b",
        ] {
            assert!(parse_label_selector(bad).is_err(), "{bad}");
        }
    }
}
