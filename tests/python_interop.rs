//! Interoperability with the official MCP Python SDK: `tests/interop/interop.py` drives the
//! built binary over stdio in the legacy (initialize) and the stateless (2026-07-28) eras, and
//! `tests/interop/approvals.py` answers human approvals through elicitation in both, and
//! `tests/interop/pipelines.py` decides pipeline approval stages the same way, and
//! `tests/interop/remediation.py` assesses configs and reviews remediations, and
//! `tests/interop/instances.py` gates a child instance's destructive tool on approvals, and
//! `tests/interop/gate.py` attacks the approval gate with spliced request states.
//!
//! The interpreter is `$MCP_COORDINATOR_PYTHON` when set, else `target/interop-venv/bin/python`,
//! which the first test to need it creates (with `python3 -m venv` and `pip install -r
//! tests/interop/requirements.txt`) under a lock file the others wait on
//! (`tests/common/setup.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where the venv lives, relative to the crate root.
const VENV: &str = "target/interop-venv";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn show(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The interpreter to run the interop scripts with: `$MCP_COORDINATOR_PYTHON`, else the venv,
/// built on first use by whichever test asks first (the others wait for it).
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_COORDINATOR_PYTHON") {
        return PathBuf::from(python);
    }
    let root = manifest_dir();
    common::setup::venv(
        &root.join(VENV),
        &root.join("tests/interop/requirements.txt"),
    )
    .unwrap_or_else(|e| panic!("cannot make the Python venv for the interop tests:\n{e}"))
}

/// Runs `tests/interop/<script>` with the built binary and a fresh data directory, and requires
/// exit status 0 and a last line `N passed, 0 failed`.
fn run_interop_script(script: &str) {
    run_interop_script_with(script, &[]);
}

/// [`run_interop_script`], with `extra` arguments after the usual ones.
fn run_interop_script_with(script: &str, extra: &[&OsStr]) {
    let python = python();
    let script = manifest_dir().join("tests/interop").join(script);
    let data = tempfile::tempdir().expect("create a temp dir");

    let output = Command::new(&python)
        .arg(&script)
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_mcp-coordinator"))
        .arg("--data-dir")
        .arg(data.path())
        .args(extra)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {} {}: {e}",
                python.display(),
                script.display()
            )
        });

    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        output.status.success() && last.ends_with(" passed, 0 failed"),
        "the Python SDK interop script {} failed\n{}",
        script.display(),
        show(&output)
    );
}

#[test]
fn official_python_sdk_drives_both_protocol_eras() {
    run_interop_script("interop.py");
}

/// Toolsets (`tests/interop/toolsets.py`): with the default set (at most 20 tools), the SDK
/// lists the toolsets, enables `agents` and hears the list change (`tools/list_changed` in the
/// legacy era, a `subscriptions/listen` event on 2026-07-28), calls `task_submit`, disables
/// `agents` and sees `task_get` refused with `toolset_disabled` naming it.
#[test]
fn official_python_sdk_enables_and_disables_toolsets() {
    run_interop_script("toolsets.py");
}

/// Human approvals through elicitation (`tests/interop/approvals.py`): the SDK's elicitation
/// callback answers the approval form in both eras (a blocking `elicitation/create` in the
/// legacy era, an input-required result in the 2026-07-28 era), alongside the CLI decisions,
/// client-side cancellation, a client without elicitation, and the signed audit trail.
#[test]
fn official_python_sdk_answers_approvals_through_elicitation() {
    run_interop_script("approvals.py");
}

/// Pipeline approval stages (`tests/interop/pipelines.py`): while the script waits on
/// `pipeline_run` and works the stages as an agent on the same session, the SDK's elicitation
/// callback approves (the run completes) and rejects (the gated branch is skipped) in the
/// legacy era; in the 2026-07-28 era the wait reports `needs_approval` and `approval_request`
/// asks through an input-required result.
#[test]
fn official_python_sdk_decides_pipeline_approval_stages() {
    run_interop_script("pipelines.py");
}

