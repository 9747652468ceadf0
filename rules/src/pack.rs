//! The built-in zero-trust rule pack (`rules/pack/`), embedded in the binary.

use std::path::Path;

use crate::rule::{LoadError, RuleSource};

macro_rules! pack {
    ($($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../pack/", $file)))),+]
    };
}

/// (file name, text) of every rule in the pack.
pub const FILES: &[(&str, &str)] = pack![
    "zt-plaintext-to-mesh.yaml",
    "zt-no-peer-identity.yaml",
    "zt-rbac-denial-burst.yaml",
    "zt-ext-authz-denial-burst.yaml",
    "zt-jwt-failure-burst.yaml",
    "zt-revoked-identity-succeeds.yaml",
    "zt-revoked-user-succeeds.yaml",
    "zt-spiffe-namespace-mismatch.yaml",
    "zt-foreign-trust-domain.yaml",
    "zt-weak-tls.yaml",
    "zt-new-service-edge.yaml",
    "zt-egress-passthrough.yaml",
    "zt-telemetry-stopped.yaml",
    "zt-admin-path-exposed.yaml",
    "zt-log4shell.yaml",
    "zt-path-traversal.yaml",
    "zt-sql-injection.yaml",
    "zt-l4-policy-denial-burst.yaml",
    "zt-telemetry-forgery.yaml",
];

/// Parses the embedded pack.
pub fn sources() -> Result<Vec<RuleSource>, Vec<LoadError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in FILES {
        match RuleSource::parse(&Path::new("builtin").join(name), (*text).to_string()) {
            Ok(s) => out.push(s),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}
