//! Canaries: sidecar lines the built-in rule `zt-path-traversal` raises an alert for, each one
//! told apart from every other line by a token, `canary-<request number>`, so the alert it
//! raises can be traced back to the moment it was sent.
//!
//! The rule groups by source address and destination service and suppresses a group's repeats
//! for ten minutes, so every canary comes from a source address of its own (counted through
//! 198.18.0.0/15, the benchmarking range) and goes to a destination service named after its
//! token. Every variable part has a fixed width, so all canaries have the same length and can
//! be written over a placeholder in an encoded request (see `request_pool`).

use std::net::{Ipv4Addr, SocketAddrV4};

use verity_bench::mesh_traffic::SidecarRequest;

use crate::request_pool::{NUMBER_MODULUS, NUMBER_WIDTH};

const TOKEN_PREFIX: &str = "canary-";

/// `canary-<number>`, the number in [`NUMBER_WIDTH`] digits.
pub(crate) fn token(number: u64) -> String {
    format!(
        "{TOKEN_PREFIX}{:0width$}",
        number % NUMBER_MODULUS,
        width = NUMBER_WIDTH
    )
}

/// The source of the `index`th canary: 198.18.100.100 to 198.19.249.249 with every octet of
/// three digits (45,000 addresses before they repeat), port 40000 to 59999.
pub(crate) fn source(index: u64) -> SocketAddrV4 {
    let i = index % (2 * 150 * 150);
    let octet = |v: u64| u8::try_from(v).unwrap_or(u8::MAX);
    SocketAddrV4::new(
        Ipv4Addr::new(
            198,
            octet(18 + i / 22_500),
            octet(100 + i / 150 % 150),
            octet(100 + i % 150),
        ),
        u16::try_from(40_000 + index % 20_000).unwrap_or(u16::MAX),
    )
}

/// The canary line of request `number`, the `index`th canary, at event time `time`: an inbound
/// `GET /canary-<number>/../../etc/passwd` to the service `canary-<number>.loadgen`.
pub(crate) fn line(time: &str, number: u64, index: u64) -> String {
    let token = token(number);
    SidecarRequest {
        time,
        method: "GET",
        path: &format!("/{token}/../../etc/passwd"),
        status: 404,
        response_details: "via_upstream",
        bytes_sent: 19,
        duration_ms: 1,
        user_agent: "curl/8.4.0",
        request_id: &token,
        service: &format!("{token}.loadgen"),
        source: source(index),
        destination: Ipv4Addr::new(10, 3, 0, 1),
        reached_upstream: true,
    }
    .to_string()
}

/// The request number in the first canary token in `text`, if any.
pub(crate) fn number_in(text: &str) -> Option<u64> {
    text.match_indices(TOKEN_PREFIX).find_map(|(at, _)| {
        let digits = text.get(at + TOKEN_PREFIX.len()..at + TOKEN_PREFIX.len() + NUMBER_WIDTH)?;
        if digits.bytes().all(|b| b.is_ascii_digit()) {
            digits.parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_bench::mesh_traffic::{TIMESTAMP_LEN, rfc3339};

    #[test]
    fn every_canary_has_the_same_length_and_its_own_source_and_service() {
        let time = rfc3339(1_714_557_600 * 1_000_000_000);
        let first = line(&time, 0, 0);
        assert_eq!(
            first,
            r#"[2024-05-01T10:00:00.000000Z] "GET /canary-0000000000000000/../../etc/passwd HTTP/1.1" 404 - via_upstream - "-" 0 19 1 1 "-" "curl/8.4.0" "canary-0000000000000000" "canary-0000000000000000.loadgen:8080" "10.3.0.1:8080" inbound|8080|| 127.0.0.6:40000 10.3.0.1:8080 198.18.100.100:40000 outbound_.8080_._.canary-0000000000000000.loadgen.svc.cluster.local default"#
        );
        let mut sources = std::collections::HashSet::new();
        for index in (0..45_000).step_by(7).chain([44_999, 45_000, u64::MAX]) {
            let number = index.wrapping_mul(1_000_003);
            let l = line(&rfc3339(i64::MAX / 2), number, index);
            assert_eq!(l.len(), first.len(), "{l}");
            assert_eq!(number_in(&l), Some(number % NUMBER_MODULUS));
            if index < 45_000 {
                assert!(sources.insert(*source(index).ip()), "{index}");
            }
        }
        assert_eq!(rfc3339(i64::MAX / 2).len(), TIMESTAMP_LEN);
    }

    #[test]
    fn finds_the_token_in_evidence() {
        assert_eq!(number_in("GET /canary-0000001234567890/../x"), Some(1_234_567_890));
        assert_eq!(number_in("canary-12 then canary-0000000000000007"), Some(7));
        assert_eq!(number_in("/canary-00000000000000"), None);
        assert_eq!(number_in("GET /api/v1/items/3"), None);
    }
}
