//! The one HTTP client: reqwest over rustls, verifying servers against the platform's
//! certificate store (rustls-platform-verifier: the system roots, `SSL_CERT_FILE` and
//! `SSL_CERT_DIR` on Linux, the keychain on macOS), for registry lookups, webhooks and HTTP
//! children. It is built on first use, never at start-up: loading the roots costs milliseconds.

use std::future::Future;
use std::sync::OnceLock;

static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// The shared client (cheap to clone: one connection pool and one TLS configuration).
pub fn client() -> Result<reqwest::Client, String> {
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    // A failure (no certificate store at all) is not kept: the next call tries again.
    let built = reqwest::Client::builder()
        .user_agent(concat!("mcp-coordinator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {}", describe(e)))?;
    Ok(CLIENT.get_or_init(|| built).clone())
}

/// Runs `fut` to completion from synchronous code (the domain services run on blocking
/// threads). On a multi-threaded runtime it runs there; elsewhere (a current-thread runtime,
/// or none, as in unit tests) on a short-lived runtime of its own thread.
pub fn block_on<F>(fut: F) -> Result<F::Output, String>
where
    F: Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    if let Ok(handle) = Handle::try_current()
        && handle.runtime_flavor() == RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(|| handle.block_on(fut)));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
                .map_err(|e| format!("cannot start an I/O runtime: {e}"))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// What went wrong with a request, every cause included and never the URL (a webhook's path
/// is often its secret). A certificate the platform's store does not vouch for is named as such.
pub fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut parts: Vec<String> = Vec::new();
    let mut certificate = None;
    // Every error in the chain, and inside each `io::Error` the error it wraps (its `source`
    // skips that one), however deep.
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![&err];
    while let Some(e) = pending.pop() {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            certificate.get_or_insert_with(|| c.clone());
        }
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(next) = e.source() {
            pending.push(next);
        }
    }
    let chain = parts.join(": ");
    match certificate {
        Some(rustls::CertificateError::UnknownIssuer) => format!(
            "TLS certificate problem: the server's certificate is not signed by an authority in \
             this system's certificate store (UnknownIssuer); behind a TLS-intercepting proxy, \
             add the proxy's CA certificate to the system's store (on Linux, SSL_CERT_FILE may \
             instead name a PEM file holding every CA to trust) [{chain}]"
        ),
        Some(c) => format!("TLS certificate problem: {c:?} [{chain}]"),
        None => chain,
    }
}
