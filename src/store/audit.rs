//! SQL for the audit tables: append an event row, read the head, page through events with
//! filters, stream the whole chain in order, and store and read head signatures.

use rusqlite::{OptionalExtension, Row, params};

use super::{StoreError, Tx};

/// One row of `audit_events`, exactly as stored (the detail is the JSON text that was hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub seq: i64,
    pub ts: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// One row of `audit_signatures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRow {
    pub seq: i64,
    pub hash: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: String,
}

/// Filters for [`page`]. Text filters match exactly, or as a prefix when they end in `*`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub subject: Option<String>,
    pub outcome: Option<String>,
    /// Only events with a sequence number below this (the paging cursor).
    pub before_seq: Option<i64>,
    /// Only events with a sequence number above this (paging towards newer events).
    pub after_seq: Option<i64>,
}

/// The order events come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

const COLUMNS: &str = "seq, ts, actor, action, subject, outcome, detail, prev_hash, hash";

fn event_from_row(r: &Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        seq: r.get(0)?,
        ts: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        subject: r.get(4)?,
        outcome: r.get(5)?,
        detail: r.get(6)?,
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

/// The newest event: what the next one links to, and the earliest time it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    pub ts: String,
}

/// The newest event's sequence number, hash and time, if any.
pub fn head(tx: &Tx<'_>) -> Result<Option<Head>, StoreError> {
    tx.conn()
        .prepare_cached("SELECT seq, hash, ts FROM audit_events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(Head {
                seq: r.get(0)?,
                hash: r.get(1)?,
                ts: r.get(2)?,
            })
        })
        .optional()
        .map_err(StoreError::from_sqlite)
}

