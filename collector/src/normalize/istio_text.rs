//! Envoy text access logs: Istio's default TEXT layout (1.9+), the pre-1.9 layout, and plain
//! Envoy's default format.
//!
//! Envoy does not escape `"` inside quoted values, so a user agent can contain quotes. The
//! parser therefore reads the fields before the user agent from the left and the fields after
//! it from the right; whatever is in between is the user agent, quotes and all.

use std::borrow::Cow;

use memchr::memchr;
use verity_model::time::parse_rfc3339_ns;
use verity_model::{AccessEvent, InputFormat};

use super::fields::{count, duration_ms, opt, status};
use super::split_around;
use super::{Extras, RejectReason, Rejection};

fn malformed(what: &str) -> Rejection {
    Rejection::new(RejectReason::MalformedText, what.to_string())
}

/// Reads space-separated tokens from the left of `s`; quoted tokens may contain spaces.
struct Left<'a> {
    s: &'a str,
}

impl<'a> Left<'a> {
    fn next(&mut self, quoted: bool) -> Result<&'a str, Rejection> {
        let s = self.s.trim_start_matches(' ');
        if quoted {
            let inner = s
                .strip_prefix('"')
                .ok_or_else(|| malformed("expected a quoted field"))?;
            let end = memchr(b'"', inner.as_bytes()).ok_or_else(|| malformed("unterminated quoted field"))?;
            let (field, rest) = split_around(inner, end, 1)?;
            self.s = rest;
            Ok(field)
        } else {
            let end = memchr(b' ', s.as_bytes()).unwrap_or(s.len());
            if end == 0 {
                return Err(malformed("missing field"));
            }
            let (field, rest) = split_around(s, end, 0)?;
            self.s = rest;
            Ok(field)
        }
    }
}

/// Reads tokens from the right end of `s`.
struct Right<'a> {
    s: &'a str,
}

impl<'a> Right<'a> {
    fn next(&mut self, quoted: bool) -> Result<&'a str, Rejection> {
        let s = self.s.trim_end_matches(' ');
        if quoted {
            let inner = s
                .strip_suffix('"')
                .ok_or_else(|| malformed("expected a quoted field at the end"))?;
            let start = last_space_quote(inner).ok_or_else(|| malformed("unterminated quoted field"))?;
            let (rest, field) = split_around(inner, start, 2)?;
            self.s = rest;
            Ok(field)
        } else {
            let start = memchr::memrchr(b' ', s.as_bytes()).ok_or_else(|| malformed("missing field"))?;
            let (rest, field) = split_around(s, start, 1)?;
            self.s = rest;
            Ok(field)
        }
    }
}

/// Where the last `" "` + `'"'` pair of `s` starts: the opening of the last quoted field. Found
/// from the quotes backwards (a line has a few dozen), not with a substring searcher built
/// for each field.
fn last_space_quote(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    memchr::memrchr_iter(b'"', b)
        .filter_map(|q| q.checked_sub(1))
        .find(|before| b.get(*before) == Some(&b' '))
}

/// How many space-separated fields `s` holds (runs of spaces count as one separator), as
/// `s.split(' ').filter(|t| !t.is_empty()).count()` counts them: the first byte if it is not
/// a space, and every space followed by something else. Spaces are found with `memchr`
/// (a line has a few dozen of them), not by looking at every byte pair.
fn count_fields(s: &str) -> usize {
    let b = s.as_bytes();
    let first = usize::from(b.first().is_some_and(|c| *c != b' '));
    let after_a_space = memchr::memchr_iter(b' ', b)
        .filter(|at| b.get(at.saturating_add(1)).is_some_and(|c| *c != b' '))
        .count();
    first.saturating_add(after_a_space)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Istio,
    IstioPre19,
    EnvoyDefault,
}

