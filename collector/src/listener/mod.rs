//! The sockets Verity serves on (OTLP gRPC and HTTP, admin, ext_authz): plain TCP on
//! loopback, or TLS with an optional client certificate, whose SPIFFE ID is then known for
//! every request on the connection.
//!
//! [`SecureListener`] accepts TCP connections and runs TLS handshakes off the accept loop
//! (bounded in number and time, so slow or hostile clients cannot stall it), then hands out
//! ready connections with their [`PeerInfo`]: to axum through its `Listener` trait, to tonic
//! as a stream of connections whose connect info is the same [`PeerInfo`]. Handshake failures
//! are counted in `verity_intake_rejected_senders_total{listener, reason}`.

pub mod spiffe;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::Metrics;
pub use tls::{Alpn, ServerTls, TlsError};

/// A handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Handshakes in progress from one address; more are closed at once, so one pod holding
/// idle connections cannot take every slot.
const MAX_PENDING_HANDSHAKES_PER_PEER: usize = 16;
/// Ready connections not yet taken by the server.
const READY_CONNECTIONS: usize = 64;

/// Which listener, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerName {
    OtlpGrpc,
    OtlpHttp,
    Admin,
    ExtAuthz,
}

impl ListenerName {
    pub const fn as_str(self) -> &'static str {
        match self {
            ListenerName::OtlpGrpc => "otlp_grpc",
            ListenerName::OtlpHttp => "otlp_http",
            ListenerName::Admin => "admin",
            ListenerName::ExtAuthz => "ext_authz",
        }
    }
}

/// Why a sender was refused or a claim of identity ignored: the values of
/// `verity_intake_rejected_senders_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderRejection {
    /// The TLS handshake failed: no client certificate where one is required, one that does
    /// not chain to the client CA, or not TLS at all.
    TlsHandshake,
    TlsHandshakeTimeout,
    /// Too many handshakes in progress from one address: closed without one.
    TlsHandshakeLimit,
    /// No credential: no verified certificate, no token, no trusted proxy header.
    NoIdentity,
    /// A bearer token that matches no configured token.
    BadToken,
    /// Authenticated, but not in `allowed_senders`.
    SenderNotAllowed,
    /// `x-forwarded-client-cert` from a peer that is not a trusted proxy: ignored.
    XfccUntrustedPeer,
    /// `x-forwarded-client-cert` from a trusted proxy without a usable URI.
    XfccMalformed,
}

impl SenderRejection {
    pub const fn as_str(self) -> &'static str {
        match self {
            SenderRejection::TlsHandshake => "tls_handshake",
            SenderRejection::TlsHandshakeTimeout => "tls_handshake_timeout",
            SenderRejection::TlsHandshakeLimit => "tls_handshake_limit",
            SenderRejection::NoIdentity => "no_identity",
            SenderRejection::BadToken => "bad_token",
            SenderRejection::SenderNotAllowed => "sender_not_allowed",
            SenderRejection::XfccUntrustedPeer => "xfcc_untrusted_peer",
            SenderRejection::XfccMalformed => "xfcc_malformed",
        }
    }

    /// Counts one in `verity_intake_rejected_senders_total{listener, reason}`.
    pub fn count(self, metrics: &Metrics, listener: ListenerName) {
        metrics
            .rejected_senders
            .get_or_create(&[("listener", listener.as_str()), ("reason", self.as_str())])
            .inc();
    }
}

/// What is known about the other end of a connection before any request is read.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The SPIFFE ID of a client certificate that chained to the client CA.
    pub spiffe_id: Option<Arc<str>>,
}

/// A served connection: plain or TLS.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
}

impl Conn {
    fn peer(&self) -> PeerInfo {
        match self {
            Conn::Plain(s) => PeerInfo {
                remote: s.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                tls: false,
                spiffe_id: None,
            },
            Conn::Tls(_, peer) => peer.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// tonic puts this in every request's extensions.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer()
    }
}

/// A bound socket handing out ready (handshaken) connections.
pub struct SecureListener {
    ready: mpsc::Receiver<(Conn, PeerInfo)>,
    local: SocketAddr,
}

impl SecureListener {
    /// Binds `addr` and starts accepting; with `tls`, every connection is a TLS handshake.
    pub async fn bind(
        name: ListenerName,
        addr: SocketAddr,
        tls: Option<Arc<ServerTls>>,
        metrics: Metrics,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_CONNECTIONS);
        tokio::spawn(accept_loop(name, listener, tls, tx, metrics));
        Ok(Self { ready, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connections as tonic's `serve_with_incoming` takes them.
    pub fn into_incoming(self) -> impl tokio_stream::Stream<Item = Result<Conn, io::Error>> {
        use tokio_stream::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.ready).map(|(conn, _)| Ok(conn))
    }
}

impl axum::serve::Listener for SecureListener {
    type Io = Conn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Conn, PeerInfo) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept loop only ends when this receiver is gone, so this is unreachable in
            // practice; wait forever rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: self.local,
            tls: false,
            spiffe_id: None,
        })
    }
}

