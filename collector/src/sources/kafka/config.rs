//! The `kafka` section: brokers, topics and their encodings, librdkafka properties, and the
//! check that a topic's partitioning keeps together what stateful rules group by.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use verity_model::config_error::ConfigError;

/// How a topic's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `ExportLogsServiceRequest` / `ExportMetricsServiceRequest` protobuf (the OTel
    /// Collector Kafka exporter's `otlp_proto`).
    OtlpProto,
    /// The same as OTLP/JSON (`otlp_json`).
    OtlpJson,
    /// Log lines (Istio/Envoy text or JSON, ztunnel); several per message when newline-separated.
    Raw,
    /// Normalized event rows as Arrow IPC: Verity's own repartition topics, never configured.
    #[serde(skip)]
    ArrowIpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    #[default]
    Logs,
    Metrics,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    pub encoding: Encoding,
    /// For OTLP encodings: whether the topic carries logs or metrics.
    #[serde(default)]
    pub signal: Signal,
    /// The event column producers key this topic's messages by (e.g. `source_principal`).
    /// Verity warns at start about stateful rules whose keys it cannot serve.
    #[serde(default)]
    pub key: Option<String>,
    /// Who produces this topic (e.g. `otel-collector`), stamped as every record's `sender`.
    /// Kafka authenticates producers itself (SASL, mTLS, ACLs), so a configured sender counts
    /// as verified; unset, records carry no sender and `sender_verified = false`.
    #[serde(default)]
    pub sender: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub enabled: bool,
    pub brokers: String,
    pub group_id: String,
    pub topics: Vec<TopicConfig>,
    /// librdkafka consumer properties passed through (`security.protocol`, `sasl.*`, `ssl.*`).
    #[serde(deserialize_with = "verity_model::scalar_map::scalar_map")]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets (e.g. `sasl.password`).
    pub secret_properties: BTreeMap<String, verity_secret::SecretRef>,
    /// Poison messages are also produced here, with their origin in headers.
    pub dead_letter_topic: Option<String>,
    /// A batch is handed to the pipeline at this many records …
    pub max_batch_records: usize,
    /// … or this old.
    pub max_batch_delay_ms: u64,
    /// Batches handed to the pipeline whose acknowledgement is pending; reading waits beyond.
    pub max_pending_batches: usize,
    /// On rebalance, how long to wait for pending acknowledgements before giving partitions up.
    pub rebalance_timeout_secs: u64,
    /// Repartitioning, so that instances of one group share stateful rules' keys whatever
    /// the input topics' keying (docs/kafka.md, "Scaling out").
    pub repartition: RepartitionConfig,
}

/// The `kafka.repartition` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepartitionConfig {
    pub enabled: bool,
    /// Names the repartition topics (`<application_id>-repartition-<columns>`) and the group
    /// reading them (`<application_id>-repartition`); the same on every instance. Unset:
    /// `group_id`, so two deployments on one cluster do not share topics by accident.
    pub application_id: Option<String>,
    /// Partitions of the repartition topics Verity creates; 0: as many as the input topic
    /// with the most.
    pub partitions: u32,
    /// Replication factor of the topics Verity creates; -1: the broker's default.
    pub replication_factor: i32,
    /// Create missing repartition topics (and the revocations topic) at start; otherwise
    /// they must exist.
    pub create_topics: bool,
    /// Share revocations between the instances through the compacted topic
    /// `<application_id>-revocations`: every instance's ext_authz denies what any of them
    /// revoked, and a revocation is lifted from any of them.
    pub share_revocations: bool,
    /// A secret shared by the deployment's instances: every repartition and revocations
    /// message is signed with it (HMAC-SHA256), and one without a valid signature is refused
    /// as poison. Unset: messages are unsigned and only the topics' ACLs protect them.
    pub signing_key: Option<verity_secret::SecretRef>,
    /// How often the stateful rules' state of each repartition partition is written to the
    /// compacted topic `<application_id>-state` (with the offset it covers), so the partition's
    /// next owner (after a rebalance or an instance's loss) continues its open windows,
    /// assertions and learned sets. 0: no state topic; state stays on each instance
    /// (`rules.state_dir`) and is lost to the others.
    pub state_snapshot_secs: u64,
}

impl Default for RepartitionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            application_id: None,
            partitions: 0,
            replication_factor: -1,
            create_topics: true,
            share_revocations: true,
            signing_key: None,
            state_snapshot_secs: 10,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            brokers: String::new(),
            group_id: "verity".into(),
            topics: Vec::new(),
            properties: BTreeMap::new(),
            secret_properties: BTreeMap::new(),
            dead_letter_topic: None,
            max_batch_records: 5000,
            max_batch_delay_ms: 100,
            max_pending_batches: 16,
            rebalance_timeout_secs: 20,
            repartition: RepartitionConfig::default(),
        }
    }
}

impl KafkaConfig {
    /// What names the repartition topics and their group: `repartition.application_id`, or
    /// `group_id`.
    pub fn application_id(&self) -> &str {
        self.repartition.application_id.as_deref().unwrap_or(&self.group_id)
    }

    /// The compacted topic revocations are shared through, when they are.
    pub fn revocations_topic(&self) -> Option<String> {
        (self.enabled && self.repartition.enabled && self.repartition.share_revocations)
            .then(|| format!("{}-revocations", self.application_id()))
    }

    /// The compacted topic repartition partitions' rule state is kept in, when it is.
    pub fn state_topic(&self) -> Option<String> {
        (self.enabled && self.repartition.enabled && self.repartition.state_snapshot_secs > 0)
            .then(|| format!("{}-state", self.application_id()))
    }

