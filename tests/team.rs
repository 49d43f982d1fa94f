//! The team scenario over HTTP (issue 18): three coordinators (three processes of the real
//! binary, each with its own data directory as separate hosts would have) serve MCP over HTTP
//! on ONE shared database, a SQLite file or PostgreSQL. Workers on each (API keys, which are rows
//! in the shared database and so good at every coordinator) claim in batches and report; 10,000
//! tasks are submitted and a 100-stage pipeline with an approval gate runs, the gate decided by
//! the overseer in one coordinator's console. Meanwhile coordinators are killed with SIGKILL at
//! seeded random points and restarted on the same data directory and database; their workers
//! reconnect (to it once it is back, or to another). At the end every task completed exactly
//! once (the audit chain's `task.completed` events), the run completed, and
//! `mcp-coordinator audit verify` passes on the shared chain.
//!
//! `TEAM_TASKS`, `TEAM_STAGES` shrink it for local iteration (defaults: the 10,000 and
//! 100); `TEAM_SEED` replays a chaos schedule (each run prints its seed; the timing of the rest
//! differs, so a replay kills at the same moments, not at the same work); `TEAM_CHAOS=0` kills
//! nothing (to measure); `TEAM_KEEP=1` keeps the directory with every coordinator's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Era;
use common::console::{PASSPHRASE, on_terminal};
use common::fleet::{Backend, Fleet, Rng};
use common::team::{Conn, Stats, WorkerSpec, approve_in_console, worker};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const COORDINATORS: usize = 3;
const WORKERS_PER_COORDINATOR: usize = 2;
/// Submitting lanes (a connection each, one call in flight), spread over the fleet.
const SUBMIT_LANES: usize = 24;
/// How long the whole scenario may take before it fails with what it saw.
const DEADLINE: Duration = Duration::from_secs(900);

/// One scenario at a time: each loads the machine fully.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

#[test]
fn a_team_of_three_coordinators_on_one_sqlite_file_survives_kill_9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let db = root.path().join("shared.db");
    scenario(Backend::Sqlite(db), &keep(root));
}

#[test]
fn a_team_of_three_coordinators_on_postgresql_survives_kill_9() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().unwrap();
    let url = mcp_coordinator::store::testing::fresh_database("team");
    scenario(Backend::Postgres(url), &keep(root));
}

