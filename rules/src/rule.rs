//! The rule file format: one rule per YAML file, strict (unknown keys are errors).
//!
//! ```yaml
//! id: zt-rbac-denial-burst
//! title: RBAC denial burst from one principal
//! description: …
//! severity: high                      # info | low | medium | high | critical
//! tags: [attack.t1046, zt.identity]
//! kind: detection                     # detection | assertion | first_seen | absence
//! detection:                          # the block named by `kind`
//!   where: decision = 'deny_rbac'     # SQL (DataFusion dialect) over the event schema
//!   group_by: [source_principal]
//!   window: { type: tumbling, size: 1m }
//!   having: count(*) >= 10
//!   suppress: 10m
//! respond: { entity: source_principal, action: revoke, ttl: 1h }
//! tests: [...]                        # or a sibling <file>.tests.yaml
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use verity_model::Severity;

use crate::duration::Dur;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Detection,
    Assertion,
    FirstSeen,
    Absence,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Detection => "detection",
            Kind::Assertion => "assertion",
            Kind::FirstSeen => "first_seen",
            Kind::Absence => "absence",
        }
    }
}

/// One rule file, checked: exactly one body, the one its `kind` names.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawRuleFile")]
pub struct RuleFile {
    pub id: String,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub tags: Vec<String>,
    /// What the rule looks for; its variant is the rule's kind.
    pub body: RuleBody,
    pub respond: Option<RespondSpec>,
    /// Keys this rule's state may hold; unset: `rules.max_keys`.
    pub max_keys: Option<usize>,
    pub tests: Vec<TestCase>,
}

/// What a rule looks for, one variant per kind, so a rule cannot hold the block of another
/// kind or none at all.
#[derive(Debug, Clone)]
pub enum RuleBody {
    Detection(DetectionSpec),
    Assertion(AssertionSpec),
    FirstSeen(FirstSeenSpec),
    Absence(AbsenceSpec),
}

impl RuleBody {
    pub const fn kind(&self) -> Kind {
        match self {
            RuleBody::Detection(_) => Kind::Detection,
            RuleBody::Assertion(_) => Kind::Assertion,
            RuleBody::FirstSeen(_) => Kind::FirstSeen,
            RuleBody::Absence(_) => Kind::Absence,
        }
    }

    /// The columns a stateful rule keeps state per (the `group_by` of a windowed or
    /// suppressing detection, an assertion's `per`, the keys of the others); `None` for a
    /// stateless detection.
    pub fn state_keys(&self) -> Option<&[String]> {
        match self {
            RuleBody::Detection(d) => (d.window.is_some() || d.suppress.is_some()).then_some(d.group_by.as_slice()),
            RuleBody::Assertion(a) => Some(&a.per),
            RuleBody::FirstSeen(f) => Some(&f.keys),
            RuleBody::Absence(a) => Some(&a.keys),
        }
    }
}

impl RuleFile {
    pub const fn kind(&self) -> Kind {
        self.body.kind()
    }
}

/// A rule file as written: `kind` and one optional block per kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleFile {
    id: String,
    title: String,
    #[serde(default)]
    description: String,
    severity: Severity,
    #[serde(default)]
    tags: Vec<String>,
    kind: Kind,
    #[serde(default)]
    detection: Option<DetectionSpec>,
    #[serde(default)]
    assertion: Option<AssertionSpec>,
    #[serde(default)]
    first_seen: Option<FirstSeenSpec>,
    #[serde(default)]
    absence: Option<AbsenceSpec>,
    #[serde(default)]
    respond: Option<RespondSpec>,
    #[serde(default)]
    max_keys: Option<usize>,
    #[serde(default)]
    tests: Vec<TestCase>,
}

/// Why a rule file's blocks do not fit its `kind` (serde reports it as the file's parse
/// error, so it reaches the author as a [`LoadError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BodyError {
    #[error("rule {id}: a `{block}:` block does not belong to kind {}", .kind.as_str())]
    ForeignBlock {
        id: String,
        block: &'static str,
        kind: Kind,
    },
    #[error("rule {id}: kind {name} needs a `{name}:` block", name = .kind.as_str())]
    MissingBlock { id: String, kind: Kind },
}

impl TryFrom<RawRuleFile> for RuleFile {
    type Error = BodyError;

