//! The worker example (`examples/worker/`) for the tests that run it: built on first use, next
//! to the coordinator binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The worker example next to the coordinator binary: `<target>/<profile>/examples/worker`.
///
/// A plain `cargo test` builds the examples, but `cargo test --test worker_example` does not, so
/// build it here (a no-op when it is fresh) rather than run a stale or missing binary.
pub fn worker_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = Path::new(super::BIN).parent().unwrap();
            let bin = profile_dir.join("examples/worker");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "--quiet", "--example", "worker", "--manifest-path"])
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .arg("--target-dir")
                .arg(profile_dir.parent().unwrap());
            match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") => {}
                Some(profile) => {
                    cmd.args(["--profile", profile]);
                }
                None => {}
            }
            let status = cmd.status().expect("run cargo build --example worker");
            assert!(status.success(), "cargo build --example worker: {status}");
            assert!(bin.is_file(), "{} is missing", bin.display());
            bin
        })
        .clone()
}
