//! Serving: each server runs axum on its own thread and current-thread tokio runtime, hands every
//! request to the product's [`Api`](super::Api) and records it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use super::api::{RecordedRequest, Reply, Request};
use super::{Inner, MAX_BODY, Running, lock};

pub(super) fn stop(r: Running) {
    let _ = r.shutdown.send(());
    // The thread drops its runtime, which closes the listener and every connection.
    let _ = r.thread.join();
}

/// Serves `listener` on a new thread with its own current-thread runtime until told to stop.
pub(super) fn spawn(
    name: &'static str,
    listener: std::net::TcpListener,
    inner: Arc<Inner>,
) -> std::io::Result<Running> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("{name}-test-server"))
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("{name} test server: cannot register the listener: {e}");
                        return;
                    }
                };
                let app = Router::new().fallback(dispatch).with_state(inner);
                tokio::select! {
                    r = std::future::IntoFuture::into_future(axum::serve(listener, app)) => {
                        if let Err(e) = r {
                            eprintln!("{name} test server stopped: {e}");
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels the connection tasks: every socket is closed here.
            drop(runtime);
        })?;
    Ok(Running { shutdown, thread })
}

async fn dispatch(State(inner): State<Arc<Inner>>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::PAYLOAD_TOO_LARGE, &format!("cannot read the body: {e}")),
    };
    let request = Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    let reply = inner.api.handle(&request, &inner.common);
    let common = &inner.common;
    if reply.ingest {
        common.requests.fetch_add(1, Ordering::SeqCst);
    }
    lock(&common.log).push(RecordedRequest {
        method: request.method.to_string(),
        path: request.path,
        query: request.query,
        headers: request
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: request.body.to_vec(),
        status: reply.status,
        ingest: reply.ingest,
    });
    let delay = *lock(&common.delay);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    into_response(reply)
}

fn into_response(reply: Reply) -> Response {
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().append(HeaderName::from_static(name), v);
        }
    }
    resp
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut resp = Response::new(Body::from(text.to_string()));
    *resp.status_mut() = status;
    resp
}
