//! The configuration as Verity prints it (the startup log, `verity validate --print`): values
//! under credential-like keys and the userinfo and query of URLs are replaced by `<redacted>`.
//! Secrets configured properly (`{env|file}`) only ever print as references.

/// What a credential prints as.
const REDACTED: &str = "<redacted>";

/// Key fragments (lower case) whose string values are credentials: header names such as
/// `Authorization`, librdkafka properties such as `sasl.password` or `ssl.key.pem`.
const SECRET_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "apikey",
    "api-key",
    "credential",
    "cookie",
    "private",
    // Header names such as X-Auth-Key or Ocp-Apim-Subscription-Key.
    "-key",
    "x-auth",
    "key.pem",
    "sasl.jaas.config",
    "sasl.oauthbearer.config",
];

impl crate::config::Config {
    /// The configuration as Verity prints it (the startup log, `verity validate --print`):
    /// string values under credential-like keys and the userinfo of URLs are replaced by
    /// `<redacted>`. Secrets configured properly (`{env|file}`) only ever print as references.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        redact(&mut v, false);
        v
    }
}

fn redact(v: &mut serde_json::Value, secret_key: bool) {
    match v {
        serde_json::Value::String(s) => {
            if secret_key {
                *s = REDACTED.to_string();
            } else if let Some(clean) = redact_url(s) {
                *s = clean;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|i| redact(i, secret_key)),
        serde_json::Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                redact(child, SECRET_KEY_PARTS.iter().any(|part| k.contains(part)));
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host/path?sig=…` → `scheme://<redacted>@host/path?<redacted>`: the
/// userinfo and the query (signed URLs carry their credential there) go; None when the URL
/// has neither.
fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path_and_query) = rest.split_at_checked(authority_end)?;
    let (userinfo, host) = match authority.rfind('@') {
        Some(at) => (true, authority.get(at.saturating_add(1)..)?),
        None => (false, authority),
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, _)) => (path, true),
        None => (path_and_query, false),
    };
    if !userinfo && !query {
        return None;
    }
    let user = if userinfo {
        format!("{REDACTED}@")
    } else {
        String::new()
    };
    let query = if query { format!("?{REDACTED}") } else { String::new() };
    Some(format!("{scheme}://{user}{host}{path}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_url_userinfo_are_redacted() {
        let mut v = serde_json::json!({
            "kafka": {"properties": {"sasl.password": "hunter2", "ssl.key.pem": "-----BEGIN", "bootstrap.servers": "k:9092"}},
            "outputs": {"hook": {"url": "https://bob:hunter3@siem.example/hook?x=1", "headers": {"Authorization": "Bearer abc", "X-Team": "secops"}}},
            "admin": {"token": {"env": "ADMIN_TOKEN"}},
        });
        redact(&mut v, false);
        let text = v.to_string();
        for secret in ["hunter2", "hunter3", "BEGIN", "Bearer abc", "bob"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        for kept in ["k:9092", "secops", "ADMIN_TOKEN", "siem.example/hook?<redacted>"] {
            assert!(text.contains(kept), "{kept} lost: {text}");
        }
        assert_eq!(redact_url("http://host/a@b"), None);
        assert_eq!(redact_url("not a url"), None);
        assert_eq!(
            redact_url("https://hooks.example/x?sig=abc&se=1").as_deref(),
            Some("https://hooks.example/x?<redacted>")
        );
    }
}
