//! Who sent an OTLP request, and whether they may send at all.
//!
//! A sender is identified, in this order, by the SPIFFE ID of a verified client certificate
//! (mutual TLS), by the name of a bearer token (`authorization: Bearer …`, compared in
//! constant time), or by the URI in `x-forwarded-client-cert` when the connection comes from a
//! configured trusted proxy (Verity behind its own Istio sidecar). The header is ignored, and
//! counted, from anywhere else. An identity must then match `otlp.allowed_senders` (if set).
//!
//! Once any method is configured, a request without an identity is refused with
//! UNAUTHENTICATED / 401 unless `otlp.accept_unauthenticated` keeps it (with a null sender
//! and `sender_verified = false`). What an identified sender may report is decided per record
//! by `binding.rs`. Every refusal is counted in
//! `verity_intake_rejected_senders_total{listener, reason}`.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use verity_secret::SecretRef;
use verity_secret::{Secret, SecretError};

use crate::listener::{ListenerName, PeerInfo, SenderRejection};
use crate::metrics::Metrics;

/// `otlp.tokens[]`: a bearer token whose `name` becomes the sender identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub secret: SecretRef,
}

/// `otlp.trusted_proxy`: addresses of the proxy in front of Verity (Istio's sidecar connects
/// to the application from 127.0.0.6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedProxyConfig {
    pub addresses: Vec<IpAddr>,
}

/// The sender of one request, as stamped on its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    /// SPIFFE ID, token name, or None when unauthenticated.
    pub id: Option<Arc<str>>,
    /// Authenticated and allowed. What the sender may report is `binding.rs`'s question.
    pub authenticated: bool,
}

impl Sender {
    /// A configured, already-authenticated sender (a Kafka topic's).
    pub fn configured(id: Option<&str>) -> Self {
        Self {
            id: id.map(Arc::from),
            authenticated: id.is_some(),
        }
    }
}

/// How a refusal is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// 401 / UNAUTHENTICATED: no or bad credentials.
    Unauthenticated,
    /// 403 / PERMISSION_DENIED: authenticated, not allowed.
    PermissionDenied,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub denial: Denial,
    pub reason: SenderRejection,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("otlp.tokens[{index}] ({name}): {source}")]
pub struct TokenError {
    index: usize,
    name: String,
    #[source]
    source: SecretError,
}

/// The sender check of one listener.
pub struct SenderAuth {
    listener: ListenerName,
    tokens: Vec<(String, Secret)>,
    trusted_proxies: Vec<IpAddr>,
    allowed: Vec<String>,
    /// Some method is configured and unauthenticated requests are not accepted.
    required: bool,
    metrics: Metrics,
}

/// The parts of `otlp` that say how senders authenticate.
pub struct SenderPolicy<'a> {
    pub client_certificates: bool,
    pub tokens: &'a [TokenConfig],
    pub trusted_proxy: Option<&'a TrustedProxyConfig>,
    pub allowed_senders: &'a [String],
    pub accept_unauthenticated: bool,
}

