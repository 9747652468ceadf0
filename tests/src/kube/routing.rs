//! Routing: authentication, discovery documents, and the verb of a resource request.

use serde_json::{Value, json};

use super::query::Query;
use super::server::{Answer, Req};
use super::state::{Shared, api_version};
use super::status::{failure, fault, forbidden, method_not_allowed, no_such_resource, not_found};
use super::verbs::{delete, delete_collection, list, patch, post, put};
use super::{GROUP, KIND, PLURAL, STORAGE_VERSION, VERSIONS};

enum Route<'a> {
    Version,
    Api,
    Apis,
    Group,
    GroupVersion(&'a str),
    Resource {
        version: &'a str,
        namespace: Option<&'a str>,
        name: Option<&'a str>,
    },
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match parts.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::Api,
        ["apis"] => Route::Apis,
        ["apis", GROUP] => Route::Group,
        ["apis", GROUP, v] if VERSIONS.contains(v) => Route::GroupVersion(v),
        ["apis", GROUP, v, PLURAL] if VERSIONS.contains(v) => Route::Resource {
            version: v,
            namespace: None,
            name: None,
        },
        ["apis", GROUP, v, "namespaces", ns, PLURAL] if VERSIONS.contains(v) && !ns.is_empty() => Route::Resource {
            version: v,
            namespace: Some(ns),
            name: None,
        },
        ["apis", GROUP, v, "namespaces", ns, PLURAL, name]
            if VERSIONS.contains(v) && !ns.is_empty() && !name.is_empty() =>
        {
            Route::Resource {
                version: v,
                namespace: Some(ns),
                name: Some(name),
            }
        }
        _ => Route::Unknown,
    }
}

fn authenticated(shared: &Shared, req: &Req<'_>) -> bool {
    let Some(auth) = req.header("authorization") else {
        return false;
    };
    let mut parts = auth.trim().splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token)) => {
            scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token == shared.token
        }
        _ => false,
    }
}

fn group_versions() -> Vec<Value> {
    VERSIONS
        .iter()
        .map(|v| json!({"groupVersion": api_version(v), "version": v}))
        .collect()
}

fn api_group() -> Value {
    json!({"name": GROUP, "versions": group_versions(),
        "preferredVersion": {"groupVersion": api_version(STORAGE_VERSION), "version": STORAGE_VERSION}})
}

pub(super) fn answer(shared: &Shared, req: &Req<'_>) -> Answer {
    if !authenticated(shared, req) {
        return Answer::fail(failure(401, "Unauthorized", "Unauthorized", None));
    }
    let q = Query::parse(req.query);
    let route = route(req.path);
    if !matches!(route, Route::Resource { .. } | Route::Unknown) && req.method != "GET" {
        return Answer::fail(method_not_allowed());
    }
    match route {
        Route::Version => Answer::ok(
            200,
            json!({"major": "1", "minor": "34", "emulationMajor": "1", "emulationMinor": "34",
                "minCompatibilityMajor": "1", "minCompatibilityMinor": "33",
                "gitVersion": "v1.34.1", "gitCommit": "93248f9ae092f571eb870b7664c534bfc7d00f03",
                "gitTreeState": "clean", "buildDate": "2025-09-09T19:36:55Z", "goVersion": "go1.24.6",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        Route::Api => Answer::ok(
            200,
            json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        ),
        Route::Apis => Answer::ok(
            200,
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}),
        ),
        Route::Group => {
            let mut group = api_group();
            group["kind"] = json!("APIGroup");
            group["apiVersion"] = json!("v1");
            Answer::ok(200, group)
        }
        Route::GroupVersion(v) => Answer::ok(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version(v),
                "resources": [{"name": PLURAL, "singularName": "authorizationpolicy", "namespaced": true,
                    "kind": KIND, "shortNames": ["ap"], "categories": ["istio-io", "security-istio-io"],
                    "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
                    "storageVersionHash": "0kCPUdlQrYE="},
                    {"name": format!("{PLURAL}/status"), "singularName": "", "namespaced": true, "kind": KIND,
                    "verbs": ["get", "patch", "update"]}]}),
        ),
        Route::Resource {
            version,
            namespace,
            name,
        } => resource(shared, req, &q, version, namespace, name),
        Route::Unknown => Answer::fail(no_such_resource()),
    }
}

fn resource(
    shared: &Shared,
    req: &Req<'_>,
    q: &Query,
    version: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Answer {
    let verb = match (req.method, name, namespace) {
        ("GET", None, _) if q.watch() => "watch",
        ("GET", None, _) => "list",
        ("GET", Some(_), _) => "get",
        ("POST", None, Some(_)) => "create",
        ("PUT", Some(_), _) => "update",
        ("PATCH", Some(_), _) => "patch",
        ("DELETE", Some(_), _) => "delete",
        ("DELETE", None, Some(_)) => "deletecollection",
        _ => return Answer::fail(method_not_allowed()),
    };
    {
        let mut inner = shared.lock();
        if inner.forbidden {
            return Answer::fail(forbidden(verb, namespace, name));
        }
        if let Some(code) = inner.faults.pop_front() {
            return Answer::fail(fault(code, verb, namespace, name));
        }
    }
    match (verb, namespace, name) {
        ("watch", ..) => Answer::fail(failure(
            405,
            "MethodNotAllowed",
            "watch is not supported by this test server",
            Some(json!({})),
        )),
        ("list", ns, _) => list(shared, q, version, ns),
        ("get", Some(ns), Some(name)) => {
            let inner = shared.lock();
            match inner.objects.get(&(ns.to_string(), name.to_string())) {
                Some(o) => Answer::ok(200, view(&o.live, version)),
                None => Answer::fail(not_found(name)),
            }
        }
        ("create", Some(ns), _) => Answer::from_outcome(post(shared, req, q, version, ns)),
        ("update", Some(ns), Some(name)) => Answer::from_outcome(put(shared, req, q, version, ns, name)),
        ("patch", Some(ns), Some(name)) => Answer::from_outcome(patch(shared, req, q, version, ns, name)),
        ("delete", Some(ns), Some(name)) => Answer::from_outcome(delete(shared, req, q, version, ns, name)),
        ("deletecollection", Some(ns), _) => Answer::from_outcome(delete_collection(shared, req, q, version, ns)),
        _ => Answer::fail(method_not_allowed()),
    }
}

/// The stored object as served in `version`.
pub(super) fn view(live: &Value, version: &str) -> Value {
    let mut v = live.clone();
    v["apiVersion"] = json!(api_version(version));
    v
}
