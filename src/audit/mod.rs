//! The audit log service: appends redacted, hash-chained events (alone or inside a caller's
//! state-changing transaction), signs the chain head, pages through events and verifies the
//! whole chain.
//!
//! What lives here: the service (this file), who did something (`actor`), what was done and
//! how it ended (`action`), the hash chain (`chain`), redaction (`redact`), the signing key and
//! the head signer (`signer`, `head_signer`), reading pages and exports (`read`) and
//! verification (`verify`). Every other domain
//! depends on it; it depends only on `store` (its `audit` table module, through `Tx`),
//! `keyfile` and `limits`, never on another domain, `server`, rmcp or the database driver.

mod action;
mod actor;
pub mod chain;
mod head_signer;
mod read;
pub mod redact;
pub mod signer;
mod verify;

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fault::{ErrorCode, Fault, IntoFault};
use crate::store::audit::{self as sql, EventFilter, EventRow, SignatureRow};
use crate::store::{Store, StoreError, Tx};
pub use action::{Action, Outcome};
pub use actor::{Actor, ActorKind, host_name, os_user_name};
pub use head_signer::HeadSigner;
pub use signer::AuditSigner;
pub use verify::{KeyStatus, ProblemKind, SignatureStatus, VerifyProblem, VerifyReport};

/// Errors of the audit layer.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A filter or cursor given by the caller is not usable.
    #[error("{field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },
    /// A time range whose end is not after its start.
    #[error("empty time range: until ({until}) must be after since ({since})")]
    EmptyRange { since: String, until: String },
}

impl IntoFault for AuditError {
    fn into_fault(self) -> Fault {
        match self {
            AuditError::Store(e) => Fault::Store(e),
            AuditError::InvalidInput { field, message } => Fault::invalid(field, message),
            AuditError::EmptyRange { since, until } => Fault::new(
                ErrorCode::InvalidRequest,
                format!("the time range is empty: until ({until}) must be after since ({since})"),
            )
            .with_details(serde_json::json!({"field": "until", "since": since, "until": until})),
        }
    }
}

/// An event to append. `detail` is redacted before it is stored or hashed.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub actor: Actor,
    pub action: Action,
    pub subject: String,
    pub outcome: Outcome,
    pub detail: Value,
    /// Critical events (decisions, later) get the chain head signed in the same transaction.
    pub critical: bool,
}

/// A stored event as tools and the CLI show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When, RFC 3339 UTC.
    pub ts: String,
    /// Who: `client:NAME/VERSION`, `user:NAME@HOST`, `overseer:NAME (user:NAME@HOST)`,
    /// `agent:ID` or `system:mcp-coordinator`.
    pub actor: String,
    /// What, for example `tool.call`.
    pub action: String,
    /// On what, for example the tool name.
    pub subject: String,
    /// `ok`, `error` or `invalid`.
    pub outcome: String,
    /// Redacted detail.
    pub detail: Value,
    /// Hex SHA-256 of the previous event.
    pub prev_hash: String,
    /// Hex SHA-256 of this event.
    pub hash: String,
}