/// Assessments and remediations (`tests/interop/remediation.py`): on a temporary home full of
/// client configs, the SDK lists and assesses them, proposes fixes, approves one proposal and
/// rejects another through its elicitation callback (both eras), and checks each file equals
/// the original with the previewed diff applied, the backups, and the audit chain.
#[test]
fn official_python_sdk_reviews_remediations() {
    run_interop_script("remediation.py");
}

/// Approval-gated child instance tools (`tests/interop/instances.py`): with the test child
/// (`examples/test_child.rs`) as instance `kid`, the SDK's elicitation callback approves
/// `kid__delete_item` (forwarded once, the child's count goes up by one) and rejects or declines
/// it (`forbidden`, the child never sees it) in both eras; `kid__echo` goes through unasked.
#[test]
fn official_python_sdk_approves_gated_instance_tools() {
    let child = common::example_bin("test_child");
    run_interop_script_with("instances.py", &[OsStr::new("--child"), child.as_os_str()]);
}

/// The approval gate under attack (`tests/interop/gate.py`, 2026-07-28 mode): the sealed
/// `requestState` of the attacker's own generic `approval_request` (an action copied from the
/// gated call, risk low), answered "approve", is spliced into the retry of a gated child call
/// (under an out-of-band policy and under the default one), of `remediation_review` and of
/// `remediation_rollback`; states are moved between tools. Every splice is a JSON-RPC error,
/// nothing runs or is written, and the spliced approval stays pending.
#[test]
fn official_python_sdk_cannot_splice_request_states_past_the_gate() {
    let child = common::example_bin("test_child");
    run_interop_script_with("gate.py", &[OsStr::new("--child"), child.as_os_str()]);
}

/// Eight processes ask for a venv at once (`venv_for_a_racing_process` in copies of this test
/// binary): it is built once, and every one of them gets the same working interpreter.
#[test]
fn eight_processes_asking_for_the_venv_at_once_share_one_build() {
    let root = tempfile::tempdir().expect("create a temp dir");
    let venv = root.path().join("venv");
    let requirements = root.path().join("requirements.txt");
    // Nothing to download: the race is in making the venv, not in pip.
    std::fs::write(&requirements, "# no packages\n").expect("write requirements");
    let me = std::env::current_exe().expect("this test binary");
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(&me)
                .args([
                    "--exact",
                    "venv_for_a_racing_process",
                    "--ignored",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("RACE_VENV", &venv)
                .env("RACE_REQUIREMENTS", &requirements)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a racing process")
        })
        .collect();
    let mut prefixes = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("wait for a racing process");
        assert!(
            out.status.success(),
            "a racing process failed\n{}",
            show(&out)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let prefix = stdout
            .lines()
            .find_map(|l| l.split_once("sys.prefix=").map(|(_, prefix)| prefix.trim()))
            .unwrap_or_else(|| panic!("no sys.prefix line\n{}", show(&out)))
            .to_string();
        prefixes.push(prefix);
    }
    prefixes.dedup();
    assert_eq!(prefixes.len(), 1, "different interpreters: {prefixes:?}");
    assert_eq!(
        std::fs::canonicalize(&prefixes[0]).ok(),
        std::fs::canonicalize(&venv).ok()
    );
    let builds = std::fs::read_to_string(venv.with_extension("builds")).expect("the builds log");
    assert_eq!(
        builds.lines().count(),
        1,
        "built more than once: {builds:?}"
    );
    assert!(!venv.with_extension("building").exists());
}

/// One of the racing processes above (does nothing when run on its own).
#[test]
#[ignore = "run by eight_processes_asking_for_the_venv_at_once_share_one_build"]
fn venv_for_a_racing_process() {
    let (Some(venv), Some(requirements)) = (
        std::env::var_os("RACE_VENV"),
        std::env::var_os("RACE_REQUIREMENTS"),
    ) else {
        return;
    };
    let python = common::setup::venv(Path::new(&venv), Path::new(&requirements))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(python)
        .args(["-c", "import sys; print('sys.prefix=' + sys.prefix)"])
        .output()
        .expect("run the venv's python");
    assert!(out.status.success(), "{}", show(&out));
    print!("{}", String::from_utf8_lossy(&out.stdout));
}
