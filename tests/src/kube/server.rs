//! The HTTPS server: TLS, the accept loop (going down and up again), and each request's way from
//! hyper to an [`Answer`] and back to a response, recorded on the way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::routing::answer;
use super::state::Shared;
use super::status::failure;
use super::writes::Outcome;
use super::{KubeRequest, MAX_BODY_BYTES, Rejection};
use crate::siem::pseudo_guid;

pub(super) fn tls() -> Result<(String, rustls::ServerConfig), String> {
    let pki = crate::TestPki::generate(
        "kubernetes test CA",
        &["localhost", "kubernetes", "kubernetes.default.svc"],
    )?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert_der.into()], key_der)
        .map_err(|e| e.to_string())?;
    Ok((pki.ca_pem, config))
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept(listener: &Option<tokio::net::TcpListener>) -> std::io::Result<tokio::net::TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

pub(super) async fn serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    config: rustls::ServerConfig,
    shared: Arc<Shared>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut listener = tokio::net::TcpListener::from_std(listener).ok();
    shared.listening.store(listener.is_some(), Ordering::SeqCst);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let mut down = shared.down.subscribe();
    loop {
        let want_down = *down.borrow_and_update();
        if want_down && listener.is_some() {
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
        } else if !want_down && listener.is_none() {
            match bind(addr) {
                Ok(l) => {
                    listener = Some(l);
                    shared.listening.store(true, Ordering::SeqCst);
                }
                Err(_) => {
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = down.changed() => continue,
            r = accept(&listener) => {
                let Ok(tcp) = r else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                shared.open.fetch_add(1, Ordering::SeqCst);
                let open = OpenConnection(shared.clone());
                tokio::spawn(async move {
                    let _open = open;
                    let mut down = shared.down.subscribe();
                    let conn = async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let svc = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(handle(shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                            .await;
                    };
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        }
    }
}

/// One served connection, counted in `Shared::open` until dropped.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

type Resp = hyper::Response<http_body_util::Full<bytes::Bytes>>;

/// A request as the handlers see it.
pub(super) struct Req<'a> {
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) query: &'a str,
    headers: &'a hyper::HeaderMap,
    pub(super) body: &'a [u8],
}

impl Req<'_> {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The media type of the body, without parameters, lowercase.
    pub(super) fn media_type(&self) -> String {
        self.header("content-type")
            .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// An answer: status code, JSON body, warnings.
pub(super) struct Answer {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

impl Answer {
    pub(super) fn ok(code: u16, body: Value) -> Self {
        Self {
            code,
            body,
            warnings: Vec::new(),
        }
    }

    /// A `Status` failure; its `code` is the HTTP status.
    pub(super) fn fail(status: Value) -> Self {
        let code = status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        Self::ok(code, status)
    }

    pub(super) fn from_outcome(o: Outcome) -> Self {
        match o {
            Ok((code, body, warnings)) => Self { code, body, warnings },
            Err(status) => Self::fail(status),
        }
    }
}

async fn handle(shared: Arc<Shared>, req: hyper::Request<hyper::body::Incoming>) -> Resp {
    use http_body_util::BodyExt;
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(b) => Some(b.to_bytes()),
        Err(_) => None,
    };
    let delay = shared.lock().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let r = Req {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: body.as_deref().unwrap_or_default(),
    };
    let answer = match &body {
        Some(_) => answer(&shared, &r),
        None => Answer::fail(failure(
            413,
            "RequestEntityTooLarge",
            &format!("Request entity too large: limit is {MAX_BODY_BYTES}"),
            None,
        )),
    };
    let body_text = String::from_utf8_lossy(r.body).into_owned();
    {
        let mut inner = shared.lock();
        if (400..500).contains(&answer.code) {
            inner.rejections.push(Rejection {
                method: r.method.to_string(),
                path: r.path.to_string(),
                status: answer.body.clone(),
                body: body_text.clone(),
            });
        }
        inner.requests.push(KubeRequest {
            method: r.method.to_string(),
            path: r.path.to_string(),
            query: r.query.to_string(),
            content_type: r.header("content-type").map(str::to_string),
            body: body_text,
            status: answer.code,
            warnings: answer.warnings.clone(),
            at,
        });
    }
    shared.touch();
    respond(&answer)
}

/// `Warning: 299 - "text"`, as the apiserver writes it.
fn warning_header(text: &str) -> String {
    let escaped: String = text
        .chars()
        .map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' })
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("299 - \"{escaped}\"")
}

fn respond(a: &Answer) -> Resp {
    let mut b = hyper::Response::builder()
        .status(a.code)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .header("audit-id", pseudo_guid());
    // The apiserver sends Retry-After whenever a Status carries retryAfterSeconds.
    if let Some(s) = a.body["details"]["retryAfterSeconds"].as_u64().filter(|s| *s > 0) {
        b = b.header("retry-after", s.to_string());
    }
    for w in &a.warnings {
        b = b.header("warning", warning_header(w));
    }
    b.body(http_body_util::Full::new(bytes::Bytes::from(a.body.to_string())))
        .unwrap_or_else(|_| {
            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}
