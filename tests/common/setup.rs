//! What the tests install for themselves on first use (the Python venv with the official MCP
//! SDK, the npm MCP servers, the MCP Inspector), built once under a cross-process lock file in `target/`: `cargo
//! test` runs test binaries and threads in parallel, and whichever asks first builds while the
//! others wait, then all use the one result. A failed build says every command it ran, with its
//! whole output, and what to do about it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs `f` holding an exclusive lock on `lock_path` (created if missing). The lock is an
/// `flock` on a descriptor of its own, so it excludes other processes and other threads alike,
/// and the kernel releases it if the holder dies.
pub fn locked<T>(lock_path: &Path, f: impl FnOnce() -> T) -> T {
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .unwrap_or_else(|e| panic!("open the lock file {}: {e}", lock_path.display()));
    fs4::FileExt::lock(&file).unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    let out = f();
    drop(file);
    out
}

/// One command's invocation and whole output, for a failure report.
fn report(what: &str, cmd: &Command, out: &Output) -> String {
    format!(
        "$ {what}\n  ({cmd:?})\n  status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs one step of a build, adding its report to `log`; `Err` with the whole log on failure.
fn step(log: &mut Vec<String>, what: &str, cmd: &mut Command) -> Result<(), String> {
    cmd.stdin(Stdio::null());
    match cmd.output() {
        Ok(out) => {
            log.push(report(what, cmd, &out));
            if out.status.success() {
                Ok(())
            } else {
                Err(log.join("\n\n"))
            }
        }
        Err(e) => {
            log.push(format!("$ {what}\n  ({cmd:?})\n  could not start it: {e}"));
            Err(log.join("\n\n"))
        }
    }
}

/// The interpreter inside a venv.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

/// Inside the venv: a copy of the requirements it was built from, to notice when they change.
const STAMP: &str = "interop-requirements.txt";

/// What to do when the venv cannot be made.
const VENV_ADVICE: &str = "The Python interop tests need Python 3.10+ with the venv module and \
pip (on Debian or Ubuntu: `apt-get install python3-venv`), and PyPI reachable for the first \
run; or set MCP_COORDINATOR_PYTHON to an interpreter that has the packages of \
tests/interop/requirements.txt.";

/// The venv at `venv` with `requirements` installed, built (or brought up to date) once across
/// every process and thread that asks; `<venv>.builds` (a file beside it) gets one line per
/// build, so a test can count them. Returns its interpreter.
pub fn venv(venv: &Path, requirements: &Path) -> Result<PathBuf, String> {
    let wanted = std::fs::read_to_string(requirements)
        .map_err(|e| format!("read {}: {e}", requirements.display()))?;
    let python = venv_python(venv);
    let current = |dir: &Path| {
        std::fs::read_to_string(dir.join(STAMP)).ok().as_deref() == Some(wanted.as_str())
    };
    // Built and up to date: no lock needed (a venv only appears by a rename, whole).
    if python.exists() && current(venv) {
        return Ok(python);
    }
    let lock = venv.with_extension("lock");
    locked(&lock, || {
        if python.exists() && current(venv) {
            return Ok(python.clone());
        }
        let mut log = Vec::new();
        let pip = |python: &Path| {
            let mut cmd = Command::new(python);
            cmd.args(["-m", "pip", "install", "--disable-pip-version-check", "-r"])
                .arg(requirements);
            cmd
        };
        let fail = |e: String| format!("{e}\n\n{VENV_ADVICE}");
        if python.exists() {
            // Requirements changed since it was built: update it in place.
            step(&mut log, "pip install -r requirements", &mut pip(&python)).map_err(fail)?;
        } else {
            // Built under a name of its own and renamed into place, so nobody finds half a venv;
            // only the lock holder builds, so one name suffices.
            let building = venv.with_extension("building");
            let _ = std::fs::remove_dir_all(&building);
            step(
                &mut log,
                "python3 -m venv",
                Command::new("python3").args(["-m", "venv"]).arg(&building),
            )
            .map_err(fail)?;
            step(
                &mut log,
                "pip install -r requirements",
                &mut pip(&venv_python(&building)),
            )
            .map_err(fail)?;
            std::fs::write(building.join(STAMP), &wanted)
                .map_err(|e| format!("write the venv's requirements stamp: {e}"))?;
            let _ = std::fs::remove_dir_all(venv);
            std::fs::rename(&building, venv)
                .map_err(|e| format!("rename {} to {}: {e}", building.display(), venv.display()))?;
            std::fs::write(venv.join(STAMP), &wanted)
                .map_err(|e| format!("write the venv's requirements stamp: {e}"))?;
        }
        let builds = venv.with_extension("builds");
        let line = format!("{}\n", std::process::id());
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&builds)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        Ok(python.clone())
    })
}

/// Inside an npm prefix: the packages last installed there, written once npm has finished, so
/// that a prefix npm is still filling (or died filling) never passes for installed.
const NPM_STAMP: &str = "installed-packages.txt";

/// The `name@version` specs of `packages`, one a line, as the stamp holds them.
fn npm_specs(packages: &[(&str, &str)]) -> Vec<String> {
    packages
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect()
}

/// Where npm puts package `name` under `prefix`.
pub fn npm_package(prefix: &Path, name: &str) -> PathBuf {
    prefix.join("node_modules").join(name)
}

/// Whether `prefix` holds exactly the `packages` last installed there, each at its version.
fn npm_installed(prefix: &Path, packages: &[(&str, &str)]) -> bool {
    let stamp = std::fs::read_to_string(prefix.join(NPM_STAMP)).unwrap_or_default();
    stamp == npm_specs(packages).join("\n")
        && packages.iter().all(|(name, version)| {
            let manifest = npm_package(prefix, name).join("package.json");
            let manifest = std::fs::read_to_string(manifest).unwrap_or_default();
            let manifest: serde_json::Value =
                serde_json::from_str(&manifest).unwrap_or(serde_json::Value::Null);
            manifest["version"] == *version
        })
}

/// The npm `packages` ((name, exact version)) installed into `prefix` (as `npm install --prefix`
/// does, into `prefix/node_modules`), once across every process and thread that asks. Each
/// prefix holds one set: npm removes from it what the set does not name. Lifecycle scripts are
/// not run (none of the packages the tests use needs one). `Err` with npm's whole output and
/// what to do when npm is missing or fails.
pub fn npm_install(prefix: &Path, packages: &[(&str, &str)]) -> Result<(), String> {
    if npm_installed(prefix, packages) {
        return Ok(());
    }
    locked(&prefix.with_extension("lock"), || {
        if npm_installed(prefix, packages) {
            return Ok(());
        }
        let specs = npm_specs(packages);
        let fail = |e: String| {
            format!(
                "{e}\n\nInstalling {specs:?} into {} failed. The tests that run npm packages need \
                 npm on PATH (Node.js with npm, for example `apt-get install nodejs npm`) and the \
                 npm registry reachable on their first run.",
                prefix.display()
            )
        };
        std::fs::create_dir_all(prefix)
            .map_err(|e| fail(format!("create {}: {e}", prefix.display())))?;
        let _ = std::fs::remove_file(prefix.join(NPM_STAMP));
        let mut log = Vec::new();
        step(
            &mut log,
            "npm install",
            Command::new("npm")
                .args(["install", "--prefix"])
                .arg(prefix)
                .args(["--no-audit", "--no-fund", "--no-save", "--ignore-scripts"])
                .args(&specs),
        )
        .map_err(fail)?;
        std::fs::write(prefix.join(NPM_STAMP), specs.join("\n"))
            .map_err(|e| fail(format!("write the npm stamp in {}: {e}", prefix.display())))?;
        if npm_installed(prefix, packages) {
            Ok(())
        } else {
            Err(fail(format!(
                "npm reported success, but the versions in {} are not the ones asked for\n\n{}",
                prefix.display(),
                log.join("\n\n")
            )))
        }
    })
}
