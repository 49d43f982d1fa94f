//! Rules of the filesystem family: a filesystem server rooted at `/` or a home directory.

use super::{Out, RuleContext};
use crate::assessment::{Severity, SuggestedFix};
use crate::clients::{ConfigFile, ServerEntry};

/// `filesystem-broad-root`.
pub(super) fn check(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry, ctx: &RuleContext<'_>) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    let is_fs = e.name.to_ascii_lowercase().contains("filesystem")
        || e.args
            .iter()
            .any(|a| a.contains("server-filesystem") || a.contains("mcp-server-filesystem"));
    if is_fs {
        for (i, a) in e.args.iter().enumerate() {
            let home = ctx.home.map(|h| h.trim_end_matches('/'));
            let broad = a == "/"
                || a == "~"
                || a == "~/"
                || a == "$HOME"
                || a == "${HOME}"
                || home.is_some_and(|h| a.trim_end_matches('/') == h)
                || (a.starts_with("/home/") && a.trim_end_matches('/').matches('/').count() == 2)
                || (a.starts_with("/Users/") && a.trim_end_matches('/').matches('/').count() == 2);
            if broad {
                out.add(
                    "filesystem-broad-root",
                    Severity::High,
                    file,
                    at(&format!("/args/{i}")),
                    Some(name),
                    format!("server {name} can read and write {a}: everything there, SSH keys and credentials included"),
                    a.clone(),
                    Some(SuggestedFix::text("root it at the project directories it needs")),
                );
            }
        }
    }
}
