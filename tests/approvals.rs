//! Approvals over the real binary: MRTR `requestState` tampering, replay and cross-approval
//! use are refused; critical approvals never go to the client; a client without elicitation
//! gets the CLI command and a waiting call returns within a second of the CLI's decision;
//! expired approvals cannot be approved; rmcp's client answers elicitations in both eras.
//! Every test runs on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Db, RawServer, both_backends, call_ok, data_dir};
use rmcp::model::{
    ClientCapabilities, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
    Implementation, ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ErrorData};
use serde_json::{Value, json};

fn answer(decision: &str, reason: &str) -> Value {
    json!({"decision": {"action": "accept", "content": {"decision": decision, "reason": reason}}})
}

fn request_args(op: &str, risk: &str) -> Value {
    json!({"summary": format!("do {op}"), "action": {"op": op}, "risk": risk})
}

both_backends! {
#[test]
fn mrtr_state_is_verified_and_redeemed_once(db: Db) {
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let args = request_args("restart", "medium");
    let first = s.call("approval_request", args.clone(), true, None);
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first:#}");
    let question = &result["inputRequests"]["decision"];
    assert_eq!(question["method"], "elicitation/create");
    assert!(
        question["params"]["message"]
            .as_str()
            .unwrap()
            .contains("\"op\": \"restart\"")
    );
    let state = result["requestState"].as_str().unwrap().to_string();

    // Tampered: flip one character of the sealed payload.
    let mut bytes = state.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    let r = s.call(
        "approval_request",
        args.clone(),
        true,
        Some((answer("approve", "ok"), &tampered)),
    );
    assert_eq!(r["error"]["code"], -32602, "{r:#}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("requestState refused"),
        "{r:#}"
    );

    // Cross-approval: a second approval's call carrying the first one's state.
    let other = request_args("delete", "medium");
    let second = s.call("approval_request", other.clone(), true, None);
    assert_eq!(second["result"]["resultType"], "input_required");
    let r = s.call(
        "approval_request",
        other.clone(),
        true,
        Some((answer("approve", "ok"), &state)),
    );
    assert_eq!(r["error"]["code"], -32602, "{r:#}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("action hashes to"),
        "{r:#}"
    );

    // No answer at all.
    let r = s.call(
        "approval_request",
        args.clone(),
        true,
        Some((json!({}), &state)),
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no `decision` answer"),
        "{r:#}"
    );

    // The genuine answer is recorded once.
    let r = s.call(
        "approval_request",
        args.clone(),
        true,
        Some((answer("approve", "looks right"), &state)),
    );
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["state"], "approved", "{r:#}");
    assert_eq!(out["approval"]["decision"]["via"], "elicitation_form");
    assert_eq!(out["approval"]["decision"]["by"], "client:raw-modern/7");
    assert_eq!(out["approval"]["decision"]["reason"], "looks right");

    // Replayed: the same state and answer again.
    let r = s.call(
        "approval_request",
        args.clone(),
        true,
        Some((answer("reject", "changed my mind"), &state)),
    );
    assert_eq!(r["error"]["code"], -32602, "{r:#}");
    let id = out["approval"]["id"].as_str().unwrap();
    let got = s.call("approval_get", json!({"approval_id": id}), false, None);
    assert_eq!(got["result"]["structuredContent"]["state"], "approved");

    // A state sealed by another coordinator process is refused too.
    let mut other_process = db.raw_server(dir.path(), &[]);
    let second_state = second["result"]["requestState"].as_str().unwrap();
    let r = other_process.call(
        "approval_request",
        other,
        true,
        Some((answer("approve", "ok"), second_state)),
    );
    assert_eq!(r["error"]["code"], -32602, "{r:#}");
}
}

