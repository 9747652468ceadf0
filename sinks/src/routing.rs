//! Which alerts an output receives: severity floor, statuses, rule ids and tags.

use verity_model::alert::Alert;
use verity_model::glob::glob_match;

use crate::config::Routing;

impl Routing {
    pub fn matches(&self, alert: &Alert) -> bool {
        if alert.severity < self.min_severity || !self.statuses.contains(&alert.status) {
            return false;
        }
        if !self.include_rules.is_empty() && !self.include_rules.iter().any(|p| glob_match(p, &alert.rule_id)) {
            return false;
        }
        if self.exclude_rules.iter().any(|p| glob_match(p, &alert.rule_id)) {
            return false;
        }
        if !self.include_tags.is_empty() && !alert.tags.iter().any(|t| self.include_tags.contains(t)) {
            return false;
        }
        !alert.tags.iter().any(|t| self.exclude_tags.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verity_model::alert::{AlertStatus, Severity};

    #[test]
    fn routing_filters() {
        let a = Alert {
            rule_id: "zt-mtls".into(),
            severity: Severity::Medium,
            kind: "assertion".into(),
            status: AlertStatus::Resolved,
            tags: vec!["mtls".into()],
            ..Alert::sample()
        };
        let mut r = Routing::default();
        assert!(r.matches(&a));
        r.min_severity = Severity::High;
        assert!(!r.matches(&a));
        r = Routing {
            statuses: vec![AlertStatus::Firing],
            ..Routing::default()
        };
        assert!(!r.matches(&a));
        r = Routing {
            exclude_tags: vec!["mtls".into()],
            ..Routing::default()
        };
        assert!(!r.matches(&a));
        r = Routing {
            include_rules: vec!["web-*".into()],
            ..Routing::default()
        };
        assert!(!r.matches(&a));
        r.include_rules.push("zt-*".into());
        assert!(r.matches(&a));
    }
}
