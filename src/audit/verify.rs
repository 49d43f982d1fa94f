//! Verification of the whole audit chain: recompute every hash, check every link and sequence
//! number, and check every head signature against the coordinator's key.

use std::collections::BTreeMap;
use std::time::Instant;

use rusqlite::Connection;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::chain::{self, EventFields};
use super::signer::verify_hex;
use crate::store::StoreError;
use crate::store::audit::{self as sql, SignatureRow};

/// How many problems a report lists in full; the count covers all of them.
const MAX_LISTED: usize = 20;

/// What is wrong with one event or signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The stored hash does not match the event's content: the row was edited.
    Edited,
    /// Sequence numbers skip: events before this one were deleted.
    Missing,
    /// `prev_hash` does not match the previous event: rows were reordered, replaced or inserted.
    BrokenLink,
    /// A head signature does not verify.
    BadSignature,
    /// A head signature was made by a key other than this coordinator's.
    UnknownKey,
    /// A signed head no longer matches the event at that position.
    SignedHeadChanged,
    /// The chain ends before a signed head: events at the end were deleted.
    Truncated,
}

/// One problem found.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct VerifyProblem {
    /// The sequence number of the first event affected.
    pub seq: i64,
    pub kind: ProblemKind,
    /// What was found, in words.
    pub message: String,
}

/// Signature checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SignatureStatus {
    /// Head signatures stored.
    pub total: u64,
    /// Signatures that verify with this coordinator's key over the event they name.
    pub valid: u64,
    /// Signatures that fail (bad signature, unknown key, or the head changed).
    pub invalid: u64,
    /// The newest validly signed sequence number.
    pub last_signed_seq: Option<i64>,
    /// Events after the newest valid signature (not yet covered by a signature).
    pub unsigned_tail: u64,
    /// The hex Ed25519 key signatures are checked against.
    pub trusted_key: String,
}

/// The result of verifying the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct VerifyReport {
    /// True when every event and every signature checks out.
    pub ok: bool,
    /// Events read.
    pub events_checked: u64,
    /// The newest event's sequence number.
    pub head_seq: Option<i64>,
    /// The newest event's hash.
    pub head_hash: Option<String>,
    /// The first bad sequence number, if any.
    pub first_bad_seq: Option<i64>,
    /// Why that event is bad.
    pub first_bad_reason: Option<String>,
    /// All problems found.
    pub problem_count: u64,
    /// The first problems, in chain order.
    pub problems: Vec<VerifyProblem>,
    pub signatures: SignatureStatus,
    /// How long verification took.
    pub duration_ms: u64,
}

