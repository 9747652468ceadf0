//! Which alerts an output receives: severity floor, statuses, rule ids and tags.

use verity_model::alert::Alert;

use crate::config::Routing;

/// `*` matches any run of characters; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

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
    fn globs() {
        assert!(glob_match("zt-*", "zt-mtls"));
        assert!(glob_match("*mtls*", "zt-mtls-pay"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("zt-*", "web-x"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn routing_filters() {
        let a = Alert {
            id: "i".into(),
            rule_id: "zt-mtls".into(),
            title: String::new(),
            severity: Severity::Medium,
            kind: "assertion".into(),
            status: AlertStatus::Resolved,
            tags: vec!["mtls".into()],
            description: String::new(),
            group: Default::default(),
            count: 1,
            aggregates: Default::default(),
            window_start: None,
            window_end: None,
            first_seen: String::new(),
            last_seen: String::new(),
            evidence: vec![],
            entity: None,
            respond: None,
            summary: String::new(),
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
