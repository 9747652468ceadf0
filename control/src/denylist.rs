//! The principals ext_authz denies. Writers build a new map and swap it in; readers load the
//! current one without taking a lock, so a `Check` costs a hash lookup however often the list
//! changes.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Why a principal is denied, for the 403 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub revocation_id: String,
    pub alert_id: Option<String>,
    pub reason: String,
    pub expires_ns: i64,
}

#[derive(Clone, Default)]
pub struct DenyList {
    current: Arc<ArcSwap<HashMap<String, Denial>>>,
}

impl DenyList {
    /// The denial for `principal` (with or without `spiffe://`) that is in force at `now_ns`.
    pub fn check(&self, principal: &str, now_ns: i64) -> Option<Denial> {
        let map = self.current.load();
        map.get(crate::normalize_principal(principal))
            .filter(|d| d.expires_ns > now_ns)
            .cloned()
    }

    /// Adds or replaces a principal's denial; effective for the next `check`.
    pub fn insert(&self, principal: &str, denial: Denial) {
        let key = crate::normalize_principal(principal).to_string();
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(key.clone(), denial.clone());
            m
        });
    }

    pub fn remove(&self, principal: &str) {
        let key = crate::normalize_principal(principal);
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(key);
            m
        });
    }

    pub fn len(&self) -> usize {
        self.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_check_expire_remove() {
        let l = DenyList::default();
        l.insert(
            "spiffe://cluster.local/ns/shop/sa/cart",
            Denial {
                revocation_id: "rev-1".into(),
                alert_id: Some("a".into()),
                reason: "probing".into(),
                expires_ns: 100,
            },
        );
        assert!(l.check("cluster.local/ns/shop/sa/cart", 50).is_some());
        assert!(l.check("spiffe://cluster.local/ns/shop/sa/cart", 50).is_some());
        assert!(l.check("cluster.local/ns/shop/sa/cart", 100).is_none(), "expired");
        assert!(l.check("cluster.local/ns/shop/sa/web", 50).is_none());
        l.remove("cluster.local/ns/shop/sa/cart");
        assert!(l.is_empty());
    }
}
