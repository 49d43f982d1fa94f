//! A fleet of `serve --http` coordinators on one shared database (a SQLite file or a
//! PostgreSQL URL), each with its own data directory as separate hosts would have, that a test
//! kills with SIGKILL and restarts on the same port, data directory and database; and a small
//! seeded random source, so a chaos schedule printed by a failing run can be replayed.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::BIN;

/// Where the coordinators keep their state.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One SQLite file every coordinator opens (`--db PATH`).
    Sqlite(PathBuf),
    /// One PostgreSQL database (`--db postgres://...`).
    Postgres(String),
}

impl Backend {
    /// The `--db` argument.
    pub fn arg(&self) -> String {
        match self {
            Backend::Sqlite(p) => p.display().to_string(),
            Backend::Postgres(url) => url.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }
}

/// `n` coordinators serving MCP over HTTP on one database. Killed when dropped.
pub struct Fleet {
    /// `--db` of every coordinator.
    pub db: String,
    /// `--config` of every coordinator.
    pub config: PathBuf,
    /// One data directory per coordinator (its signing keys, its local-token key).
    pub dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    procs: Mutex<Vec<Option<Child>>>,
    /// Starts so far, per coordinator (restarts included).
    starts: Mutex<Vec<u32>>,
}

/// A free loopback port below the ephemeral range (32768 and up on Linux), so that no outgoing
/// connection takes it while its coordinator is down and the restart finds it free.
fn free_port(seed: u64) -> u16 {
    let mut rng = Rng::new(seed ^ u64::from(std::process::id()));
    for _ in 0..1000 {
        let port = 20_000 + rng.below(12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

impl Fleet {
    /// Starts `n` coordinators with data directories `root/coordinator-I`, on `db`, with the
    /// config file `config`; returns once each one accepts connections.
    pub fn start(root: &Path, n: usize, db: &str, config: &Path, seed: u64) -> Fleet {
        let mut dirs = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let dir = root.join(format!("coordinator-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            dirs.push(dir);
            let mut port = free_port(seed.wrapping_add(i as u64 * 7919));
            while ports.contains(&port) {
                port = free_port(seed.wrapping_add(port as u64));
            }
            ports.push(port);
        }
        let fleet = Fleet {
            db: db.to_string(),
            config: config.to_path_buf(),
            dirs,
            ports,
            procs: Mutex::new((0..n).map(|_| None).collect()),
            starts: Mutex::new(vec![0; n]),
        };
        for i in 0..n {
            fleet.restart(i);
        }
        fleet
    }

    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    /// `http://127.0.0.1:PORT/mcp` of coordinator `i` (the same across restarts).
    pub fn mcp(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/mcp", self.ports[i])
    }

    /// `http://127.0.0.1:PORT` of coordinator `i`: its console.
    pub fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// Coordinator `i`'s log (stderr of every start, appended).
    pub fn log(&self, i: usize) -> PathBuf {
        self.dirs[i].join("serve.log")
    }

    /// Whether coordinator `i` is running (as far as this fleet knows).
    pub fn is_up(&self, i: usize) -> bool {
        let mut procs = self.procs.lock().unwrap();
        match procs[i].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn starts(&self, i: usize) -> u32 {
        self.starts.lock().unwrap()[i]
    }

    /// SIGKILL to coordinator `i` (nothing if it is down); waits for it to be gone.
    pub fn kill(&self, i: usize) {
        let child = self.procs.lock().unwrap()[i].take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts coordinator `i` again (killing it first if it runs) on the same port, data
    /// directory and database; returns once it accepts connections. A start that fails (the
    /// port still taken, say) is tried again, up to a minute.
    pub fn restart(&self, i: usize) {
        self.kill(i);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn(i) {
                Ok(child) => {
                    self.procs.lock().unwrap()[i] = Some(child);
                    self.starts.lock().unwrap()[i] += 1;
                    return;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "coordinator {i} does not start: {e}\n{}",
                        self.tail(i, 40)
                    );
                    eprintln!("[fleet] coordinator {i} did not start ({e}); again");
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        }
    }

    fn spawn(&self, i: usize) -> Result<Child, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .map_err(|e| e.to_string())?;
        let mut child = Command::new(BIN)
            .env("MCP_COORDINATOR_TOOLSETS", "all")
            .arg("--data-dir")
            .arg(&self.dirs[i])
            .args(["--db", &self.db])
            .arg("--config")
            .arg(&self.config)
            .args(["--log-level", "warn,mcp_coordinator::cli=info"])
            .args(["serve", "--http", &format!("127.0.0.1:{}", self.ports[i])])
            .env_remove("MCP_COORDINATOR_DB")
            .env_remove("MCP_COORDINATOR_CONFIG")
            .env_remove("MCP_COORDINATOR_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited with {status}"));
            }
            if TcpStream::connect(("127.0.0.1", self.ports[i])).is_ok() {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("not listening after 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last `lines` lines of coordinator `i`'s log.
    pub fn tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        format!(
            "--- coordinator {i} ({}) ---\n{}",
            self.log(i).display(),
            all[from..].join("\n")
        )
    }

    /// Every line of every log that looks like a crash (a panic) or an error.
    pub fn troubles(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            let text = std::fs::read_to_string(self.log(i)).unwrap_or_default();
            for line in text.lines() {
                if line.contains("panicked") || line.contains("ERROR") {
                    out.push(format!("coordinator {i}: {line}"));
                }
            }
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

/// SplitMix64: a seeded source for chaos schedules (replayable from the printed seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}