pub fn parse(line: &str) -> Result<(AccessEvent<'_>, Extras<'_>), Rejection> {
    let rest = line
        .strip_prefix('[')
        .ok_or_else(|| malformed("expected [START_TIME]"))?;
    let close = memchr(b']', rest.as_bytes()).ok_or_else(|| malformed("unterminated [START_TIME]"))?;
    let (time, after_time) = split_around(rest, close, 1)?;
    let event_time_ns = parse_rfc3339_ns(time).ok_or_else(|| {
        Rejection::new(
            RejectReason::InvalidTimestamp,
            format!(
                "start time {:?} is not RFC 3339",
                time.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let rest = after_time
        .strip_prefix(" \"")
        .ok_or_else(|| malformed("expected a quoted request line after the start time"))?;
    // The request line ends at the first `" ` followed by the numeric response code.
    let bytes = rest.as_bytes();
    let mut req_end = None;
    let mut from = 0;
    while let Some(i) = bytes.get(from..).and_then(|b| memchr(b'"', b)) {
        let at = from.saturating_add(i);
        if bytes.get(at.saturating_add(1)) == Some(&b' ')
            && bytes.get(at.saturating_add(2)).is_some_and(u8::is_ascii_digit)
        {
            req_end = Some(at);
            break;
        }
        from = at.saturating_add(1);
    }
    let req_end = req_end.ok_or_else(|| malformed("unterminated request line"))?;
    let (request, tail) = split_around(rest, req_end, 2)?;

    let mut ev = AccessEvent {
        event_time_ns,
        raw: Cow::Borrowed(line),
        ..Default::default()
    };
    let mut ex = Extras::default();

    let (method, after_method) = request.split_once(' ').unwrap_or((request, ""));
    let (path, protocol) = after_method.rsplit_once(' ').unwrap_or((after_method, ""));
    ev.method = opt(method);
    ev.path = opt(path);
    ev.protocol = opt(protocol);
    if ev.method.is_none() && ev.path.is_none() && ev.protocol.is_none() {
        ev.protocol = Some(Cow::Borrowed("TCP"));
    }

    // Layout: the 5th field after the request is quoted only in the 1.9+ Istio layout; the
    // Envoy default format ends with a quoted upstream host while Istio ends with a route.
    let mut left = Left { s: tail };
    let layout = {
        let mut probe = tail.split(' ');
        match probe.nth(4) {
            Some(f) if f.starts_with('"') => Layout::Istio,
            _ if tail.trim_end().ends_with('"') => Layout::EnvoyDefault,
            _ => Layout::IstioPre19,
        }
    };
    let (min_fields, name) = match layout {
        Layout::Istio => (20, "Istio"),
        Layout::IstioPre19 => (17, "pre-1.9 Istio"),
        Layout::EnvoyDefault => (11, "Envoy default"),
    };
    let found = count_fields(tail);
    if found < min_fields {
        return Err(malformed(&format!(
            "{name} layout needs {min_fields} fields after the request line, found {found} (truncated?)"
        )));
    }
    ev.format = match layout {
        Layout::Istio => InputFormat::IstioText,
        Layout::IstioPre19 => InputFormat::IstioTextPre19,
        Layout::EnvoyDefault => InputFormat::EnvoyDefault,
    };

    ev.status = status("response_code", left.next(false)?)?;
    ev.response_flags = opt(left.next(false)?);
    if layout == Layout::Istio {
        ev.response_code_details = opt(left.next(false)?);
        ev.connection_termination_details = opt(left.next(false)?);
        ev.upstream_transport_failure_reason = opt(left.next(true)?);
    }
    ev.bytes_received = count("bytes_received", left.next(false)?)?;
    ev.bytes_sent = count("bytes_sent", left.next(false)?)?;
    ev.duration_ms = duration_ms("duration", left.next(false)?)?;
    let _upstream_service_time = left.next(false)?;
    ev.x_forwarded_for = opt(left.next(true)?);

    let mut right = Right { s: left.s };
    if layout != Layout::EnvoyDefault {
        ev.route_name = opt(right.next(false)?);
        ev.requested_server_name = opt(right.next(false)?);
        ex.downstream_remote_address = opt(right.next(false)?);
        ex.downstream_local_address = opt(right.next(false)?);
        let _upstream_local = right.next(false)?;
        ev.upstream_cluster = opt(right.next(false)?);
    }
    ev.upstream_host = opt(right.next(true)?);
    ev.authority = opt(right.next(true)?);
    ev.request_id = opt(right.next(true)?);
    let ua = right.s.trim_matches(' ');
    let ua = ua
        .strip_prefix('"')
        .and_then(|u| u.strip_suffix('"'))
        .ok_or_else(|| malformed("expected a quoted user agent"))?;
    ev.user_agent = opt(ua);
    if layout == Layout::EnvoyDefault {
        // Plain Envoy prints the upstream as a URL (`tcp://10.0.2.1:80`).
        if let Some(h) = ev.upstream_host.as_deref().and_then(|h| h.strip_prefix("tcp://")) {
            ev.upstream_host = Some(Cow::Owned(h.to_string()));
        }
    }
    Ok((ev, ex))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use super::*;

    const CURRENT: &str = r#"[2020-11-25T21:26:18.409Z] "GET /status/418 HTTP/1.1" 418 - via_upstream - "-" 0 135 4 4 "-" "curl/7.73.0-DEV" "84961386-6d84-929d-98bd-c5aee93b5c88" "httpbin:8000" "10.44.1.27:80" outbound|8000||httpbin.foo.svc.cluster.local 10.44.1.23:37652 10.0.45.184:8000 10.44.1.23:46520 - default"#;

    #[test]
    fn parses_current_layout() {
        let (ev, ex) = parse(CURRENT).expect("parse");
        assert_eq!(ev.format, InputFormat::IstioText);
        assert_eq!(ev.method.as_deref(), Some("GET"));
        assert_eq!(ev.path.as_deref(), Some("/status/418"));
        assert_eq!(ev.status, Some(418));
        assert_eq!(ev.response_code_details.as_deref(), Some("via_upstream"));
        assert_eq!(ev.user_agent.as_deref(), Some("curl/7.73.0-DEV"));
        assert_eq!(
            ev.upstream_cluster.as_deref(),
            Some("outbound|8000||httpbin.foo.svc.cluster.local")
        );
        assert_eq!(ex.downstream_remote_address.as_deref(), Some("10.44.1.23:46520"));
        assert_eq!(ev.route_name.as_deref(), Some("default"));
        assert_eq!(ev.bytes_sent, Some(135));
    }

    #[test]
    fn user_agent_with_quotes_and_spaces() {
        let line = CURRENT.replace(
            "\"curl/7.73.0-DEV\"",
            r#""Mozilla/5.0 "evil" ${jndi:ldap://x/a} "x" y""#,
        );
        let (ev, _) = parse(&line).expect("parse");
        assert_eq!(
            ev.user_agent.as_deref(),
            Some(r#"Mozilla/5.0 "evil" ${jndi:ldap://x/a} "x" y"#)
        );
        assert_eq!(ev.request_id.as_deref(), Some("84961386-6d84-929d-98bd-c5aee93b5c88"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "[",
            "[2020-11-25T21:26:18.409Z]",
            "[2020-11-25T21:26:18.409Z] \"GET / HTTP/1.1\"",
            "[2020-11-25T21:26:18.409Z] \"GET / HTTP/1.1\" 200",
            "[not a time] \"GET / HTTP/1.1\" 200 - 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"",
            "[2020-11-25T21:26:18.409Z] \"GET / HTTP/1.1\" 99999 - 0 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"",
            "[2020-11-25T21:26:18.409Z] \"GET / HTTP/1.1\" 200 - x 0 0 - \"-\" \"-\" \"-\" \"-\" \"-\"",
            "[2020-11-25T21:26:18.409Z] \"\u{e9}\u{1F600}\" 2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Fields are counted as splitting at every space and dropping empty pieces counts
        /// them, on any text (multi-byte characters and runs of spaces included).
        #[test]
        fn fields_are_counted_as_split_counts_them(s in "[ a\"é\t]{0,40}") {
            proptest::prop_assert_eq!(count_fields(&s), s.split(' ').filter(|t| !t.is_empty()).count());
        }

        /// The last quoted field is found where a substring search for `" "` finds it.
        #[test]
        fn the_last_quoted_field_is_found_as_a_substring_search_finds_it(s in "[ a\"é]{0,40}") {
            proptest::prop_assert_eq!(last_space_quote(&s), s.rfind(" \""));
        }
    }
}
