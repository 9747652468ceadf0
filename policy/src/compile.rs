//! Compiles an [`AuthorizationPolicy`] once into predicates over access events: one per way
//! Istio builds a policy into a proxy.
//!
//! - HTTP requests (sidecars, waypoints, gateways): every field applies.
//! - TCP connections through a sidecar: an ALLOW (or AUDIT) rule that uses an HTTP-only field
//!   is dropped whole; a DENY (or CUSTOM) rule loses the HTTP-only fields and so matches more.
//! - Connections through ztunnel (L4): ALLOW rules with an L7 attribute are dropped; DENY rules
//!   lose their L7 attributes, and a source, operation or rule left with nothing matches
//!   nothing (ztunnel skips it).

use crate::event_view::{IpAttr, TextAttr};
use crate::object::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};
use crate::pattern::{IpBlock, Pattern};
use crate::predicate::Pred;
use crate::target::Target;

/// Why a policy cannot be evaluated. Istio would reject the same policy.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy}: {message}")]
pub struct CompileError {
    pub policy: String,
    pub message: String,
}

/// One policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// `namespace/name`.
    pub id: String,
    pub action: Action,
    pub dry_run: bool,
    pub target: Target,
    /// Matches a request the policy's rules select, at each kind of proxy.
    pub matches: Layers,
    /// Each rule on its own (for which rules traffic uses).
    pub rules: Vec<Layers>,
}

/// One predicate per way a proxy builds the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Layers {
    /// An HTTP request.
    pub http: Pred,
    /// A TCP connection at a sidecar.
    pub tcp: Pred,
    /// A connection at ztunnel; `None` for the actions ztunnel does not enforce (AUDIT,
    /// CUSTOM).
    pub ztunnel: Option<Pred>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    /// TCP at a sidecar. `drop_rule` (ALLOW): a rule with an HTTP-only field never matches;
    /// otherwise (DENY, AUDIT, CUSTOM) HTTP-only fields are ignored.
    SidecarTcp {
        drop_rule: bool,
    },
    /// ztunnel. `allow`: a rule with an L7 attribute never matches; otherwise L7 attributes are
    /// stripped and what they leave empty matches nothing.
    Ztunnel {
        allow: bool,
    },
}

/// Which proxies a field needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Any proxy can evaluate it.
    L4,
    /// ztunnel cannot (remote addresses, SNI and the like); sidecars can on TCP too.
    NotZtunnel,
    /// HTTP only.
    Http,
}

/// Compiles a policy. `root_namespace` is the mesh's root namespace (`istio-system` unless
/// `meshConfig.rootNamespace` says otherwise): a policy there without a selector applies to
/// every workload.
pub fn compile(policy: &AuthorizationPolicy, root_namespace: &str) -> Result<CompiledPolicy, CompileError> {
    let id = policy.id();
    let fail = |message: String| CompileError {
        policy: id.clone(),
        message,
    };
    let spec = &policy.spec;
    if spec.action == Action::Custom && spec.provider.is_none() {
        return Err(fail("a CUSTOM policy needs a provider".into()));
    }
    if spec.action != Action::Custom && spec.provider.is_some() {
        return Err(fail("only a CUSTOM policy may name a provider".into()));
    }
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && matches!(spec.action, Action::Deny | Action::Custom) {
        return Err(fail(format!(
            "{} without rules is meaningless (an empty rule `{{}}` matches everything)",
            spec.action.as_str()
        )));
    }
    let target = Target::of(policy, root_namespace).map_err(fail)?;
    let namespace = policy.metadata.namespace.as_deref().unwrap_or_default();
    // Only ALLOW drops a whole rule for an HTTP-only field on TCP; DENY, AUDIT and CUSTOM
    // drop the field.
    let allow_like = spec.action == Action::Allow;
    let layers = [
        Layer::Http,
        Layer::SidecarTcp { drop_rule: allow_like },
        Layer::Ztunnel {
            allow: spec.action == Action::Allow,
        },
    ];
    let at_ztunnel = matches!(spec.action, Action::Allow | Action::Deny);
    let mut compiled: Vec<Layers> = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let mut preds = layers
            .iter()
            .map(|layer| compile_rule(rule, *layer, namespace).map(|(pred, _)| pred))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| fail(format!("rules[{i}]: {m}")))?
            .into_iter();
        let (http, tcp, ztunnel) = (preds.next(), preds.next(), preds.next());
        let never = || Pred::Const(Some(false));
        compiled.push(Layers {
            http: http.unwrap_or_else(never),
            tcp: tcp.unwrap_or_else(never),
            ztunnel: ztunnel.filter(|_| at_ztunnel),
        });
    }
    let whole = Layers {
        http: Pred::any(compiled.iter().map(|l| l.http.clone()).collect()),
        tcp: Pred::any(compiled.iter().map(|l| l.tcp.clone()).collect()),
        ztunnel: at_ztunnel.then(|| Pred::any(compiled.iter().filter_map(|l| l.ztunnel.clone()).collect())),
    };
    Ok(CompiledPolicy {
        id: id.clone(),
        action: spec.action,
        dry_run: policy.is_dry_run(),
        target,
        matches: whole,
        rules: compiled,
    })
}

