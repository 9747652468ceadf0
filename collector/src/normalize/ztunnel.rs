//! ztunnel (Istio ambient) access logs: the tab-separated plain layout, the older
//! `INFO access: connection complete k=v` layout, and the JSON layout (flat dotted keys).
//!
//! ztunnel prints `src.identity`/`dst.identity` only for mutual-TLS connections, so their
//! absence is recorded as evidence of plaintext (see `derive`).

use std::borrow::Cow;

use verity_model::time::parse_rfc3339_ns;
use verity_model::{AccessEvent, InputFormat, Reporter};

use super::fields::{self, Value};
use super::{Extras, RejectReason, Rejection};

/// True if a line starting with a digit has ztunnel's `access` target after its timestamp.
pub fn looks_like_ztunnel(line: &str) -> bool {
    // The first 64 bytes, cut back to a character boundary (a byte index inside a multi-byte
    // character would panic).
    let end = (0..=line.len().min(64))
        .rev()
        .find(|i| line.is_char_boundary(*i))
        .unwrap_or(0);
    let head = line.get(..end).unwrap_or("");
    head.contains("\taccess\t") || head.contains(" access: ") || head.contains(" access ")
}

fn malformed(what: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::MalformedText, what)
}

pub fn parse_text(line: &str) -> Result<(AccessEvent<'_>, Extras<'_>), Rejection> {
    let (time, rest, format) = if let Some((time, rest)) = line.split_once('\t') {
        // <time>\t<level>\taccess\t<message>\t<k=v ...>
        let mut parts = rest.splitn(4, '\t');
        let _level = parts.next();
        let target = parts.next().unwrap_or("");
        if target != "access" {
            return Err(malformed(format!("ztunnel target {target:?} is not access")));
        }
        let _message = parts.next();
        (time, parts.next().unwrap_or(""), InputFormat::ZtunnelText)
    } else {
        // <time>  INFO access: connection complete k=v ...
        let (time, rest) = line.split_once(' ').ok_or_else(|| malformed("expected a timestamp"))?;
        let at = rest
            .find("access: ")
            .ok_or_else(|| malformed("expected the access target"))?;
        let after = rest.get(at.saturating_add("access: ".len())..).unwrap_or_default();
        // The message runs up to the first key=value pair.
        let kv_start = after
            .find('=')
            .and_then(|eq| after.get(..eq))
            .and_then(|head| head.rfind(' '))
            .map_or(after.len(), |sp| sp.saturating_add(1));
        (
            time,
            after.get(kv_start..).unwrap_or_default(),
            InputFormat::ZtunnelTextLegacy,
        )
    };
    let event_time_ns = parse_rfc3339_ns(time.trim()).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidTimestamp,
            format!(
                "ztunnel time {:?} is not RFC 3339",
                time.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let mut ev = AccessEvent {
        event_time_ns,
        reporter: Reporter::Ztunnel,
        format,
        raw: Cow::Borrowed(line),
        ..Default::default()
    };
    let mut ex = Extras::default();
    let mut unknown = fields::UnknownAttrs::default();
    for (k, v) in (KvPairs { s: rest }) {
        let v = v?;
        apply_key(&mut ev, &mut ex, k, Value::Str(v), &mut unknown)?;
    }
    ev.attributes = unknown.into_json();
    Ok((ev, ex))
}

/// Applies one ztunnel key. Shared by the plain and JSON layouts.
pub fn apply_key<'a>(
    ev: &mut AccessEvent<'a>,
    ex: &mut Extras<'a>,
    key: &str,
    value: Value<'a>,
    unknown: &mut fields::UnknownAttrs,
) -> Result<(), Rejection> {
    let text = |v: Value<'a>| match v {
        Value::Str(s) => fields::opt_cow(s),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Float(f) => Some(Cow::Owned(f.to_string())),
        Value::Bool(b) => Some(Cow::Owned(b.to_string())),
        Value::Null => None,
    };
    let num = |v: Value<'a>| -> Result<Option<i64>, Rejection> {
        match v {
            Value::Int(i) if (0..=fields::MAX_BYTES).contains(&i) => Ok(Some(i)),
            Value::Str(s) => fields::count(key, &s),
            Value::Null => Ok(None),
            other => Err(Rejection::field(key, &format!("{other:?}"))),
        }
    };
    match key {
        "src.addr" => {
            if let Some(a) = text(value) {
                let (ip, port) = fields::split_addr_cow(&a);
                ev.source_ip = ip;
                ev.source_port = port;
            }
        }
        "src.workload" => ev.source_workload = text(value),
        "src.namespace" => ev.source_namespace = text(value),
        "src.identity" => ev.source_principal = text(value),
        "src.cluster" => ev.cluster = text(value),
        "dst.addr" => {
            if let Some(a) = text(value) {
                let (ip, port) = fields::split_addr_cow(&a);
                ev.destination_ip = ip;
                ev.destination_port = port;
            }
        }
        "dst.hbone_addr" => {
            // The real destination behind the HBONE tunnel port 15008.
            if let Some(a) = text(value) {
                let (ip, port) = fields::split_addr_cow(&a);
                if ip.is_some() {
                    ev.destination_ip = ip;
                    ev.destination_port = port;
                }
            }
        }
        "dst.service" => ev.destination_service = text(value),
        "dst.workload" => ev.destination_workload = text(value),
        "dst.namespace" => ev.destination_namespace = text(value),
        "dst.identity" => ev.destination_principal = text(value),
        "dst.cluster" => {}
        "direction" => {
            if let Some(d) = text(value) {
                ev.direction = fields::parse_direction(&d).ok_or_else(|| Rejection::field(key, &d))?;
            }
        }
        "bytes_sent" => ev.bytes_sent = num(value)?,
        "bytes_recv" => ev.bytes_received = num(value)?,
        "duration" => {
            if let Some(d) = text(value) {
                ev.duration_ms = Some(parse_duration_ms(&d).ok_or_else(|| Rejection::field(key, &d))?);
            }
        }
        "error" => ev.connection_termination_details = text(value),
        "time" | "timestamp" => {
            if let Some(t) = text(value) {
                ev.event_time_ns = parse_rfc3339_ns(&t).ok_or_else(|| {
                    Rejection::new(
                        RejectReason::InvalidTimestamp,
                        format!("ztunnel time {t:?} is not RFC 3339"),
                    )
                })?;
            }
        }
        "level" | "scope" | "target" | "message" | "msg" | "fields.message" => {}
        other => {
            // Anything else the ordinary field map understands (e.g. trace ids) still lands.
            if fields::apply(ev, ex, other, value.clone())? == fields::Applied::Unknown {
                unknown.insert(other, fields::value_to_json(&value));
            }
        }
    }
    Ok(())
}