/// axum hands handlers the connection's [`PeerInfo`] through `ConnectInfo`.
impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, SecureListener>> for PeerInfo {
    fn connect_info(stream: axum::serve::IncomingStream<'_, SecureListener>) -> Self {
        stream.remote_addr().clone()
    }
}

async fn accept_loop(
    name: ListenerName,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    ready: mpsc::Sender<(Conn, PeerInfo)>,
    metrics: Metrics,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let per_peer: PendingPerPeer = Arc::default();
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name.as_str(), %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs stall multi-segment answers.
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            let peer = PeerInfo {
                remote,
                tls: false,
                spiffe_id: None,
            };
            if ready.send((Conn::Plain(tcp), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, remote.ip()) else {
            SenderRejection::TlsHandshakeLimit.count(&metrics, name);
            continue;
        };
        // Waiting here leaves further connections in the kernel backlog: bounded work.
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (acceptor, ready, metrics) = (tls.acceptor(), ready.clone(), metrics.clone());
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            drop(peer_slot);
            let reject = |reason: SenderRejection| reason.count(&metrics, name);
            match outcome {
                Ok(Ok(stream)) => {
                    let spiffe_id = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| spiffe::spiffe_id(leaf))
                        .map(Arc::from);
                    let peer = PeerInfo {
                        remote,
                        tls: true,
                        spiffe_id,
                    };
                    let _ = ready.send((Conn::Tls(Box::new(stream), peer.clone()), peer)).await;
                }
                Ok(Err(error)) => {
                    reject(SenderRejection::TlsHandshake);
                    tracing::debug!(listener = name.as_str(), %remote, %error, "TLS handshake failed");
                }
                Err(_) => {
                    reject(SenderRejection::TlsHandshakeTimeout);
                    tracing::debug!(listener = name.as_str(), %remote, "TLS handshake timed out");
                }
            }
        });
    }
}

type PendingPerPeer = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One handshake in progress from an address; released when dropped. The map holds only
/// addresses with handshakes in progress, so it is bounded by `MAX_PENDING_HANDSHAKES` plus
/// the connections being turned away.
struct PeerSlot {
    map: PendingPerPeer,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(map: &PendingPerPeer, ip: std::net::IpAddr) -> Option<Self> {
        let ip = ip.to_canonical();
        let mut pending = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = pending.entry(ip).or_insert(0);
        if *n >= MAX_PENDING_HANDSHAKES_PER_PEER {
            return None;
        }
        *n = n.saturating_add(1);
        Some(Self { map: map.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut pending = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = pending.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                pending.remove(&self.ip);
            }
        }
    }
}

/// Re-reads a listener's certificate files every `reload_poll_secs` until `stop`, counting
/// each reload in `verity_tls_reloads_total{listener, outcome}`.
pub async fn watch_certificates(
    name: ListenerName,
    tls: Arc<ServerTls>,
    metrics: Metrics,
    stop: impl std::future::Future<Output = ()>,
) {
    let every = Duration::from_secs(tls.config().reload_poll_secs.max(1));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        let t = tls.clone();
        let outcome = match tokio::task::spawn_blocking(move || t.reload_if_changed()).await {
            Ok(Ok(false)) => continue,
            Ok(Ok(true)) => {
                tracing::info!(listener = name.as_str(), "TLS certificate files changed: reloaded");
                "reloaded"
            }
            Ok(Err(error)) => {
                tracing::error!(listener = name.as_str(), %error, "TLS certificate files changed but do not load; keeping the previous ones");
                "error"
            }
            Err(_) => "error",
        };
        metrics
            .tls_reloads
            .get_or_create(&[("listener", name.as_str()), ("outcome", outcome)])
            .inc();
    }
}

/// The TLS settings of every listener that has a `tls:` block, loaded from their files.
#[derive(Debug, Default)]
pub struct ListenerTls {
    pub otlp_grpc: Option<Arc<ServerTls>>,
    pub otlp_http: Option<Arc<ServerTls>>,
    pub admin: Option<Arc<ServerTls>>,
    pub ext_authz: Option<Arc<ServerTls>>,
}