impl SenderAuth {
    /// Resolves the token secrets (a missing one fails the start).
    pub fn new(listener: ListenerName, policy: &SenderPolicy<'_>, metrics: Metrics) -> Result<Self, TokenError> {
        let tokens = policy
            .tokens
            .iter()
            .enumerate()
            .map(|(index, t)| {
                Secret::resolve(&t.secret)
                    .map(|s| (t.name.clone(), s))
                    .map_err(|source| TokenError {
                        index,
                        name: t.name.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let configured = policy.client_certificates || !tokens.is_empty() || policy.trusted_proxy.is_some();
        Ok(Self {
            listener,
            tokens,
            trusted_proxies: policy
                .trusted_proxy
                .map(|p| p.addresses.iter().map(IpAddr::to_canonical).collect())
                .unwrap_or_default(),
            allowed: policy.allowed_senders.to_vec(),
            required: configured && !policy.accept_unauthenticated,
            metrics,
        })
    }

    /// Anyone may send; records carry no sender (loopback listeners without authentication).
    pub fn open(listener: ListenerName, metrics: Metrics) -> Self {
        Self {
            listener,
            tokens: Vec::new(),
            trusted_proxies: Vec::new(),
            allowed: Vec::new(),
            required: false,
            metrics,
        }
    }

    fn count(&self, reason: SenderRejection) {
        reason.count(&self.metrics, self.listener);
    }

    fn refuse(&self, denial: Denial, reason: SenderRejection, message: String) -> Refused {
        self.count(reason);
        Refused {
            denial,
            reason,
            message,
        }
    }

    /// Identifies the sender of a request from its connection and headers.
    pub fn authenticate(
        &self,
        peer: &PeerInfo,
        authorization: Option<&[u8]>,
        forwarded_client_cert: Option<&[u8]>,
    ) -> Result<Sender, Refused> {
        let mut id: Option<Arc<str>> = peer.spiffe_id.clone();
        if id.is_none()
            && !self.tokens.is_empty()
            && let Some(header) = authorization
        {
            match self.token_name(header) {
                Some(name) => id = Some(Arc::from(name)),
                None => {
                    return Err(self.refuse(
                        Denial::Unauthenticated,
                        SenderRejection::BadToken,
                        "the bearer token matches no configured token".into(),
                    ));
                }
            }
        }
        if let Some(xfcc) = forwarded_client_cert {
            // On a dual-stack socket 127.0.0.6 arrives as ::ffff:127.0.0.6.
            if !self.trusted_proxies.contains(&peer.remote.ip().to_canonical()) {
                // A client may set the header itself; only the proxy's copy means anything.
                self.count(SenderRejection::XfccUntrustedPeer);
            } else if id.is_none() {
                match std::str::from_utf8(xfcc).ok().and_then(forwarded_spiffe_id) {
                    Some(uri) => id = Some(Arc::from(uri)),
                    None => self.count(SenderRejection::XfccMalformed),
                }
            }
        }
        let Some(id) = id else {
            if self.required {
                return Err(self.refuse(
                    Denial::Unauthenticated,
                    SenderRejection::NoIdentity,
                    "no client identity: present a client certificate, a bearer token, or send through the trusted proxy"
                        .into(),
                ));
            }
            return Ok(Sender::default());
        };
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| verity_model::glob::glob_match(p, &id)) {
            return Err(self.refuse(
                Denial::PermissionDenied,
                SenderRejection::SenderNotAllowed,
                format!("sender {id} is not in otlp.allowed_senders"),
            ));
        }
        Ok(Sender {
            id: Some(id),
            authenticated: true,
        })
    }

    /// The name of the configured token the header carries. Every token is compared, each in
    /// constant time, so timing tells neither the token nor which one matched.
    fn token_name(&self, header: &[u8]) -> Option<&str> {
        let presented = bearer(header)?;
        let mut matched = None;
        for (name, secret) in &self.tokens {
            if secret.matches(presented).unwrap_or(false) && matched.is_none() {
                matched = Some(name.as_str());
            }
        }
        matched
    }
}

/// The SPIFFE ID the nearest proxy put in `x-forwarded-client-cert`: the `URI` of the header's
/// last element only (earlier elements may come from the client), and only if that element
/// has exactly one `spiffe://` URI. Quoted values (`Subject="CN=a,O=b"`) may hold `,` and `;`.
fn forwarded_spiffe_id(xfcc: &str) -> Option<&str> {
    let element = split_unquoted(xfcc, ',').pop()?;
    let mut found = None;
    for pair in split_unquoted(element, ';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("uri") {
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.starts_with("spiffe://") {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    found
}

/// Splits on `sep` outside double quotes (a backslash escapes the next character in quotes).
fn split_unquoted(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(text.get(start..i).unwrap_or_default());
                start = i.saturating_add(c.len_utf8());
            }
            _ => {}
        }
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// The token of an `authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str, spiffe: Option<&str>) -> PeerInfo {
        PeerInfo {
            remote: format!("{ip}:40000").parse().expect("addr"),
            tls: spiffe.is_some(),
            spiffe_id: spiffe.map(Arc::from),
        }
    }

    fn token_file(dir: &tempfile::TempDir, name: &str, value: &str) -> TokenConfig {
        let path = dir.path().join(name);
        std::fs::write(&path, value).expect("write");
        TokenConfig {
            name: name.into(),
            secret: SecretRef {
                env: None,
                file: Some(path),
            },
        }
    }

    #[test]
    fn certificate_token_and_trusted_proxy_identify_the_sender() {
        let dir = tempfile::tempdir().expect("tmp");
        let tokens = vec![token_file(&dir, "otel-collector", "s3cret\n")];
        let proxy = TrustedProxyConfig {
            addresses: vec!["127.0.0.6".parse().expect("ip")],
        };
        let auth = SenderAuth::new(
            ListenerName::OtlpHttp,
            &SenderPolicy {
                client_certificates: true,
                tokens: &tokens,
                trusted_proxy: Some(&proxy),
                allowed_senders: &[],
                accept_unauthenticated: false,
            },
            Metrics::unregistered(),
        )
        .expect("auth");
        let cert = auth
            .authenticate(&peer("10.0.0.1", Some("spiffe://td/ns/a/sa/b")), None, None)
            .expect("cert");
        assert_eq!(cert.id.as_deref(), Some("spiffe://td/ns/a/sa/b"));
        assert!(cert.authenticated);
        let token = auth
            .authenticate(&peer("10.0.0.1", None), Some(b"Bearer s3cret"), None)
            .expect("token");
        assert_eq!(token.id.as_deref(), Some("otel-collector"));
        let bad = auth
            .authenticate(&peer("10.0.0.1", None), Some(b"Bearer s3cre"), None)
            .expect_err("bad token");
        assert_eq!(bad.reason, SenderRejection::BadToken);
        let xfcc = b"By=spiffe://td/ns/verity/sa/verity;Hash=ab;URI=spiffe://td/ns/shop/sa/cart";
        let proxied = auth
            .authenticate(&peer("127.0.0.6", None), None, Some(xfcc))
            .expect("proxied");
        assert_eq!(proxied.id.as_deref(), Some("spiffe://td/ns/shop/sa/cart"));
        // The same header from anywhere else is no identity at all.
        let forged = auth
            .authenticate(&peer("10.0.0.9", None), None, Some(xfcc))
            .expect_err("untrusted xfcc");
        assert_eq!(forged.reason, SenderRejection::NoIdentity);
        assert_eq!(forged.denial, Denial::Unauthenticated);
    }

    #[test]
    fn allowed_senders_and_permissive_mode() {
        let allowed = vec!["spiffe://td/ns/istio-system/*".to_string()];
        let policy = SenderPolicy {
            client_certificates: true,
            tokens: &[],
            trusted_proxy: None,
            allowed_senders: &allowed,
            accept_unauthenticated: true,
        };
        let auth = SenderAuth::new(ListenerName::OtlpGrpc, &policy, Metrics::unregistered()).expect("auth");
        let denied = auth
            .authenticate(&peer("10.0.0.1", Some("spiffe://td/ns/shop/sa/cart")), None, None)
            .expect_err("not allowed");
        assert_eq!(denied.denial, Denial::PermissionDenied);
        let ok = auth
            .authenticate(
                &peer("10.0.0.1", Some("spiffe://td/ns/istio-system/sa/ztunnel")),
                None,
                None,
            )
            .expect("allowed");
        assert!(ok.authenticated);
        let anonymous = auth
            .authenticate(&peer("10.0.0.1", None), None, None)
            .expect("permissive");
        assert_eq!(anonymous, Sender::default());
    }

    #[test]
    fn only_the_nearest_proxys_element_counts() {
        let ours = "URI=spiffe://td/ns/shop/sa/cart";
        assert_eq!(forwarded_spiffe_id(ours), Some("spiffe://td/ns/shop/sa/cart"));
        // Only the last element counts: with an element of its own after a client-supplied one,
        // the proxy's (here without a URI) decides. A proxy that forwards a plaintext client's
        // header untouched (Istio's APPEND_FORWARD under PERMISSIVE mTLS) cannot be trusted at
        // all, which is why the README requires STRICT.
        assert_eq!(
            forwarded_spiffe_id("URI=spiffe://td/ns/pay/sa/admin,By=spiffe://td/ns/v/sa/v;Hash=ab"),
            None
        );
        assert_eq!(
            forwarded_spiffe_id(r#"Hash=ab;Subject="CN=a,O=b;c\"d";URI=spiffe://td/ns/a/sa/b"#),
            Some("spiffe://td/ns/a/sa/b")
        );
        assert_eq!(
            forwarded_spiffe_id("URI=spiffe://a/ns/x/sa/y;URI=spiffe://a/ns/x/sa/z"),
            None
        );
        assert_eq!(forwarded_spiffe_id("URI=https://example.com"), None);
        assert_eq!(forwarded_spiffe_id(""), None);
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(&[0xff, 0xfe]), None);
    }
}
