//! Binding records to the sender that reported them.
//!
//! An authenticated sender is not thereby a truthful one: a compromised sidecar holds a valid
//! certificate and can report traffic between any two identities, for example a burst of RBAC
//! denials "from" someone it wants revoked. `intake.trust` says what each sender may report:
//!
//! - `proxy` senders (sidecars) report only traffic they carried: an inbound record (reporter
//!   `destination`) must name the sender as its destination principal, an outbound record
//!   (reporter `source`) as its source principal. A record naming another identity there, or
//!   claiming another reporter (ztunnel, waypoint, gateway), is a forgery (`not_party`): it is
//!   dead-lettered with reason `sender_not_party`, counted, and only rules that ask about
//!   `sender_binding` (the built-in `zt-telemetry-forgery`) ever see it. A record that does
//!   not say who reported it is kept, unverified (`unbound`).
//! - `node` (ztunnel, gateways) and `aggregator` senders (an OTel Collector, a Kafka topic)
//!   may report for others: `trusted`.
//! - A sender no entry names is kept, unverified (`unknown_sender`).

#![deny(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]

use serde::{Deserialize, Serialize};
use verity_model::config_error::ConfigError;
use verity_model::event::{AccessEvent, Reporter, SenderBinding};

use super::sender::Sender;

/// What a class of senders may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SenderClass {
    Proxy,
    Node,
    Aggregator,
}

/// One `intake.trust` entry: senders matching any pattern (`*` wildcards) have `class`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    pub senders: Vec<String>,
    pub class: SenderClass,
}

/// The `intake` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntakeConfig {
    /// First match wins.
    pub trust: Vec<TrustRule>,
    /// A record from the network dated more than this after it arrived is rejected
    /// (`future_timestamp`): one such record would move event time ahead and make every
    /// honest record after it late.
    pub max_future_secs: u64,
    /// A record from the network dated more than this before it arrived is rejected the same
    /// way (0: no limit). Replaying files keeps event time as it is.
    pub max_past_secs: u64,
    /// What one record and one request may cost (see `normalize/limits.rs`).
    pub limits: crate::normalize::limits::RecordLimits,
}

impl Default for IntakeConfig {
    fn default() -> Self {
        Self {
            trust: Vec::new(),
            max_future_secs: 300,
            max_past_secs: 0,
            limits: crate::normalize::limits::RecordLimits::default(),
        }
    }
}

impl IntakeConfig {
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = self.limits.validate("intake.limits");
        if !(1..=86_400).contains(&self.max_future_secs) {
            errors.push(ConfigError::new(
                "intake.max_future_secs",
                "must be between 1 and 86400",
            ));
        }
        for (i, rule) in self.trust.iter().enumerate() {
            if rule.senders.is_empty() {
                errors.push(ConfigError::new(
                    format!("intake.trust[{i}].senders"),
                    "must list at least one pattern",
                ));
            }
            for (j, p) in rule.senders.iter().enumerate() {
                if p.trim().is_empty() {
                    errors.push(ConfigError::new(
                        format!("intake.trust[{i}].senders[{j}]"),
                        "empty pattern",
                    ));
                }
            }
        }
        errors
    }

    /// The class of an authenticated sender, or None when no entry names it.
    pub fn class_of(&self, sender: &str) -> Option<SenderClass> {
        self.trust
            .iter()
            .find(|r| r.senders.iter().any(|p| verity_model::glob::glob_match(p, sender)))
            .map(|r| r.class)
    }
}

/// The binding of one record from `sender`, whose class was looked up once per request.
pub fn bind(ev: &AccessEvent<'_>, sender: &Sender, class: Option<SenderClass>) -> SenderBinding {
    let Some(id) = sender.id.as_deref().filter(|_| sender.authenticated) else {
        return SenderBinding::None;
    };
    let Some(class) = class else {
        return SenderBinding::UnknownSender;
    };
    match class {
        SenderClass::Node | SenderClass::Aggregator => SenderBinding::Trusted,
        SenderClass::Proxy => {
            let party = match ev.reporter {
                Reporter::Destination => ev.destination_principal.as_deref(),
                Reporter::Source => ev.source_principal.as_deref(),
                Reporter::Unknown => return SenderBinding::Unbound,
                // A sidecar does not report as ztunnel, a waypoint or a gateway.
                Reporter::Ztunnel | Reporter::Waypoint | Reporter::Gateway => return SenderBinding::NotParty,
            };
            match party {
                Some(p) if p == id => SenderBinding::Bound,
                Some(_) => SenderBinding::NotParty,
                None => SenderBinding::Unbound,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice, clippy::arithmetic_side_effects)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
    const PAY: &str = "spiffe://cluster.local/ns/pay/sa/pay";

    /// The `intake` section of the embedded default configuration, read from the file itself
    /// so that these tests follow the defaults users get.
    fn defaults() -> IntakeConfig {
        let defaults: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../app/config/default.yaml")).expect("the default configuration");
        serde_yaml::from_value(defaults["intake"].clone()).expect("the default intake section")
    }

    fn event(
        reporter: Reporter,
        source: Option<&'static str>,
        destination: Option<&'static str>,
    ) -> AccessEvent<'static> {
        AccessEvent {
            reporter,
            source_principal: source.map(Cow::Borrowed),
            destination_principal: destination.map(Cow::Borrowed),
            ..Default::default()
        }
    }

    fn sender(id: &str) -> Sender {
        Sender {
            id: Some(id.into()),
            authenticated: true,
        }
    }

    #[test]
    fn a_sidecar_may_report_only_its_own_traffic() {
        let trust = defaults();
        let cart = sender(CART);
        let class = trust.class_of(CART);
        assert_eq!(class, Some(SenderClass::Proxy));
        let inbound = event(Reporter::Destination, Some(PAY), Some(CART));
        assert_eq!(bind(&inbound, &cart, class), SenderBinding::Bound);
        let outbound = event(Reporter::Source, Some(CART), Some(PAY));
        assert_eq!(bind(&outbound, &cart, class), SenderBinding::Bound);
        // Traffic between two others, in either direction: forged.
        let other = event(Reporter::Destination, Some(CART), Some(PAY));
        assert_eq!(bind(&other, &cart, class), SenderBinding::NotParty);
        let other = event(Reporter::Source, Some(PAY), Some(CART));
        assert_eq!(bind(&other, &cart, class), SenderBinding::NotParty);
        assert_eq!(
            bind(&event(Reporter::Ztunnel, Some(PAY), Some(CART)), &cart, class),
            SenderBinding::NotParty
        );
        assert_eq!(
            bind(&event(Reporter::Destination, Some(PAY), None), &cart, class),
            SenderBinding::Unbound
        );
    }

    #[test]
    fn nodes_aggregators_and_strangers() {
        let trust = defaults();
        let ztunnel = "spiffe://cluster.local/ns/istio-system/sa/ztunnel";
        assert_eq!(trust.class_of(ztunnel), Some(SenderClass::Node));
        assert_eq!(trust.class_of("otel-collector"), Some(SenderClass::Aggregator));
        let ev = event(Reporter::Ztunnel, Some(PAY), Some(CART));
        assert_eq!(
            bind(&ev, &sender(ztunnel), trust.class_of(ztunnel)),
            SenderBinding::Trusted
        );
        assert_eq!(bind(&ev, &sender(CART), None), SenderBinding::UnknownSender);
        assert_eq!(bind(&ev, &Sender::default(), None), SenderBinding::None);
        let strict = IntakeConfig::default();
        assert_eq!(strict.class_of(CART), None);
    }
}
