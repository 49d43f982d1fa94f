//! Reading the log: a page of events for `audit_query`, the console's keyset windows (a
//! bounded span of the chain for filters no index serves) and the JSON Lines export.

use std::io::Write;

use super::*;

impl AuditLog {
    /// One page of events matching `q`, newest first.
    pub fn query(&self, q: &Query) -> Result<Page, AuditError> {
        let (filter, limit) = filter_of(q)?;
        let mut rows = self.store.read(|tx| sql::page(tx, &filter, limit + 1))?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq.to_string())
        } else {
            None
        };
        Ok(Page {
            events: rows.into_iter().map(AuditEvent::from).collect(),
            next_cursor,
        })
    }

    /// One page of events matching `q` (its `cursor` is ignored) at `at`, newest first, with
    /// the keys of the pages on either side: the console's paging, both ways, by the primary
    /// key at any depth of the chain.
    pub fn window(&self, q: &Query, at: Keyset) -> Result<Window, AuditError> {
        let (filter, limit) = filter_of(&Query {
            cursor: None,
            ..q.clone()
        })?;
        let limit_rows = limit as usize;
        if sql::needs_bound(&filter) {
            return self.bounded_window(&filter, limit, at);
        }
        let any = |tx: &Tx<'_>, before: Option<i64>, after: Option<i64>| {
            let f = EventFilter {
                before_seq: before,
                after_seq: after,
                ..filter.clone()
            };
            sql::page_in(tx, &f, sql::Order::OldestFirst, 1).map(|r| !r.is_empty())
        };
        self.store.read(|tx| {
            let (rows, older, newer) = match at {
                Keyset::Newest | Keyset::Before(_) => {
                    let before = match at {
                        Keyset::Before(seq) => Some(seq),
                        _ => None,
                    };
                    let f = EventFilter {
                        before_seq: before,
                        ..filter.clone()
                    };
                    let mut rows = sql::page_in(tx, &f, sql::Order::NewestFirst, limit + 1)?;
                    let older = rows.len() > limit_rows;
                    rows.truncate(limit_rows);
                    let newer = match before {
                        None => false,
                        Some(b) => any(tx, None, Some(rows.first().map_or(b - 1, |r| r.seq)))?,
                    };
                    (rows, older, newer)
                }
                Keyset::After(after) => {
                    let f = EventFilter {
                        after_seq: Some(after),
                        ..filter.clone()
                    };
                    let mut rows = sql::page_in(tx, &f, sql::Order::OldestFirst, limit + 1)?;
                    let newer = rows.len() > limit_rows;
                    rows.truncate(limit_rows);
                    rows.reverse();
                    let older = any(
                        tx,
                        Some(rows.last().map_or(after.saturating_add(1), |r| r.seq)),
                        None,
                    )?;
                    (rows, older, newer)
                }
            };
            Ok(Window {
                older: older.then(|| rows.last().map(|r| r.seq)).flatten(),
                newer: newer.then(|| rows.first().map(|r| r.seq)).flatten(),
                events: rows.into_iter().map(AuditEvent::from).collect(),
                scanned: None,
            })
        })
    }

    /// [`AuditLog::window`] for a filter that may match few of the events it reads (an actor
    /// or outcome, which no index serves: every append would pay for one): one span of the
    /// chain per page (see `store::audit::page_bounded`), so a value that never occurs costs a
    /// span, not the whole chain. A page that read its span without filling says so, and its
    /// link goes on from the span's end. Whether anything matches on the page's other side is
    /// not looked up (that would be another span): the link is there while events are.
    fn bounded_window(
        &self,
        filter: &EventFilter,
        limit: u32,
        at: Keyset,
    ) -> Result<Window, AuditError> {
        let limit_rows = limit as usize;
        let (order, before, after) = match at {
            Keyset::Newest => (sql::Order::NewestFirst, None, None),
            Keyset::Before(b) => (sql::Order::NewestFirst, Some(b), None),
            Keyset::After(a) => (sql::Order::OldestFirst, None, Some(a)),
        };
        let f = EventFilter {
            before_seq: before,
            after_seq: after,
            ..filter.clone()
        };
        let page = self
            .store
            .read(|tx| sql::page_bounded(tx, &f, order, limit + 1))?;
        let mut rows = page.rows;
        let full = rows.len() > limit_rows;
        rows.truncate(limit_rows);
        let scanned = (!full && !page.exhausted).then_some(Scanned {
            first: page.first,
            last: page.last,
            towards_older: order == sql::Order::NewestFirst,
        });
        let (older, newer) = match order {
            sql::Order::NewestFirst => {
                let older = if full {
                    rows.last().map(|r| r.seq)
                } else {
                    scanned.map(|s| s.first)
                };
                let top = before.map(|b| rows.first().map_or(b.saturating_sub(1), |r| r.seq));
                (older, top.filter(|t| *t < page.upper))
            }
            sql::Order::OldestFirst => {
                rows.reverse();
                let newer = if full {
                    rows.first().map(|r| r.seq)
                } else {
                    scanned.map(|s| s.last)
                };
                let bottom = after.map(|a| rows.last().map_or(a.saturating_add(1), |r| r.seq));
                (bottom.filter(|b| *b > page.lower), newer)
            }
        };
        Ok(Window {
            events: rows.into_iter().map(AuditEvent::from).collect(),
            older,
            newer,
            scanned,
        })
    }

    /// Writes the events matching `q` (its limit and cursor aside), oldest first, one JSON
    /// object per line and each line ending in a newline: what `mcp-coordinator audit export`
    /// writes. Returns how many were written.
    pub fn export_jsonl(&self, q: &Query, out: &mut impl Write) -> Result<u64, ExportError> {
        let (filter, _) = filter_of(&Query {
            limit: None,
            cursor: None,
            ..q.clone()
        })?;
        // In chunks, each read in a snapshot of its own and written after it is released: a
        // reader that stalls (a paused download) then holds no snapshot, which would keep the
        // WAL from being checkpointed for as long as it stalls.
        let mut filter = filter;
        let mut n = 0u64;
        loop {
            let rows = self
                .store
                .read(|tx| sql::page_in(tx, &filter, sql::Order::OldestFirst, EXPORT_CHUNK))?;
            let Some(last) = rows.last().map(|r| r.seq) else {
                return Ok(n);
            };
            let full = rows.len() == EXPORT_CHUNK as usize;
            for row in rows {
                serde_json::to_writer(&mut *out, &AuditEvent::from(row))
                    .map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                n += 1;
            }
            if !full {
                return Ok(n);
            }
            filter.after_seq = Some(last);
            // Times grow with sequence numbers: past the first chunk `since` is implied, and
            // keeping it would give SQLite a second lower bound to start each chunk from.
            filter.since = None;
        }
    }
}

