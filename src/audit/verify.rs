//! Verification of the whole audit chain: recompute every hash, check every link and sequence
//! number, and check every head signature against a key the chain introduced before that head
//! (an `audit.key_added` event), or this coordinator's own key (when there is one: a copied
//! chain is checked on its own keys alone).

use std::collections::BTreeMap;
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Action;
use super::chain::{self, EventFields};
use super::signer::verify_hex;
use crate::store::audit::{self as sql, EventRow, SignatureRow};
use crate::store::{StoreError, Tx};

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
    /// A head signature was made by a key that is not this coordinator's and that the chain
    /// did not introduce at or before that head.
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

/// One key that signs, or claims to sign, the chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct KeyStatus {
    /// The hex Ed25519 public key.
    pub public_key: String,
    /// The `audit.key_added` event that introduced it; absent when the chain never did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introduced_seq: Option<i64>,
    /// Whether it is the key of the coordinator that ran this check (its data directory).
    pub this_coordinator: bool,
    /// Heads it signed that verify.
    pub valid: u64,
    /// Signatures by it that fail.
    pub invalid: u64,
    /// The newest head it validly signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_signed_seq: Option<i64>,
}

/// Signature checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct SignatureStatus {
    /// Head signatures stored.
    pub total: u64,
    /// Signatures that verify over the event they name, by a key the chain introduced at or
    /// before that event, or by this coordinator's key.
    pub valid: u64,
    /// Signatures that fail (bad signature, unknown key, or the head changed).
    pub invalid: u64,
    /// The newest validly signed sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_signed_seq: Option<i64>,
    /// Events after the newest valid signature (not yet covered by a signature): these could
    /// be deleted without this check noticing. A running coordinator signs within a second.
    pub unsigned_tail: u64,
    /// When the first of those events was written (RFC 3339), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsigned_since: Option<String>,
    /// This coordinator's hex Ed25519 key, trusted without an introduction.
    pub trusted_key: String,
    /// Every key: this coordinator's, each the chain introduced, and each found on a
    /// signature; in order of introduction, then unknown ones.
    pub keys: Vec<KeyStatus>,
}

/// The result of verifying the whole chain.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct VerifyReport {
    /// True when every event and every signature checks out.
    pub ok: bool,
    /// Events read.
    pub events_checked: u64,
    /// The newest event's sequence number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_seq: Option<i64>,
    /// The newest event's hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    /// The first bad sequence number, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
    /// Why that event is bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_reason: Option<String>,
    /// All problems found.
    pub problem_count: u64,
    /// The first problems, in chain order.
    pub problems: Vec<VerifyProblem>,
    pub signatures: SignatureStatus,
    /// What is not wrong but not proven either: an unsigned tail of events.
    pub warnings: Vec<String>,
    /// How long verification took.
    pub duration_ms: u64,
}

