//! SQL for the encrypted secret store: rows of name, nonce, ciphertext and key fingerprint.
//! Nothing here sees a value in clear; encryption lives in `crate::secret`.

use super::sql::Row;
use super::{StoreError, Tx};
use crate::args;

/// One row of `secrets`, as stored.
#[derive(Clone, PartialEq)]
pub struct SecretRow {
    pub name: String,
    /// The 96-bit AES-GCM nonce, random per value.
    pub nonce: Vec<u8>,
    /// AES-256-GCM ciphertext followed by its 16-byte tag.
    pub ciphertext: Vec<u8>,
    /// Fingerprint of the master key the row was encrypted under.
    pub key_fingerprint: String,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("name", &self.name)
            .field("key_fingerprint", &self.key_fingerprint)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "name, nonce, ciphertext, key_fingerprint, created_at, updated_at";

fn from_row(r: &Row<'_>) -> Result<SecretRow, StoreError> {
    Ok(SecretRow {
        name: r.get(0)?,
        nonce: r.get(1)?,
        ciphertext: r.get(2)?,
        key_fingerprint: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

pub fn get(tx: &Tx<'_>, name: &str) -> Result<Option<SecretRow>, StoreError> {
    tx.one(
        &format!("SELECT {COLUMNS} FROM secrets WHERE name = ?1"),
        args![name],
        from_row,
    )
}

/// Every row, by name.
pub fn all(tx: &Tx<'_>) -> Result<Vec<SecretRow>, StoreError> {
    tx.all(
        &format!("SELECT {COLUMNS} FROM secrets ORDER BY name"),
        args![],
        from_row,
    )
}

/// Inserts a row, or replaces the ciphertext of the row with this name (keeping `created_at`).
pub fn upsert(tx: &Tx<'_>, row: &SecretRow) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO secrets (name, nonce, ciphertext, key_fingerprint, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce,
             ciphertext = excluded.ciphertext, key_fingerprint = excluded.key_fingerprint,
             updated_at = excluded.updated_at",
        args![
            row.name,
            row.nonce,
            row.ciphertext,
            row.key_fingerprint,
            row.created_at,
            row.updated_at
        ],
    )?;
    Ok(())
}

/// Replaces a row's ciphertext under another key (rotation), leaving `updated_at` alone: the
/// value did not change.
pub fn reencrypt(
    tx: &Tx<'_>,
    name: &str,
    nonce: &[u8],
    ciphertext: &[u8],
    key_fingerprint: &str,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE secrets SET nonce = ?2, ciphertext = ?3, key_fingerprint = ?4 WHERE name = ?1",
        args![name, nonce, ciphertext, key_fingerprint],
    )?;
    Ok(())
}

/// Deletes a row; whether there was one.
pub fn delete(tx: &Tx<'_>, name: &str) -> Result<bool, StoreError> {
    let n = tx.exec("DELETE FROM secrets WHERE name = ?1", args![name])?;
    Ok(n > 0)
}

/// How many rows there are.
pub fn count(tx: &Tx<'_>) -> Result<i64, StoreError> {
    Ok(tx
        .one("SELECT COUNT(*) FROM secrets", args![], |r| r.get(0))?
        .unwrap_or(0))
}

/// Whether any row was stored under the key with this fingerprint. (EXISTS is an integer on
/// SQLite and a boolean on PostgreSQL; the row reader takes either as a bool.)
pub fn any_under(tx: &Tx<'_>, key_fingerprint: &str) -> Result<bool, StoreError> {
    Ok(tx
        .one(
            "SELECT EXISTS (SELECT 1 FROM secrets WHERE key_fingerprint = ?1)",
            args![key_fingerprint],
            |r| r.get(0),
        )?
        .unwrap_or(false))
}

/// The fingerprints rows are stored under, most used first, with their counts.
pub fn fingerprints(tx: &Tx<'_>) -> Result<Vec<(String, i64)>, StoreError> {
    tx.all(
        "SELECT key_fingerprint, COUNT(*) FROM secrets GROUP BY key_fingerprint
         ORDER BY COUNT(*) DESC, key_fingerprint",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, testing};

    /// Every byte value, NUL and 0xff included, so nothing is taken for text.
    fn row(name: &str, fingerprint: &str, at: &str) -> SecretRow {
        SecretRow {
            name: name.into(),
            nonce: vec![0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, 0, 0, 9, 10, 13],
            ciphertext: (0..=255u8).rev().collect(),
            key_fingerprint: fingerprint.into(),
            created_at: at.into(),
            updated_at: at.into(),
        }
    }

    fn stored_and_read_back(backend: &str, store: &Store) -> Result<(), StoreError> {
        let a = row("api_key", "k1", "2026-01-01T00:00:00Z");
        store.write(|tx| {
            upsert(tx, &a)?;
            upsert(tx, &row("db_password", "k1", "2026-01-01T00:00:00Z"))
        })?;
        assert_eq!(
            store.read(|tx| get(tx, "api_key"))?,
            Some(a.clone()),
            "{backend}"
        );
        assert_eq!(store.read(|tx| get(tx, "nope"))?, None, "{backend}");

        // A new value keeps created_at; rotation keeps updated_at.
        let mut changed = row("api_key", "k1", "2026-01-02T00:00:00Z");
        changed.nonce = vec![0xff; 12];
        changed.ciphertext = vec![0; 32];
        store.write(|tx| upsert(tx, &changed))?;
        changed.created_at = a.created_at.clone();
        assert_eq!(
            store.read(|tx| get(tx, "api_key"))?,
            Some(changed.clone()),
            "{backend}"
        );
        let nonce = [7u8; 12];
        let ciphertext = vec![0u8, 0xff, 0, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0];
        store.write(|tx| reencrypt(tx, "db_password", &nonce, &ciphertext, "k2"))?;
        let rotated = store.read(|tx| get(tx, "db_password"))?;
        assert_eq!(
            rotated.map(|r| (r.nonce, r.ciphertext, r.key_fingerprint, r.updated_at)),
            Some((
                nonce.to_vec(),
                ciphertext,
                "k2".to_string(),
                "2026-01-01T00:00:00Z".to_string()
            )),
            "{backend}"
        );

        store.read(|tx| -> Result<(), StoreError> {
            let names: Vec<String> = all(tx)?.into_iter().map(|r| r.name).collect();
            assert_eq!(names, ["api_key", "db_password"], "{backend}");
            assert_eq!(count(tx)?, 2, "{backend}");
            assert!(any_under(tx, "k1")?, "{backend}");
            assert!(!any_under(tx, "k3")?, "{backend}");
            assert_eq!(
                fingerprints(tx)?,
                [("k1".to_string(), 1), ("k2".to_string(), 1)],
                "{backend}"
            );
            Ok(())
        })?;
        assert!(store.write(|tx| delete(tx, "api_key"))?, "{backend}");
        assert!(!store.write(|tx| delete(tx, "api_key"))?, "{backend}");
        assert_eq!(store.read(count)?, 1, "{backend}");
        Ok(())
    }

    #[test]
    fn a_secret_row_keeps_its_bytes_on_both_backends() {
        for (backend, store) in testing::both("secrets") {
            if let Err(e) = stored_and_read_back(backend, &store) {
                panic!("{backend}: {e}");
            }
        }
    }
}
