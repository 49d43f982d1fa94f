//! Closed values (statuses, kinds) read out of a row: parsed into the domain's enum where the
//! row is mapped, so the domain never sees a status string, and a value this build does not
//! know is [`StoreError::Unreadable`] naming its column rather than a guess.

use std::str::FromStr;

use rusqlite::Row;
use rusqlite::types::Type;

use super::StoreError;

/// Column `idx` of `r`, named `column` in errors, parsed with `FromStr`. An unknown value
/// travels through rusqlite as a conversion failure carrying the [`StoreError::Unreadable`]
/// that [`error`] unpacks.
pub(super) fn get<T: FromStr>(
    r: &Row<'_>,
    idx: usize,
    column: &'static str,
) -> rusqlite::Result<T> {
    let text = r
        .get_ref(idx)?
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))?;
    text.parse().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            Box::new(StoreError::unreadable(column, text)),
        )
    })
}

/// [`get`] for a column that may be NULL.
pub(super) fn get_opt<T: FromStr>(
    r: &Row<'_>,
    idx: usize,
    column: &'static str,
) -> rusqlite::Result<Option<T>> {
    match r.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => get(r, idx, column).map(Some),
    }
}

/// The error of a query whose rows [`get`] maps: an unknown closed value as the
/// [`StoreError::Unreadable`] it carries, anything else as [`StoreError::from_sqlite`] says.
pub(super) fn error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(idx, ty, inner) => {
            match inner.downcast::<StoreError>() {
                Ok(unreadable) => *unreadable,
                Err(inner) => StoreError::from_sqlite(rusqlite::Error::FromSqlConversionFailure(
                    idx, ty, inner,
                )),
            }
        }
        e => StoreError::from_sqlite(e),
    }
}
