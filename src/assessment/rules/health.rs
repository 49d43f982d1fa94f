//! Rules of the health family: entries a client cannot start (no command nor url, a command
//! not found) and entries switched off.

use std::path::PathBuf;

use super::Out;
use crate::assessment::{Severity, SuggestedFix};
use crate::clients::{ConfigFile, ServerEntry, Transport};

/// `server-incomplete` and `server-disabled`.
pub(super) fn entry(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    if e.transport == Transport::Stdio && e.command.is_none() {
        out.add(
            "server-incomplete",
            Severity::Medium,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name} has neither `command` nor `url`; the client cannot start it"),
            String::new(),
            None,
        );
    }
    if e.disabled {
        out.add(
            "server-disabled",
            Severity::Info,
            file,
            at("/disabled"),
            Some(name),
            format!("server {name} is disabled"),
            "disabled: true".into(),
            None,
        );
    }
}

/// `command-not-found`: the command is neither a file (a path) nor on `PATH`.
pub(super) fn command_on_path(
    out: &mut Out<'_>,
    file: &ConfigFile,
    e: &ServerEntry,
    command: &str,
    path_dirs: &[PathBuf],
) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    let found = if command.contains('/') {
        std::path::Path::new(command).is_file()
    } else {
        path_dirs.iter().any(|d| d.join(command).is_file())
    };
    if !found {
        out.add(
            "command-not-found",
            Severity::Medium,
            file,
            at("/command"),
            Some(name),
            format!(
                "server {name}: command {command:?} is not found{}",
                if command.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            ),
            command.to_string(),
            Some(SuggestedFix::text("install it, or give its absolute path")),
        );
    }
}