/// Verifies the chain in `tx`; `trusted_key` is trusted without an introduction (this
/// coordinator's own key), `None` trusts only the keys the chain introduces.
pub(super) fn verify(tx: &Tx<'_>, trusted_key: Option<&str>) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let sigs: BTreeMap<i64, SignatureRow> = sql::signatures(tx)?
        .into_iter()
        .map(|s| (s.seq, s))
        .collect();
    let mut problems: Vec<VerifyProblem> = Vec::new();
    let mut sig_status = SignatureStatus {
        total: sigs.len() as u64,
        trusted_key: trusted_key.unwrap_or_default().to_string(),
        ..Default::default()
    };
    let mut expected_seq = 1i64;
    let mut prev_hash = chain::GENESIS_HASH.to_string();
    let mut checked = 0u64;
    let mut head: Option<(i64, String)> = None;
    let mut keys = Keys::new(trusted_key);
    let mut signed_hashes: BTreeMap<i64, String> = BTreeMap::new();
    // The first event after every signature, and the newest event's time: the unsigned tail.
    let newest_signature = sigs.keys().next_back().copied().unwrap_or(0);
    let mut first_unsigned: Option<(i64, String)> = None;
    let mut head_ts = String::new();

    sql::for_each_in_order(tx, |row| -> Result<(), StoreError> {
        checked += 1;
        let recomputed = check_event(&row, expected_seq, &prev_hash, &mut problems);
        // A key event counts only as stored: an edited one introduces nothing.
        if row.action == Action::AuditKeyAdded.as_str() && recomputed == row.hash {
            keys.introduce(&row.subject, row.seq);
        }
        // Signatures are checked after the walk, once every key event is known, so a head
        // signed before its key was introduced can be told from one by a key never introduced.
        if sigs.contains_key(&row.seq) {
            signed_hashes.insert(row.seq, recomputed);
        }
        if row.seq > newest_signature && first_unsigned.is_none() {
            first_unsigned = Some((row.seq, row.ts.clone()));
        }
        head_ts.clone_from(&row.ts);
        prev_hash = row.hash;
        expected_seq = row.seq + 1;
        head = Some((row.seq, prev_hash.clone()));
        Ok(())
    })?;

    let head_seq = head.as_ref().map(|(s, _)| *s);
    for sig in sigs.into_values() {
        let event_hash = signed_hashes.get(&sig.seq).map(String::as_str);
        check_signature(&sig, event_hash, &mut keys, &mut sig_status, &mut problems);
        // A signature over an event that no longer exists: the chain was cut short.
        if event_hash.is_none() && head_seq.is_none_or(|h| sig.seq > h) {
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
    sig_status.keys = keys.into_list();
    let warnings = unsigned_tail(&mut sig_status, head_seq, first_unsigned, &head_ts)
        .into_iter()
        .collect();
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
        warnings,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

/// Checks one event against its place in the walk (the sequence number and the previous
/// event's hash it should have) and its own content; returns the hash its content has.
fn check_event(
    row: &EventRow,
    expected_seq: i64,
    prev_hash: &str,
    problems: &mut Vec<VerifyProblem>,
) -> String {
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
                short(prev_hash)
            ),
        });
    }
    recomputed
}

/// Counts the events no signature covers (`status.unsigned_tail`, and since when) and says
/// what that means, if there are any.
fn unsigned_tail(
    status: &mut SignatureStatus,
    head_seq: Option<i64>,
    first_unsigned: Option<(i64, String)>,
    head_ts: &str,
) -> Option<String> {
    status.unsigned_tail = match (head_seq, status.last_signed_seq) {
        (Some(h), Some(s)) => (h - s).max(0) as u64,
        (Some(h), None) => h as u64,
        (None, _) => 0,
    };
    if let Some(head) = head_seq.filter(|_| status.unsigned_tail > 0) {
        let from = head + 1 - status.unsigned_tail as i64;
        status.unsigned_since = first_unsigned
            .filter(|(seq, _)| *seq == from)
            .map(|(_, ts)| ts);
        let when = match &status.unsigned_since {
            Some(since) => format!(", written {since} to {head_ts}"),
            None => String::new(),
        };
        return Some(format!(
            "the newest {} event(s) ({from}..{head}{when}) are not covered by a signature: deleting them would not be detected. A running coordinator signs within {} s and at shutdown; a longer tail means it was killed, or events were written by a process that does not sign",
            status.unsigned_tail,
            super::head_signer::INTERVAL.as_secs()
        ));
    }
    None
}

/// The keys met so far: this coordinator's (if any), those the chain introduced (and where),
/// and those found on signatures.
struct Keys {
    own: Option<String>,
    list: Vec<KeyStatus>,
}

