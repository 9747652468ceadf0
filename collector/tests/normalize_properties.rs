//! Properties of normalization over generated input: whatever the bytes, a record becomes an
//! event or a rejection (never a panic, which the record boundary would report as
//! `internal_error`), and a line rendered from an event's key fields normalizes back to them.

use proptest::prelude::*;
use verity_collector::normalize::{self, Ctx, FormatHint, RejectReason};
use verity_model::event::IngestSource;

const HINTS: [FormatHint; 4] = [
    FormatHint::Auto,
    FormatHint::EnvoyText,
    FormatHint::EnvoyJson,
    FormatHint::Ztunnel,
];

/// Real layouts to mutate: Istio TEXT, Istio JSON, ztunnel plain.
const SEEDS: [&str; 3] = [
    r#"[2024-03-01T10:00:00.000Z] "GET /a?b=€ HTTP/1.1" 200 - via_upstream - "-" 0 1 1 1 "-" "ua" "id-1" "web:80" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#,
    r#"{"start_time":"2024-05-01T10:00:01.000Z","method":"GET","path":"/internal","protocol":"HTTP/1.1","response_code":403,"response_code_details":"rbac_access_denied_matched_policy[ns[pay]-policy[deny]-rule[0]]","downstream_peer_uri_san":"spiffe://cluster.local/ns/shop/sa/cart"}"#,
    r#"2024-05-01T10:00:00.000000Z	info	access	connection complete	src.addr=10.0.0.2:5000 src.workload="cart" src.identity="spiffe://cluster.local/ns/shop/sa/cart" dst.addr=10.0.0.1:8080 dst.identity="spiffe://cluster.local/ns/pay/sa/pay" direction="inbound" bytes_sent=10 bytes_recv=20 duration="3ms""#,
];

fn no_internal_error(line: &str) -> Result<(), TestCaseError> {
    let ctx = Ctx::now(IngestSource::File);
    for hint in HINTS {
        if let Err(r) = normalize::normalize_line(line, hint, &ctx) {
            prop_assert_ne!(r.reason, RejectReason::InternalError, "{}: {:?}", r.detail, line);
        }
    }
    Ok(())
}

/// A seed with a piece cut out, a piece inserted and its end cut off, at character
/// boundaries chosen by the generator.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..SEEDS.len(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        ".{0,12}",
        any::<prop::sample::Index>(),
    )
        .prop_map(|(seed, cut_at, insert_at, insert, end)| {
            let chars: Vec<char> = SEEDS[seed].chars().collect();
            let mut v = chars.clone();
            let i = cut_at.index(v.len());
            v.drain(i..(i + 3).min(v.len()));
            let j = insert_at.index(v.len() + 1);
            for (k, c) in insert.chars().enumerate() {
                v.insert(j + k, c);
            }
            let e = end.index(v.len() + 1);
            v.truncate(e.max(v.len() / 2));
            v.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        // Failures are reported with their minimal input; nothing is written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_text_is_an_event_or_a_rejection(line in "\\PC{0,300}") {
        no_internal_error(&line)?;
    }

    #[test]
    fn mutated_real_lines_are_an_event_or_a_rejection(line in mutated()) {
        no_internal_error(&line)?;
    }

    #[test]
    fn an_istio_text_line_round_trips_its_key_fields(
        method in "(GET|POST|PUT|DELETE)",
        path in "/[a-z0-9/._-]{0,30}",
        status in 100i32..600,
        received in 0i64..1_000_000_000,
        sent in 0i64..1_000_000_000,
        duration in 0i64..100_000,
        // A lone `-` is Envoy's "no value", so values start with a letter or digit.
        agent in "[A-Za-z][A-Za-z0-9/. ()-]{0,39}",
        request_id in "[a-f0-9][a-f0-9-]{0,35}",
        authority in "[a-z]{1,10}\\.[a-z]{1,10}:[0-9]{2,4}",
        millis in 0i64..1000,
    ) {
        let line = format!(
            r#"[2024-03-01T10:00:00.{millis:03}Z] "{method} {path} HTTP/1.1" {status} - via_upstream - "-" {received} {sent} {duration} 1 "-" "{agent}" "{request_id}" "{authority}" "10.0.0.1:80" inbound|80|| 127.0.0.6:1 10.0.0.1:80 10.0.0.2:2 - default"#
        );
        let ev = normalize::normalize_line(&line, FormatHint::Auto, &Ctx::now(IngestSource::File))
            .map_err(|r| TestCaseError::fail(format!("{r}: {line}")))?;
        prop_assert_eq!(ev.method.as_deref(), Some(method.as_str()));
        prop_assert_eq!(ev.path.as_deref(), Some(path.as_str()));
        prop_assert_eq!(ev.status, Some(status));
        prop_assert_eq!(ev.bytes_received, Some(received));
        prop_assert_eq!(ev.bytes_sent, Some(sent));
        prop_assert_eq!(ev.duration_ms, Some(duration as f64));
        prop_assert_eq!(ev.user_agent.as_deref(), Some(agent.as_str()));
        prop_assert_eq!(ev.request_id.as_deref(), Some(request_id.as_str()));
        prop_assert_eq!(ev.authority.as_deref(), Some(authority.as_str()));
        prop_assert_eq!(ev.event_time_ns, 1_709_287_200_000_000_000 + millis * 1_000_000);
    }

    #[test]
    fn a_json_line_round_trips_its_key_fields(
        method in "(GET|POST|PUT|DELETE)",
        path in "/[a-z0-9/._-]{0,30}",
        status in 100i32..600,
        principal in "spiffe://cluster\\.local/ns/[a-z]{1,8}/sa/[a-z]{1,8}",
    ) {
        let line = serde_json::json!({
            "start_time": "2024-05-01T10:00:01.000Z",
            "method": method,
            "path": path,
            "response_code": status,
            "upstream_cluster": "inbound|8080||",
            "downstream_peer_uri_san": principal,
        })
        .to_string();
        let ev = normalize::normalize_line(&line, FormatHint::Auto, &Ctx::now(IngestSource::File))
            .map_err(|r| TestCaseError::fail(format!("{r}: {line}")))?;
        prop_assert_eq!(ev.method.as_deref(), Some(method.as_str()));
        prop_assert_eq!(ev.path.as_deref(), Some(path.as_str()));
        prop_assert_eq!(ev.status, Some(status));
        prop_assert_eq!(ev.source_principal.as_deref(), Some(principal.as_str()));
    }
}
