//! Interoperability with the official MCP Python SDK: `tests/interop/interop.py` drives the
//! built binary over stdio in the legacy (initialize) and the stateless (2026-07-28) eras, and
//! `tests/interop/approvals.py` answers human approvals through elicitation in both, and
//! `tests/interop/pipelines.py` decides pipeline approval stages the same way, and
//! `tests/interop/remediation.py` assesses configs and reviews remediations, and
//! `tests/interop/instances.py` gates a child instance's destructive tool on approvals, and
//! `tests/interop/gate.py` attacks the approval gate with spliced request states.
//!
//! The interpreter is `$MCP_COORDINATOR_PYTHON` when set, else `target/interop-venv/bin/python`,
//! which this test creates (with `python3 -m venv` and `pip install -r
//! tests/interop/requirements.txt`) when it is missing or its requirements are out of date.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the venv lives, relative to the crate root.
const VENV: &str = "target/interop-venv";
/// Inside the venv: a copy of the requirements it was built from, to notice when they change.
const STAMP: &str = "interop-requirements.txt";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

fn show(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(what: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {command:?}: {e}"));
    assert!(output.status.success(), "{what} failed\n{}", show(&output));
}

fn pip_install(python: &Path, requirements: &Path) {
    run(
        "pip install -r tests/interop/requirements.txt",
        Command::new(python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
    );
}

/// The interpreter to run the interop script with, creating the venv if need be.
fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("MCP_COORDINATOR_PYTHON") {
        return PathBuf::from(python);
    }
    let root = manifest_dir();
    let requirements_path = root.join("tests/interop/requirements.txt");
    let requirements =
        fs::read_to_string(&requirements_path).expect("read tests/interop/requirements.txt");
    let venv = root.join(VENV);
    let python = venv_python(&venv);

    if python.exists() {
        // Reuse it, bringing it up to date first if the requirements changed since it was built.
        if fs::read_to_string(venv.join(STAMP)).ok().as_deref() != Some(requirements.as_str()) {
            pip_install(&python, &requirements_path);
            fs::write(venv.join(STAMP), &requirements)
                .expect("write the venv's requirements stamp");
        }
        return python;
    }

    // Build it under a name of its own, then rename it into place: another test process
    // building it at the same time cannot leave a half-made venv where this one looks.
    let building = root.join(format!("{VENV}.building-{}", std::process::id()));
    let _ = fs::remove_dir_all(&building);
    run(
        "python3 -m venv (set MCP_COORDINATOR_PYTHON to use another interpreter)",
        Command::new("python3").args(["-m", "venv"]).arg(&building),
    );
    pip_install(&venv_python(&building), &requirements_path);
    fs::write(building.join(STAMP), &requirements).expect("write the venv's requirements stamp");
    if fs::rename(&building, &venv).is_err() {
        // Someone else's venv got there first; use that one.
        let _ = fs::remove_dir_all(&building);
    }
    assert!(
        python.exists(),
        "no interpreter at {} after creating the venv",
        python.display()
    );
    python
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
