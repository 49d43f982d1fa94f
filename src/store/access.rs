//! SQL for the access tokens and API keys this coordinator issued (`access_tokens`): insert,
//! look up by id or key hash, list, revoke. Nothing here signs or checks a token; that is
//! `crate::auth::local`.

use super::sql::Row;
use super::{StoreError, Tx};
use crate::args;

/// One row of `access_tokens` (never a token or key in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub id: String,
    /// `token` or `api_key`.
    pub kind: String,
    pub name: String,
    /// Comma-separated role names.
    pub roles: String,
    pub issued_at: String,
    pub issued_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
}

const COLUMNS: &str =
    "id, kind, name, roles, issued_at, issued_by, expires_at, revoked_at, revoked_by";

fn from_row(r: &Row<'_>) -> Result<AccessRow, StoreError> {
    Ok(AccessRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        roles: r.get(3)?,
        issued_at: r.get(4)?,
        issued_by: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        revoked_by: r.get(8)?,
    })
}

/// Adds a row; `key_hash` for API keys only.
pub fn insert(tx: &Tx<'_>, row: &AccessRow, key_hash: Option<&str>) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO access_tokens
         (id, kind, name, roles, key_hash, issued_at, issued_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![
            row.id,
            row.kind,
            row.name,
            row.roles,
            key_hash,
            row.issued_at,
            row.issued_by,
            row.expires_at
        ],
    )?;
    Ok(())
}

pub fn get(tx: &Tx<'_>, id: &str) -> Result<Option<AccessRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM access_tokens WHERE id = ?1"),
        args![id],
        from_row,
    )
}

pub fn by_key_hash(tx: &Tx<'_>, hash: &str) -> Result<Option<AccessRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM access_tokens WHERE key_hash = ?1"),
        args![hash],
        from_row,
    )
}

/// Every row, newest first.
pub fn list(tx: &Tx<'_>) -> Result<Vec<AccessRow>, StoreError> {
    tx.all(
        &format!("SELECT {COLUMNS} FROM access_tokens ORDER BY issued_at DESC, id"),
        args![],
        from_row,
    )
}

/// Changes a row's roles behind every check's back: only tests do (nothing in the product
/// changes a token's roles).
#[cfg(test)]
pub fn set_roles(tx: &Tx<'_>, id: &str, roles: &str) -> Result<usize, StoreError> {
    tx.exec(
        "UPDATE access_tokens SET roles = ?2 WHERE id = ?1",
        args![id, roles],
    )
}

/// Marks a row revoked; false when there is no such row or it was revoked already.
pub fn revoke(tx: &Tx<'_>, id: &str, at: &str, by: &str) -> Result<bool, StoreError> {
    let n = tx.exec(
        "UPDATE access_tokens SET revoked_at = ?2, revoked_by = ?3
         WHERE id = ?1 AND revoked_at IS NULL",
        args![id, at, by],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, testing};

    fn row(id: &str, kind: &str, issued_at: &str) -> AccessRow {
        AccessRow {
            id: id.into(),
            kind: kind.into(),
            name: format!("{id} for ci"),
            roles: "agent,installer".into(),
            issued_at: issued_at.into(),
            issued_by: "user:ann@host".into(),
            expires_at: (kind == "token").then(|| "2027-01-01T00:00:00Z".into()),
            revoked_at: None,
            revoked_by: None,
        }
    }

    fn issued_listed_revoked(backend: &str, store: &Store) -> Result<(), StoreError> {
        let token = row("tok_1", "token", "2026-01-01T00:00:00Z");
        let key = row("key_1", "api_key", "2026-01-02T00:00:00Z");
        store.write(|tx| {
            insert(tx, &token, None)?;
            insert(tx, &key, Some("ab12"))
        })?;
        // The same key hash twice is a conflict, on either backend.
        let again = store.write(|tx| insert(tx, &row("key_2", "api_key", "t"), Some("ab12")));
        assert!(
            matches!(again, Err(StoreError::Conflict { .. })),
            "{backend}: {again:?}"
        );
        store.read(|tx| -> Result<(), StoreError> {
            assert_eq!(get(tx, "tok_1")?, Some(token.clone()), "{backend}");
            assert_eq!(by_key_hash(tx, "ab12")?, Some(key.clone()), "{backend}");
            assert_eq!(by_key_hash(tx, "cd34")?, None, "{backend}");
            assert_eq!(
                list(tx)?,
                [key.clone(), token.clone()],
                "{backend}: newest first"
            );
            Ok(())
        })?;

        assert!(store.write(|tx| revoke(tx, "tok_1", "2026-01-03T00:00:00Z", "user:bo@h"))?);
        assert!(!store.write(|tx| revoke(tx, "tok_1", "2026-01-04T00:00:00Z", "user:cy@h"))?);
        assert!(!store.write(|tx| revoke(tx, "tok_9", "2026-01-04T00:00:00Z", "user:cy@h"))?);
        let revoked = store.read(|tx| get(tx, "tok_1"))?;
        assert_eq!(
            revoked.map(|r| (r.revoked_at, r.revoked_by)),
            Some((
                Some("2026-01-03T00:00:00Z".to_string()),
                Some("user:bo@h".to_string())
            )),
            "{backend}: the first revocation stands"
        );
        Ok(())
    }

    #[test]
    fn an_access_token_is_issued_listed_and_revoked_on_both_backends() {
        for (backend, store) in testing::both("access_tokens") {
            if let Err(e) = issued_listed_revoked(backend, &store) {
                panic!("{backend}: {e}");
            }
        }
    }
}