/// Collects the constraints of one rule, source, operation or condition, and what the layer
/// does with those it cannot evaluate.
struct Constraints {
    layer: Layer,
    all: Vec<Pred>,
    /// Some constraint was stripped.
    stripped: bool,
    /// The whole rule is void (an ALLOW rule with a field this layer cannot evaluate).
    void: bool,
}

impl Constraints {
    fn new(layer: Layer) -> Self {
        Self {
            layer,
            all: Vec::new(),
            stripped: false,
            void: false,
        }
    }

    fn push(&mut self, pred: Pred, needs: Needs) {
        let unsupported = match self.layer {
            Layer::Http => false,
            Layer::SidecarTcp { .. } => needs == Needs::Http,
            Layer::Ztunnel { .. } => needs != Needs::L4,
        };
        if !unsupported {
            self.all.push(pred);
            return;
        }
        self.stripped = true;
        if matches!(
            self.layer,
            Layer::SidecarTcp { drop_rule: true } | Layer::Ztunnel { allow: true }
        ) {
            self.void = true;
        }
    }

    /// Adds a nested part (a source, an operation) already finished.
    fn nest(&mut self, (pred, void): (Pred, bool)) {
        self.void |= void;
        self.all.push(pred);
    }

    /// The predicate, and whether it voids the rule.
    fn finish(self) -> (Pred, bool) {
        if self.void {
            return (Pred::Const(Some(false)), true);
        }
        if self.stripped && self.all.is_empty() && self.layer == (Layer::Ztunnel { allow: false }) {
            return (Pred::Const(Some(false)), false);
        }
        (Pred::all(self.all), false)
    }
}

fn compile_rule(rule: &Rule, layer: Layer, namespace: &str) -> Result<(Pred, bool), String> {
    let mut rule_pred = Constraints::new(layer);
    if !rule.from.is_empty() {
        let mut sources = Vec::with_capacity(rule.from.len());
        let mut void = false;
        for (i, from) in rule.from.iter().enumerate() {
            let mut c = Constraints::new(layer);
            source(&from.source, &mut c, namespace).map_err(|m| format!("from[{i}].source: {m}"))?;
            let (pred, v) = c.finish();
            void |= v;
            sources.push(pred);
        }
        rule_pred.nest((Pred::any(sources), void));
    }
    if !rule.to.is_empty() {
        let mut operations = Vec::with_capacity(rule.to.len());
        let mut void = false;
        for (i, to) in rule.to.iter().enumerate() {
            let mut c = Constraints::new(layer);
            operation(&to.operation, &mut c).map_err(|m| format!("to[{i}].operation: {m}"))?;
            let (pred, v) = c.finish();
            void |= v;
            operations.push(pred);
        }
        rule_pred.nest((Pred::any(operations), void));
    }
    for (i, condition) in rule.when.iter().enumerate() {
        let (pred, needs) = when(condition, namespace).map_err(|m| format!("when[{i}]: {m}"))?;
        rule_pred.push(pred, needs);
    }
    Ok(rule_pred.finish())
}