    fn try_from(raw: RawRuleFile) -> Result<Self, BodyError> {
        let present = [
            ("detection", raw.detection.is_some(), Kind::Detection),
            ("assertion", raw.assertion.is_some(), Kind::Assertion),
            ("first_seen", raw.first_seen.is_some(), Kind::FirstSeen),
            ("absence", raw.absence.is_some(), Kind::Absence),
        ];
        for (block, present, kind) in present {
            if kind != raw.kind && present {
                return Err(BodyError::ForeignBlock {
                    id: raw.id,
                    block,
                    kind: raw.kind,
                });
            }
        }
        let missing = || BodyError::MissingBlock {
            id: raw.id.clone(),
            kind: raw.kind,
        };
        let body = match raw.kind {
            Kind::Detection => RuleBody::Detection(raw.detection.ok_or_else(missing)?),
            Kind::Assertion => RuleBody::Assertion(raw.assertion.ok_or_else(missing)?),
            Kind::FirstSeen => RuleBody::FirstSeen(raw.first_seen.ok_or_else(missing)?),
            Kind::Absence => RuleBody::Absence(raw.absence.ok_or_else(missing)?),
        };
        Ok(Self {
            id: raw.id,
            title: raw.title,
            description: raw.description,
            severity: raw.severity,
            tags: raw.tags,
            body,
            respond: raw.respond,
            max_keys: raw.max_keys,
            tests: raw.tests,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    Tumbling,
    Sliding,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    #[serde(rename = "type")]
    pub kind: WindowType,
    pub size: Dur,
    /// Sliding windows only: how often a new window starts.
    #[serde(default)]
    pub slide: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionSpec {
    #[serde(rename = "where")]
    pub filter: String,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(default)]
    pub window: Option<WindowSpec>,
    #[serde(default)]
    pub having: Option<String>,
    /// After an alert for a group key, further alerts for it are suppressed this long.
    #[serde(default)]
    pub suppress: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionSpec {
    /// Which events the assertion covers.
    pub scope: String,
    /// What must be true of each of them (NULL counts as neither holding nor violating).
    pub require: String,
    /// Columns the state is kept for.
    #[serde(default)]
    pub per: Vec<String>,
    /// No scoped events for this long: the key is `unknown`.
    pub stale_after: Dur,
    /// A violated key holds again after this long with only compliant events.
    #[serde(default)]
    pub resolve_after: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstSeenSpec {
    #[serde(rename = "where", default)]
    pub filter: Option<String>,
    /// The tuple whose first appearance is alerted.
    pub keys: Vec<String>,
    /// Tuples seen during this period (from the first event) are learned, not alerted.
    pub learning: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbsenceSpec {
    #[serde(rename = "where", default)]
    pub filter: Option<String>,
    pub keys: Vec<String>,
    /// A key that sent telemetry and then nothing for this long raises an alert.
    pub after: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// The column naming who to act on (`source_principal`, `request_principal`).
    pub entity: String,
    #[serde(default)]
    pub action: Action,
    pub ttl: Dur,
    /// `verified`: ask for the action only when every event behind the alert is its sender's
    /// verified evidence (`sender_verified`); otherwise the alert fires without `respond`.
    #[serde(default)]
    pub evidence: RequiredEvidence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequiredEvidence {
    #[default]
    Any,
    Verified,
}

/// What a rule's alert asks the control plane to do; anything else is refused at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Cut the entity off (`control` applies it through its responders, within guardrails).
    #[default]
    Revoke,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Revoke => "revoke",
        }
    }
}

/// A rule test case: real log lines in, expected alerts out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// Principals on the revocation list while the case runs.
    #[serde(default)]
    pub revoked: Vec<String>,
    /// The authenticated sender of the lines (a SPIFFE ID or token name), classified by the
    /// default `intake.trust`; unset: the lines come from a file, with no sender.
    #[serde(default)]
    pub sender: Option<String>,
    pub lines: Vec<String>,
    pub expect: Vec<ExpectedAlert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    pub status: verity_model::AlertStatus,
    /// Group key values that must match (a subset is enough).
    #[serde(default)]
    pub group: std::collections::BTreeMap<String, Option<String>>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub entity: Option<String>,
    /// Whether the alert asks for its `respond` action.
    #[serde(default)]
    pub respond: Option<bool>,
}

/// A rule file as read from disk (or embedded), before compilation.
#[derive(Debug, Clone)]
pub struct RuleSource {
    pub path: PathBuf,
    pub text: String,
    pub rule: RuleFile,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl LoadError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        LoadError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl RuleSource {
    /// Parses one rule file's text; `path` is for messages and sibling test files.
    pub fn parse(path: &Path, text: String) -> Result<Self, LoadError> {
        let invalid = |message: String| LoadError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let mut rule: RuleFile = serde_yaml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if rule.id.trim().is_empty()
            || !rule
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(format!(
                "id {:?} must be non-empty letters, digits, - and _",
                rule.id
            )));
        }
        let sibling = path.with_extension("tests.yaml");
        if sibling.is_file() {
            let t = std::fs::read_to_string(&sibling).map_err(|source| LoadError::Io {
                path: sibling.display().to_string(),
                source,
            })?;
            let more: Vec<TestCase> = serde_yaml::from_str(&t).map_err(|e| LoadError::Invalid {
                path: sibling.display().to_string(),
                message: e.to_string(),
            })?;
            rule.tests.extend(more);
        }
        Ok(Self {
            path: path.to_path_buf(),
            text,
            rule,
        })
    }
}

/// Loads every rule file (`*.yaml`, `*.yml`, not `*.tests.yaml`) under the given paths
/// (files or directories, recursively), sorted by path. Returns all errors, not the first.
///
/// Inside a directory, hidden entries are skipped and symlinked directories are not descended
/// into; a symlinked rule file is read only if it resolves inside the directory. That is what
/// makes a Kubernetes ConfigMap mount load each rule once: the kubelet puts the files in
/// `..<timestamp>/`, links `..data` to it and each top-level name to `..data/<name>`.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<RuleSource>, Vec<LoadError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        collect(p, &mut files, &mut errors);
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match RuleSource::parse(&f, text) {
                Ok(r) => out.push(r),
                Err(e) => errors.push(e),
            },
            Err(source) => errors.push(LoadError::Io {
                path: f.display().to_string(),
                source,
            }),
        }
    }
    let mut seen = std::collections::HashMap::new();
    for r in &out {
        if let Some(first) = seen.insert(r.rule.id.clone(), r.path.clone()) {
            errors.push(LoadError::Invalid {
                path: r.path.display().to_string(),
                message: format!("duplicate rule id {} (also in {})", r.rule.id, first.display()),
            });
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// The rule files [`load_paths`] would read, sorted, by the same walk (for noticing edits).
pub fn rule_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let (mut files, mut errors) = (Vec::new(), Vec::new());
    for p in paths {
        collect(p, &mut files, &mut errors);
    }
    files.sort();
    files
}

fn collect(p: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    if p.is_dir() {
        match std::fs::canonicalize(p) {
            Ok(root) => collect_dir(p, &root, files, errors),
            Err(source) => errors.push(LoadError::io(p, source)),
        }
    } else if is_rule_file(p) {
        files.push(p.to_path_buf());
    } else if !p.exists() {
        errors.push(LoadError::io(
            p,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
}

/// Adds the rule files in `dir` and below; `root` is the canonical directory the walk started
/// from, which symlinks may not lead out of.
fn collect_dir(dir: &Path, root: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(LoadError::io(dir, source));
            return;
        }
    };
    for entry in entries.flatten() {
        // Hidden entries include a ConfigMap mount's `..data` and `..<timestamp>` directories,
        // whose files are already reached through the top-level links.
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_symlink() => collect_symlink(&path, root, files, errors),
            Ok(t) if t.is_dir() => collect_dir(&path, root, files, errors),
            Ok(_) if is_rule_file(&path) => files.push(path),
            Ok(_) => {}
            Err(source) => errors.push(LoadError::io(&path, source)),
        }
    }
}

/// A symlinked rule file is read (under the link's name) if it resolves inside `root`; a link
/// to a directory is never followed, so links cannot make the walk loop.
fn collect_symlink(link: &Path, root: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<LoadError>) {
    let target = match std::fs::canonicalize(link) {
        Ok(target) => target,
        // A dangling link named like a rule file is a rule that cannot be read.
        Err(source) => {
            if is_rule_file(link) {
                errors.push(LoadError::io(link, source));
            }
            return;
        }
    };
    let is_dir = target.is_dir();
    if !is_dir && !is_rule_file(link) {
        return;
    }
    if !target.starts_with(root) {
        tracing::warn!(
            link = %link.display(),
            target = %target.display(),
            "symlink in a rules directory points outside it; skipped"
        );
    } else if is_dir {
        tracing::warn!(link = %link.display(), "symlinked directory in a rules directory; not descended into");
    } else {
        files.push(link.to_path_buf());
    }
}

pub fn is_rule_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".tests.yaml")
        && !name.ends_with(".tests.yml")
}
