//! Finding approvals: the filters of `approval_list` and the CLI ([`ListFilter`]), the
//! console's history ([`SearchFilter`]), and the newest-first pages they return.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Approval, ApprovalError, ApprovalService, Kind, Risk, State};
use crate::store::approval as sql;

/// Filters for [`ApprovalService::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    pub kind: Option<Kind>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// Filters for [`ApprovalService::search`]: those of [`ListFilter`] and more.
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    pub state: Option<State>,
    pub kind: Option<Kind>,
    pub risk: Option<Risk>,
    /// A piece of who asked (`requested_by`), any case.
    pub requester: Option<String>,
    /// Created at or after this time (stored form, see `audit::chain::normalize_ts`).
    pub created_after: Option<String>,
    /// Created before this time (stored form).
    pub created_before: Option<String>,
    pub limit: u32,
    pub cursor: Option<String>,
}

/// A page of approvals, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalPage {
    pub approvals: Vec<Approval>,
    /// Pass back as `cursor` for the next, older page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl ApprovalService {
    /// Approvals, newest first.
    pub fn list(&self, filter: &ListFilter) -> Result<ApprovalPage, ApprovalError> {
        self.search(&SearchFilter {
            state: filter.state,
            kind: filter.kind,
            limit: filter.limit,
            cursor: filter.cursor.clone(),
            ..SearchFilter::default()
        })
    }

    /// Approvals, newest first, narrowed by every field of `filter` that is set (the
    /// console's history).
    pub fn search(&self, filter: &SearchFilter) -> Result<ApprovalPage, ApprovalError> {
        self.expire_due_if_free()?;
        let limit = if filter.limit == 0 { 50 } else { filter.limit };
        let before = match &filter.cursor {
            Some(c) => Some(c.split_once('|').ok_or_else(|| ApprovalError::Invalid {
                field: "cursor",
                message: format!("expected the next_cursor of a previous page, got {c:?}"),
            })?),
            None => None,
        };
        let search = sql::Search {
            state: filter.state.map(State::as_str),
            kind: filter.kind.map(Kind::as_str),
            risk: filter.risk.map(Risk::as_str),
            requester: filter.requester.as_deref().filter(|r| !r.is_empty()),
            created_after: filter.created_after.as_deref(),
            created_before: filter.created_before.as_deref(),
            before,
        };
        let mut rows = self.store().read(|tx| sql::list(tx, &search, limit + 1))?;
        let next_cursor = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|r| format!("{}|{}", r.created_at, r.id))
        } else {
            None
        };
        Ok(ApprovalPage {
            approvals: rows
                .into_iter()
                .map(Approval::from_row)
                .collect::<Result<_, _>>()?,
            next_cursor,
        })
    }
}