fn text(attr: TextAttr, values: &[String]) -> Pred {
    Pred::Text {
        attr,
        patterns: values.iter().map(|v| Pattern::parse(v, false)).collect(),
        ignore_case: false,
    }
}

fn hosts(values: &[String]) -> Pred {
    Pred::Text {
        attr: TextAttr::Host,
        patterns: values.iter().map(|v| Pattern::parse(v, true)).collect(),
        ignore_case: true,
    }
}

fn paths(values: &[String]) -> Result<Pred, String> {
    let patterns = values
        .iter()
        .map(|v| Pattern::parse_path(v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pred::Text {
        attr: TextAttr::Path,
        patterns,
        ignore_case: false,
    })
}

fn ips(attr: IpAttr, values: &[String]) -> Result<Pred, String> {
    let blocks = values
        .iter()
        .map(|v| IpBlock::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pred::Ip { attr, blocks })
}

fn ports(values: &[String]) -> Result<Pred, String> {
    let ports = values
        .iter()
        .map(|v| {
            v.trim()
                .parse::<u16>()
                .map(i32::from)
                .map_err(|_| format!("{v:?} is not a port number"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pred::Port(ports))
}

/// `serviceAccounts` entries are `namespace/name`, or `name` in the policy's namespace,
/// compared with the `ns/<ns>/sa/<name>` part of the peer's SPIFFE id.
fn service_accounts(values: &[String], namespace: &str) -> Result<Pred, String> {
    let mut patterns = Vec::with_capacity(values.len());
    for v in values {
        let (ns, sa) = v.split_once('/').unwrap_or((namespace, v.as_str()));
        if ns.is_empty() || sa.is_empty() || sa.contains('/') || v.contains('*') {
            return Err(format!("service account {v:?} is not namespace/name or name"));
        }
        patterns.push(Pattern::Exact(format!("ns/{ns}/sa/{sa}")));
    }
    Ok(Pred::Text {
        attr: TextAttr::ServiceAccountPath,
        patterns,
        ignore_case: false,
    })
}

/// A positive list and its `not` list: in one of the first, in none of the second.
fn both(
    c: &mut Constraints,
    yes: &[String],
    no: &[String],
    needs: Needs,
    mk: impl Fn(&[String]) -> Result<Pred, String>,
) -> Result<(), String> {
    if !yes.is_empty() {
        c.push(mk(yes)?, needs);
    }
    if !no.is_empty() {
        c.push(mk(no)?.negate(), needs);
    }
    Ok(())
}

fn source(s: &Source, c: &mut Constraints, namespace: &str) -> Result<(), String> {
    let accounts = !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty();
    let principals = !s.principals.is_empty()
        || !s.not_principals.is_empty()
        || !s.namespaces.is_empty()
        || !s.not_namespaces.is_empty();
    if accounts && principals {
        return Err("serviceAccounts cannot be set with namespaces or principals".into());
    }
    both(c, &s.principals, &s.not_principals, Needs::L4, |v| {
        Ok(text(TextAttr::Principal, v))
    })?;
    both(c, &s.request_principals, &s.not_request_principals, Needs::Http, |v| {
        Ok(text(TextAttr::RequestPrincipal, v))
    })?;
    both(c, &s.namespaces, &s.not_namespaces, Needs::L4, |v| {
        Ok(text(TextAttr::Namespace, v))
    })?;
    both(c, &s.service_accounts, &s.not_service_accounts, Needs::L4, |v| {
        service_accounts(v, namespace)
    })?;
    // ztunnel does not translate trust domains: at ztunnel their effect is not known.
    let at_ztunnel = matches!(c.layer, Layer::Ztunnel { .. });
    let trust_domains = |v: &[String]| {
        Ok(if at_ztunnel {
            Pred::Const(None)
        } else {
            text(TextAttr::TrustDomain, v)
        })
    };
    both(c, &s.trust_domains, &s.not_trust_domains, Needs::L4, trust_domains)?;
    both(c, &s.ip_blocks, &s.not_ip_blocks, Needs::L4, |v| ips(IpAttr::Source, v))?;
    both(
        c,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
        Needs::NotZtunnel,
        |v| ips(IpAttr::Remote, v),
    )?;
    Ok(())
}

fn operation(o: &Operation, c: &mut Constraints) -> Result<(), String> {
    both(c, &o.hosts, &o.not_hosts, Needs::Http, |v| Ok(hosts(v)))?;
    both(c, &o.ports, &o.not_ports, Needs::L4, ports)?;
    both(c, &o.methods, &o.not_methods, Needs::Http, |v| {
        Ok(text(TextAttr::Method, v))
    })?;
    both(c, &o.paths, &o.not_paths, Needs::Http, paths)?;
    Ok(())
}

/// A `when` condition: its predicate and which proxies can evaluate its key.
fn when(condition: &Condition, namespace: &str) -> Result<(Pred, Needs), String> {
    let key = condition.key.as_str();
    if condition.values.is_empty() && condition.not_values.is_empty() {
        return Err(format!("condition {key:?} has neither values nor notValues"));
    }
    use ConditionKey as K;
    let (kind, needs) = match key {
        "source.ip" => (K::Ip(IpAttr::Source), Needs::L4),
        "remote.ip" => (K::Ip(IpAttr::Remote), Needs::NotZtunnel),
        "destination.ip" => (K::Ip(IpAttr::Destination), Needs::L4),
        "destination.port" => (K::Port, Needs::L4),
        "source.namespace" => (K::Text(TextAttr::Namespace), Needs::L4),
        "source.principal" => (K::Text(TextAttr::Principal), Needs::L4),
        "source.serviceAccount" => (K::ServiceAccount, Needs::NotZtunnel),
        "source.trustDomain" => (K::Text(TextAttr::TrustDomain), Needs::NotZtunnel),
        "connection.sni" => (K::Text(TextAttr::Sni), Needs::NotZtunnel),
        "request.auth.principal" => (K::Text(TextAttr::RequestPrincipal), Needs::Http),
        "request.auth.audiences" | "request.auth.presenter" => (K::NotRecorded, Needs::Http),
        k if k.starts_with("request.auth.claims[") && k.ends_with(']') => (K::NotRecorded, Needs::Http),
        k if k.starts_with("request.headers[") && k.ends_with(']') => {
            let name = k.get("request.headers[".len()..k.len() - 1).unwrap_or_default();
            match name.to_ascii_lowercase().as_str() {
                "user-agent" => (K::Text(TextAttr::UserAgent), Needs::Http),
                "x-forwarded-for" => (K::Text(TextAttr::XForwardedFor), Needs::Http),
                "" => return Err(format!("condition key {key:?} names no header")),
                _ => (K::NotRecorded, Needs::Http),
            }
        }
        k if k.starts_with("experimental.envoy.filters.") => (K::NotRecorded, Needs::NotZtunnel),
        _ => return Err(format!("unknown condition key {key:?}")),
    };
    let mk = |v: &[String]| match kind {
        K::Ip(attr) => ips(attr, v),
        K::Port => ports(v),
        K::Text(attr) => Ok(text(attr, v)),
        K::ServiceAccount => service_accounts(v, namespace),
        K::NotRecorded => Ok(Pred::Const(None)),
    };
    let mut c = Constraints::new(Layer::Http);
    both(&mut c, &condition.values, &condition.not_values, Needs::L4, mk)?;
    Ok((c.finish().0, needs))
}

/// What a `when` key is compared with.
#[derive(Debug, Clone, Copy)]
enum ConditionKey {
    Ip(IpAttr),
    Port,
    Text(TextAttr),
    ServiceAccount,
    /// A key no access record carries (JWT claims, most request headers): always unknown.
    NotRecorded,
}
