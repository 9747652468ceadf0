//! The signature every Verity webhook carries (alerts and revocations): `X-Verity-Timestamp`
//! holds Unix seconds and `X-Verity-Signature` is
//! `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, so a receiver can check both
//! origin and freshness.

pub const TIMESTAMP_HEADER: &str = "X-Verity-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Verity-Signature";

/// `req` with the `X-Verity-Timestamp` header of now and, with a secret, the
/// `X-Verity-Signature` over `body`: the signing every Verity webhook (alerts, revocations)
/// uses.
pub fn signed(
    req: reqwest::RequestBuilder,
    secret: Option<&crate::Secret>,
    body: &[u8],
) -> Result<reqwest::RequestBuilder, crate::SecretError> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = req.header(TIMESTAMP_HEADER, ts.to_string());
    Ok(match secret {
        Some(s) => req.header(SIGNATURE_HEADER, signature(s.value()?.as_bytes(), ts, body)),
        None => req,
    })
}

/// The signature header value for a body sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2 shape, with our "<ts>.<body>" message: key "Jefe".
        let s = super::signature(b"Jefe", 1, b"x");
        assert!(s.starts_with("sha256="));
        assert_eq!(s.len(), 7 + 64);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"1.x");
        assert_eq!(s, format!("sha256={}", hex::encode(tag.as_ref())));
    }
}