/// ztunnel prints durations as `1ms`, `15ms`, `1.2s`, `250µs`.
pub fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let ms = match unit {
        "ns" => n / 1e6,
        "µs" | "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    };
    (ms.is_finite() && ms <= fields::MAX_DURATION_MS).then_some(ms)
}

/// Iterates `key=value` pairs where values are bare or double-quoted with `\` escapes.
struct KvPairs<'a> {
    s: &'a str,
}

impl<'a> Iterator for KvPairs<'a> {
    type Item = (&'a str, Result<Cow<'a, str>, Rejection>);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.s.trim_start_matches([' ', '\t']);
        if s.is_empty() {
            return None;
        }
        let Some((key, rest)) = memchr::memchr(b'=', s.as_bytes()).and_then(|at| super::split_around(s, at, 1).ok())
        else {
            self.s = "";
            return Some((
                s,
                Err(malformed(format!(
                    "expected key=value, found {:?}",
                    s.chars().take(40).collect::<String>()
                ))),
            ));
        };
        if let Some(body) = rest.strip_prefix('"') {
            let bytes = body.as_bytes();
            let mut i = 0usize;
            let mut escaped = false;
            // Jumps from one `\` or `"` to the next; a `\` also skips the byte it escapes.
            while let Some(at) = bytes.get(i..).and_then(|rest| memchr::memchr2(b'\\', b'"', rest)) {
                i = i.saturating_add(at);
                if bytes.get(i) == Some(&b'"') {
                    break;
                }
                escaped = true;
                i = i.saturating_add(2);
            }
            if i < bytes.len() && bytes.get(i) != Some(&b'"') {
                i = bytes.len();
            }
            // The closing quote is ASCII, so both sides of it are character boundaries.
            let (Some(raw), Some(after)) = (body.get(..i), body.get(i.saturating_add(1)..)) else {
                self.s = "";
                return Some((key, Err(malformed(format!("unterminated quoted value for {key}")))));
            };
            self.s = after;
            let value = if escaped {
                Cow::Owned(unescape(raw))
            } else {
                Cow::Borrowed(raw)
            };
            Some((key, Ok(value)))
        } else {
            let end = memchr::memchr2(b' ', b'\t', rest.as_bytes()).unwrap_or(rest.len());
            let (value, after) = rest.split_at_checked(end).unwrap_or((rest, ""));
            self.s = after;
            Some((key, Ok(Cow::Borrowed(value))))
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("15ms"), Some(15.0));
        assert_eq!(parse_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(parse_duration_ms("250µs"), Some(0.25));
        assert_eq!(parse_duration_ms("abc"), None);
        assert_eq!(parse_duration_ms("99999999999s"), None);
    }