/// The first sequence number whose event is at or after `ts` (a stored-form time), or one past
/// the head (`head_seq`, 0 for an empty chain) when there is none. Appends never go back in time, so this is a binary search over
/// the primary key (about 20 lookups for a million events) instead of an index on `ts` that
/// every append would write to.
fn first_seq_at_or_after(tx: &Tx<'_>, head_seq: i64, ts: &str) -> Result<i64, StoreError> {
    // The event at or after `seq` (seq has no gaps, but a lookup that tolerates them costs
    // nothing more).
    let mut at = tx
        .conn()
        .prepare_cached("SELECT seq, ts FROM audit_events WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let (mut lo, mut hi) = (1, head_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found: Option<(i64, String)> = at
            .query_row([mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(StoreError::from_sqlite)?;
        match found {
            Some((seq, t)) if t.as_str() < ts => lo = seq + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Inserts one event row. The caller computed its hash over these exact values and holds the
/// write transaction, so no other writer can slip in between reading the head and this insert.
pub fn insert(tx: &Tx<'_>, row: &EventRow) -> Result<(), StoreError> {
    tx.conn().prepare_cached(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        row.seq,
        row.ts,
        row.actor,
        row.action,
        row.subject,
        row.outcome,
        row.detail,
        row.prev_hash,
        row.hash
    ])
    .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// Appends a text condition for an exact or `prefix*` match.
fn push_text_filter(
    sql: &mut String,
    args: &mut Vec<rusqlite::types::Value>,
    column: &str,
    value: &Option<String>,
) {
    let Some(value) = value else { return };
    match value.strip_suffix('*') {
        Some(prefix) => {
            args.push(prefix.to_string().into());
            sql.push_str(&format!(
                " AND substr({column}, 1, length(?{n})) = ?{n}",
                n = args.len()
            ));
        }
        None => {
            args.push(value.clone().into());
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    }
}

/// Up to `limit` events matching `filter`, newest first.
pub fn page(tx: &Tx<'_>, filter: &EventFilter, limit: u32) -> Result<Vec<EventRow>, StoreError> {
    page_in(tx, filter, Order::NewestFirst, limit)
}

/// Up to `limit` events matching `filter`, in `order` (oldest first from `after_seq` is how a
/// page of newer events is found by the primary key).
pub fn page_in(
    tx: &Tx<'_>,
    filter: &EventFilter,
    order: Order,
    limit: u32,
) -> Result<Vec<EventRow>, StoreError> {
    let (since, until) = seq_bounds(tx, filter)?;
    let (sql, args) = page_sql(filter, since, until, order, limit);
    let mut stmt = tx.conn().prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), event_from_row)?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// The seq bounds of the filter's time range (see first_seq_at_or_after), under one read of
/// the head.
fn seq_bounds(tx: &Tx<'_>, filter: &EventFilter) -> Result<(Option<i64>, Option<i64>), StoreError> {
    let head_seq = if filter.since.is_some() || filter.until.is_some() {
        head(tx)?.map_or(0, |h| h.seq)
    } else {
        0
    };
    let bound = |ts: &Option<String>| {
        ts.as_deref()
            .map(|ts| first_seq_at_or_after(tx, head_seq, ts))
            .transpose()
    };
    Ok((bound(&filter.since)?, bound(&filter.until)?))
}

/// The actions `audit_events_action` (migration 0010) leaves out: frequent enough that walking
/// the newest events first finds them at once. A query states the index's condition,
/// `action NOT IN (these)`, for SQLite to use the index.
const HOT_ACTIONS: [&str; 5] = [
    "tool.call",
    "task.submitted",
    "task.leased",
    "task.running",
    "task.completed",
];

/// How many events of the chain one bounded page reads at most by the primary key (see
/// [`page_bounded`]). In release, reading rows that do not match costs about 0.2 s a million
/// (214 ms p50 for a page that read all of 1,000,000), and a page of this span with no match
/// measured p50 9.5 ms, p99 24 ms on a shared 2-core machine: well under the 50 ms target.
pub const SCAN_SPAN: i64 = 50_000;

/// How many entries of the subject or action index one bounded page reads at most. Each costs
/// a lookup of its row by the primary key, dearer than the next row of a walk, hence fewer.
pub const INDEX_SPAN: i64 = 10_000;

/// Whether a page of `filter` could read many events that do not match: a condition on actor
/// or outcome, a prefix, or one of the [`HOT_ACTIONS`] (which the action index leaves out).
/// Without one, every row the plan reads matches (a seq range, or an exact subject or rarer
/// action by its index), and a page costs its size.
pub fn needs_bound(filter: &EventFilter) -> bool {
    let prefix = |v: &Option<String>| v.as_deref().is_some_and(|v| v.ends_with('*'));
    filter.actor.is_some()
        || filter.outcome.is_some()
        || prefix(&filter.subject)
        || prefix(&filter.action)
        || filter
            .action
            .as_deref()
            .is_some_and(|a| HOT_ACTIONS.contains(&a))
        || index_conditions(filter).len() > 1
}

/// The index conditions of `filter` a bounded page may read through, with their index: an
/// exact subject, an exact action the action index holds, or both.
fn index_conditions(filter: &EventFilter) -> Vec<(&'static str, EventFilter)> {
    let exact = |v: &Option<String>| v.clone().filter(|v| !v.ends_with('*'));
    let mut found = Vec::new();
    if let Some(subject) = exact(&filter.subject) {
        let cond = EventFilter {
            subject: Some(subject),
            ..Default::default()
        };
        found.push(("audit_events_subject", cond));
    }
    if let Some(action) = exact(&filter.action).filter(|a| !HOT_ACTIONS.contains(&a.as_str())) {
        let cond = EventFilter {
            action: Some(action),
            ..Default::default()
        };
        found.push(("audit_events_action", cond));
    }
    found
}

/// A page read by [`page_bounded`]: the matching rows of the seq range `first..=last` it read
/// (up to its limit), and whether that range reached the end of what the filter allows in
/// its direction (`lower..=upper`: the time range, or the whole chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounded {
    pub rows: Vec<EventRow>,
    pub first: i64,
    pub last: i64,
    pub exhausted: bool,
    pub lower: i64,
    pub upper: i64,
}

/// Up to `limit` events matching `filter` in `order`, reading at most one span of the chain:
/// [`SCAN_SPAN`] events below `before_seq` (newest first) or above `after_seq` (oldest first)
/// by the primary key, or, when the filter has an exact subject or a rarer action whose
/// [`INDEX_SPAN`] index entries reach further back (or forward) than that, the range those
/// entries cover, read through the index. A filter no index serves (an actor that never
/// occurs) then costs one span per page instead of the whole chain; the caller says where the
/// next span starts.
pub fn page_bounded(
    tx: &Tx<'_>,
    filter: &EventFilter,
    order: Order,
    limit: u32,
) -> Result<Bounded, StoreError> {
    let head_seq = head(tx)?.map_or(0, |h| h.seq);
    let bound = |ts: &Option<String>| {
        ts.as_deref()
            .map(|ts| first_seq_at_or_after(tx, head_seq, ts))
            .transpose()
    };
    let (since_seq, until_seq) = (bound(&filter.since)?, bound(&filter.until)?);
    let lower = since_seq.unwrap_or(1).max(1);
    let upper = until_seq.map_or(head_seq, |u| u - 1).min(head_seq);
    let indexes = index_conditions(filter);
    // The entry `INDEX_SPAN` away from where the page starts in an index, within
    // `lower..=upper`; none when the index has fewer entries there.
    let reach = |cond: &EventFilter, from: i64| -> Result<Option<i64>, StoreError> {
        let f = EventFilter {
            before_seq: Some(upper + 1),
            after_seq: Some(lower - 1),
            ..cond.clone()
        };
        let f = match order {
            Order::NewestFirst => EventFilter {
                before_seq: Some(from + 1),
                ..f
            },
            Order::OldestFirst => EventFilter {
                after_seq: Some(from - 1),
                ..f
            },
        };
        let (sql, args) = reach_sql(&f, order);
        let mut stmt = tx.conn().prepare(&sql)?;
        stmt.query_row(rusqlite::params_from_iter(args), |r| r.get(0))
            .optional()
            .map_err(StoreError::from_sqlite)
    };
    // The range read: through the index whose span reaches furthest when it reaches further
    // than the primary key's (named with INDEXED BY: the planner might read the other one over
    // the whole range), else by the primary key alone, told so with NOT INDEXED (an index
    // would read every one of its entries in the range).
    let (first, last, by_index) = match order {
        Order::NewestFirst => {
            let last = filter.before_seq.map_or(upper, |b| b - 1).min(upper);
            let mut best = ((last - SCAN_SPAN + 1).max(lower), None);
            for (name, cond) in indexes.iter().filter(|_| last >= lower) {
                let first = reach(cond, last)?.unwrap_or(lower);
                if first < best.0 {
                    best = (first, Some(*name));
                }
            }
            (best.0, last, best.1)
        }
        Order::OldestFirst => {
            let first = filter
                .after_seq
                .map_or(lower, |a| a.saturating_add(1))
                .max(lower);
            let mut best = (first.saturating_add(SCAN_SPAN - 1).min(upper), None);
            for (name, cond) in indexes.iter().filter(|_| first <= upper) {
                let last = reach(cond, first)?.unwrap_or(upper);
                if last > best.0 {
                    best = (last, Some(*name));
                }
            }
            (first, best.0, best.1)
        }
    };
    let exhausted = match order {
        Order::NewestFirst => first <= lower,
        Order::OldestFirst => last >= upper,
    };
    if first > last {
        return Ok(Bounded {
            rows: Vec::new(),
            first,
            last,
            exhausted: true,
            lower,
            upper,
        });
    }
    let f = EventFilter {
        before_seq: Some(last + 1),
        after_seq: Some(first - 1),
        ..filter.clone()
    };
    let (sql, args) = span_sql(&f, order, limit, by_index);
    let mut stmt = tx.conn().prepare(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), event_from_row)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)?;
    Ok(Bounded {
        rows,
        first,
        last,
        exhausted,
        lower,
        upper,
    })
}

/// The query that finds the seq of the [`INDEX_SPAN`]th event matching `cond` (an index
/// condition, with seq bounds) in `order`: a walk of the index alone.
fn reach_sql(cond: &EventFilter, order: Order) -> (String, Vec<rusqlite::types::Value>) {
    let (sql, mut args) = page_sql(cond, None, None, order, 1);
    let sql = sql.replacen(&format!("SELECT {COLUMNS}"), "SELECT seq", 1);
    args.push((INDEX_SPAN - 1).into());
    let sql = format!("{sql} OFFSET ?{}", args.len());
    (sql, args)
}

/// The query [`page_bounded`] runs over its seq range: through the index it chose (by name,
/// one of [`index_conditions`]'), or by the primary key alone.
fn span_sql(
    filter: &EventFilter,
    order: Order,
    limit: u32,
    by_index: Option<&str>,
) -> (String, Vec<rusqlite::types::Value>) {
    let (sql, args) = page_sql(filter, None, None, order, limit);
    let source = match by_index {
        Some(name) => format!("FROM audit_events INDEXED BY {name}"),
        None => "FROM audit_events NOT INDEXED".to_string(),
    };
    (sql.replacen("FROM audit_events", &source, 1), args)
}

/// The query [`page_in`] runs, and its arguments, given the seq bounds of its time range.
fn page_sql(
    filter: &EventFilter,
    since_seq: Option<i64>,
    until_seq: Option<i64>,
    order: Order,
    limit: u32,
) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1=1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    // The ts conditions stay beside the seq bounds: a chain written before appends kept time
    // order may step back where a clock did, and then the page misses rather than includes
    // events near that step.
    // A bounded page passes no seq bounds of its own: its range lies inside them already, and
    // SQLite reads a rowid range by one lower and one upper bound, so a second lower bound
    // could become the range (from the middle of the chain to its head) and the span's own a
    // mere filter.
    if let Some(since) = &filter.since {
        if let Some(seq) = since_seq {
            args.push(seq.into());
            sql.push_str(&format!(" AND seq >= ?{}", args.len()));
        }
        args.push(since.clone().into());
        sql.push_str(&format!(" AND ts >= ?{}", args.len()));
    }
    if let Some(until) = &filter.until {
        if let Some(seq) = until_seq {
            args.push(seq.into());
            sql.push_str(&format!(" AND seq < ?{}", args.len()));
        }
        args.push(until.clone().into());
        sql.push_str(&format!(" AND ts < ?{}", args.len()));
    }
    if let Some(before) = filter.before_seq {
        args.push(before.into());
        sql.push_str(&format!(" AND seq < ?{}", args.len()));
    }
    if let Some(after) = filter.after_seq {
        args.push(after.into());
        sql.push_str(&format!(" AND seq > ?{}", args.len()));
    }
    push_text_filter(&mut sql, &mut args, "actor", &filter.actor);
    push_text_filter(&mut sql, &mut args, "action", &filter.action);
    if let Some(action) = &filter.action
        && !action.ends_with('*')
        && !HOT_ACTIONS.contains(&action.as_str())
    {
        let hot: Vec<String> = HOT_ACTIONS.iter().map(|a| format!("'{a}'")).collect();
        sql.push_str(&format!(" AND action NOT IN ({})", hot.join(", ")));
    }
    push_text_filter(&mut sql, &mut args, "subject", &filter.subject);
    push_text_filter(&mut sql, &mut args, "outcome", &filter.outcome);
    sql.push_str(match order {
        Order::NewestFirst => " ORDER BY seq DESC",
        Order::OldestFirst => " ORDER BY seq",
    });
    args.push(i64::from(limit).into());
    sql.push_str(&format!(" LIMIT ?{}", args.len()));
    (sql, args)
}

/// Calls `f` for every event in sequence order, oldest first, without loading them all.
pub fn for_each_in_order<E: From<StoreError>>(
    tx: &Tx<'_>,
    mut f: impl FnMut(EventRow) -> Result<(), E>,
) -> Result<(), E> {
    let mut stmt = tx
        .conn()
        .prepare(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq"))
        .map_err(StoreError::from_sqlite)?;
    let mut rows = stmt.query([]).map_err(StoreError::from_sqlite)?;
    while let Some(row) = rows.next().map_err(StoreError::from_sqlite)? {
        f(event_from_row(row).map_err(StoreError::from_sqlite)?)?;
    }
    Ok(())
}

/// Stores a signature over the chain head. Signing the same head twice is a no-op.
pub fn insert_signature(tx: &Tx<'_>, sig: &SignatureRow) -> Result<(), StoreError> {
    tx.conn()
        .prepare_cached(
            "INSERT OR IGNORE INTO audit_signatures (seq, hash, public_key, signature, signed_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            sig.seq,
            sig.hash,
            sig.public_key,
            sig.signature,
            sig.signed_at
        ])
        .map_err(StoreError::from_sqlite)?;
    Ok(())
}

/// Every stored signature, oldest first.
pub fn signatures(tx: &Tx<'_>) -> Result<Vec<SignatureRow>, StoreError> {
    let mut stmt = tx.conn().prepare(
        "SELECT seq, hash, public_key, signature, signed_at FROM audit_signatures ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(SignatureRow {
            seq: r.get(0)?,
            hash: r.get(1)?,
            public_key: r.get(2)?,
            signature: r.get(3)?,
            signed_at: r.get(4)?,
        })
    })?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from_sqlite)
}