/// The scenario's directory: removed at the end, or kept with `TEAM_KEEP=1` (the logs of every
/// coordinator start are in `coordinator-I/serve.log`).
struct Root {
    /// Removes the directory when dropped, unless kept.
    _dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl std::ops::Deref for Root {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

fn keep(dir: tempfile::TempDir) -> Root {
    if std::env::var("TEAM_KEEP").is_ok_and(|v| v == "1") {
        let path = dir.keep();
        eprintln!("[team] keeping {}", path.display());
        Root { _dir: None, path }
    } else {
        let path = dir.path().to_path_buf();
        Root {
            _dir: Some(dir),
            path,
        }
    }
}

/// The scenario's sizes and seed.
#[derive(Debug, Clone, Copy)]
struct Plan {
    tasks: u64,
    stages: u64,
    seed: u64,
}

fn scenario(backend: Backend, root: &Path) {
    let seed = env_u64(
        "TEAM_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007,
    );
    let plan = Plan {
        tasks: env_u64("TEAM_TASKS", 10_000),
        stages: env_u64("TEAM_STAGES", 100),
        seed,
    };
    eprintln!(
        "[team] {}: {} tasks, a {}-stage pipeline with an approval gate, {COORDINATORS} \
         coordinators; seed {seed} (TEAM_SEED={seed} replays the kills)",
        backend.name(),
        plan.tasks,
        plan.stages
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(backend, root, plan));
}

/// The coordinators' config: heartbeats every 2 s (offline after 10 s), no offer window (every
/// worker reports load 0), no rate limit that 10,000 submits would hit.
const CONFIG: &str = "\
[tasks]
backoff_base_ms = 50

[agents]
heartbeat_interval_ms = 2000
offer_window_ms = 0

[http]
requests_per_minute = 1000000
max_sessions_per_principal = 256
max_sessions = 1024
";

/// `token issue --api-key` on the shared database.
fn api_key(dir: &Path, db: &str, role: &str, name: &str) -> String {
    let (code, out, err) = common::cli(
        dir,
        &[
            "--db",
            db,
            "token",
            "issue",
            "--api-key",
            "--role",
            role,
            "--name",
            name,
        ],
    );
    assert_eq!(code, 0, "token issue --api-key: {err}");
    out.trim().to_string()
}

async fn run(backend: Backend, root: &Path, plan: Plan) {
    let started = Instant::now();
    let db = backend.arg();
    let config = root.join("config.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let setup_dir = root.join("setup");
    std::fs::create_dir_all(&setup_dir).unwrap();
    // The overseer lives in the shared database: one passphrase for every coordinator's console.
    on_terminal(
        &setup_dir,
        &["--db", &db, "overseer", "init"],
        &[
            ("Overseer name", "ada"),
            ("New passphrase", PASSPHRASE),
            ("again", PASSPHRASE),
        ],
    );
    let admin_key = api_key(&setup_dir, &db, "admin", "team-admin");
    let workers: Vec<WorkerSpec> = (0..COORDINATORS * WORKERS_PER_COORDINATOR)
        .map(|w| {
            let name = format!("team-worker-{w}");
            WorkerSpec {
                key: api_key(&setup_dir, &db, "agent", &name),
                name,
                home: w % COORDINATORS,
                era: if w % 2 == 0 {
                    Era::Legacy
                } else {
                    Era::Stateless
                },
                capability: "data-processing".into(),
                batch: 50,
                parallel: 8,
                loyal: w >= COORDINATORS,
            }
        })
        .collect();

    let fleet = Arc::new(tokio::task::block_in_place(|| {
        Fleet::start(root, COORDINATORS, &db, &config, plan.seed)
    }));
    eprintln!(
        "[team] fleet up after {:?}: {}",
        started.elapsed(),
        (0..COORDINATORS)
            .map(|i| fleet.mcp(i))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stats = Arc::new(Stats::default());
    let mut admin = Conn::new(
        fleet.clone(),
        &admin_key,
        Era::Legacy,
        "team-admin",
        0,
        stats.clone(),
    );

    // The pipeline, started before the kills begin (a lost `pipeline_run` answer would start a
    // second run): stages s000.. in a chain, the approval gate in the middle; high priority, so
    // its stages pass the 10,000 queued tasks.
    let gate_after = plan.stages / 2;
    let mut stages = Vec::new();
    let mut names = Vec::new();
    for s in 0..plan.stages {
        if s == gate_after {
            stages.push(json!({"name": "gate", "approval": true, "risk": "medium"}));
            names.push("gate".to_string());
        }
        let name = format!("s{s:03}");
        stages.push(
            json!({"name": name, "type": "stage", "capability": "data-processing",
                           "timeout_seconds": 15, "retries": 20, "params": {"stage": s}}),
        );
        names.push(name);
    }
    let dependencies: Vec<Value> = names
        .windows(2)
        .map(|w| json!({"from": w[0], "to": w[1]}))
        .collect();
    let created = admin
        .call(
            "pipeline_create",
            json!({"name": "team-pipeline", "stages": stages, "dependencies": dependencies}),
        )
        .await
        .unwrap_or_else(|r| panic!("pipeline_create: {r}"));
    let run = admin
        .call(
            "pipeline_run",
            json!({"pipeline": created["pipeline_id"], "input": {"records": 7},
                   "priority": "high"}),
        )
        .await
        .unwrap_or_else(|r| panic!("pipeline_run: {r}"));
    let run_id = run["run_id"].as_str().unwrap().to_string();

    let stop = CancellationToken::new();
    let chaos_log = Arc::new(Mutex::new(Vec::<String>::new()));
    let chaos = tokio::spawn(chaos(
        fleet.clone(),
        plan.seed,
        stop.clone(),
        chaos_log.clone(),
        started,
    ));
    let mut crew = Vec::new();
    for spec in workers {
        crew.push(tokio::spawn(worker(
            fleet.clone(),
            spec,
            stats.clone(),
            stop.clone(),
        )));
    }
    let submitted = Arc::new(Mutex::new(HashMap::<u64, String>::new()));
    let next = Arc::new(AtomicU64::new(0));
    let mut submitters = Vec::new();
    for lane in 0..SUBMIT_LANES {
        submitters.push(tokio::spawn(submit(
            fleet.clone(),
            admin_key.clone(),
            lane,
            plan,
            stats.clone(),
            next.clone(),
            submitted.clone(),
        )));
    }
    let driver = tokio::spawn(drive_pipeline(
        fleet.clone(),
        admin_key.clone(),
        run_id.clone(),
        plan.seed,
        stats.clone(),
        started,
    ));

    let monitor = {
        let (stats, submitted, stop) = (stats.clone(), submitted.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                eprintln!(
                    "[team] t={:.0}s submitted {}, completions acknowledged {}, reconnects {}, \
                     calls lost {}",
                    started.elapsed().as_secs_f64(),
                    submitted.lock().unwrap().len(),
                    stats.acked.lock().unwrap().len(),
                    stats.reconnects.load(Ordering::Relaxed),
                    stats.lost_calls.load(Ordering::Relaxed),
                );
            }
        })
    };
    for s in submitters {
        s.await.expect("a submitter failed");
    }
    let submitted_after = started.elapsed();
    eprintln!(
        "[team] {} tasks submitted after {submitted_after:?}",
        plan.tasks
    );

    // Until the queue has every task completed and the run ended.
    let expected_completed = plan.tasks + plan.stages;
    let mut last_print = Instant::now();
    loop {
        let q = admin
            .call("queue_stats", json!({}))
            .await
            .unwrap_or_else(|r| panic!("queue_stats: {r}"));
        let by = &q["by_status"];
        let completed = by["completed"].as_u64().unwrap_or(0);
        for bad in ["dead", "failed", "cancelled"] {
            assert_eq!(
                by[bad].as_u64().unwrap_or(0),
                0,
                "tasks {bad}: {q:#}\n{}",
                diagnostics(&fleet, &stats, &chaos_log)
            );
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!("[team] t={:?} queue {by}", started.elapsed());
        }
        if completed >= expected_completed && driver.is_finished() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not done after {DEADLINE:?}: queue {q:#}\n{}",
            diagnostics(&fleet, &stats, &chaos_log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_after = started.elapsed();
    let (run, decided_at) = driver.await.expect("the pipeline driver failed");
    stop.cancel();
    for w in crew {
        w.await.expect("a worker failed");
    }
    let kills = chaos.await.expect("the chaos task failed");
    monitor.await.unwrap();

    if std::env::var("TEAM_CHAOS").is_ok_and(|v| v == "0") {
        assert_eq!(kills, 0);
    } else {
        assert!(kills > 0, "no coordinator was killed");
        assert!(
            stats.reconnects.load(Ordering::Relaxed) > 0,
            "no worker or submitter had to reconnect"
        );
    }

    // The run completed, every stage in order, the gate decided in a console.
    assert_eq!(run["status"], "completed", "{run:#}");
    let stage_runs = run["stages"].as_array().unwrap();
    assert_eq!(stage_runs.len() as u64, plan.stages + 1);
    let mut stage_tasks = HashSet::new();
    for s in stage_runs {
        assert_eq!(s["status"], "completed", "{s:#}");
        if s["approval"] == true {
            let id = s["approval_id"].as_str().unwrap();
            let a = admin
                .call("approval_get", json!({"approval_id": id}))
                .await
                .unwrap_or_else(|r| panic!("approval_get: {r}"));
            assert_eq!(a["state"], "approved", "{a:#}");
            assert_eq!(a["decision"]["via"], "console", "{a:#}");
        } else {
            stage_tasks.insert(s["task_id"].as_str().unwrap().to_string());
        }
    }
    drop(admin);

    // Stop the fleet cleanly, then read the shared chain with the CLI from any data directory.
    tokio::task::block_in_place(|| {
        for i in 0..COORDINATORS {
            fleet.kill(i);
        }
    });
    let troubles = fleet.troubles();
    let verify_dir = &fleet.dirs[(plan.seed % COORDINATORS as u64) as usize];
    let (code, out, err) = common::cli(verify_dir, &["--db", &db, "audit", "verify"]);
    assert_eq!(code, 0, "audit verify:\n{out}\n{err}");
    eprintln!("[team] audit verify: {}", out.lines().next().unwrap_or(""));
    let export = root.join("audit.jsonl");
    let (code, _, err) = common::cli(
        verify_dir,
        &[
            "--db",
            &db,
            "audit",
            "export",
            "--output",
            export.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "audit export: {err}");
    let events = std::fs::read_to_string(&export).unwrap();
    let mut submitted_ids = HashSet::new();
    let mut completions: HashMap<String, u32> = HashMap::new();
    let mut actions: BTreeMap<String, u64> = BTreeMap::new();
    for line in events.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let action = e["action"].as_str().unwrap_or("").to_string();
        let subject = e["subject"].as_str().unwrap_or("").to_string();
        let detail: Value = match &e["detail"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            v => v.clone(),
        };
        match action.as_str() {
            "task.submitted" if detail["kind"] == "team" => {
                assert!(
                    submitted_ids.insert(subject.clone()),
                    "task {subject} submitted twice"
                );
            }
            "task.completed" => *completions.entry(subject).or_default() += 1,
            _ => {}
        }
        *actions.entry(action).or_default() += 1;
    }
    let ids: HashSet<String> = submitted.lock().unwrap().values().cloned().collect();
    assert_eq!(
        ids.len() as u64,
        plan.tasks,
        "the submitters got a task per key"
    );
    assert_eq!(
        submitted_ids, ids,
        "task.submitted events are the tasks submitted"
    );
    let twice: Vec<_> = completions.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "completed more than once: {twice:?}");
    let lost: Vec<_> = ids
        .iter()
        .chain(stage_tasks.iter())
        .filter(|id| !completions.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "never completed: {} tasks: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let acked_twice: Vec<_> = stats
        .acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect();
    assert!(
        acked_twice.is_empty(),
        "completion acknowledged twice: {acked_twice:?}"
    );

    let reruns = stats
        .runs
        .lock()
        .unwrap()
        .values()
        .filter(|n| **n > 1)
        .count();
    let total = started.elapsed();
    eprintln!(
        "[team] {} done in {total:?}: submitted after {submitted_after:?}, drained after \
         {drained_after:?}, gate decided at {decided_at:?}; {} completions ({:.0}/s overall); \
         {kills} kills, starts per coordinator {:?}; {} reconnects, {} calls lost and sent \
         again, {} claims, {} registrations, {reruns} tasks run more than once, report refusals \
         {:?}; {} audit events {actions:?}",
        backend.name(),
        completions.len(),
        completions.len() as f64 / drained_after.as_secs_f64(),
        (0..COORDINATORS)
            .map(|i| fleet.starts(i))
            .collect::<Vec<_>>(),
        stats.reconnects.load(Ordering::Relaxed),
        stats.lost_calls.load(Ordering::Relaxed),
        stats.claims.load(Ordering::Relaxed),
        stats.registrations.load(Ordering::Relaxed),
        stats.refusals.lock().unwrap(),
        events.lines().count(),
    );
    for line in chaos_log.lock().unwrap().iter() {
        eprintln!("[team] {line}");
    }
    assert!(
        troubles.iter().all(|t| !t.contains("panicked")),
        "a coordinator panicked:\n{}",
        troubles.join("\n")
    );
    if !troubles.is_empty() {
        eprintln!("[team] errors logged by coordinators ({}):", troubles.len());
        for t in troubles.iter().take(30) {
            eprintln!("  {t}");
        }
    }
}

/// What to print when the scenario fails: the kills, the actors' counts, the logs' tails.
fn diagnostics(fleet: &Fleet, stats: &Stats, chaos_log: &Mutex<Vec<String>>) -> String {
    let mut out = format!(
        "kills: {:?}\nreconnects {}, lost calls {}, claims {}, refusals {:?}\n",
        chaos_log.lock().unwrap(),
        stats.reconnects.load(Ordering::Relaxed),
        stats.lost_calls.load(Ordering::Relaxed),
        stats.claims.load(Ordering::Relaxed),
        stats.refusals.lock().unwrap()
    );
    for i in 0..fleet.len() {
        out.push_str(&fleet.tail(i, 30));
        out.push('\n');
    }
    out
}

/// One submitting lane: takes the next task number until all are taken, and submits it with
/// an idempotency key (a submit whose answer was lost is sent again after reconnecting, and
/// returns the same task).
async fn submit(
    fleet: Arc<Fleet>,
    key: String,
    lane: usize,
    plan: Plan,
    stats: Arc<Stats>,
    next: Arc<AtomicU64>,
    submitted: Arc<Mutex<HashMap<u64, String>>>,
) {
    let home = lane % COORDINATORS;
    let mut conn = Conn::new(
        fleet,
        &key,
        Era::Legacy,
        &format!("submitter-{lane}"),
        home,
        stats,
    );
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= plan.tasks {
            return;
        }
        let args = json!({"kind": "team", "params": {"n": n},
                          "capabilities": ["data-processing"],
                          "idempotency_key": format!("team-{}-{n}", plan.seed),
                          "timeout_seconds": 15, "max_retries": 20});
        let r = conn
            .call("task_submit", args)
            .await
            .unwrap_or_else(|r| panic!("task_submit {n} refused: {r}"));
        let id = r["task_id"].as_str().unwrap().to_string();
        if let Some(before) = submitted.lock().unwrap().insert(n, id.clone()) {
            panic!("task {n} submitted twice: {before} and {id}");
        }
    }
}

/// Follows the run; when it waits at the gate, the overseer approves it in the console of a
/// coordinator chosen by the seed (the next one if that one is down). Returns the ended run and
/// when the gate was decided.
async fn drive_pipeline(
    fleet: Arc<Fleet>,
    key: String,
    run_id: String,
    seed: u64,
    stats: Arc<Stats>,
    started: Instant,
) -> (Value, Duration) {
    let mut conn = Conn::new(
        fleet.clone(),
        &key,
        Era::Stateless,
        "pipeline-driver",
        1,
        stats,
    );
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut decided_at = None;
    loop {
        let got = conn
            .call("pipeline_run_get", json!({"run_id": run_id}))
            .await
            .unwrap_or_else(|r| panic!("pipeline_run_get: {r}"));
        let run = &got["run"];
        match run["status"].as_str() {
            Some("completed") => {
                return (run.clone(), decided_at.expect("the gate was decided"));
            }
            Some("failed" | "cancelled") => panic!("the run ended {}: {run:#}", run["status"]),
            _ => {}
        }
        if let Some(id) = run["awaiting_approvals"].as_array().and_then(|a| a.first())
            && decided_at.is_none()
        {
            let id = id.as_str().unwrap();
            let first = rng.below(fleet.len() as u64) as usize;
            for k in 0..fleet.len() {
                let c = (first + k) % fleet.len();
                match approve_in_console(&fleet.base(c), id, PASSPHRASE, "team scenario").await {
                    Ok(_) => {
                        decided_at = Some(started.elapsed());
                        eprintln!(
                            "[team] t={:?} gate {id} approved in coordinator {c}'s console",
                            started.elapsed()
                        );
                        break;
                    }
                    Err(e) => eprintln!("[team] console of coordinator {c}: {e}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Until `stop`: after 1 to 4 s, then every 4 to 10 s, SIGKILL one coordinator (sometimes two), and start it again
/// 0.2 to 3 s later on the same data directory and database. Returns the number of kills.
async fn chaos(
    fleet: Arc<Fleet>,
    seed: u64,
    stop: CancellationToken,
    log: Arc<Mutex<Vec<String>>>,
    started: Instant,
) -> u64 {
    let mut rng = Rng::new(seed);
    let mut kills = 0;
    if std::env::var("TEAM_CHAOS").is_ok_and(|v| v == "0") {
        stop.cancelled().await;
        return kills;
    }
    // The first kill comes early, while the first tasks are being submitted.
    let mut pause = rng.millis(1000, 4000);
    loop {
        tokio::select! {
            () = stop.cancelled() => return kills,
            () = tokio::time::sleep(pause) => {}
        }
        pause = rng.millis(4000, 10000);
        let n = fleet.len() as u64;
        let first = rng.below(n) as usize;
        let mut victims = vec![first];
        if rng.below(4) == 0 {
            victims.push((first + 1 + rng.below(n - 1) as usize) % n as usize);
        }
        let down = rng.millis(200, 3000);
        for &v in &victims {
            let f = fleet.clone();
            tokio::task::spawn_blocking(move || f.kill(v))
                .await
                .unwrap();
            kills += 1;
        }
        log.lock().unwrap().push(format!(
            "t={:.1}s kill -9 coordinator(s) {victims:?}, down {down:?}",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(down).await;
        for &v in &victims {
            let f = fleet.clone();
            tokio::task::spawn_blocking(move || f.restart(v))
                .await
                .unwrap();
        }
    }
}
