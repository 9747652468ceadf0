//! Signatures on the messages instances send each other (repartitioned rows, shared
//! revocations), with `kafka.repartition.signing_key`: HMAC-SHA256 over the topic name and the
//! payload, in the header [`HEADER`]. A reader with the key refuses a message without a valid
//! signature as poison, so a client that can write these topics but does not hold the key
//! (a compromised workload with a leaked Kafka credential) cannot forge rows or revocations.
//! Naming the topic in the signature keeps a message from being replayed into another topic.

use rdkafka::message::{Headers, OwnedHeaders};
use ring::hmac;

/// The header carrying the hex signature.
pub const HEADER: &str = "verity-signature";

/// Why a message's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("message is not signed (kafka.repartition.signing_key is set)")]
    Missing,
    #[error("message signature does not verify")]
    Invalid,
}

/// The deployment's shared signing key.
pub struct MessageKey(hmac::Key);

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(redacted)")
    }
}

impl MessageKey {
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, topic: &str, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(topic.as_bytes());
        ctx.update(&[0]);
        ctx.update(payload);
        ctx.sign()
    }

    /// The signature header for `payload` in `topic`.
    pub fn sign(&self, topic: &str, payload: &[u8]) -> OwnedHeaders {
        let hex = hex_of(self.tag(topic, payload).as_ref());
        OwnedHeaders::new().insert(rdkafka::message::Header {
            key: HEADER,
            value: Some(hex.as_bytes()),
        })
    }

    /// Checks the signature among `headers` (in constant time).
    pub fn verify<H: Headers>(&self, topic: &str, payload: &[u8], headers: Option<&H>) -> Result<(), SignatureError> {
        let value = headers
            .and_then(|h| h.iter().find(|h| h.key == HEADER))
            .and_then(|h| h.value)
            .ok_or(SignatureError::Missing)?;
        let given = bytes_of_hex(value).ok_or(SignatureError::Invalid)?;
        let expected = self.tag(topic, payload);
        let expected = expected.as_ref();
        // Constant time: every byte is compared whatever the first difference.
        let differ =
            given.len() != expected.len() || given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0;
        if differ { Err(SignatureError::Invalid) } else { Ok(()) }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn bytes_of_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 {
        return None;
    }
    hex.chunks_exact(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_messages_verify_and_anything_else_is_refused() {
        let key = MessageKey::new(b"deployment secret");
        let headers = key.sign("app-repartition-a", b"rows");
        assert_eq!(key.verify("app-repartition-a", b"rows", Some(&headers)), Ok(()));
        assert_eq!(
            key.verify("app-repartition-a", b"rowz", Some(&headers)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key.verify("app-repartition-b", b"rows", Some(&headers)),
            Err(SignatureError::Invalid),
            "not replayable into another topic"
        );
        let other = MessageKey::new(b"another secret");
        assert_eq!(
            other.verify("app-repartition-a", b"rows", Some(&headers)),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            key.verify::<OwnedHeaders>("app-repartition-a", b"rows", None),
            Err(SignatureError::Missing)
        );
        for junk in [&b"zz"[..], b"abc", &[b'a'; 200]] {
            let h = OwnedHeaders::new().insert(rdkafka::message::Header {
                key: HEADER,
                value: Some(junk),
            });
            assert_eq!(
                key.verify("app-repartition-a", b"rows", Some(&h)),
                Err(SignatureError::Invalid)
            );
        }
    }
}
