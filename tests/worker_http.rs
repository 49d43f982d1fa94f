//! The worker example over HTTP (`--url`) against `serve --http`: it runs the six-stage
//! pipeline an assistant (a stdio coordinator on the same database) starts, with a local agent
//! token from the environment, and with client-credentials tokens from the real OpenID provider
//! (`tests/idp`) that live 3 seconds, so the worker renews them in the middle of the run: once
//! ahead of expiry, and once after the coordinator refused an expired token it had been told
//! would last an hour (the token endpoint here is a counting proxy in front of the provider).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{HttpServer, issue_token};
use common::idp::{Idp, IdpConfig, WORKER, claims};
use rmcp::service::{Peer, RoleClient};
use serde_json::{Value, json};

const BASE_CONFIG: &str =
    "[tasks]\nbackoff_base_ms = 50\n\n[agents]\nheartbeat_interval_ms = 1000\n";

/// A worker example process over HTTP; its stderr goes to a log file.
struct Worker {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Worker {
    fn spawn(dir: &Path, url: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = dir.join("worker.log");
        let child = tokio::process::Command::new(common::worker::worker_bin())
            .args([
                "--name",
                "http-worker",
                "--url",
                url,
                "--log-level",
                "debug",
            ])
            .args(args)
            .env_remove("MCP_COORDINATOR_TOKEN")
            .env_remove("WORKER_CLIENT_SECRET")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the worker example");
        Worker { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, then the exit status: 0 after deregistering.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("worker still running");
        // SAFETY: a plain signal to our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the worker exits after SIGINT")
            .unwrap();
        let logs = self.logs();
        assert!(status.success(), "worker exit {status}:\n{logs}");
        assert!(logs.contains("deregistered"), "{logs}");
        logs
    }
}

/// The assistant: a stdio coordinator on the same data directory.
async fn assistant(dir: &Path, config: &Path) -> common::Client {
    common::connect(
        dir,
        &["--config", config.to_str().unwrap()],
        common::Era::Legacy,
    )
    .await
}

/// Creates and runs the six-stage pipeline; asserts every stage ran on `worker` in order and
/// returns how long the run took.
async fn run_pipeline(client: &Peer<RoleClient>, stage_ms: u64, worker: &Worker) -> Duration {
    common::call_ok(
        client,
        "pipeline_create",
        json!({"name": "nightly-etl", "template": "six_stage"}),
    )
    .await;
    let started = Instant::now();
    let out = common::call_ok(
        client,
        "pipeline_run",
        json!({"pipeline": "nightly-etl", "input": {"records": 42},
               "parameters": {"stage_ms": stage_ms}, "wait_seconds": 120}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(out["status"], "completed", "{out:#}\n{}", worker.logs());
    let run = &out["run"];
    assert_eq!(run["stages_done"], 6, "{run:#}");
    let agents = common::call_ok(client, "agent_list", json!({})).await;
    let agents = agents["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "{agents:#?}");
    assert_eq!(agents[0]["name"], "http-worker");
    let mut previous: Option<String> = None;
    for stage in run["stages"].as_array().unwrap() {
        assert_eq!(stage["status"], "completed", "{stage:#}");
        assert_eq!(stage["agent_id"], agents[0]["id"], "{stage:#}");
        assert_eq!(stage["output"]["records"], 42, "{stage:#}");
        let after: Vec<String> = serde_json::from_value(stage["output"]["after"].clone()).unwrap();
        assert_eq!(after, previous.iter().cloned().collect::<Vec<_>>());
        previous = Some(stage["name"].as_str().unwrap().to_string());
    }
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_a_local_agent_token_runs_the_pipeline_over_http() {
    let dir = common::data_dir();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, BASE_CONFIG).unwrap();
    let token = issue_token(dir.path(), &["agent"], "etl-worker", &[]);
    let server = HttpServer::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let worker = Worker::spawn(
        dir.path(),
        &server.mcp,
        &[],
        &[("MCP_COORDINATOR_TOKEN", token.as_str())],
    );
    let client = assistant(dir.path(), &config).await;
    run_pipeline(client.peer(), 20, &worker).await;
    let logs = worker.stop().await;
    assert!(
        !logs.contains(&token),
        "the worker logged its token:\n{logs}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_its_token_in_the_environment_says_which_variable() {
    let dir = common::data_dir();
    let out = tokio::process::Command::new(common::worker::worker_bin())
        .args(["--name", "w", "--url", "http://127.0.0.1:9/mcp"])
        .args(["--token-env", "NO_SUCH_TOKEN_VAR"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NO_SUCH_TOKEN_VAR is not set") && err.contains("exec --secret"),
        "{err}"
    );
}

/// What the counting token proxy saw.
#[derive(Default)]
struct Grants {
    /// The access tokens handed out, in order.
    tokens: Vec<String>,
}

/// A token endpoint in front of the provider's that counts the grants, and says the second
/// token lasts an hour (it lasts what the provider says), so the worker only learns it expired
/// from the coordinator's `401`.
async fn token_proxy(upstream: String) -> (String, Arc<Mutex<Grants>>) {
    let grants = Arc::new(Mutex::new(Grants::default()));
    let seen = grants.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let (seen, http, upstream) = (seen.clone(), http.clone(), upstream.clone());
            async move {
                let mut request = http.post(&upstream).body(body);
                for name in ["authorization", "content-type", "accept"] {
                    if let Some(v) = headers.get(name) {
                        request = request.header(name, v.as_bytes());
                    }
                }
                let r = request.send().await.unwrap();
                let status = r.status().as_u16();
                let mut answer: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
                if let Some(token) = answer["access_token"].as_str() {
                    let mut seen = seen.lock().unwrap();
                    seen.tokens.push(token.to_string());
                    if seen.tokens.len() == 2 {
                        answer["expires_in"] = json!(3600);
                    }
                }
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    answer.to_string(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, grants)
}

const TTL: u64 = 3;

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_with_short_lived_client_credentials_renews_them_mid_pipeline() {
    let idp = Idp::start(IdpConfig::realm(&[]).ttl(TTL));
    let (token_url, grants) = token_proxy(idp.token_url()).await;
    let dir = common::data_dir();
    let config = dir.path().join("config.toml");
    // No leeway: a token is refused the second it expires.
    std::fs::write(
        &config,
        format!(
            "{BASE_CONFIG}\n[auth]\nissuer = \"{}\"\nleeway_seconds = 0\n",
            idp.issuer
        ),
    )
    .unwrap();
    let server = HttpServer::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let worker = Worker::spawn(
        dir.path(),
        &server.mcp,
        &["--client-id", WORKER.0, "--token-url", &token_url],
        &[("WORKER_CLIENT_SECRET", WORKER.1)],
    );
    let client = assistant(dir.path(), &config).await;
    // Six stages of 2 s: four token lifetimes.
    let took = run_pipeline(client.peer(), 2000, &worker).await;
    assert!(took > Duration::from_secs(2 * TTL), "{took:?}");
    let logs = worker.stop().await;

    let tokens = grants.lock().unwrap().tokens.clone();
    // The first (renewed ahead of expiry), the second (said to last an hour, refused once
    // expired), and at least one after that.
    assert!(tokens.len() >= 3, "{} grants:\n{logs}", tokens.len());
    // The lying second token is the one refused; the others were renewed ahead of expiry (a
    // worker that renewed only on a 401 would meet one per token). One more is slack for a
    // request slowed past the token's last 20% on a loaded machine.
    let refusals = logs
        .matches("the coordinator refused the access token")
        .count();
    assert!(
        (1..=2).contains(&refusals),
        "{refusals} refusals of {} tokens:\n{logs}",
        tokens.len()
    );
    let mut jtis = std::collections::BTreeSet::new();
    for token in &tokens {
        let c = claims(token);
        assert_eq!(c["aud"], json!(server.mcp), "RFC 8707 resource: {c:#}");
        assert_eq!(c["realm_access"]["roles"], json!(["agent"]), "{c:#}");
        assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), TTL);
        jtis.insert(c["jti"].as_str().unwrap().to_string());
        assert!(!logs.contains(token.as_str()), "the worker logged a token");
    }
    assert_eq!(jtis.len(), tokens.len(), "every grant is a new token");
    assert!(!logs.contains(WORKER.1), "the worker logged its secret");

    // The first token alone could not have done it: the coordinator refuses it now.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "expired", "version": "1"}}});
    let status = reqwest::Client::new()
        .post(&server.mcp)
        .bearer_auth(&tokens[0])
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(initialize.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "the expired first token is still accepted");
    client.cancel().await.unwrap();
}
