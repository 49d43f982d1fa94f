//! Where the console listens: binding the address (loopback unless TLS or a proxy makes
//! another acceptable), and the TLS listener that hands axum finished handshakes.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConsoleConfig;

/// A handshake that takes longer than this is dropped (a slow client must not hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may go on once the console is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Errors of binding the console's address.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("console listen address `{0}`: expected HOST:PORT, such as 127.0.0.1:8750")]
    Address(String),
    #[error(
        "listen address {0} is not loopback: serving beyond this machine needs TLS (tls_cert and \
tls_key in [console], or in [http] or --tls-cert and --tls-key with `serve --http`) or a \
TLS-terminating reverse proxy in front (behind_proxy = true in the same section)"
    )]
    NotLoopback(SocketAddr),
    #[error(
        "tls_cert and tls_key: give both or neither (--tls-cert and --tls-key with `serve --http`)"
    )]
    HalfTls,
    #[error("{field} {path}: {message}")]
    Tls {
        field: &'static str,
        path: String,
        message: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A bound address, not yet served (binding happens before the runtime starts, so a
/// coordinator knows its console's URL when it is built).
pub struct Bound {
    listener: StdListener,
    tls: Option<Arc<ServerConfig>>,
    addr: SocketAddr,
}

impl Bound {
    /// The address actually bound (the port the system chose for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the console itself serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URL this address is reached at on this machine.
    pub fn url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        if self.addr.ip().is_unspecified() {
            // 0.0.0.0 is where it listens, not an address anyone opens.
            let host = crate::audit::host_name().to_ascii_lowercase();
            return format!("{scheme}://{host}:{}/", self.addr.port());
        }
        format!("{scheme}://{}/", self.addr)
    }

    /// Serves `router` until `shutdown` completes, then lets requests in flight finish for
    /// at most [`SHUTDOWN_GRACE`]: an open event stream (the dashboard's) never finishes on
    /// its own, and must not keep the process from exiting.
    pub async fn serve(
        self,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = TcpListener::from_std(self.listener)?;
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = stopping.send(());
        };
        let grace = async move {
            if stopped.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let serving = async move {
            match self.tls {
                None => {
                    // No Nagle: a response goes out as headers then body chunks (an SSE event
                    // per MCP answer), and a small segment held for the client's delayed ACK
                    // cost every `/mcp` call about 40 ms.
                    let listener = listener.tap_io(|tcp| {
                        if let Err(e) = tcp.set_nodelay(true) {
                            tracing::debug!(error = %e, "console: cannot set TCP_NODELAY");
                        }
                    });
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }
                Some(config) => {
                    // `tap_io` only for its `Connected` impl, which gives handlers the peer
                    // address for any listener (axum has one of its own for plain TCP only).
                    let tls = TlsListener::start(listener, config).tap_io(|_| {});
                    axum::serve(tls, app).with_graceful_shutdown(shutdown).await
                }
            }
        };
        tokio::select! {
            served = serving => served,
            () = grace => Ok(()),
        }
    }
}

/// Binds `listen` as `config` allows: loopback always; another address only with TLS or
/// `behind_proxy`.
pub fn bind(config: &ConsoleConfig, listen: &str) -> Result<Bound, ListenError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| ListenError::Address(listen.to_string()))?;
    let tls = tls_config(config)?;
    if !addr.ip().is_loopback() && tls.is_none() && !config.behind_proxy {
        return Err(ListenError::NotLoopback(addr));
    }
    let listener = StdListener::bind(addr).map_err(|source| ListenError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ListenError::Bind {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ListenError::Bind {
        addr: listen.to_string(),
        source,
    })?;
    Ok(Bound {
        listener,
        tls,
        addr,
    })
}

fn tls_config(config: &ConsoleConfig) -> Result<Option<Arc<ServerConfig>>, ListenError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(ListenError::HalfTls),
    };
    let bad = |field, path: &std::path::Path, message: String| ListenError::Tls {
        field,
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("tls_cert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("tls_cert", cert, "no certificate in the file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("tls_key", key, e.to_string()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls_cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad("tls_key", key, e.to_string()))?;
    Ok(Some(Arc::new(server)))
}

/// Accepts TCP connections and runs each TLS handshake in a task of its own, so that one slow
/// client does not stall the others; axum takes finished handshakes from the channel.
struct TlsListener {
    ready: mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(listener: TcpListener, config: Arc<ServerConfig>) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "console: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                // As for plain TCP above: no Nagle.
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "console: cannot set TCP_NODELAY");
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "console: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "console: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop is gone only when the runtime is: wait for the shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
