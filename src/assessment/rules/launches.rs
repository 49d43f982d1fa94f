//! Rules of the dangerous-launch family: a shell wrapper, a download piped into a shell, and
//! what a `docker run` / `podman run` line gives the container.

use super::{Out, RuleContext};
use crate::assessment::{Severity, SuggestedFix};
use crate::audit::redact;
use crate::clients::launch;
use crate::clients::{ConfigFile, ServerEntry};

/// `shell-wrapper` and `curl-pipe-shell`, then the container rules for `docker`/`podman`.
pub(super) fn check(
    out: &mut Out<'_>,
    file: &ConfigFile,
    e: &ServerEntry,
    cmd: &str,
    ctx: &RuleContext<'_>,
) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    let joined = e.args.join(" ");
    if matches!(
        cmd,
        "sh" | "bash" | "zsh" | "dash" | "fish" | "cmd" | "powershell" | "pwsh"
    ) && e
        .args
        .iter()
        .any(|a| a == "-c" || a == "/c" || a == "-Command" || a.starts_with("-lc"))
    {
        out.add(
            "shell-wrapper",
            Severity::High,
            file,
            at("/args"),
            Some(name),
            format!("server {name} is launched through a shell ({cmd} -c): whatever the string expands to runs, unreviewed"),
            redact::redact_str(&format!("{cmd} {joined}")),
            Some(SuggestedFix::text("launch the program directly with command and args")),
        );
    }
    let downloads = ["curl ", "wget "]
        .iter()
        .any(|d| joined.contains(d) || cmd == d.trim());
    let into_shell = joined.split('|').skip(1).any(|after| {
        let next = after.split_whitespace().next().unwrap_or("");
        matches!(launch::base(next).as_str(), "sh" | "bash" | "zsh" | "dash")
    });
    if downloads && into_shell {
        out.add(
            "curl-pipe-shell",
            Severity::Critical,
            file,
            at("/args"),
            Some(name),
            format!(
                "server {name} downloads a script and pipes it into a shell every time it starts"
            ),
            redact::redact_str(&joined),
            Some(SuggestedFix::text(
                "install the server once from a pinned, verified package",
            )),
        );
    }
    if matches!(cmd, "docker" | "podman") {
        docker_rules(out, file, e, ctx);
    }
}

fn docker_rules(out: &mut Out<'_>, file: &ConfigFile, e: &ServerEntry, ctx: &RuleContext<'_>) {
    let name = e.name.as_str();
    let args = &e.args;
    for (i, a) in args.iter().enumerate() {
        let next = args.get(i + 1).map(String::as_str).unwrap_or("");
        let at = format!("{}/args/{i}", e.pointer);
        if a == "--privileged" {
            out.add(
                "docker-privileged",
                Severity::Critical,
                file,
                at.clone(),
                Some(name),
                format!("server {name} runs a privileged container: it has root on the host"),
                a.clone(),
                Some(SuggestedFix::text(
                    "drop --privileged; add only the capabilities it needs",
                )),
            );
        }
        let network = if a == "--network" || a == "--net" {
            Some(next)
        } else {
            a.strip_prefix("--network=")
                .or_else(|| a.strip_prefix("--net="))
        };
        if network == Some("host") {
            out.add(
                "docker-host-network",
                Severity::High,
                file,
                at.clone(),
                Some(name),
                format!("server {name} shares the host's network: it reaches every local service"),
                if a.contains('=') {
                    a.clone()
                } else {
                    format!("{a} {next}")
                },
                Some(SuggestedFix::text("use the default bridge network")),
            );
        }
        let mount = if a == "-v" || a == "--volume" || a == "--mount" {
            Some(next)
        } else {
            a.strip_prefix("--volume=")
                .or_else(|| a.strip_prefix("--mount="))
                .or_else(|| a.strip_prefix("-v="))
        };
        if let Some(m) = mount {
            let source = if m.contains("source=") || m.contains("src=") {
                m.split(',')
                    .find_map(|kv| {
                        kv.strip_prefix("source=")
                            .or_else(|| kv.strip_prefix("src="))
                    })
                    .unwrap_or("")
            } else {
                m.split(':').next().unwrap_or("")
            };
            let home = ctx.home.map(|h| h.trim_end_matches('/'));
            let sensitive = source == "/"
                || source.contains("docker.sock")
                || source == "~"
                || source == "$HOME"
                || source == "${HOME}"
                || home.is_some_and(|h| source.trim_end_matches('/') == h)
                || ((source.starts_with("/home/") || source.starts_with("/Users/"))
                    && source.trim_end_matches('/').matches('/').count() == 2);
            if sensitive {
                out.add(
                    "docker-sensitive-mount",
                    Severity::Critical,
                    file,
                    format!("{}/args/{}", e.pointer, i + usize::from(!a.contains('='))),
                    Some(name),
                    format!("server {name} mounts {source} into its container"),
                    m.to_string(),
                    Some(SuggestedFix::text(
                        "mount only the directories the server needs, read-only where possible",
                    )),
                );
            }
        }
    }
}