    /// Pure checks: every problem with its key.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut e = Vec::new();
        if !self.enabled {
            return e;
        }
        if self.brokers.trim().is_empty() {
            e.push(ConfigError::new("kafka.brokers", "must list at least one host:port"));
        }
        if self.group_id.trim().is_empty() {
            e.push(ConfigError::new("kafka.group_id", "must be set"));
        }
        if self.topics.is_empty() {
            e.push(ConfigError::new("kafka.topics", "at least one topic is needed"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.name.trim().is_empty() {
                e.push(ConfigError::new(format!("kafka.topics[{i}].name"), "must be set"));
            }
            if t.encoding == Encoding::Raw && t.signal == Signal::Metrics {
                e.push(ConfigError::new(
                    format!("kafka.topics[{i}].signal"),
                    "raw lines are logs; metrics need an OTLP encoding",
                ));
            }
            if let Some(k) = &t.key
                && verity_model::event::schema().field_with_name(k).is_err()
            {
                e.push(ConfigError::new(
                    format!("kafka.topics[{i}].key"),
                    format!("{k:?} is not an event column"),
                ));
            }
        }
        for k in [
            "enable.auto.offset.store",
            "enable.auto.commit",
            "group.id",
            "bootstrap.servers",
        ] {
            if self.properties.contains_key(k) {
                e.push(ConfigError::new(
                    format!("kafka.properties.{k}"),
                    "is set by Verity (at-least-once needs it)",
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.max_batch_records) {
            e.push(ConfigError::new(
                "kafka.max_batch_records",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=60_000).contains(&self.max_batch_delay_ms) {
            e.push(ConfigError::new(
                "kafka.max_batch_delay_ms",
                "must be between 1 and 60000",
            ));
        }
        let rp = &self.repartition;
        if rp.enabled {
            let id = self.application_id();
            if id.is_empty()
                || id.len() > 100
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                e.push(ConfigError::new(
                    "kafka.repartition.application_id",
                    "must be 1 to 100 of A-Z a-z 0-9 . _ - (it names topics)",
                ));
            }
            if rp.partitions > 10_000 {
                e.push(ConfigError::new(
                    "kafka.repartition.partitions",
                    "must be at most 10000",
                ));
            }
            if rp.replication_factor != -1 && !(1..=32).contains(&rp.replication_factor) {
                e.push(ConfigError::new(
                    "kafka.repartition.replication_factor",
                    "must be -1 (the broker's default) or 1 to 32",
                ));
            }
            if rp.state_snapshot_secs > 3600 {
                e.push(ConfigError::new(
                    "kafka.repartition.state_snapshot_secs",
                    "must be at most 3600 (0 turns the state topic off)",
                ));
            }
        }
        if !(1..=1024).contains(&self.max_pending_batches) {
            e.push(ConfigError::new(
                "kafka.max_pending_batches",
                "must be between 1 and 1024",
            ));
        }
        e
    }
}

/// Stateful rules whose keys do not include the column a topic is partitioned by: their state
/// for one key may be split across instances of a consumer group.
pub fn partitioning_warnings(rules: &[verity_rules::rule::RuleFile], topic: &TopicConfig) -> Vec<String> {
    let Some(key) = &topic.key else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in rules {
        if let Some(keys) = r.body.state_keys()
            && !keys.iter().any(|k| k == key)
        {
            out.push(format!(
                "rule {} keeps state per [{}], but topic {} is partitioned by {key}: with several Verity instances in the group, one key's events can land on different instances",
                r.id,
                keys.join(", "),
                topic.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> verity_rules::rule::RuleFile {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn warns_about_rules_the_partitioning_cannot_serve() {
        let rules = vec![
            rule(
                "id: burst\ntitle: t\nseverity: low\nkind: detection\ndetection:\n  where: 'true'\n  group_by: [source_principal]\n  window: {type: tumbling, size: 1m}\n  having: count(*) > 1\n",
            ),
            rule(
                "id: ns\ntitle: t\nseverity: low\nkind: assertion\nassertion:\n  scope: 'true'\n  require: mtls\n  per: [destination_namespace]\n  stale_after: 5m\n",
            ),
            rule("id: stateless\ntitle: t\nseverity: low\nkind: detection\ndetection:\n  where: 'true'\n"),
        ];
        let topic = TopicConfig {
            name: "mesh".into(),
            encoding: Encoding::Raw,
            signal: Signal::Logs,
            key: Some("source_principal".into()),
            sender: None,
        };
        let w = partitioning_warnings(&rules, &topic);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("rule ns"), "{w:?}");
        let unkeyed = TopicConfig { key: None, ..topic };
        assert!(partitioning_warnings(&rules, &unkeyed).is_empty());
    }

    #[test]
    fn config_checks() {
        let mut c = KafkaConfig {
            enabled: true,
            brokers: "b:9092".into(),
            topics: vec![TopicConfig {
                name: "t".into(),
                encoding: Encoding::Raw,
                signal: Signal::Metrics,
                key: Some("no_such_column".into()),
                sender: None,
            }],
            ..KafkaConfig::default()
        };
        c.properties.insert("enable.auto.offset.store".into(), "true".into());
        let keys: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert!(keys.contains(&"kafka.topics[0].signal".to_string()), "{keys:?}");
        assert!(keys.contains(&"kafka.topics[0].key".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"kafka.properties.enable.auto.offset.store".to_string()),
            "{keys:?}"
        );
    }
}