both_backends! {
#[test]
fn critical_approvals_are_never_asked_in_the_client(db: Db) {
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let r = s.call(
        "approval_request",
        request_args("wipe", "critical"),
        true,
        None,
    );
    let out = &r["result"]["structuredContent"];
    assert_eq!(r["result"]["resultType"], "complete", "{r:#}");
    assert_eq!(out["state"], "pending");
    assert_eq!(out["pending_reason"], "out_of_band_required");
    assert_eq!(out["approval"]["decide_with"], "out_of_band");
    let cmd = out["decide_command"].as_str().unwrap();
    let id = out["approval"]["id"].as_str().unwrap();
    assert!(cmd.contains(&format!("approvals approve {id}")), "{cmd}");
    assert!(
        cmd.contains("--data-dir"),
        "the command must reach this data dir: {cmd}"
    );

    // Forging an answer without a question fails: there is no valid state to send.
    let r = s.call(
        "approval_request",
        request_args("wipe", "critical"),
        true,
        Some((answer("approve", "x"), "rs1.AAAA.BBBB")),
    );
    assert_eq!(r["error"]["code"], -32602);

    // The CLI decides it.
    let (code, out, err) = db.cli(
        dir.path(),
        &["approvals", "approve", id, "--reason", "checked", "--yes"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r = s.call("approval_request", json!({"approval_id": id}), true, None);
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["state"], "approved");
    assert_eq!(out["approval"]["decision"]["via"], "cli");
    assert!(
        out["approval"]["decision"]["by"]
            .as_str()
            .unwrap()
            .starts_with("user:")
    );
}
}

both_backends! {
#[test]
fn without_elicitation_a_waiting_call_returns_within_a_second_of_the_cli(db: Db) {
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let r = s.call(
        "approval_request",
        request_args("deploy", "high"),
        false,
        None,
    );
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["state"], "pending");
    assert_eq!(out["pending_reason"], "no_elicitation");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("approvals approve")
    );
    let id = out["approval"]["id"].as_str().unwrap().to_string();

    let data = dir.path().to_path_buf();
    let db2 = db.clone();
    let decider = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let (code, out, err) = db2.cli(
            &data,
            &["approvals", "approve", &id, "--reason", "fine", "--yes"],
        );
        assert_eq!(code, 0, "{out}{err}");
        Instant::now()
    });
    let started = Instant::now();
    let r = s.call(
        "approval_request",
        json!({"approval_id": out["approval"]["id"], "wait_seconds": 30}),
        false,
        None,
    );
    let returned = Instant::now();
    let decided = decider.join().unwrap();
    assert_eq!(
        r["result"]["structuredContent"]["state"], "approved",
        "{r:#}"
    );
    assert!(
        returned.duration_since(decided) < Duration::from_secs(1),
        "returned {:?} after the decision",
        returned.duration_since(decided)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
}

