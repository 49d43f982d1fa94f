//! Closed values (statuses, kinds) read out of a row: parsed into the domain's enum where the
//! row is mapped, so the domain never sees a status string, and a value this build does not
//! know is [`StoreError::Unreadable`] naming its column rather than a guess.

use std::str::FromStr;

use super::StoreError;
use super::sql::Row;

/// Column `idx` of `r`, named `column` in errors, parsed with `FromStr`.
pub(super) fn get<T: FromStr>(
    r: &Row<'_>,
    idx: usize,
    column: &'static str,
) -> Result<T, StoreError> {
    let text: String = r.get(idx)?;
    text.parse()
        .map_err(|_| StoreError::unreadable(column, &text))
}

/// [`get`] for a column that may be NULL.
pub(super) fn get_opt<T: FromStr>(
    r: &Row<'_>,
    idx: usize,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    match r.get::<Option<String>>(idx)? {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| StoreError::unreadable(column, &text)),
    }
}
