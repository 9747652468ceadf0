//! Routing, cluster info and health, authentication, and Elasticsearch's error answers.

use axum::http::Method;
use serde_json::{Value, json};

use super::{ES_VERSION, ElasticApi};
use crate::siem::{Api, Common, Reply, Request, base64_decode, lock};

/// An Elasticsearch error answer `{"error":{"root_cause":[…],"type":…,"reason":…},"status":…}`.
pub(super) fn es_error(status: u16, kind: &str, reason: &str) -> Reply {
    let cause = json!({"type": kind, "reason": reason});
    Reply::json(
        status,
        &json!({"error": {"root_cause": [cause], "type": kind, "reason": reason}, "status": status}),
    )
}

impl Api for ElasticApi {
    fn handle(&self, req: &Request, common: &Common) -> Reply {
        let reply = self.route(req, common);
        reply.with_header("x-elastic-product", "Elasticsearch")
    }
}

impl ElasticApi {
    fn route(&self, req: &Request, common: &Common) -> Reply {
        let segments: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let bulk_index = match segments.as_slice() {
            ["_bulk"] => Some(None),
            [index, "_bulk"] => Some(Some(super::percent_decode(index))),
            _ => None,
        };
        if let Some(path_index) = bulk_index {
            if req.method != Method::POST && req.method != Method::PUT {
                return self.no_handler(req);
            }
            return self.bulk(req, common, path_index.as_deref()).ingest();
        }
        if let Err(r) = self.authenticate(req) {
            return r;
        }
        match (segments.as_slice(), &req.method) {
            ([], &Method::GET) => Reply::json(200, &self.info()),
            ([], &Method::HEAD) => Reply::empty(200).with_header("content-type", "application/json"),
            (["_cluster", "health", ..], &Method::GET) => Reply::json(200, &self.health()),
            _ => self.no_handler(req),
        }
    }

    fn no_handler(&self, req: &Request) -> Reply {
        Reply::json(
            400,
            &json!({
                "error": format!("no handler found for uri [{}] and method [{}]", uri(req), req.method),
                "status": 400,
            }),
        )
    }

    fn info(&self) -> Value {
        json!({
            "name": "verity-test-node",
            "cluster_name": "verity-test",
            "cluster_uuid": self.cluster_uuid,
            "version": {
                "number": ES_VERSION,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "1a77947f34deddb41af25e6f0ddb8e830159c179",
                "build_date": "2024-08-05T10:05:34.233336849Z",
                "build_snapshot": false,
                "lucene_version": "9.11.1",
                "minimum_wire_compatibility_version": "7.17.0",
                "minimum_index_compatibility_version": "7.0.0"
            },
            "tagline": "You Know, for Search"
        })
    }

    fn health(&self) -> Value {
        let shards = lock(&self.state).indices.len();
        json!({
            "cluster_name": "verity-test",
            "status": "green",
            "timed_out": false,
            "number_of_nodes": 1,
            "number_of_data_nodes": 1,
            "active_primary_shards": shards,
            "active_shards": shards,
            "relocating_shards": 0,
            "initializing_shards": 0,
            "unassigned_shards": 0,
            "unassigned_primary_shards": 0,
            "delayed_unassigned_shards": 0,
            "number_of_pending_tasks": 0,
            "number_of_in_flight_fetch": 0,
            "task_max_waiting_in_queue_millis": 0,
            "active_shards_percent_as_number": 100.0
        })
    }

    pub(super) fn authenticate(&self, req: &Request) -> Result<(), Reply> {
        let (api_key, basic) = (&self.settings.api_key, &self.settings.basic);
        if api_key.is_none() && basic.is_none() {
            return Ok(());
        }
        let Some(value) = req.header("authorization").map(str::trim) else {
            return Err(unauthorized(&format!(
                "missing authentication credentials for REST request [{}]",
                uri(req)
            )));
        };
        let bad = || {
            unauthorized(
                "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
            )
        };
        let (scheme, credentials) = value.split_once(' ').ok_or_else(bad)?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("apikey") {
            return match api_key {
                Some(key) if key == credentials => Ok(()),
                _ => Err(bad()),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(credentials).and_then(|b| String::from_utf8(b).ok());
            let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Err(bad());
            };
            return match basic {
                Some((u, p)) if u == user && p == password => Ok(()),
                _ => Err(unauthorized(&format!(
                    "unable to authenticate user [{user}] for REST request [{}]",
                    uri(req)
                ))),
            };
        }
        Err(bad())
    }
}

/// The 401 Elasticsearch answers with security enabled.
pub(super) fn unauthorized(reason: &str) -> Reply {
    let challenges = [
        "Basic realm=\"security\", charset=\"UTF-8\"",
        "Bearer realm=\"security\"",
        "ApiKey",
    ];
    let cause = json!({
        "type": "security_exception",
        "reason": reason,
        "header": {"WWW-Authenticate": challenges},
    });
    let body = json!({
        "error": {
            "root_cause": [cause],
            "type": "security_exception",
            "reason": reason,
            "header": {"WWW-Authenticate": challenges},
        },
        "status": 401,
    });
    challenges
        .iter()
        .fold(Reply::json(401, &body), |r, c| r.with_header("www-authenticate", *c))
}

/// The request's path and query, as Elasticsearch names it in messages.
fn uri(req: &Request) -> String {
    match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    }
}