/// Whether the chain has a key event (`action`) for `public_key` (its subject).
pub fn key_added(tx: &Tx<'_>, action: &str, public_key: &str) -> Result<bool, StoreError> {
    tx.conn()
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM audit_events WHERE action = ?1 AND subject = ?2)",
        )?
        .query_row(params![action, public_key], |r| r.get(0))
        .map_err(StoreError::from_sqlite)
}

/// The sequence number of the newest signed head, if any.
pub fn last_signed_seq(tx: &Tx<'_>) -> Result<Option<i64>, StoreError> {
    tx.conn()
        .prepare_cached("SELECT MAX(seq) FROM audit_signatures")?
        .query_row([], |r| r.get(0))
        .map_err(StoreError::from_sqlite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Location, Store};
    use rusqlite::Connection;

    /// What the plan of an audit page reads.
    fn plan(conn: &Connection, filter: &EventFilter) -> Result<String, StoreError> {
        plan_in(conn, filter, Order::NewestFirst)
    }

    fn plan_in(
        conn: &Connection,
        filter: &EventFilter,
        order: Order,
    ) -> Result<String, StoreError> {
        let (sql, args) = page_sql(filter, None, None, order, 50);
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let steps: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(args), |r| r.get(3))?
            .collect::<Result<_, _>>()?;
        Ok(steps.join("; "))
    }

    /// A filter on a rare action reads the action index; one on a frequent action, which the
    /// index leaves out, walks the newest events first (the primary key), never a sort. If
    /// HOT_ACTIONS and the migration's list drift apart, the first assertion fails.
    #[test]
    fn action_filters_read_an_index() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let conn = store.lock();
        for action in [
            "approval.approved",
            "task.failed",
            "instance.tool_quarantined",
        ] {
            let filter = EventFilter {
                action: Some(action.into()),
                before_seq: Some(1_000),
                ..Default::default()
            };
            let plan = plan(&conn, &filter)?;
            assert!(plan.contains("audit_events_action"), "{action}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{action}: {plan}");
        }
        for action in HOT_ACTIONS {
            let filter = EventFilter {
                action: Some(action.into()),
                ..Default::default()
            };
            let plan = plan(&conn, &filter)?;
            assert!(!plan.contains("TEMP B-TREE"), "{action}: {plan}");
        }
        let index: String = conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'audit_events_action'",
            [],
            |r| r.get(0),
        )?;
        let listed = HOT_ACTIONS
            .iter()
            .all(|a| index.contains(&format!("'{a}'")));
        assert!(listed, "{index}");
        Ok(())
    }

    /// The console's pages at any depth, older (`before_seq`, newest first) or newer
    /// (`after_seq`, oldest first), are ranges of the primary key or of the subject and
    /// action indexes, never a sort: a page deep in a million events costs what the first
    /// costs.
    #[test]
    fn keyset_pages_read_a_range_both_ways() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let conn = store.lock();
        for (before, after, order) in [
            (Some(500_000), None, Order::NewestFirst),
            (None, Some(500_000), Order::OldestFirst),
        ] {
            let keyset = EventFilter {
                before_seq: before,
                after_seq: after,
                ..Default::default()
            };
            let plain = plan_in(&conn, &keyset, order)?;
            assert!(plain.contains("INTEGER PRIMARY KEY (rowid"), "{plain}");
            let subject = plan_in(
                &conn,
                &EventFilter {
                    subject: Some("apr_1".into()),
                    ..keyset.clone()
                },
                order,
            )?;
            assert!(subject.contains("audit_events_subject"), "{subject}");
            let action = plan_in(
                &conn,
                &EventFilter {
                    action: Some("approval.approved".into()),
                    ..keyset.clone()
                },
                order,
            )?;
            assert!(action.contains("audit_events_action"), "{action}");
            for p in [plain, subject, action] {
                assert!(!p.contains("TEMP B-TREE"), "{p}");
            }
        }
        Ok(())
    }

    /// A bounded page (a filter no index serves) reads one seq range of the primary key,
    /// never an index and never a sort, both ways; with an exact subject or rarer action it may
    /// read that index over the range instead, after finding the range's end by a walk of the
    /// index alone (a covering index: no row is read).
    #[test]
    fn bounded_pages_read_one_span() -> Result<(), Box<dyn std::error::Error>> {
        let store = Store::open(&Location::Memory)?;
        let conn = store.lock();
        let explain =
            |sql: &str, args: Vec<rusqlite::types::Value>| -> Result<String, StoreError> {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let steps: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(args), |r| r.get(3))?
                    .collect::<Result<_, _>>()?;
                Ok(steps.join("; "))
            };
        for order in [Order::NewestFirst, Order::OldestFirst] {
            // A time range's bounds are the span's own (it lies inside them) and its times.
            let span = EventFilter {
                before_seq: Some(500_001),
                after_seq: Some(450_000),
                since: Some("2026-01-01T00:00:00.000000Z".into()),
                ..Default::default()
            };
            for filter in [
                EventFilter {
                    actor: Some("agent:nobody".into()),
                    ..span.clone()
                },
                EventFilter {
                    outcome: Some("error".into()),
                    subject: Some("apr_1".into()),
                    action: Some("approval.*".into()),
                    ..span.clone()
                },
            ] {
                assert!(needs_bound(&filter));
                let (sql, args) = span_sql(&filter, order, 51, None);
                let plan = explain(&sql, args)?;
                assert!(
                    plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"),
                    "{plan}"
                );
                assert!(!plan.contains("INDEX audit_events_"), "{plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            }
            for (filter, index) in [
                (
                    EventFilter {
                        actor: Some("overseer:*".into()),
                        subject: Some("apr_1".into()),
                        ..span.clone()
                    },
                    "audit_events_subject",
                ),
                (
                    EventFilter {
                        actor: Some("overseer:*".into()),
                        action: Some("approval.approved".into()),
                        ..span.clone()
                    },
                    "audit_events_action",
                ),
            ] {
                let (sql, args) = span_sql(&filter, order, 51, Some(index));
                let plan = explain(&sql, args)?;
                assert!(plan.contains(index), "{plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{plan}");
                let conds = index_conditions(&filter);
                let cond = conds.first().ok_or("an index condition")?.1.clone();
                let (sql, args) = reach_sql(
                    &EventFilter {
                        before_seq: span.before_seq,
                        after_seq: span.after_seq,
                        ..cond
                    },
                    order,
                );
                let plan = explain(&sql, args)?;
                assert!(plan.contains(&format!("COVERING INDEX {index}")), "{plan}");
                assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            }
        }
        // Both an exact subject and a rarer action: one index is read, the other is a filter.
        let both = EventFilter {
            subject: Some("coordinator_status".into()),
            action: Some("approval.approved".into()),
            ..Default::default()
        };
        assert!(needs_bound(&both));
        let names: Vec<&str> = index_conditions(&both).iter().map(|c| c.0).collect();
        assert_eq!(names, ["audit_events_subject", "audit_events_action"]);
        for name in names {
            let (sql, args) = span_sql(&both, Order::NewestFirst, 51, Some(name));
            let plan = explain(&sql, args)?;
            assert!(plan.contains(&format!("INDEX {name}")), "{plan}");
        }
        // Exact subjects and rarer actions alone keep the unbounded index path.
        for filter in [
            EventFilter {
                subject: Some("apr_1".into()),
                ..Default::default()
            },
            EventFilter {
                action: Some("approval.approved".into()),
                since: Some("2026-01-01T00:00:00.000000Z".into()),
                ..Default::default()
            },
        ] {
            assert!(!needs_bound(&filter), "{filter:?}");
        }
        Ok(())
    }

    /// The append-only triggers refuse an update or delete of an event, and a delete of a
    /// signature (moved here from the audit service's tests: it drives SQL directly).
    #[test]
    fn triggers_refuse_update_and_delete() -> Result<(), Box<dyn std::error::Error>> {
        use crate::audit::{Action, Actor, ActorKind, AuditLog, AuditSigner, NewEvent, Outcome};
        let store = Store::open(&Location::Memory)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let log = AuditLog::new(store, std::sync::Arc::new(AuditSigner::from_key(key)));
        log.record(NewEvent {
            actor: Actor::new(ActorKind::Client, "test/1.0"),
            action: Action::ToolCall,
            subject: "a".into(),
            outcome: Outcome::Ok,
            detail: serde_json::json!({"arguments": {"token": "ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}),
            critical: true,
        })?;
        let conn = log.store().lock();
        let upd = conn.execute("UPDATE audit_events SET subject = 'x'", []);
        assert!(upd.is_err_and(|e| e.to_string().contains("append-only")));
        let del = conn.execute("DELETE FROM audit_events", []);
        assert!(del.is_err_and(|e| e.to_string().contains("append-only")));
        let del = conn.execute("DELETE FROM audit_signatures", []);
        assert!(del.is_err());
        Ok(())
    }
}
