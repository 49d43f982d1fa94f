//! The oversight console: a web page where the overseer sees what the coordinator is doing and
//! decides approvals, outside the MCP client and so out of the model's reach.
//!
//! What lives here: the console's state and router (this file), its `[console]` config
//! (`config.rs`), binding and TLS (`listen.rs`), the checks every request passes and the
//! session extractor (`guard.rs`), sessions and one-time form tokens (`session.rs`), login
//! with the overseer's passphrase (`login.rs`) and, in team mode, through the identity
//! provider (`oidc/`), the page frame and static files (`layout.rs`, `static/`), unified diffs in
//! colour (`diff.rs`), and one file per
//! section: approvals (`approvals/`), live status (`live/`), audit (`audit.rs`) and
//! `/metrics` (`metrics.rs`). Pages are rendered on the server (maud) and every decision works
//! without JavaScript; the one script of ours only applies live updates.
//!
//! It may depend on the domains, `audit`, `overseer` and `store`'s surface, never on `server`
//! or rmcp: `mcp-coordinator console` serves it alone, and a serving coordinator serves it
//! beside MCP. It reads and decides through the same services the CLI uses, so a decision
//! here is recorded, audited and seen by a waiting tool call in any process exactly as one
//! made at the CLI (`Channel::Console`, which counts as out of band).

// Handlers return `Result<_, Response>` (axum's way to answer early with a refusal page); the
// response is large, and boxing it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod approvals;
pub mod audit;
pub mod config;
pub mod diff;
pub mod guard;
pub mod layout;
pub mod listen;
pub mod live;
pub mod login;
pub mod metrics;
pub mod oidc;
pub mod session;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::approval::ApprovalService;
use crate::audit::AuditLog;
use crate::config::Settings;
use crate::overseer::OverseerService;
pub use config::{ConsoleConfig, DEFAULT_CONSOLE_LISTEN, DEFAULT_SERVE_LISTEN};
pub use listen::{Bound, ListenError, bind};
use session::Sessions;

/// One console: what its pages read and decide through, its sessions, and the names it
/// answers to. Cheap to clone (handlers get a clone each).
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    audit: AuditLog,
    settings: Settings,
    approvals: ApprovalService,
    overseers: OverseerService,
    sessions: Sessions,
    hosts: guard::Hosts,
    url: String,
    cookie: String,
    secure_cookies: bool,
    logins: DefaultKeyedRateLimiter<IpAddr>,
    /// Login through the identity provider (team mode), when `[auth]` names one and a client.
    team: Option<oidc::TeamLogin>,
    tool_calls: Option<Arc<metrics::ToolCalls>>,
    /// The overseer credential in force as last read, and when (see
    /// [`Console::credential`]).
    credential: Mutex<Option<(Instant, Option<i64>)>>,
}

/// What [`Console::credential`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// The session's credential is the one in force.
    Current,
    /// The passphrase was changed or reset since (or no overseer is set any more).
    Changed,
    /// The credential could not be read (a busy database): neither yes nor no.
    Unknown,
}

/// How long the credential in force is trusted before it is read again: a passphrase changed
/// or reset at the CLI ends the old passphrase's console sessions within this.
const CREDENTIAL_FRESH: Duration = Duration::from_secs(2);

