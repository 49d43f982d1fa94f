//! The coordinator as an MCP client of its children: the one place below `server/` that uses
//! rmcp. A child is reached over one of two transports behind [`Transport`]: a stdio process
//! the coordinator starts (`stdio.rs`, with `process.rs`, `limits.rs`, `procfs.rs`,
//! `reaper.rs` and the fast relay of `fast.rs`, `pipe.rs` and `reactor.rs`), or a streamable
//! HTTP server it reaches by URL
//! (`http.rs`). [`Session`] is one connection (initialize, list tools, ping, close), [`Conn`]
//! what a running child's calls go through (`call.rs`).
//!
//! May depend on rmcp, the OS (libc, /proc) and the instance domain's types (the service, a
//! live instance, its breaker and redactor, the catalog); the domain reaches a child only
//! through what this module exports. The MCP data the domain handles (a tool's definition, a
//! call's arguments and result) are rmcp's own types, re-exported here, so no domain file
//! names rmcp.

pub(crate) mod fast;
mod http;
mod limits;
pub(crate) mod pipe;
pub mod process;
pub mod procfs;
pub(crate) mod reactor;
pub mod reaper;

pub use fast::{ClientSink, FastDone, FastHooks, RmcpLines, contains};
pub use pipe::{LineReader, MAX_LINE, PipeWriter};
pub use reactor::Source;
pub use rmcp::model::{CallToolResult, JsonObject, Tool};

mod call;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, PingRequest, ProtocolVersion,
};
use rmcp::service::{NotificationContext, Peer, RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceExt};
use tokio::sync::mpsc;

use super::catalog::InstanceType;
use super::redact::Redactor;
use super::{InstanceService, Live, ToolTable};
use process::{ChildProcess, SpawnSpec};

/// The live connection to a running child: what its calls go through.
#[derive(Clone)]
pub(crate) struct Conn {
    peer: Peer<RoleClient>,
    /// The child's full tool list, as last listed.
    pub(in crate::instance) raw: Arc<Vec<Tool>>,
    pub(in crate::instance) table: Arc<ToolTable>,
    /// The child's pipes for the fast path (stdio children only).
    pub(in crate::instance) fast: Option<Arc<fast::FastLink>>,
    /// The secret values the child was given, masked in what it sends back.
    pub(in crate::instance) redact: Redactor,
}

impl Conn {
    /// The same connection offering another tool list (listed again, or re-pinned).
    pub(in crate::instance) fn with_tools(&self, raw: Vec<Tool>, table: ToolTable) -> Conn {
        Conn {
            peer: self.peer.clone(),
            raw: Arc::new(raw),
            table: Arc::new(table),
            fast: self.fast.clone(),
            redact: self.redact.clone(),
        }
    }
}

/// How to reach a child: what the supervisor resolved from its type (templates expanded,
/// secrets included).
pub(crate) enum Launch {
    /// Start a process and speak MCP on its stdin and stdout.
    Stdio(SpawnSpec),
    /// Reach a streamable HTTP server, sending these headers on every request.
    Http {
        url: String,
        headers: Vec<(String, String)>,
    },
}

/// The transport under one session, one variant per kind of child.
pub(crate) enum Transport {
    /// A process the coordinator started (its process group, stderr, exit).
    Stdio(Box<ChildProcess>),
    /// A server reached by URL: nothing to wait on or kill.
    Http,
}

/// Why a session could not be opened: the message, and the last lines the child wrote to
/// stderr (stdio only).
pub(crate) struct OpenFailed {
    pub message: String,
    pub stderr: Vec<String>,
}

impl OpenFailed {
    fn new(message: String) -> Self {
        OpenFailed {
            message,
            stderr: Vec::new(),
        }
    }
}

/// The coordinator's client side of one child: it only listens for `tools/list_changed`.
#[derive(Clone)]
struct ChildClient {
    tools_changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for ChildClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-coordinator", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.tools_changed.send(());
    }
}

/// What happened to a running session.
pub(crate) enum SessionEvent {
    /// The child process exited, with its status (stdio only).
    Exited(String),
    /// The child sent `notifications/tools/list_changed`.
    ToolsChanged,
}

/// One connection to a child, initialized.
pub(crate) struct Session {
    service: RunningService<RoleClient, ChildClient>,
    transport: Transport,
    tools_changed: mpsc::UnboundedReceiver<()>,
    /// The fast path's link to a stdio child's pipes.
    fast: Option<Arc<fast::FastLink>>,
}