both_backends! {
#[test]
fn expired_approvals_cannot_be_approved(db: Db) {
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let r = s.call("approval_request", json!({"summary": "soon gone", "action": {"op": "x"}, "risk": "low", "expires_in_seconds": 1}), false, None);
    let id = r["result"]["structuredContent"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(1200));
    let (code, _, err) = db.cli(
        dir.path(),
        &["approvals", "approve", &id, "--reason", "late", "--yes"],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already expired"), "{err}");
    let got = s.call("approval_get", json!({"approval_id": id}), false, None);
    assert_eq!(got["result"]["structuredContent"]["state"], "expired");
    assert_eq!(
        got["result"]["structuredContent"]["decision"]["via"],
        "expiry"
    );
    let listed = s.call("approval_list", json!({"state": "expired"}), false, None);
    assert_eq!(
        listed["result"]["structuredContent"]["approvals"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
}

both_backends! {
#[test]
fn no_tool_accepts_a_decision(db: Db) {
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let r = s.call(
        "approval_request",
        json!({"summary": "x", "action": {"op": "x"}, "risk": "low", "decision": "approve"}),
        false,
        None,
    );
    let (field, message) = common::raw_invalid_argument("approval_request", &r);
    assert_eq!(field, "decision");
    assert!(message.contains("unknown field `decision`"), "{message}");
    let tools = s.request("tools/list", json!({"_meta": RawServer::meta(false)}));
    for tool in tools["result"]["tools"].as_array().unwrap() {
        let props = tool["inputSchema"]["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for key in props.keys() {
            assert!(
                !["decision", "approve", "approved", "verdict"].contains(&key.as_str()),
                "{} takes {key}",
                tool["name"]
            );
        }
    }
}
}

/// A client whose person answers every elicitation with `answer`, counting questions and
/// progress notifications.
#[derive(Clone)]
struct Person {
    answer: ElicitationAction,
    decision: &'static str,
    delay: Duration,
    asked: Arc<AtomicUsize>,
    progress: Arc<AtomicUsize>,
}

impl ClientHandler for Person {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::builder().enable_elicitation().build(),
            Implementation::new("person-test", "3.0"),
        )
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let ElicitRequestParams::FormElicitationParams { message, .. } = request else {
            return Err(ErrorData::invalid_params("expected a form", None));
        };
        assert!(message.contains("What will run"), "{message}");
        tokio::time::sleep(self.delay).await;
        let mut result = ElicitResult::new(self.answer.clone());
        if self.answer == ElicitationAction::Accept {
            result.content = Some(json!({"decision": self.decision, "reason": "seen it"}));
        }
        Ok(result)
    }

    async fn on_progress(
        &self,
        _params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.fetch_add(1, Ordering::SeqCst);
    }
}

/// `tools/call approval_request` through the running service, which answers MRTR input
/// requests with the client's handler and retries (the plain `Peer::call_tool` does not).
async fn call_mrtr(
    client: &rmcp::service::RunningService<RoleClient, Person>,
    args: Value,
) -> Value {
    let params = rmcp::model::CallToolRequestParams::new("approval_request")
        .with_arguments(args.as_object().cloned().unwrap());
    let result = client.call_tool(params).await.unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result.structured_content.unwrap()
}

async fn person_client(
    db: &Db,
    dir: &std::path::Path,
    person: Person,
    stateless: bool,
) -> rmcp::service::RunningService<RoleClient, Person> {
    let transport = TokioChildProcess::new(db.command(dir, &[])).unwrap();
    let lifecycle = if stateless {
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        }
    } else {
        ClientLifecycleMode::Initialize
    };
    person
        .serve_with_lifecycle(transport, lifecycle)
        .await
        .unwrap()
}

both_backends! {
#[tokio::test]
async fn rmcp_client_answers_elicitations_in_both_eras(db: Db) {
    let cases = [
        (ElicitationAction::Accept, "approve", "approved", None),
        (ElicitationAction::Accept, "reject", "rejected", None),
        (ElicitationAction::Decline, "", "rejected", Some("declined")),
        (
            ElicitationAction::Cancel,
            "",
            "cancelled",
            Some("dismissed"),
        ),
    ];
    for stateless in [false, true] {
        for (i, (action, decision, expected, cause)) in cases.iter().enumerate() {
            let dir = data_dir();
            // A database of its own each time round, as the data directory is.
            let db = db.another("round");
            let person = Person {
                answer: action.clone(),
                decision,
                delay: Duration::from_millis(10),
                asked: Arc::default(),
                progress: Arc::default(),
            };
            let client = person_client(&db, dir.path(), person.clone(), stateless).await;
            let out = call_mrtr(&client, request_args(&format!("case{i}"), "high")).await;
            assert_eq!(out["state"], *expected, "stateless={stateless} {out:#}");
            assert_eq!(person.asked.load(Ordering::SeqCst), 1);
            let decision_rec = &out["approval"]["decision"];
            assert_eq!(decision_rec["by"], "client:person-test/3.0");
            if let Some(cause) = cause {
                assert!(
                    decision_rec["cause"].as_str().unwrap().contains(cause),
                    "{out:#}"
                );
            } else {
                assert_eq!(decision_rec["reason"], "seen it");
            }
            // The decision is a signed, critical audit event.
            let verify = call_ok(&client, "audit_verify", json!({})).await;
            assert_eq!(verify["ok"], true);
            assert!(verify["signatures"]["valid"].as_u64().unwrap() >= 1);
            client.cancel().await.unwrap();
        }
    }
}
}

both_backends! {
#[tokio::test]
async fn a_slow_person_is_waited_for_with_progress_and_critical_is_not_asked(db: Db) {
    let dir = data_dir();
    let person = Person {
        answer: ElicitationAction::Accept,
        decision: "approve",
        delay: Duration::from_millis(4500),
        asked: Arc::default(),
        progress: Arc::default(),
    };
    let client = person_client(&db, dir.path(), person.clone(), false).await;
    let started = Instant::now();
    let mut params = rmcp::model::CallToolRequestParams::new("approval_request");
    params = params.with_arguments(request_args("slow", "medium").as_object().cloned().unwrap());
    let mut meta = rmcp::model::RequestMetaObject::new();
    meta.set_progress_token(rmcp::model::ProgressToken(
        rmcp::model::NumberOrString::Number(7),
    ));
    params.meta = Some(meta);
    let result = client.call_tool(params).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(4400));
    assert_eq!(result.structured_content.unwrap()["state"], "approved");
    assert!(
        person.progress.load(Ordering::SeqCst) >= 2,
        "progress notifications while waiting"
    );

    let out = call_mrtr(&client, request_args("wipe", "critical")).await;
    assert_eq!(out["state"], "pending");
    assert_eq!(out["pending_reason"], "out_of_band_required");
    assert_eq!(
        person.asked.load(Ordering::SeqCst),
        1,
        "the critical approval was not asked in the client"
    );
    client.cancel().await.unwrap();
}
}

