//! What a product's API logic sees and answers ([`Request`], [`Reply`], scripted [`Fault`]s, the
//! [`Api`] trait), and [`RecordedRequest`], an entry of the request log.

use std::io::Read;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};
use serde_json::Value;

use super::util::percent_decode;
use super::{Common, MAX_INFLATED};

/// One HTTP request as a server received it, with the status it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The body as it arrived (still compressed if it was sent with `Content-Encoding`).
    pub body: Vec<u8>,
    pub status: u16,
    /// Whether this went to the server's ingestion endpoint (counted by [`TestServer::requests`]).
    pub ingest: bool,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A request handed to a server's API logic: the body is read in full.
pub(crate) struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// The media type of `Content-Type` (parameters removed), lower-cased.
    pub fn media_type(&self) -> Option<String> {
        self.header("content-type")
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }

    /// The body with any `Content-Encoding: gzip` removed.
    pub fn decoded_body(&self) -> Result<Vec<u8>, String> {
        match self.header("content-encoding").map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(self.body.to_vec()),
            Some(enc) if enc.is_empty() || enc == "identity" => Ok(self.body.to_vec()),
            Some(enc) if enc == "gzip" || enc == "x-gzip" => {
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(&self.body[..])
                    .take(MAX_INFLATED)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("invalid gzip body: {e}"))?;
                Ok(out)
            }
            Some(enc) => Err(format!("unsupported Content-Encoding [{enc}]")),
        }
    }
}

/// What a server's API logic answers.
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Counted in [`TestServer::requests`].
    pub ingest: bool,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json; charset=UTF-8".to_string())],
            body: body.to_string().into_bytes(),
            ingest: false,
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            ingest: false,
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Replaces the `content-type` header.
    pub fn with_content_type(mut self, value: &str) -> Reply {
        self.headers.retain(|(k, _)| *k != "content-type");
        self.headers.push(("content-type", value.to_string()));
        self
    }

    /// Marks the answer as one to the ingestion endpoint.
    pub fn ingest(mut self) -> Reply {
        self.ingest = true;
        self
    }
}

/// A scripted fault taken by an ingestion request.
pub(crate) enum Fault {
    /// [`TestServer::set_busy`] is on.
    Busy,
    /// The next of [`TestServer::fail_next`]'s statuses.
    Status(u16),
}

/// The API logic of one product.
pub(crate) trait Api: Send + Sync + 'static {
    /// Answers one request. Runs on the server thread; must not block for long.
    fn handle(&self, req: &Request, common: &Common) -> Reply;
}