impl Session {
    /// Launches (or reaches) the child and initializes it within the type's init timeout.
    pub(crate) async fn open(
        svc: &InstanceService,
        live: &Arc<Live>,
        launch: Launch,
        redact: &Redactor,
    ) -> Result<Session, OpenFailed> {
        let (tools_tx, tools_changed) = mpsc::unbounded_channel();
        let client = ChildClient {
            tools_changed: tools_tx,
        };
        let ty = &live.ty;
        let (service, transport, fast) = match launch {
            Launch::Http { url, headers } => {
                let transport = http::transport(&url, &headers).map_err(OpenFailed::new)?;
                let service =
                    match tokio::time::timeout(ty.init_timeout(), client.serve(transport)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            return Err(OpenFailed::new(format!("initialize failed: {e}")));
                        }
                        Err(_) => return Err(OpenFailed::new(no_answer("initialize", ty))),
                    };
                (service, Transport::Http, None)
            }
            Launch::Stdio(spec) => {
                let (service, child, link) = stdio::open(svc, live, &spec, redact, client).await?;
                (service, Transport::Stdio(Box::new(child)), Some(link))
            }
        };
        Ok(Session {
            service,
            transport,
            tools_changed,
            fast,
        })
    }

    /// Lists the child's tools (every page), within the type's init timeout.
    pub(crate) async fn list_tools(&self, ty: &InstanceType) -> Result<Vec<Tool>, String> {
        match tokio::time::timeout(ty.init_timeout(), self.service.peer().list_all_tools()).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(format!("tools/list failed: {e}")),
            Err(_) => Err(no_answer("tools/list", ty)),
        }
    }

    /// The connection calls go through, offering `table`.
    pub(crate) fn conn(&self, raw: Vec<Tool>, table: ToolTable, redact: Redactor) -> Conn {
        Conn {
            peer: self.service.peer().clone(),
            raw: Arc::new(raw),
            table: Arc::new(table),
            fast: self.fast.clone(),
            redact,
        }
    }

    /// A health check: `ping`, answered within `timeout`.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let ping = self
            .service
            .peer()
            .send_request(ClientRequest::PingRequest(PingRequest::default()));
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    /// Waits until the child exits (stdio only) or says its tool list changed (a burst of
    /// notifications counts once).
    pub(crate) async fn event(&mut self) -> SessionEvent {
        let Session {
            transport,
            tools_changed,
            ..
        } = self;
        let exited = async {
            match transport {
                Transport::Stdio(p) => p
                    .wait()
                    .await
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                Transport::Http => std::future::pending().await,
            }
        };
        tokio::select! {
            status = exited => SessionEvent::Exited(status),
            Some(()) = tools_changed.recv() => {
                while tools_changed.try_recv().is_ok() {}
                SessionEvent::ToolsChanged
            }
        }
    }

    /// The child's process id (stdio only).
    pub(crate) fn pid(&self) -> Option<u32> {
        match &self.transport {
            Transport::Stdio(p) => Some(p.pid),
            Transport::Http => None,
        }
    }

    /// The last lines the child wrote to stderr (stdio only).
    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        match &self.transport {
            Transport::Stdio(p) => p.stderr.lines(),
            Transport::Http => Vec::new(),
        }
    }

    /// Remembers the child's descendants, so a crash leaves none behind (see `process.rs`).
    pub(crate) fn scan_tree(&mut self) {
        if let Transport::Stdio(p) = &mut self.transport {
            p.scan_tree();
        }
    }

    /// Close (stdin EOF / HTTP session end), wait, SIGTERM the group, wait, SIGKILL the group.
    pub(crate) async fn close(&mut self, grace: Duration) {
        // Take stock of its descendants while they are still its own: once it exits, those in
        // other groups or sessions are orphans, known only by this list.
        self.scan_tree();
        self.service.cancellation_token().cancel();
        if let Transport::Stdio(p) = &mut self.transport {
            if tokio::time::timeout(grace / 2, p.wait()).await.is_err() {
                tracing::debug!(
                    pid = p.pid,
                    "child did not exit on stdin close; sending SIGTERM"
                );
            }
            let outcome = p.terminate(grace).await;
            tracing::debug!(pid = p.pid, ?outcome, "child terminated");
        }
    }
}

/// "no answer to `what` within N s" (the type's init timeout).
fn no_answer(what: &str, ty: &InstanceType) -> String {
    format!("no answer to {what} within {} s", ty.init_timeout_seconds)
}
