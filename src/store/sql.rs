//! The one query surface the table modules write their SQL against, over either backend: values
//! bound as [`Val`] (built by [`args!`](crate::args)), rows read through [`Row`], and the
//! statements of [`Tx`] (`exec`, `one`, `all`). SQL is written once with SQLite's numbered
//! placeholders (`?1`); on PostgreSQL they become `$1`, and every value is sent with its type
//! so a statement is parsed and run in one round trip. Where the dialects differ (JSON
//! functions, `INSERT OR IGNORE`, index hints) a module asks [`Tx::is_postgres`] and spells
//! each.

use std::borrow::Cow;

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio_postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};

use super::StoreError;
use super::pg;

/// The type of a bound value, which PostgreSQL needs even for a NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Text,
    Blob,
}

impl Kind {
    fn pg_type(self) -> Type {
        match self {
            Kind::Int => Type::INT8,
            Kind::Real => Type::FLOAT8,
            Kind::Text => Type::TEXT,
            Kind::Blob => Type::BYTEA,
        }
    }
}

/// One bound value, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum Val<'a> {
    Null(Kind),
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl Val<'_> {
    /// The value, owned (kept to be sent later). A NULL forgets its kind: the statement it
    /// goes with was prepared with its parameters' types already.
    pub(super) fn kept(&self) -> Value {
        match *self {
            Val::Null(_) => Value::Null,
            Val::Int(i) => Value::Int(i),
            Val::Real(f) => Value::Real(f),
            Val::Text(s) => Value::Text(s.to_string()),
            Val::Blob(b) => Value::Blob(b.to_vec()),
        }
    }

    pub(super) fn pg_type(&self) -> Type {
        match self {
            Val::Null(k) => k.pg_type(),
            Val::Int(_) => Type::INT8,
            Val::Real(_) => Type::FLOAT8,
            Val::Text(_) => Type::TEXT,
            Val::Blob(_) => Type::BYTEA,
        }
    }
}

/// What can be bound: the integers, floats, text and bytes the tables hold, and `Option`s of
/// them (NULL). Booleans are stored as 0 and 1 on both backends.
pub trait Param {
    const KIND: Kind;
    fn val(&self) -> Val<'_>;
}

macro_rules! int_param {
    ($($t:ty),*) => {$(
        impl Param for $t {
            const KIND: Kind = Kind::Int;
            fn val(&self) -> Val<'_> {
                // Values past i64::MAX (a u64 count) saturate rather than wrap to negative.
                Val::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_param!(i64, i32, u32, u64, usize, u16, u8);

impl Param for bool {
    const KIND: Kind = Kind::Int;
    fn val(&self) -> Val<'_> {
        Val::Int(i64::from(*self))
    }
}

impl Param for f64 {
    const KIND: Kind = Kind::Real;
    fn val(&self) -> Val<'_> {
        Val::Real(*self)
    }
}

impl Param for str {
    const KIND: Kind = Kind::Text;
    fn val(&self) -> Val<'_> {
        Val::Text(self)
    }
}

impl Param for String {
    const KIND: Kind = Kind::Text;
    fn val(&self) -> Val<'_> {
        Val::Text(self)
    }
}

impl Param for [u8] {
    const KIND: Kind = Kind::Blob;
    fn val(&self) -> Val<'_> {
        Val::Blob(self)
    }
}

impl Param for Vec<u8> {
    const KIND: Kind = Kind::Blob;
    fn val(&self) -> Val<'_> {
        Val::Blob(self)
    }
}

impl<const N: usize> Param for [u8; N] {
    const KIND: Kind = Kind::Blob;
    fn val(&self) -> Val<'_> {
        Val::Blob(self)
    }
}

impl<T: Param + ?Sized> Param for &T {
    const KIND: Kind = T::KIND;
    fn val(&self) -> Val<'_> {
        (**self).val()
    }
}

impl<T: Param> Param for Option<T> {
    const KIND: Kind = T::KIND;
    fn val(&self) -> Val<'_> {
        match self {
            Some(v) => v.val(),
            None => Val::Null(T::KIND),
        }
    }
}

impl<'a> Param for Val<'a> {
    // Not used for a Val: its own kind travels with it.
    const KIND: Kind = Kind::Text;
    fn val(&self) -> Val<'_> {
        *self
    }
}

/// The values of one statement, in placeholder order: `args![id, name, limit]`.
#[macro_export]
macro_rules! args {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::sql::Param::val(&$x)),*] as &[$crate::store::sql::Val<'_>]
    };
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Null(_) => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(i),
            Val::Real(f) => ValueRef::Real(f),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl PgToSql for Val<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Val::Null(_) => Ok(IsNull::Yes),
            Val::Int(i) => i.to_sql(ty, out),
            Val::Real(f) => f.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Blob(b) => b.to_sql(ty, out),
        }
    }

    // The type is declared with the value (`Val::pg_type`), so it always matches.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One column's value read from a PostgreSQL row, by the column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What a column can be read as: rusqlite's own conversion on SQLite; on PostgreSQL from the
