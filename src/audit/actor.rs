//! Who did something: the kinds of actor, how each is named (`kind:id`), and the OS user and
//! host name a person at the machine is named by.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of actor did something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// An MCP client (the assistant), named by its client name and version.
    Client,
    /// Someone at the machine (the CLI) who gave no overseer passphrase, named by OS user and
    /// host.
    User,
    /// The overseer, who proved it with the passphrase at the CLI: named, with the OS user and
    /// host the passphrase was typed under.
    Overseer,
    /// A registered worker agent, named by its id.
    Agent,
    /// The coordinator itself (sweepers, supervision, signing).
    System,
}

/// Who did something. Rendered as `kind:id`, for example `client:claude-code/2.1.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: String,
}

impl Actor {
    pub fn new(kind: ActorKind, id: impl Into<String>) -> Self {
        Actor {
            kind,
            id: id.into(),
        }
    }

    /// The OS user running this process: `user:NAME@HOST`.
    pub fn os_user() -> Self {
        Actor::new(
            ActorKind::User,
            format!("{}@{}", os_user_name(), host_name()),
        )
    }

    /// The overseer `name`, who gave the passphrase in this process:
    /// `overseer:NAME (user:OS@HOST)`.
    pub fn overseer(name: &str) -> Self {
        Actor::new(
            ActorKind::Overseer,
            format!("{name} ({})", Actor::os_user().render()),
        )
    }

    /// The overseer `name`, logged in to the console at `console` from `remote`:
    /// `overseer:NAME (console 127.0.0.1:8750 from 127.0.0.1:50412)`.
    pub fn overseer_at_console(name: &str, console: &str, remote: &str) -> Self {
        Actor::new(
            ActorKind::Overseer,
            format!("{name} (console {console} from {remote})"),
        )
    }

    /// A person the identity provider vouched for (`principal` as
    /// [`Principal::describe`](crate::auth::Principal::describe) names it), logged in to the
    /// console at `console` from `remote`:
    /// `overseer:alice (sub 5f1c, via oidc; console https://oversight.example.com from 10.0.0.7:50412)`.
    pub fn person_at_console(principal: &str, console: &str, remote: &str) -> Self {
        let principal = principal.strip_suffix(')').unwrap_or(principal);
        Actor::new(
            ActorKind::Overseer,
            format!("{principal}; console {console} from {remote})"),
        )
    }

    /// The coordinator itself.
    pub fn system() -> Self {
        Actor::new(ActorKind::System, "mcp-coordinator")
    }

    pub fn render(&self) -> String {
        let kind = match self.kind {
            ActorKind::Client => "client",
            ActorKind::User => "user",
            ActorKind::Overseer => "overseer",
            ActorKind::Agent => "agent",
            ActorKind::System => "system",
        };
        format!("{kind}:{}", self.id)
    }
}

/// The login name of the OS user running this process, from the password database entry of
/// its real user id (`getpwuid_r(getuid())`), or `uid:N` when there is none. Never from
/// `$USER` or `$LOGNAME`: any process can set those, and a decision must not name whoever the
/// environment claims.
///
/// Looked up once per process: the real user id never changes here, and the lookup reads
/// `/etc/passwd` (it was an open, a read and a close on every `coordinator_status`).
pub fn os_user_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        // SAFETY: getuid cannot fail and has no preconditions.
        let uid = unsafe { libc::getuid() };
        passwd_name(uid).unwrap_or_else(|| format!("uid:{uid}"))
    })
    .clone()
}

/// The user name of `uid` in the password database, if it has an entry.
fn passwd_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid value of a plain C struct of integers and
        // pointers; getpwuid_r fills it in, pointing into `buf`, which outlives every read below.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the length given, and getpwuid_r is thread-safe.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points at a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.pw_name) };
        return Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    }
}

/// This machine's host name (`gethostname`, on every Unix; `/proc` is Linux's alone).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = (rc == 0)
        .then(|| {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..end]).trim().to_string()
        })
        .filter(|s| !s.is_empty());
    name.or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
