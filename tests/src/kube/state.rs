//! The server's state: stored objects with their field managers and the state shared behind one
//! lock, and small helpers (random bytes, timestamps, API versions and names).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::schema::Schemas;
use super::{GROUP, KubeRequest, PLURAL, Rejection, STORAGE_VERSION, VERSIONS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

pub(super) type ManagerKey = (String, Operation);
/// A field path: the keys from the root.
pub(super) type FieldPath = Vec<String>;

/// What one field manager owns: its configuration (labels, annotations and spec), whose leaves
/// are the fields it owns.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    pub(super) api_version: String,
    pub(super) time: String,
    pub(super) config: Value,
}

#[derive(Clone, Debug)]
pub(super) struct Object {
    pub(super) owners: BTreeMap<ManagerKey, Owner>,
    /// As stored (storage version).
    pub(super) live: Value,
    pub(super) first_seen: Instant,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) objects: BTreeMap<(String, String), Object>,
    pub(super) namespaces: BTreeSet<String>,
    pub(super) resource_version: u64,
    pub(super) faults: VecDeque<u16>,
    pub(super) forbidden: bool,
    pub(super) delay: Duration,
    pub(super) requests: Vec<KubeRequest>,
    pub(super) rejections: Vec<Rejection>,
    pub(super) validated: u64,
    pub(super) cel_skipped: u64,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    /// Bumped (and `changed` notified) whenever the state may have changed.
    pub(super) epoch: Mutex<u64>,
    pub(super) changed: Condvar,
    pub(super) token: String,
    pub(super) schemas: Option<Schemas>,
    pub(super) down: tokio::sync::watch::Sender<bool>,
    pub(super) listening: AtomicBool,
    /// Connections being served; going down waits until they are all dropped.
    pub(super) open: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn touch(&self) {
        let mut e = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        *e += 1;
        self.changed.notify_all();
    }
}

pub(super) fn random<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = ((seed >> ((i % 16) * 8)) as u8) ^ (i as u8);
        }
    }
    b
}

/// Now, in RFC 3339 with whole seconds, as the apiserver writes timestamps.
pub(super) fn now_rfc3339() -> String {
    let ns = verity_model::time::now_ns();
    let s = verity_model::time::format_rfc3339_ns(ns - ns.rem_euclid(1_000_000_000));
    match s.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => s,
    }
}

pub(super) fn api_version(version: &str) -> String {
    format!("{GROUP}/{version}")
}

/// `authorizationpolicies.security.istio.io`.
pub(super) fn resource_name() -> String {
    format!("{PLURAL}.{GROUP}")
}

/// A string quoted as Go's `%q` would for the strings met here.
pub(super) fn quote(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The version an object names (`security.istio.io/<v>`), else the storage version.
pub(super) fn version_of(object: &Value) -> String {
    object["apiVersion"]
        .as_str()
        .and_then(|v| v.strip_prefix(GROUP))
        .and_then(|v| v.strip_prefix('/'))
        .filter(|v| VERSIONS.contains(v))
        .unwrap_or(STORAGE_VERSION)
        .to_string()
}