impl From<EventRow> for AuditEvent {
    fn from(r: EventRow) -> Self {
        let detail = serde_json::from_str(&r.detail).unwrap_or(Value::String(r.detail));
        AuditEvent {
            seq: r.seq,
            ts: r.ts,
            actor: r.actor,
            action: r.action,
            subject: r.subject,
            outcome: r.outcome,
            detail,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// Filters for [`AuditLog::query`]; text filters match exactly, or as a prefix ending in `*`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub since: Option<String>,
    pub until: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub outcome: Option<Outcome>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl Query {
    /// Whether the filters are usable (times readable and in order, page size in range).
    pub fn validate(&self) -> Result<(), AuditError> {
        read::filter_of(self).map(|_| ())
    }
}

/// One page of events, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Page {
    pub events: Vec<AuditEvent>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a page of [`AuditLog::window`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keyset {
    /// The newest events.
    Newest,
    /// The newest events older than this sequence number.
    Before(i64),
    /// The oldest events newer than this sequence number (shown newest first).
    After(i64),
}

/// One page of [`AuditLog::window`], newest first.
#[derive(Debug, Clone)]
pub struct Window {
    pub events: Vec<AuditEvent>,
    /// `Before` this for the next older page; absent when nothing older matches.
    pub older: Option<i64>,
    /// `After` this for the next newer page; absent when nothing newer matches.
    pub newer: Option<i64>,
    /// Set when the page read its whole span of the chain (see [`Scanned`]) without filling:
    /// `older` or `newer` then continues after that span.
    pub scanned: Option<Scanned>,
}

/// The events a page read without finding a full page: sequence numbers `first..=last`, all
/// examined, towards older events (continue with `Before(first)`) or newer ones (`After(last)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub first: i64,
    pub last: i64,
    pub towards_older: bool,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Default and maximum page sizes of [`AuditLog::query`].
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = crate::limits::PAGE.max;

/// The audit log of one database, signing with one key.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    signer: Arc<AuditSigner>,
}

impl AuditLog {
    pub fn new(store: Store, signer: Arc<AuditSigner>) -> Self {
        AuditLog { store, signer }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn signer(&self) -> &AuditSigner {
        &self.signer
    }

    /// Appends one event in its own transaction.
    pub fn record(&self, event: NewEvent) -> Result<AuditEvent, AuditError> {
        self.store
            .write(|tx| self.append_in(tx, &event).map_err(AuditError::from))
    }

    /// Appends events in one transaction (one fsync, one lock): the fast path for bursts.
    pub fn record_batch(&self, events: &[NewEvent]) -> Result<usize, AuditError> {
        self.store.write(|tx| {
            if events.iter().any(|e| e.critical) {
                self.introduce_key_in(tx)?;
            }
            let mut head = sql::head(tx)?;
            for event in events {
                let row = self.next_row(head.as_ref(), event);
                sql::insert(tx, &row)?;
                if event.critical {
                    self.sign_row(tx, row.seq, &row.hash)?;
                }
                head = Some(sql::Head {
                    seq: row.seq,
                    hash: row.hash,
                    ts: row.ts,
                });
            }
            Ok(events.len())
        })
    }

    /// Appends one event inside the caller's write transaction, so a state change and its
    /// audit event commit together or not at all. The caller must hold a write transaction
    /// (see [`Store::write`]), which also serializes appends across processes.
    pub fn append_in(&self, tx: &Tx<'_>, event: &NewEvent) -> Result<AuditEvent, StoreError> {
        if event.critical {
            self.introduce_key_in(tx)?;
        }
        let head = sql::head(tx)?;
        let row = self.next_row(head.as_ref(), event);
        sql::insert(tx, &row)?;
        if event.critical {
            self.sign_row(tx, row.seq, &row.hash)?;
        }
        Ok(row.into())
    }

    fn next_row(&self, head: Option<&sql::Head>, event: &NewEvent) -> EventRow {
        let (seq, prev_hash) = match head {
            Some(h) => (h.seq + 1, h.hash.clone()),
            None => (1, chain::GENESIS_HASH.to_string()),
        };
        let detail = redact::redacted_text(&event.detail);
        // Never earlier than the head: a time range of the chain is then a range of seq (see
        // store::audit::first_seq_at_or_after). A clock that steps back, or a coordinator
        // sharing the database whose clock runs behind, repeats the head's time meanwhile.
        let now = chain::now_ts();
        let ts = match head {
            Some(h) if h.ts > now => h.ts.clone(),
            _ => now,
        };
        let actor = event.actor.render();
        let hash = chain::event_hash(&chain::EventFields {
            seq,
            ts: &ts,
            actor: &actor,
            action: event.action.as_str(),
            subject: &event.subject,
            outcome: event.outcome.as_str(),
            detail: &detail,
            prev_hash: &prev_hash,
        });
        EventRow {
            seq,
            ts,
            actor,
            action: event.action.as_str().to_string(),
            subject: event.subject.clone(),
            outcome: event.outcome.as_str().to_string(),
            detail,
            prev_hash,
            hash,
        }
    }

    /// Appends the `audit.key_added` event for this coordinator's key unless the chain already
    /// has it, inside the caller's write transaction, before the first head the key signs.
    /// Several coordinators (each with its own data directory, so its own key) may share one
    /// database: the chain itself says which keys sign it, and since when.
    fn introduce_key_in(&self, tx: &Tx<'_>) -> Result<(), StoreError> {
        let key = self.signer.public_key_hex();
        // Looked up every time rather than cached: a cached "done" could outlive a rolled-back
        // transaction. Only critical events and shutdown sign, and the lookup is indexed.
        if sql::key_added(tx, Action::AuditKeyAdded.as_str(), key)? {
            return Ok(());
        }
        let head = sql::head(tx)?;
        let row = self.next_row(
            head.as_ref(),
            &NewEvent {
                actor: Actor::system(),
                action: Action::AuditKeyAdded,
                subject: key.to_string(),
                outcome: Outcome::Ok,
                detail: serde_json::json!({
                    "algorithm": "ed25519",
                    "host": host_name(),
                    "pid": std::process::id(),
                }),
                critical: false,
            },
        );
        sql::insert(tx, &row)
    }

    fn sign_row(&self, tx: &Tx<'_>, seq: i64, hash: &str) -> Result<(), StoreError> {
        sql::insert_signature(
            tx,
            &SignatureRow {
                seq,
                hash: hash.to_string(),
                public_key: self.signer.public_key_hex().to_string(),
                signature: self.signer.sign_hex(&chain::head_message(seq, hash)),
                signed_at: chain::now_ts(),
            },
        )
    }

    /// Signs the head like [`AuditLog::sign_head`], but looks first without the write lock:
    /// nothing is written, and no lock taken, when the head is signed already.
    pub fn sign_head_if_unsigned(&self) -> Result<Option<i64>, AuditError> {
        let (head, signed) = self.store.read(|tx| {
            Ok::<_, StoreError>((sql::head(tx)?.map(|h| h.seq), sql::last_signed_seq(tx)?))
        })?;
        if head.is_none() || head == signed {
            return Ok(head);
        }
        self.sign_head()
    }

    /// Signs the current chain head if it is not signed yet (at shutdown, so a truncated tail
    /// is detectable). Returns the signed sequence number.
    pub fn sign_head(&self) -> Result<Option<i64>, AuditError> {
        self.store.write(|tx| {
            let Some(sql::Head { seq, .. }) = sql::head(tx)? else {
                return Ok(None);
            };
            if sql::last_signed_seq(tx)? == Some(seq) {
                return Ok(Some(seq));
            }
            // The first head this key signs: the key event goes in first and becomes the head.
            self.introduce_key_in(tx)?;
            let Some(sql::Head { seq, hash, .. }) = sql::head(tx)? else {
                return Ok(None);
            };
            self.sign_row(tx, seq, &hash)?;
            Ok(Some(seq))
        })
    }

    /// How many events the chain holds (its head's sequence number: they run from 1 without
    /// gaps).
    pub fn event_count(&self) -> Result<i64, StoreError> {
        Ok(self.store.read(sql::head)?.map_or(0, |h| h.seq))
    }

    /// Recomputes the whole chain and checks every signature; see [`VerifyReport`].
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let conn = self.store.reader()?;
        Ok(verify::verify(
            &conn.tx(),
            Some(self.signer.public_key_hex()),
        )?)
    }
}

/// Verifies the chain as the transaction `tx` sees it, trusting only the keys the chain itself
/// introduces (its `audit.key_added` events), no coordinator's own: how a copy of a chain is
/// checked (`store copy`), away from the data directories whose keys signed it.
pub fn verify_chain_in(tx: &Tx<'_>) -> Result<VerifyReport, StoreError> {
    verify::verify(tx, None)
}

#[cfg(test)]
mod tests;