    #[test]
    fn escaped_values_and_errors() {
        let line = "2024-05-04T09:59:05.028709Z\terror\taccess\tconnection complete\tsrc.addr=10.0.0.1:1 dst.addr=10.0.0.2:80 direction=\"inbound\" error=\"connection closed due to policy rejection: explicitly denied by: pay/deny-\\\"x\\\"\"";
        let (ev, _) = parse_text(line).expect("parse");
        assert_eq!(
            ev.connection_termination_details.as_deref(),
            Some("connection closed due to policy rejection: explicitly denied by: pay/deny-\"x\"")
        );
        assert!(
            parse_text("2024-05-04T09:59:05Z\tinfo\taccess\tconnection complete\tsrc.addr=\"unterminated").is_err()
        );
        assert!(parse_text("2024-05-04T09:59:05Z\tinfo\taccess\tconnection complete\tduration=\"forever\"").is_err());
    }

    /// The pairs as a plain character-by-character reading finds them: the reference the
    /// byte searches of [`KvPairs`] must agree with.
    fn reference_pairs(mut s: &str) -> Vec<(&str, Result<Cow<'_, str>, Rejection>)> {
        let mut out = Vec::new();
        loop {
            let t = s.trim_start_matches([' ', '\t']);
            if t.is_empty() {
                return out;
            }
            let Some((key, rest)) = t.split_once('=') else {
                let detail = format!("expected key=value, found {:?}", t.chars().take(40).collect::<String>());
                out.push((t, Err(malformed(detail))));
                return out;
            };
            if let Some(body) = rest.strip_prefix('"') {
                let mut chars = body.char_indices();
                let mut escaped = false;
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            escaped = true;
                            chars.next();
                        }
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    out.push((key, Err(malformed(format!("unterminated quoted value for {key}")))));
                    return out;
                };
                let raw = &body[..end];
                s = &body[end + 1..];
                out.push((
                    key,
                    Ok(if escaped {
                        Cow::Owned(unescape(raw))
                    } else {
                        Cow::Borrowed(raw)
                    }),
                ));
            } else {
                let end = rest.find([' ', '\t']).unwrap_or(rest.len());
                out.push((key, Ok(Cow::Borrowed(&rest[..end]))));
                s = &rest[end..];
            }
        }
    }

    proptest::proptest! {
        /// On any text of keys, `=`, quotes, escapes, spaces, tabs and multi-byte characters,
        /// the pairs are the reference reading's, errors included.
        #[test]
        fn pairs_are_the_reference_readings(s in "[ab=\"\\\\ \té]{0,30}") {
            let got: Vec<_> = KvPairs { s: &s }.collect();
            proptest::prop_assert_eq!(got, reference_pairs(&s));
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod char_boundary_tests {
    #[test]
    fn a_multibyte_character_at_the_cut_is_not_a_panic() {
        let line = "2024-05-01T10:00:00.000000Z ifo access connection complete sr\u{1F600}c.addr=10.0.0.1:1";
        assert_eq!(line.find('\u{1F600}'), Some(61), "the cut at 64 falls inside it");
        assert!(super::looks_like_ztunnel(line));
        assert!(!super::looks_like_ztunnel("\u{20AC}"));
    }
}