impl Console {
    /// A console for the database behind `audit`, answering at the address `bound` holds.
    /// `tool_calls` are this process's tool-call figures for `/metrics` (a serving
    /// coordinator has them; `mcp-coordinator console` alone does not).
    pub fn new(
        audit: AuditLog,
        settings: &Settings,
        bound: &Bound,
        tool_calls: Option<Arc<metrics::ToolCalls>>,
    ) -> Self {
        let config = &settings.config.console;
        let hosts = guard::Hosts::new(
            bound.local_addr(),
            bound.is_tls(),
            config.public_url.as_deref(),
        );
        let url = config.public_url.clone().unwrap_or_else(|| bound.url());
        // MCP's resource on this listener: what access tokens are asked for.
        let resource = format!("{}{}", url.trim_end_matches('/'), "/mcp");
        let team = oidc::TeamLogin::from_config(
            &settings.config.auth,
            &audit,
            &settings.data_dir,
            &resource,
        );
        let per_minute =
            NonZeroU32::new(config.login_attempts_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        Console {
            inner: Arc::new(Inner {
                approvals: ApprovalService::new(audit.clone(), settings.config.approvals.clone()),
                overseers: OverseerService::new(audit.clone()),
                audit,
                settings: settings.clone(),
                sessions: Sessions::new(Duration::from_secs(
                    config.session_idle_minutes.max(1) * 60,
                )),
                hosts,
                url,
                cookie: format!("{}_{}", session::COOKIE, bound.local_addr().port()),
                secure_cookies: bound.is_tls() || config.behind_proxy,
                logins: RateLimiter::keyed(Quota::per_minute(per_minute)),
                team,
                tool_calls,
                credential: Mutex::new(None),
            }),
        }
    }

    /// Every route, behind the Host/Origin checks and security headers.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/login", get(login::form).post(login::submit))
            .route("/logout", post(login::logout))
            .route("/login/oidc", get(oidc::flow::start))
            .route(oidc::flow::CALLBACK_PATH, get(oidc::flow::callback))
            .route("/static/console.css", get(layout::style))
            .route("/static/console.js", get(layout::script))
            .merge(live::routes())
            .merge(approvals::routes())
            .merge(audit::routes())
            .merge(metrics::routes())
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                guard::check,
            ))
            .with_state(self.clone())
    }

    /// Serves the console at `bound` until `shutdown` completes.
    pub async fn serve(
        self,
        bound: Bound,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        bound.serve(router, shutdown).await
    }

    /// The URL people open (the public URL when configured).
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// The URL of a path of this console (`path` starts with `/`).
    pub fn link(&self, path: &str) -> String {
        format!("{}{}", self.inner.url.trim_end_matches('/'), path)
    }

    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn approvals(&self) -> &ApprovalService {
        &self.inner.approvals
    }

    pub fn overseers(&self) -> &OverseerService {
        &self.inner.overseers
    }

    /// Login through the identity provider, in team mode.
    pub fn team(&self) -> Option<&oidc::TeamLogin> {
        self.inner.team.as_ref()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    pub fn hosts(&self) -> &guard::Hosts {
        &self.inner.hosts
    }

    /// The session cookie's name: `mcpc_session_PORT`, one per console on a host.
    pub fn cookie_name(&self) -> &str {
        &self.inner.cookie
    }

    /// Whether cookies are marked `Secure` (HTTPS here or at a proxy in front).
    pub fn secure_cookies(&self) -> bool {
        self.inner.secure_cookies
    }

    /// This process's tool-call figures, when it serves MCP too.
    pub fn tool_calls(&self) -> Option<&Arc<metrics::ToolCalls>> {
        self.inner.tool_calls.as_ref()
    }

    /// Whether a login attempt from `ip` is over the per-minute limit (counts this one).
    pub fn login_limited(&self, ip: IpAddr) -> bool {
        // Addresses whose quota has refilled are forgotten, so many addresses do not grow the
        // table without end.
        if self.inner.logins.len() > 4096 {
            self.inner.logins.retain_recent();
        }
        self.inner.logins.check_key(&ip).is_err()
    }

    /// Whether `credential` is still the overseer credential in force (read at most every
    /// [`CREDENTIAL_FRESH`]): a session opened with a passphrase since changed or reset is not.
    pub async fn credential(&self, credential: i64) -> Credential {
        let cached = *self
            .inner
            .credential
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = match cached {
            Some((at, current)) if at.elapsed() < CREDENTIAL_FRESH => current,
            _ => {
                let read = self.blocking(|c| c.overseers().current()).await;
                let current = match read {
                    Ok(Ok(o)) => o.map(|o| o.credential),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "console: cannot read the overseer credential");
                        return Credential::Unknown;
                    }
                    Err(_) => return Credential::Unknown,
                };
                *self
                    .inner
                    .credential
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), current));
                current
            }
        };
        if current == Some(credential) {
            Credential::Current
        } else {
            Credential::Changed
        }
    }

    /// Runs `f` (database reads and writes, argon2) on the blocking pool, off the async
    /// workers. A panic in `f` is an error page, not a dropped connection.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Console) -> T + Send + 'static,
    ) -> Result<T, Response> {
        let console = self.clone();
        tokio::task::spawn_blocking(move || f(&console))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "console: a blocking job failed");
                guard::refuse(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the console failed while answering; see the coordinator's log",
                )
            })
    }
}
