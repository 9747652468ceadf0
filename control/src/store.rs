//! The durable revocation store: one JSON document with every revocation, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory) on each change, so
//! a crash leaves either the old or the new state, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::{Revocation, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("revocation store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("revocation store {path} is not valid JSON: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("no revocation {0}")]
    NotFound(String),
}

/// Told of every revocation the store has just written (to share it with other instances).
pub type Feed = std::sync::Arc<dyn Fn(&Revocation) + Send + Sync>;

pub struct Store {
    path: PathBuf,
    items: Mutex<BTreeMap<String, Revocation>>,
    feed: Option<Feed>,
}

impl Store {
    /// Opens the store at `path`, creating it empty if absent.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        };
        let items = match std::fs::read(path) {
            Ok(bytes) => {
                let list: Vec<Revocation> = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                list.into_iter().map(|r| (r.id.clone(), r)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            items: Mutex::new(items),
            feed: None,
        })
    }

    /// From now on, every revocation written is also handed to `feed`, after it is durable.
    pub fn set_feed(&mut self, feed: Feed) {
        self.feed = Some(feed);
    }

    fn fed(&self, r: &Revocation) {
        if let Some(feed) = &self.feed {
            feed(r);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Revocation>> {
        match self.items.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn persist(&self, items: &BTreeMap<String, Revocation>) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        let list: Vec<&Revocation> = items.values().collect();
        let bytes = serde_json::to_vec_pretty(&list).map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).and_then(|()| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Inserts or replaces a revocation, durably.
    pub fn put(&self, r: Revocation) -> Result<(), StoreError> {
        let mut items = self.lock();
        items.insert(r.id.clone(), r.clone());
        self.persist(&items)?;
        self.fed(&r);
        Ok(())
    }

    /// Changes one revocation, durably; returns the new value.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Revocation)) -> Result<Revocation, StoreError> {
        let mut items = self.lock();
        let r = items.get_mut(id).ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        f(r);
        let out = r.clone();
        self.persist(&items)?;
        self.fed(&out);
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Option<Revocation> {
        self.lock().get(id).cloned()
    }

    pub fn list(&self) -> Vec<Revocation> {
        self.lock().values().cloned().collect()
    }

    /// Revocations in force or still to be applied.
    pub fn active(&self) -> Vec<Revocation> {
        self.lock().values().filter(|r| r.state.is_active()).cloned().collect()
    }

    /// The active revocation of a principal, if any.
    pub fn active_for(&self, principal: &str) -> Option<Revocation> {
        self.lock()
            .values()
            .find(|r| r.state.is_active() && r.principal == principal)
            .cloned()
    }

    /// Marks every active revocation whose TTL has passed as expired; returns them.
    pub fn expire(&self, now_ns: i64) -> Result<Vec<Revocation>, StoreError> {
        let mut items = self.lock();
        let mut expired = Vec::new();
        for r in items.values_mut() {
            if r.state.is_active() && r.expires_ns <= now_ns {
                r.state = State::Expired;
                expired.push(r.clone());
            }
        }
        if !expired.is_empty() {
            self.persist(&items)?;
            expired.iter().for_each(|r| self.fed(r));
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(principal: &str, created: i64, ttl: i64) -> Revocation {
        Revocation {
            id: crate::revocation_id(principal, created),
            kind: "principal".into(),
            principal: principal.into(),
            reason: "test".into(),
            alert_id: Some("a-1".into()),
            rule_id: None,
            namespace: None,
            mode: crate::Mode::Enforce,
            created_ns: created,
            expires_ns: created + ttl,
            applied_ns: None,
            state: State::Pending,
            results: BTreeMap::new(),
        }
    }

    #[test]
    fn survives_reopen_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        let s = Store::open(&path).unwrap();
        let r = rev("cluster.local/ns/shop/sa/cart", 100, 50);
        s.put(r.clone()).unwrap();
        s.update(&r.id, |r| r.state = State::Applied).unwrap();
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get(&r.id).unwrap().state, State::Applied);
        assert!(s.active_for("cluster.local/ns/shop/sa/cart").is_some());
        assert!(s.expire(149).unwrap().is_empty());
        assert_eq!(s.expire(150).unwrap().len(), 1);
        assert!(s.active().is_empty());
        drop(s);
        assert_eq!(Store::open(&path).unwrap().get(&r.id).unwrap().state, State::Expired);
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revocations.json");
        std::fs::write(&path, "[{").unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Corrupt { .. })));
    }
}