/// [`Value`] the column's type gives (an `INT4` or a `BOOL` reads as an i64, a count as a
/// float), so the same row mapping works on both.
pub trait Column: rusqlite::types::FromSql + Sized {
    fn from_value(v: Value) -> Option<Self>;
}

impl Column for i64 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl Column for u64 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => u64::try_from(i).ok(),
            _ => None,
        }
    }
}

impl Column for i32 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => i32::try_from(i).ok(),
            _ => None,
        }
    }
}

impl Column for bool {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i != 0),
            _ => None,
        }
    }
}

impl Column for f64 {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Real(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

impl Column for String {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl Column for Vec<u8> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b),
            _ => None,
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row, of either backend.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a tokio_postgres::Row),
}

impl Row<'_> {
    /// Column `idx` as `T`; a value of another type is an error naming the column.
    pub fn get<T: Column>(&self, idx: usize) -> Result<T, StoreError> {
        match self {
            Row::Lite(r) => r.get(idx).map_err(StoreError::from_sqlite),
            Row::Pg(r) => {
                let v = pg::value(r, idx)?;
                let shown = format!("{v:?}");
                T::from_value(v).ok_or_else(|| StoreError::Postgres {
                    message: format!(
                        "column {idx} ({}) holds {shown}, not a {}",
                        r.columns().get(idx).map_or("?", |c| c.name()),
                        std::any::type_name::<T>()
                    ),
                })
            }
        }
    }

    /// Column `idx` as whatever it holds (for copying rows between backends).
    pub fn value(&self, idx: usize) -> Result<Value, StoreError> {
        match self {
            Row::Lite(r) => Ok(match r.get_ref(idx).map_err(StoreError::from_sqlite)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::Int(i),
                ValueRef::Real(f) => Value::Real(f),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            }),
            Row::Pg(r) => pg::value(r, idx),
        }
    }

    /// How many columns the row has.
    pub fn len(&self) -> usize {
        match self {
            Row::Lite(r) => r.as_ref().column_count(),
            Row::Pg(r) => r.len(),
        }
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Param for Value {
    const KIND: Kind = Kind::Text;
    fn val(&self) -> Val<'_> {
        match self {
            Value::Null => Val::Null(Kind::Text),
            Value::Int(i) => Val::Int(*i),
            Value::Real(f) => Val::Real(*f),
            Value::Text(s) => Val::Text(s),
            Value::Blob(b) => Val::Blob(b),
        }
    }
}

/// SQLite's numbered placeholders (`?1`) as PostgreSQL's (`$1`); a bare `?` takes the next
/// number. Text inside single quotes is left alone.
pub(super) fn dollar_placeholders(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(map_placeholders(sql, |out, n| {
        out.push('$');
        out.push_str(&n.to_string());
    }))
}

/// `sql` with each placeholder outside single quotes (`?N`, or a bare `?`, which takes the
/// number after the one before it) written by `write` with its number.
pub(super) fn map_placeholders(sql: &str, mut write: impl FnMut(&mut String, u32)) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quoted = false;
    let mut next = 1u32;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => {
                let mut digits = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    digits.push(d);
                }
                let n = if digits.is_empty() {
                    next
                } else {
                    digits.parse::<u32>().unwrap_or(next)
                };
                next = n + 1;
                write(&mut out, n);
            }
            c => out.push(c),
        }
    }
    out
}

/// `(?a, ?b), (?c, ?d), ...`: `rows` rows of `width` placeholders numbered from `first`, for
/// a `VALUES` list (its columns are `column1`, `column2`, ... on both backends), or with one
/// row, an `IN` list or a row value.
pub(super) fn values_list(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let marks: Vec<String> = (0..width)
                .map(|c| format!("?{}", first + r * width + c))
                .collect();
            format!("({})", marks.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_and_quoted_text_is_kept() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?1'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?1'"
        );
        assert_eq!(dollar_placeholders("x = ? AND y = ?"), "x = $1 AND y = $2");
        assert_eq!(dollar_placeholders("no params"), "no params");
    }

    #[test]
    fn values_lists_are_numbered_row_by_row_from_their_first() {
        assert_eq!(values_list(2, 3, 1), "(?1, ?2, ?3), (?4, ?5, ?6)");
        assert_eq!(values_list(1, 2, 5), "(?5, ?6)");
    }

    #[test]
    fn values_carry_their_type_even_when_null() {
        let none: Option<i64> = None;
        let bytes = vec![1u8, 2];
        let vals = crate::args![1i64, "a", none, Some(2.5f64), bytes];
        let types: Vec<Type> = vals.iter().map(Val::pg_type).collect();
        assert_eq!(
            types,
            [
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::FLOAT8,
                Type::BYTEA
            ]
        );
    }
}
