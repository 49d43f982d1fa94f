//! Rules of the policy-list family: a server name, command or package on the policy's
//! denylist, or missing from its allowlist.

use super::Out;
use crate::assessment::policy::Verdict;
use crate::assessment::{Severity, SuggestedFix};
use crate::clients::action::Action;
use crate::clients::{ConfigFile, ServerEntry};

/// `policy-denied` and `policy-not-allowed` for one value of the entry (`what` names it).
pub(super) fn policy_list(
    out: &mut Out<'_>,
    file: &ConfigFile,
    e: &ServerEntry,
    what: &str,
    value: &str,
    verdict: &Verdict,
) {
    let name = e.name.as_str();
    let fix = || {
        SuggestedFix::action(
            "disable the server (or remove it)",
            Action::DisableServer {
                file: file.path.clone(),
                server: name.into(),
            },
        )
    };
    match verdict {
        Verdict::Allowed => {}
        Verdict::Denied(glob) => out.add(
            "policy-denied",
            Severity::High,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name}: {what} {value} is on the policy denylist ({glob})"),
            value.to_string(),
            Some(fix()),
        ),
        Verdict::NotAllowed => out.add(
            "policy-not-allowed",
            Severity::Medium,
            file,
            e.pointer.clone(),
            Some(name),
            format!("server {name}: {what} {value} is not on the policy allowlist"),
            value.to_string(),
            Some(fix()),
        ),
    }
}