/// Events an export reads per snapshot.
const EXPORT_CHUNK: u32 = 2000;

/// The store's filter and the page size of `q`, or what is wrong with them.
pub(super) fn filter_of(q: &Query) -> Result<(EventFilter, u32), AuditError> {
    let ts = |field: &'static str, v: &Option<String>| -> Result<Option<String>, AuditError> {
        v.as_deref()
            .map(|s| {
                chain::normalize_ts(s).ok_or_else(|| AuditError::InvalidInput {
                    field,
                    message: format!(
                        "expected an RFC 3339 time such as 2026-11-21T09:30:00Z, got {s:?}"
                    ),
                })
            })
            .transpose()
    };
    let since = ts("since", &q.since)?;
    let until = ts("until", &q.until)?;
    if let (Some(s), Some(u)) = (&since, &until)
        && s >= u
    {
        return Err(AuditError::EmptyRange {
            since: s.clone(),
            until: u.clone(),
        });
    }
    let before_seq = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| AuditError::InvalidInput {
                    field: "cursor",
                    message: format!("expected the next_cursor of a previous page, got {c:?}"),
                })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(AuditError::InvalidInput {
            field: "limit",
            message: format!("expected 1 to {MAX_PAGE}, got {limit}"),
        });
    }
    let filter = EventFilter {
        since,
        until,
        actor: q.actor.clone(),
        action: q.action.clone(),
        subject: q.subject.clone(),
        outcome: q.outcome.map(|o| o.as_str().to_string()),
        before_seq,
        after_seq: None,
    };
    Ok((filter, limit))
}
