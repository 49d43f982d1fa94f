//! SQL for the audit tables: append an event row, read the head, page through events with
//! filters, stream the whole chain in order, and store and read head signatures.

use super::sql::{Param, Row, Val, Value};
use super::{StoreError, Tx};
use crate::args;

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

fn event_from_row(r: &Row<'_>) -> Result<EventRow, StoreError> {
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

/// The query for the newest event (seq, hash, ts); PostgreSQL's write transactions also send
/// it with their BEGIN.
pub(in crate::store) const HEAD_SQL: &str =
    "SELECT seq, hash, ts FROM audit_events ORDER BY seq DESC LIMIT 1";

/// The newest event's sequence number, hash and time, if any.
pub fn head(tx: &Tx<'_>) -> Result<Option<Head>, StoreError> {
    // On PostgreSQL a write transaction remembers the head it read or wrote: appends are
    // serialised by the write lock, so it stays the head until this transaction inserts the
    // next one (which `insert` records), and the lookup's round trip is paid once.
    let memo = tx.audit_head_memo();
    if let Some(found) = memo.and_then(|m| m.borrow().clone()) {
        return Ok(Some(found));
    }
    let head = tx.one(HEAD_SQL, args![], |r| {
        Ok(Head {
            seq: r.get(0)?,
            hash: r.get(1)?,
            ts: r.get(2)?,
        })
    })?;
    if let Some(m) = memo {
        *m.borrow_mut() = head.clone();
    }
    Ok(head)
}

/// The first sequence number whose event is at or after `ts` (a stored-form time), or one past
/// the head (`head_seq`, 0 for an empty chain) when there is none. Appends never go back in time, so this is a binary search over
/// the primary key (about 20 lookups for a million events) instead of an index on `ts` that
/// every append would write to.
fn first_seq_at_or_after(tx: &Tx<'_>, head_seq: i64, ts: &str) -> Result<i64, StoreError> {
    // The event at or after `seq` (seq has no gaps, but a lookup that tolerates them costs
    // nothing more).
    let (mut lo, mut hi) = (1, head_seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found: Option<(i64, String)> = tx.one(
            "SELECT seq, ts FROM audit_events WHERE seq >= ?1 ORDER BY seq LIMIT 1",
            args![mid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        match found {
            Some((seq, t)) if t.as_str() < ts => lo = seq + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// Inserts one event row. The caller computed its hash over these exact values and holds the
/// write transaction (SQLite's write lock; on PostgreSQL the advisory lock every coordinator
/// takes in `Store::write`, and each statement reads what committed before it), so no other
/// writer can slip in between reading the head and this insert: one gapless chain, one head.
/// Were one to, the primary key on `seq` refuses the second row as a conflict.
pub fn insert(tx: &Tx<'_>, row: &EventRow) -> Result<(), StoreError> {
    // Nothing reads its count, and the chain's order is the order statements are sent in.
    tx.exec_later_row(
        "INSERT INTO audit_events (seq, ts, actor, action, subject, outcome, detail, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        args![
            row.seq,
            row.ts,
            row.actor,
            row.action,
            row.subject,
            row.outcome,
            row.detail,
            row.prev_hash,
            row.hash
        ],
    )?;
    if let Some(m) = tx.audit_head_memo() {
        *m.borrow_mut() = Some(Head {
            seq: row.seq,
            hash: row.hash.clone(),
            ts: row.ts.clone(),
        });
    }
    Ok(())
}

/// Appends a text condition for an exact or `prefix*` match.
fn push_text_filter(
    sql: &mut String,
    args: &mut Vec<Value>,
    dialect: Dialect,
    column: &str,
    value: &Option<String>,
) {
    let Some(value) = value else { return };
    match value.strip_suffix('*') {
        Some(prefix) => {
            args.push(Value::Text(prefix.to_string()));
            let n = args.len();
            // Both compare characters, byte for byte (PostgreSQL's columns are COLLATE "C"),
            // and neither reads an index: a prefix filter takes the bounded path (needs_bound).
            sql.push_str(&match dialect {
                Dialect::Sqlite => format!(" AND substr({column}, 1, length(?{n})) = ?{n}"),
                Dialect::Postgres => format!(" AND starts_with({column}, ?{n})"),
            });
        }
        None => {
            args.push(Value::Text(value.clone()));
            sql.push_str(&format!(" AND {column} = ?{}", args.len()));
        }
    }
}

/// Which database a query is spelled for (the few places the audit queries differ: index
/// hints, the prefix match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn of(tx: &Tx<'_>) -> Self {
        if tx.is_postgres() {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }
}

/// Runs a built query (its SQL and owned arguments), mapping every row.
fn run_all<T>(
    tx: &Tx<'_>,
    sql: &str,
    args: &[Value],
    f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let vals: Vec<Val<'_>> = args.iter().map(Param::val).collect();
    tx.all(sql, &vals, f)
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
    let (sql, args) = page_sql(Dialect::of(tx), filter, since, until, order, limit);
    run_all(tx, &sql, &args, event_from_row)
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
        let (sql, args) = reach_sql(Dialect::of(tx), &f, order);
        Ok(run_all(tx, &sql, &args, |r| r.get(0))?.into_iter().next())
    };
    // The range read: through the index whose span reaches furthest when it reaches further
    // than the primary key's (named with INDEXED BY: the planner might read the other one over
    // the whole range), else by the primary key alone, told so with NOT INDEXED (an index
    // would read every one of its entries in the range). PostgreSQL has no index hints: its
    // planner, which keeps statistics, chooses within the same seq range.
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
    let (sql, args) = span_sql(Dialect::of(tx), &f, order, limit, by_index);
    let rows = run_all(tx, &sql, &args, event_from_row)?;
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
fn reach_sql(dialect: Dialect, cond: &EventFilter, order: Order) -> (String, Vec<Value>) {
    let (sql, mut args) = page_sql(dialect, cond, None, None, order, 1);
    let sql = sql.replacen(&format!("SELECT {COLUMNS}"), "SELECT seq", 1);
    args.push(Value::Int(INDEX_SPAN - 1));
    let sql = format!("{sql} OFFSET ?{}", args.len());
    (sql, args)
}

/// The query [`page_bounded`] runs over its seq range: through the index it chose (by name,
/// one of [`index_conditions`]'), or by the primary key alone. On PostgreSQL, which has no
/// index hints, the planner chooses.
fn span_sql(
    dialect: Dialect,
    filter: &EventFilter,
    order: Order,
    limit: u32,
    by_index: Option<&str>,
) -> (String, Vec<Value>) {
    let (sql, args) = page_sql(dialect, filter, None, None, order, limit);
    if dialect == Dialect::Postgres {
        return (sql, args);
    }
    let source = match by_index {
        Some(name) => format!("FROM audit_events INDEXED BY {name}"),
        None => "FROM audit_events NOT INDEXED".to_string(),
    };
    (sql.replacen("FROM audit_events", &source, 1), args)
}

/// The query [`page_in`] runs, and its arguments, given the seq bounds of its time range.
fn page_sql(
    dialect: Dialect,
    filter: &EventFilter,
    since_seq: Option<i64>,
    until_seq: Option<i64>,
    order: Order,
    limit: u32,
) -> (String, Vec<Value>) {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1=1");
    let mut args: Vec<Value> = Vec::new();
    // The ts conditions stay beside the seq bounds: a chain written before appends kept time
    // order may step back where a clock did, and then the page misses rather than includes
    // events near that step.
    // A bounded page passes no seq bounds of its own: its range lies inside them already, and
    // SQLite reads a rowid range by one lower and one upper bound, so a second lower bound
    // could become the range (from the middle of the chain to its head) and the span's own a
    // mere filter.
    if let Some(since) = &filter.since {
        if let Some(seq) = since_seq {
            args.push(Value::Int(seq));
            sql.push_str(&format!(" AND seq >= ?{}", args.len()));
        }
        args.push(Value::Text(since.clone()));
        sql.push_str(&format!(" AND ts >= ?{}", args.len()));
    }
    if let Some(until) = &filter.until {
        if let Some(seq) = until_seq {
            args.push(Value::Int(seq));
            sql.push_str(&format!(" AND seq < ?{}", args.len()));
        }
        args.push(Value::Text(until.clone()));
        sql.push_str(&format!(" AND ts < ?{}", args.len()));
    }
    if let Some(before) = filter.before_seq {
        args.push(Value::Int(before));
        sql.push_str(&format!(" AND seq < ?{}", args.len()));
    }
    if let Some(after) = filter.after_seq {
        args.push(Value::Int(after));
        sql.push_str(&format!(" AND seq > ?{}", args.len()));
    }
    push_text_filter(&mut sql, &mut args, dialect, "actor", &filter.actor);
    push_text_filter(&mut sql, &mut args, dialect, "action", &filter.action);
    if let Some(action) = &filter.action
        && !action.ends_with('*')
        && !HOT_ACTIONS.contains(&action.as_str())
    {
        let hot: Vec<String> = HOT_ACTIONS.iter().map(|a| format!("'{a}'")).collect();
        sql.push_str(&format!(" AND action NOT IN ({})", hot.join(", ")));
    }
    push_text_filter(&mut sql, &mut args, dialect, "subject", &filter.subject);
    push_text_filter(&mut sql, &mut args, dialect, "outcome", &filter.outcome);
    sql.push_str(match order {
        Order::NewestFirst => " ORDER BY seq DESC",
        Order::OldestFirst => " ORDER BY seq",
    });
    args.push(Value::Int(i64::from(limit)));
    sql.push_str(&format!(" LIMIT ?{}", args.len()));
    (sql, args)
}

/// How many events [`for_each_in_order`] reads per query: it holds no more rows than this at
/// once on either backend (PostgreSQL's client collects a whole result before it returns it).
pub const CHAIN_CHUNK: i64 = 5_000;

/// Calls `f` for every event in sequence order, oldest first, without loading them all: in
/// chunks of [`CHAIN_CHUNK`] by the primary key (`seq > last ORDER BY seq LIMIT n`), so a
/// chain of a million events costs a chunk of memory, and a gap in the sequence (deleted
/// events, which the caller reports) ends no chunk early.
pub fn for_each_in_order<E: From<StoreError>>(
    tx: &Tx<'_>,
    f: impl FnMut(EventRow) -> Result<(), E>,
) -> Result<(), E> {
    for_each_in_chunks(tx, CHAIN_CHUNK, f)
}

fn for_each_in_chunks<E: From<StoreError>>(
    tx: &Tx<'_>,
    chunk: i64,
    mut f: impl FnMut(EventRow) -> Result<(), E>,
) -> Result<(), E> {
    let chunk = chunk.max(1);
    let next = format!("SELECT {COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2");
    // The first chunk from the smallest seq there is (a row an attacker put below 1 included).
    let first = next.replace("seq > ?1", "seq >= ?1");
    let mut after: Option<i64> = None;
    loop {
        let rows = match after {
            None => tx.all(&first, args![i64::MIN, chunk], event_from_row)?,
            Some(seq) => tx.all(&next, args![seq, chunk], event_from_row)?,
        };
        let full = rows.len() as i64 >= chunk;
        for row in rows {
            after = Some(row.seq);
            f(row)?;
        }
        if !full {
            return Ok(());
        }
    }
}

/// Stores a signature over the chain head. Signing the same head twice is a no-op.
pub fn insert_signature(tx: &Tx<'_>, sig: &SignatureRow) -> Result<(), StoreError> {
    tx.exec(
        if tx.is_postgres() {
            "INSERT INTO audit_signatures (seq, hash, public_key, signature, signed_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"
        } else {
            "INSERT OR IGNORE INTO audit_signatures (seq, hash, public_key, signature, signed_at)
             VALUES (?1, ?2, ?3, ?4, ?5)"
        },
        args![
            sig.seq,
            sig.hash,
            sig.public_key,
            sig.signature,
            sig.signed_at
        ],
    )?;
    Ok(())
}

/// Every stored signature, oldest first.
pub fn signatures(tx: &Tx<'_>) -> Result<Vec<SignatureRow>, StoreError> {
    tx.all(
        "SELECT seq, hash, public_key, signature, signed_at FROM audit_signatures ORDER BY seq",
        args![],
        |r| {
            Ok(SignatureRow {
                seq: r.get(0)?,
                hash: r.get(1)?,
                public_key: r.get(2)?,
                signature: r.get(3)?,
                signed_at: r.get(4)?,
            })
        },
    )
}

/// Whether the chain has a key event (`action`) for `public_key` (its subject).
pub fn key_added(tx: &Tx<'_>, action: &str, public_key: &str) -> Result<bool, StoreError> {
    // EXISTS is an integer on SQLite and a boolean on PostgreSQL; both read as a bool.
    Ok(tx
        .one(
            "SELECT EXISTS(SELECT 1 FROM audit_events WHERE action = ?1 AND subject = ?2)",
            args![action, public_key],
            |r| r.get::<bool>(0),
        )?
        .unwrap_or(false))
}

/// The sequence number of the newest signed head, if any.
pub fn last_signed_seq(tx: &Tx<'_>) -> Result<Option<i64>, StoreError> {
    Ok(tx
        .one("SELECT MAX(seq) FROM audit_signatures", args![], |r| {
            r.get::<Option<i64>>(0)
        })?
        .flatten())
}

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
