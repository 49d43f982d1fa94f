//! The hash chain: the canonical form of an event, its SHA-256, and the timestamp format.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// The `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation: bumping this would start a new chain format.
const FORMAT_TAG: &[u8] = b"mcp-coordinator/audit-event/v1";

/// The fields that an event's hash covers, in hashing order.
pub struct EventFields<'a> {
    pub seq: i64,
    pub ts: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub subject: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
    pub prev_hash: &'a str,
}

/// The hex SHA-256 of an event. Every variable-length field is length-prefixed, so no two
/// different events share a canonical form (no ambiguity at field boundaries).
pub fn event_hash(f: &EventFields<'_>) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT_TAG);
    h.update(f.seq.to_le_bytes());
    for field in [
        f.ts,
        f.actor,
        f.action,
        f.subject,
        f.outcome,
        f.detail,
        f.prev_hash,
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The message an Ed25519 head signature covers.
pub fn head_message(seq: i64, hash: &str) -> Vec<u8> {
    format!("mcp-coordinator/audit-head/v1\n{seq}\n{hash}").into_bytes()
}

/// Now, as stored: RFC 3339 UTC with exactly six fractional digits, so text order is time order.
pub fn now_ts() -> String {
    format_ts(OffsetDateTime::now_utc())
}

/// Formats a time in the stored fixed-width form.
pub fn format_ts(t: OffsetDateTime) -> String {
    let fmt =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(&fmt)
        .unwrap_or_else(|_| format!("{}Z", t.unix_timestamp()))
}

/// Formats Unix milliseconds in the stored fixed-width form.
pub fn format_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(format_ts)
        .unwrap_or_default()
}

/// Whole seconds from now until a stored (or RFC 3339) time; 0 if it has passed or is unreadable.
pub fn seconds_until(ts: &str) -> u64 {
    OffsetDateTime::parse(ts, &Rfc3339)
        .map(|t| (t - OffsetDateTime::now_utc()).whole_seconds().max(0) as u64)
        .unwrap_or(0)
}

/// Parses an RFC 3339 time given by a caller and returns the stored form, or `None` when it is
/// not RFC 3339.
pub fn normalize_ts(input: &str) -> Option<String> {
    OffsetDateTime::parse(input, &Rfc3339).ok().map(format_ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(detail: &'a str, actor: &'a str) -> EventFields<'a> {
        EventFields {
            seq: 1,
            ts: "2026-01-01T00:00:00.000000Z",
            actor,
            action: "tool.call",
            subject: "x",
            outcome: "ok",
            detail,
            prev_hash: GENESIS_HASH,
        }
    }

    #[test]
    fn hash_is_stable_and_field_sensitive() {
        let a = event_hash(&fields("{}", "client:a"));
        assert_eq!(a, event_hash(&fields("{}", "client:a")));
        assert_ne!(a, event_hash(&fields("{} ", "client:a")));
        assert_ne!(a, event_hash(&fields("{}", "client:b")));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn boundaries_are_unambiguous() {
        // Moving a character from one field to the next must change the hash.
        let mut one = fields("{}", "ab");
        one.action = "c";
        let mut two = fields("{}", "a");
        two.action = "bc";
        assert_ne!(event_hash(&one), event_hash(&two));
    }

    #[test]
    fn timestamps_are_fixed_width_and_normalized() {
        assert_eq!(now_ts().len(), 27);
        assert_eq!(
            normalize_ts("2026-11-21T07:00:00+02:00").as_deref(),
            Some("2026-11-21T05:00:00.000000Z")
        );
        assert_eq!(normalize_ts("yesterday"), None);
    }
}