pub(super) fn verify(conn: &Connection, trusted_key: &str) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let mut sigs: BTreeMap<i64, SignatureRow> = sql::signatures(conn)?
        .into_iter()
        .map(|s| (s.seq, s))
        .collect();
    let mut problems: Vec<VerifyProblem> = Vec::new();
    let mut sig_status = SignatureStatus {
        total: sigs.len() as u64,
        trusted_key: trusted_key.to_string(),
        ..Default::default()
    };
    let mut expected_seq = 1i64;
    let mut prev_hash = chain::GENESIS_HASH.to_string();
    let mut checked = 0u64;
    let mut head: Option<(i64, String)> = None;

    sql::for_each_in_order(conn, |row| -> Result<(), StoreError> {
        checked += 1;
        if row.seq != expected_seq {
            problems.push(VerifyProblem {
                seq: expected_seq,
                kind: ProblemKind::Missing,
                message: format!(
                    "events {expected_seq}..{} are missing: the sequence jumps from {} to {}",
                    row.seq - 1,
                    expected_seq - 1,
                    row.seq
                ),
            });
        }
        let recomputed = chain::event_hash(&EventFields {
            seq: row.seq,
            ts: &row.ts,
            actor: &row.actor,
            action: &row.action,
            subject: &row.subject,
            outcome: &row.outcome,
            detail: &row.detail,
            prev_hash: &row.prev_hash,
        });
        if recomputed != row.hash {
            problems.push(VerifyProblem {
                seq: row.seq,
                kind: ProblemKind::Edited,
                message: format!(
                    "event {} was edited or moved: its content hashes to {} but the stored hash is {}",
                    row.seq,
                    short(&recomputed),
                    short(&row.hash)
                ),
            });
        } else if row.prev_hash != prev_hash && row.seq == expected_seq {
            problems.push(VerifyProblem {
                seq: row.seq,
                kind: ProblemKind::BrokenLink,
                message: format!(
                    "event {} does not follow event {}: its prev_hash is {} but event {} hashes to {} (rows reordered, replaced or inserted)",
                    row.seq,
                    row.seq - 1,
                    short(&row.prev_hash),
                    row.seq - 1,
                    short(&prev_hash)
                ),
            });
        }
        if let Some(sig) = sigs.remove(&row.seq) {
            check_signature(
                &sig,
                Some(&recomputed),
                trusted_key,
                &mut sig_status,
                &mut problems,
            );
        }
        prev_hash = row.hash;
        expected_seq = row.seq + 1;
        head = Some((row.seq, prev_hash.clone()));
        Ok(())
    })?;

    // Signatures over events that no longer exist: the chain was cut short.
    let head_seq = head.as_ref().map(|(s, _)| *s);
    for sig in sigs.into_values() {
        check_signature(&sig, None, trusted_key, &mut sig_status, &mut problems);
        if head_seq.is_none_or(|h| sig.seq > h) {
            problems.push(VerifyProblem {
                seq: head_seq.map_or(1, |h| h + 1),
                kind: ProblemKind::Truncated,
                message: format!(
                    "the chain ends at event {} but event {} was signed: events at the end were deleted",
                    head_seq.unwrap_or(0),
                    sig.seq
                ),
            });
        }
    }

    problems.sort_by_key(|p| p.seq);
    sig_status.unsigned_tail = match (head_seq, sig_status.last_signed_seq) {
        (Some(h), Some(s)) => (h - s).max(0) as u64,
        (Some(h), None) => h as u64,
        (None, _) => 0,
    };
    let first = problems.first().cloned();
    let problem_count = problems.len() as u64;
    problems.truncate(MAX_LISTED);
    Ok(VerifyReport {
        ok: problem_count == 0,
        events_checked: checked,
        head_seq,
        head_hash: head.map(|(_, h)| h),
        first_bad_seq: first.as_ref().map(|p| p.seq),
        first_bad_reason: first.map(|p| p.message),
        problem_count,
        problems,
        signatures: sig_status,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

fn check_signature(
    sig: &SignatureRow,
    event_hash: Option<&str>,
    trusted_key: &str,
    status: &mut SignatureStatus,
    problems: &mut Vec<VerifyProblem>,
) {
    let problem = if sig.public_key != trusted_key {
        Some((
            ProblemKind::UnknownKey,
            format!(
                "the head at event {} is signed by key {}, not this coordinator's key {}",
                sig.seq,
                short(&sig.public_key),
                short(trusted_key)
            ),
        ))
    } else if !verify_hex(
        &sig.public_key,
        &sig.signature,
        &chain::head_message(sig.seq, &sig.hash),
    ) {
        Some((
            ProblemKind::BadSignature,
            format!(
                "the signature over the head at event {} does not verify",
                sig.seq
            ),
        ))
    } else if event_hash.is_some_and(|h| h != sig.hash) {
        Some((
            ProblemKind::SignedHeadChanged,
            format!(
                "event {} was signed with hash {} but now hashes to {}",
                sig.seq,
                short(&sig.hash),
                short(event_hash.unwrap_or_default())
            ),
        ))
    } else {
        None
    };
    match problem {
        Some((kind, message)) => {
            status.invalid += 1;
            problems.push(VerifyProblem {
                seq: sig.seq,
                kind,
                message,
            });
        }
        None if event_hash.is_some() => {
            status.valid += 1;
            status.last_signed_seq =
                Some(status.last_signed_seq.map_or(sig.seq, |s| s.max(sig.seq)));
        }
        // A valid signature over an event that is gone is reported as truncation by the caller.
        None => status.invalid += 1,
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
