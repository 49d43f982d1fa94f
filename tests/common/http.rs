//! MCP over HTTP in the tests: `serve --http` on a free loopback port (its URL read from the
//! start line), bearer tokens issued with `mcp-coordinator token issue`, and rmcp's streamable
//! HTTP client connected with one, in either era.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientLifecycleMode, ClientServiceExt};

use super::{BIN, Client, Era, client_config};

/// A `serve --http` process; killed on drop.
pub struct HttpServer {
    pub child: Child,
    /// `http://127.0.0.1:PORT/` (the listener's root: the console, `/metrics`).
    pub base: String,
    /// `http://127.0.0.1:PORT/mcp`.
    pub mcp: String,
}

impl HttpServer {
    /// Serves the database of `data_dir` over HTTP on a free loopback port (every toolset).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_at(data_dir, "127.0.0.1:0", extra)
    }

    /// [`start`](Self::start) listening on `listen`.
    pub fn start_at(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .env("MCP_COORDINATOR_TOOLSETS", "all")
            .arg("--data-dir")
            .arg(data_dir)
            // Info for our start line (it names the URL), warnings only from rmcp.
            .args(["--log-level", "warn,mcp_coordinator::cli=info"])
            .args(["serve", "--http", listen])
            .args(extra)
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve --http");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("http="))
                    .filter(|u| u.starts_with("http"))
                {
                    let _ = tx.send(url.to_string());
                }
                eprintln!("[serve --http] {line}");
            }
        });
        let mcp = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve --http names its URL");
        let base = mcp.trim_end_matches("mcp").to_string();
        HttpServer { child, base, mcp }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: a plain signal to our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().expect("wait")
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issues a local access token (`token issue`) and returns it.
pub fn issue_token(data_dir: &Path, roles: &[&str], name: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "issue", "--name", name];
    for r in roles {
        args.extend(["--role", r]);
    }
    args.extend(extra);
    let (code, out, err) = super::cli(data_dir, &args);
    assert_eq!(code, 0, "token issue: {err}");
    out.trim().to_string()
}

/// rmcp's streamable HTTP client at `url` with `token`, in `era`.
pub async fn connect_http(url: &str, token: &str, era: Era) -> Client {
    let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token.to_string());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let lifecycle = match era {
        Era::Legacy => ClientLifecycleMode::Initialize,
        Era::Stateless => ClientLifecycleMode::Discover {
            preferred_versions: vec![rmcp::model::ProtocolVersion::V_2026_07_28],
        },
    };
    client_config(match era {
        Era::Legacy => "http-legacy-test",
        Era::Stateless => "http-stateless-test",
    })
    .serve_with_lifecycle(transport, lifecycle)
    .await
    .expect("connect over HTTP")
}
