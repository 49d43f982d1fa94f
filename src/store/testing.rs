//! For tests (this crate's and `tests/`): a fresh PostgreSQL database on the test cluster, so
//! one test body runs on both backends. The cluster is `MCP_COORDINATOR_TEST_PG` (an admin URL)
//! when set, else the throwaway one `.ci/postgres start` runs (started on first use).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use super::pg::{Client, PgUrl};
use super::{Location, Store};

/// The admin URL of the test cluster.
pub fn cluster_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("MCP_COORDINATOR_TEST_PG")
            && !url.is_empty()
        {
            return url;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/postgres");
        let out = std::process::Command::new(script)
            .arg("start")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            out.status.success(),
            "no PostgreSQL for the tests: {script} start failed (install PostgreSQL: apt-get install postgresql, or set MCP_COORDINATOR_TEST_PG to an admin URL):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

/// The URL of a new, empty database on the test cluster, named after `label` (letters,
/// digits and `_` kept) and this process.
pub fn fresh_database(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let admin = cluster_url();
    let clean: String = name_part(label).chars().take(30).collect();
    let name = format!(
        "t_{clean}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let url = PgUrl::parse(&admin).unwrap_or_else(|e| panic!("{e}"));
    let config: tokio_postgres::Config = admin.parse().unwrap_or_else(|e| panic!("{e}"));
    let client = Client::connect(&config, url.shown()).unwrap_or_else(|e| panic!("{e}"));
    client
        .batch(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let mut db = url::Url::parse(&admin).unwrap_or_else(|e| panic!("{e}"));
    db.set_path(&format!("/{name}"));
    db.to_string()
}

/// `label` as part of a database name: ASCII letters and digits, lowercased; anything else `_`.
pub fn name_part(label: &str) -> String {
    label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A store on a fresh PostgreSQL database.
pub fn postgres_store(label: &str) -> Store {
    let url = fresh_database(label);
    let location = Location::from_arg(&url).unwrap_or_else(|e| panic!("{e}"));
    Store::open(&location).unwrap_or_else(|e| panic!("{e}"))
}

/// Both backends, each with an empty database: SQLite in memory and PostgreSQL, for a test
/// body that runs on each.
pub fn both(label: &str) -> [(&'static str, Store); 2] {
    [
        (
            "sqlite",
            Store::open(&Location::Memory).unwrap_or_else(|e| panic!("{e}")),
        ),
        ("postgres", postgres_store(label)),
    ]
}