both_backends! {
/// `approvals approve` shows the approval and asks on a terminal; anything but `yes` leaves it
/// pending; without a terminal it refuses unless `--yes` is given.
#[test]
fn cli_approve_confirms_on_a_terminal(db: Db) {
    use std::io::Write;
    let dir = data_dir();
    let mut s = db.raw_server(dir.path(), &[]);
    let r = s.call(
        "approval_request",
        json!({"summary": "rotate the key", "action": {"op": "rotate"}, "risk": "high", "preview": "- old key\n+ new key"}),
        false,
        None,
    );
    let id = r["result"]["structuredContent"]["approval"]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (code, _, err) = db.cli(dir.path(), &["approvals", "approve", &id, "--reason", "ok"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("not on a terminal") && err.contains("--yes"),
        "{err}"
    );

    let (code, out, _) = db.cli(dir.path(), &["approvals", "show", &id]);
    assert_eq!(code, 0);
    for needle in [
        "rotate the key",
        "\"op\": \"rotate\"",
        "+ new key",
        "risk:         high",
        "client:raw-modern/7",
    ] {
        assert!(out.contains(needle), "show lacks {needle:?}:\n{out}");
    }
    // Pending: who may decide it, never "decided with".
    assert!(
        out.contains("may decide:") && !out.contains("decided with"),
        "{out}"
    );

    let on_terminal = |answer: &str| {
        let inner = format!(
            "{} --data-dir {} {} approvals approve {id} --reason 'looked at it'",
            common::BIN,
            dir.path().display(),
            db.args()
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = std::process::Command::new("script")
            .args(["-q", "-e", "-c", &inner, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("script(1) from util-linux");
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for answer in ["no", "y", "Y", "YES"] {
        let (code, screen) = on_terminal(answer);
        assert_eq!(code, Some(1), "{answer}: {screen}");
        assert!(
            screen.contains("Approve this action?") && screen.contains("still pending"),
            "{answer}: {screen}"
        );
        let got = s.call("approval_get", json!({"approval_id": id}), false, None);
        assert_eq!(got["result"]["structuredContent"]["state"], "pending");
    }

    let (code, screen) = on_terminal("yes");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("approved by user:"), "{screen}");
    let got = s.call("approval_get", json!({"approval_id": id}), false, None);
    assert_eq!(got["result"]["structuredContent"]["state"], "approved");
    assert_eq!(
        got["result"]["structuredContent"]["decision"]["reason"],
        "looked at it"
    );
    let (code, out, _) = db.cli(dir.path(), &["approvals", "show", &id]);
    assert_eq!(code, 0);
    assert!(
        out.contains("decided with: cli") && !out.contains("may decide"),
        "{out}"
    );
}
}