impl Keys {
    fn new(own: Option<&str>) -> Self {
        Keys {
            own: own.map(str::to_string),
            list: own
                .map(|own| KeyStatus {
                    public_key: own.to_string(),
                    this_coordinator: true,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
        }
    }

    fn entry(&mut self, key: &str) -> &mut KeyStatus {
        let at = match self.list.iter().position(|k| k.public_key == key) {
            Some(at) => at,
            None => {
                self.list.push(KeyStatus {
                    public_key: key.to_string(),
                    ..Default::default()
                });
                self.list.len() - 1
            }
        };
        &mut self.list[at]
    }

    /// The chain introduces `key` at `seq`; the first introduction is the one that counts.
    fn introduce(&mut self, key: &str, seq: i64) {
        let entry = self.entry(key);
        entry.introduced_seq.get_or_insert(seq);
    }

    /// Why a signature at `seq` by `key` may not be trusted, if it may not.
    fn distrust(&self, key: &str, seq: i64) -> Option<String> {
        if self.own.as_deref() == Some(key) {
            return None;
        }
        match self
            .list
            .iter()
            .find(|k| k.public_key == key)
            .and_then(|k| k.introduced_seq)
        {
            Some(at) if at <= seq => None,
            Some(at) => Some(format!(
                "the head at event {seq} is signed by key {}, which the chain introduces only later, at event {at}: a head signed before its key was introduced is forged",
                short(key)
            )),
            None => Some(match &self.own {
                Some(own) => format!(
                    "the head at event {seq} is signed by key {}, which the chain never introduced (no audit.key_added event) and which is not this coordinator's key {}",
                    short(key),
                    short(own)
                ),
                None => format!(
                    "the head at event {seq} is signed by key {}, which the chain never introduced (no audit.key_added event)",
                    short(key)
                ),
            }),
        }
    }

    /// Unknown keys last, the rest in order of introduction (this coordinator's first when
    /// it was never introduced).
    fn into_list(mut self) -> Vec<KeyStatus> {
        self.list.sort_by_key(|k| {
            (
                k.introduced_seq.is_none() && !k.this_coordinator,
                k.introduced_seq,
            )
        });
        self.list
    }
}

fn check_signature(
    sig: &SignatureRow,
    event_hash: Option<&str>,
    keys: &mut Keys,
    status: &mut SignatureStatus,
    problems: &mut Vec<VerifyProblem>,
) {
    let problem = if let Some(why) = keys.distrust(&sig.public_key, sig.seq) {
        Some((ProblemKind::UnknownKey, why))
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
    let key = keys.entry(&sig.public_key);
    match problem {
        Some((kind, message)) => {
            status.invalid += 1;
            key.invalid += 1;
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
            key.valid += 1;
            key.last_signed_seq = Some(key.last_signed_seq.map_or(sig.seq, |s| s.max(sig.seq)));
        }
        // A valid signature over an event that is gone is reported as truncation by the caller.
        None => {
            status.invalid += 1;
            key.invalid += 1;
        }
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::{Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
    use crate::store::{Location, Store};

    fn signer(byte: u8) -> Arc<AuditSigner> {
        Arc::new(AuditSigner::from_key(
            ed25519_dalek::SigningKey::from_bytes(&[byte; 32]),
        ))
    }

    /// A copy of a chain is checked on the keys it introduces alone: what its own coordinator
    /// signed verifies, a head signed by a key the chain never introduced does not, whoever
    /// runs the check.
    #[test]
    fn a_chain_on_its_own_keys() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let log = AuditLog::new(store.clone(), signer(1));
        log.record(NewEvent {
            actor: Actor::new(ActorKind::Client, "t/1"),
            action: Action::ToolCall,
            subject: "a".into(),
            outcome: Outcome::Ok,
            detail: serde_json::json!({}),
            critical: true,
        })?;
        let report = store.read(crate::audit::verify_chain_in)?;
        assert!(report.ok, "{report:?}");
        assert_eq!(report.signatures.valid, 1);
        assert_eq!(report.signatures.trusted_key, "");
        assert_eq!(report.signatures.keys.len(), 1);
        assert!(!report.signatures.keys[0].this_coordinator);
        assert_eq!(report.signatures.keys[0].introduced_seq, Some(1));

        // A head signed by a key the chain never introduced: the coordinator that holds that
        // key trusts it, a check on the chain's own keys does not.
        let stranger = signer(2);
        let unsigned = log.record(NewEvent {
            actor: Actor::new(ActorKind::Client, "t/1"),
            action: Action::ToolCall,
            subject: "b".into(),
            outcome: Outcome::Ok,
            detail: serde_json::json!({}),
            critical: false,
        })?;
        store.write(|tx| {
            sql::insert_signature(
                tx,
                &SignatureRow {
                    seq: unsigned.seq,
                    hash: unsigned.hash.clone(),
                    public_key: stranger.public_key_hex().to_string(),
                    signature: stranger
                        .sign_hex(&chain::head_message(unsigned.seq, &unsigned.hash)),
                    signed_at: chain::now_ts(),
                },
            )
        })?;
        let holder = store.read(|tx| verify(tx, Some(stranger.public_key_hex())))?;
        assert!(holder.ok, "{holder:?}");
        let copy = store.read(crate::audit::verify_chain_in)?;
        assert!(!copy.ok);
        assert_eq!(copy.problems[0].kind, ProblemKind::UnknownKey);
        assert_eq!(
            copy.problems[0].message,
            format!(
                "the head at event 3 is signed by key {}, which the chain never introduced (no audit.key_added event)",
                short(stranger.public_key_hex())
            )
        );
        Ok(())
    }
}
