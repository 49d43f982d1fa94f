//! Unit tests of the secret store: sealing, binding to names, wrong keys, checks, key files
//! and rotation.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::rotate::write_private;
use super::*;
use crate::audit::{ActorKind, AuditSigner};
use crate::store::{Location, Store};
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

const KEY_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const KEY_B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

fn store(dir: &Path, key: Option<&str>) -> SecretStore {
    let db = Store::open(&Location::File(dir.join("c.db"))).unwrap();
    let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]));
    let audit = AuditLog::new(db, Arc::new(signer));
    SecretStore::new(audit, dir.to_path_buf()).with_env_keys(key.map(String::from), None)
}

fn me() -> Actor {
    Actor::new(ActorKind::User, "test@host")
}

#[test]
fn nonces_are_unique_per_value() {
    let key = MasterKey::parse(KEY_A, KeySource::Env).unwrap();
    let mut nonces = HashSet::new();
    let mut texts = HashSet::new();
    for _ in 0..1000 {
        let (nonce, ct) = key.seal("N", "the same value").unwrap();
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonces.insert(nonce));
        assert!(texts.insert(ct));
    }
}

#[test]
fn ciphertext_is_bound_to_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), Some(KEY_A));
    s.set("ONE", "value-number-one-xyz", &me()).unwrap();
    s.set("TWO", "value-number-two-xyz", &me()).unwrap();
    // ONE's row gets TWO's nonce and ciphertext.
    s.audit
        .store()
        .write(|tx| {
            let two = sql::get(tx, "TWO")?.expect("TWO is stored");
            sql::reencrypt(tx, "ONE", &two.nonce, &two.ciphertext, &two.key_fingerprint)
        })
        .unwrap();
    let err = s.reveal_many(&["ONE".into()], &me()).unwrap_err();
    assert!(matches!(err, SecretError::Tampered { .. }), "{err}");
    assert!(!err.to_string().contains("value-number"));
    let ok = s.reveal_many(&["TWO".into()], &me()).unwrap();
    assert_eq!(ok, vec![("TWO".into(), "value-number-two-xyz".into())]);
    let listed = s.list().unwrap();
    assert!(!listed[0].readable && listed[1].readable);
}

#[test]
fn wrong_key_names_both_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), Some(KEY_A))
        .set("TOKEN", "a-long-secret-value-1234", &me())
        .unwrap();
    let b = store(dir.path(), Some(KEY_B));
    let err = b.reveal_many(&["TOKEN".into()], &me()).unwrap_err();
    let fa = fingerprint(&[1u8; 32]);
    let fb = fingerprint(&[2u8; 32]);
    assert_eq!(
        err.to_string().split(" (").next().unwrap(),
        format!("secret TOKEN was stored under master key {fa}; the current key is {fb}")
    );
    assert_eq!(b.list().unwrap()[0].last4, None);
    let a = store(dir.path(), Some(KEY_A));
    assert_eq!(a.list().unwrap()[0].last4.as_deref(), Some("1234"));
}

#[test]
fn names_and_values_are_checked() {
    for bad in ["", "a b", "a/b", "é", &"x".repeat(129)] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
    for good in ["A", "GITHUB_TOKEN", "a.b-c_9", &"x".repeat(128)] {
        assert!(check_name(good).is_ok(), "{good:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), Some(KEY_A));
    assert!(s.set("A", "", &me()).is_err());
    assert!(s.set("A", "x\0y", &me()).is_err());
    assert_eq!(last4("short"), "");
    assert_eq!(last4("0123456789abcdef"), "cdef");
}

#[test]
fn env_keys_are_validated_without_echo() {
    for bad in ["abc", &"g".repeat(64), ""] {
        let e = MasterKey::parse(bad, KeySource::Env)
            .unwrap_err()
            .to_string();
        assert!(e.contains(ENV_KEY) && e.contains("64 hex"), "{e}");
        if !bad.is_empty() {
            assert!(!e.contains(bad), "{e}");
        }
    }
}

#[test]
fn key_file_is_created_only_by_a_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), None);
    let e = s.reveal_many(&["X".into()], &me()).unwrap_err();
    assert!(matches!(e, SecretError::NoKey(_)), "{e}");
    assert!(!dir.path().join(KEY_FILE).exists());
    assert!(!s.set("X", "a-long-secret-value-5678", &me()).unwrap());
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(s.set("X", "a-long-secret-value-9999", &me()).unwrap());
    // The key file gone while secrets exist: no new key is made.
    std::fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    let e = s.set("Y", "another-secret-value", &me()).unwrap_err();
    assert!(e.to_string().contains("refusing to create"), "{e}");
}

#[test]
fn interrupted_file_rotation_is_finished_on_next_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), None);
    s.set("X", "a-long-secret-value-5678", &me()).unwrap();
    // Simulate a crash after the commit and before the rename.
    let new = MasterKey::random(KeySource::File(dir.path().join(KEY_FILE)));
    write_private(
        &dir.path().join(NEXT_KEY_FILE),
        format!("{}\n", new.hex()).as_bytes(),
    )
    .unwrap();
    s.audit
        .store()
        .write(|tx| s.reencrypt_all(tx, &new, &me()))
        .unwrap();
    let got = s.reveal_many(&["X".into()], &me()).unwrap();
    assert_eq!(got[0].1, "a-long-secret-value-5678");
    assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    // An abandoned next key (no row under it) is removed by the next rotation.
    write_private(
        &dir.path().join(NEXT_KEY_FILE),
        format!("{KEY_B}\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(s.rotate_key(&me()).unwrap(), 1);
    assert!(!dir.path().join(NEXT_KEY_FILE).exists());
    let got = s.reveal_many(&["X".into()], &me()).unwrap();
    assert_eq!(got[0].1, "a-long-secret-value-5678");
}

#[test]
fn env_rotation_needs_the_new_key_and_is_repeatable() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path(), Some(KEY_A));
    s.set("X", "a-long-secret-value-5678", &me()).unwrap();
    let e = s.rotate_key(&me()).unwrap_err();
    assert!(matches!(e, SecretError::RotateRefused(_)), "{e}");
    let r = s
        .clone()
        .with_env_keys(Some(KEY_A.into()), Some(KEY_B.into()));
    assert_eq!(r.rotate_key(&me()).unwrap(), 1);
    assert_eq!(r.rotate_key(&me()).unwrap(), 1);
    let b = s.clone().with_env_keys(Some(KEY_B.into()), None);
    assert_eq!(
        b.reveal_many(&["X".into()], &me()).unwrap()[0].1,
        "a-long-secret-value-5678"
    );
    assert!(!dir.path().join(KEY_FILE).exists());
}
