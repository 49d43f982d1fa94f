//! Rules of the package family: what a stdio entry launches (npm, PyPI, Docker) against the
//! policy's lists, its version pin, and the registries the policy allows.

use super::{Out, RuleContext, lists};
use crate::assessment::{Severity, SuggestedFix};
use crate::clients::action::Action;
use crate::clients::launch::{self, Ecosystem};
use crate::clients::{ConfigFile, ServerEntry};

/// `policy-denied`/`policy-not-allowed` on the package, `unpinned-package`, `unpinned-image`,
/// `policy-unpinned` and `policy-registry`.
pub(super) fn check(
    out: &mut Out<'_>,
    file: &ConfigFile,
    e: &ServerEntry,
    command: &str,
    ctx: &RuleContext<'_>,
) {
    let name = e.name.as_str();
    let at = |suffix: &str| format!("{}{suffix}", e.pointer);
    if let Some(pkg) = launch::package(command, &e.args) {
        lists::policy_list(
            out,
            file,
            e,
            "package",
            &pkg.name,
            &ctx.policy.packages.check(&pkg.name),
        );
        let pin_fix = |version: Option<String>| {
            SuggestedFix::action(
                "pin an exact version",
                Action::PinPackageVersion {
                    file: file.path.clone(),
                    server: name.into(),
                    lookup_latest: version.is_none(),
                    version,
                },
            )
        };
        if !pkg.pinned() {
            let spec = &e.args[pkg.arg_index];
            let (rule, severity, what) = match pkg.ecosystem {
                Ecosystem::Docker
                    if pkg.version.is_none() || pkg.version.as_deref() == Some("latest") =>
                {
                    (
                        "unpinned-image",
                        Severity::Medium,
                        "a Docker image with no tag (or latest) and no digest: whatever is pushed next runs",
                    )
                }
                Ecosystem::Docker => (
                    "unpinned-image",
                    Severity::Low,
                    "a Docker image by tag without a digest: a tag can be moved",
                ),
                Ecosystem::Npm => (
                    "unpinned-package",
                    Severity::Medium,
                    "an npm package with no exact version: every start may fetch a new release",
                ),
                Ecosystem::PyPi => (
                    "unpinned-package",
                    Severity::Medium,
                    "a Python package with no == version: every start may fetch a new release",
                ),
            };
            let fix = match pkg.ecosystem {
                Ecosystem::Docker => {
                    SuggestedFix::text("pin the image by digest (image@sha256:...)")
                }
                _ => pin_fix(None),
            };
            out.add(
                rule,
                severity,
                file,
                at(&format!("/args/{}", pkg.arg_index)),
                Some(name),
                format!("server {name} launches {what}"),
                spec.clone(),
                Some(fix.clone()),
            );
            if ctx.policy.require_pinned {
                out.add(
                    "policy-unpinned",
                    Severity::High,
                    file,
                    at(&format!("/args/{}", pkg.arg_index)),
                    Some(name),
                    format!(
                        "server {name}: the policy requires an exact version for {}",
                        pkg.name
                    ),
                    spec.clone(),
                    Some(fix),
                );
            }
        }
        let host = pkg.registry_host();
        if !ctx.policy.allowed_registries.is_empty()
            && !ctx.policy.allowed_registries.iter().any(|r| r == &host)
        {
            out.add(
                "policy-registry",
                Severity::High,
                file,
                at(&format!("/args/{}", pkg.arg_index)),
                Some(name),
                format!(
                    "server {name}: {} comes from {host}, which the policy does not allow ({})",
                    pkg.name,
                    ctx.policy.allowed_registries.join(", ")
                ),
                host.clone(),
                Some(SuggestedFix::text(
                    "take the package from an allowed registry",
                )),
            );
        }
    }
}
