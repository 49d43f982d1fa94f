//! Access tokens and API keys this coordinator issues itself, for a team without an identity
//! provider and for automated systems that cannot do OAuth: HS256 JWTs signed with a key in the
//! data directory (`access-token.key`, mode 0600), and opaque API keys of which only a SHA-256
//! is stored. A check decides on the token's row (remembered between requests only until a
//! revocation is made, `checked.rs`), so a revocation from any process holds at the next
//! request.

use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::checked::{Checked, Remembered};
use super::{Principal, Role, Source};
use crate::audit::chain::{format_ts, now_ts};
use crate::audit::{Action, Actor, AuditLog, NewEvent, Outcome};
use crate::store::StoreError;
use crate::store::access::{self as sql, AccessRow};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "access-token.key";
/// Every API key starts with this, so a key pasted where a JWT was expected (or into a log
/// scanner's rules) is recognised.
pub const API_KEY_PREFIX: &str = "mcpc_key_";
const ISSUER: &str = "mcp-coordinator";
const AUDIENCE: &str = "mcp-coordinator/mcp";
/// The longest name given to a token or key, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// What a local access token says. Roles are in the token and in its row; the row decides.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Why a token or key was refused, or could not be issued. The messages are what a client
/// gets in the `401`'s `error_description`: they name the problem, never the token.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot use the access token key {path}: {message}")]
    Key { path: String, message: String },
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not verify (forged, or issued by another coordinator)")]
    BadSignature,
    #[error("the token is not one this coordinator issued: {0}")]
    Malformed(String),
    #[error("the {kind} {id} was revoked at {at}")]
    Revoked {
        kind: &'static str,
        id: String,
        at: String,
    },
    #[error("unknown API key")]
    UnknownKey,
    #[error("no token or key with id {0}")]
    NotFound(String),
    #[error(
        "cannot record a revocation for running servers in {path}: {message}; nothing was revoked"
    )]
    Unsignalled { path: String, message: String },
    #[error(
        "{id} is revoked in the database, but running servers may accept it for up to a minute: \
         cannot write {path}: {message}"
    )]
    SignalLost {
        id: String,
        path: String,
        message: String,
    },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// A token or key just issued: the only time its secret is seen.
#[derive(Debug, Clone)]
pub struct IssuedAccess {
    pub row: AccessRow,
    /// The bearer value to hand the holder (a JWT, or `mcpc_key_...`).
    pub secret: String,
}

/// Issues, lists, revokes and checks local access tokens and API keys.
#[derive(Clone)]
pub struct AccessTokens {
    audit: AuditLog,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    checked: Arc<Checked>,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokens { .. }")
    }
}

impl AccessTokens {
    /// Loads the signing key from `data_dir`, creating it on first use.
    pub fn open(audit: AuditLog, data_dir: &Path) -> Result<Self, AccessError> {
        let key = crate::keyfile::read_or_create(data_dir, KEY_FILE, || {
            let mut bytes = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            bytes.to_vec()
        })
        .map_err(|e| AccessError::Key {
            path: data_dir.join(KEY_FILE).display().to_string(),
            message: e.to_string(),
        })?;
        if key.len() < 32 {
            return Err(AccessError::Key {
                path: data_dir.join(KEY_FILE).display().to_string(),
                message: format!("holds {} bytes, expected 32", key.len()),
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Ok(AccessTokens {
            checked: Arc::new(Checked::new(audit.store().location())),
            audit,
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
        })
    }

    /// Issues an access token (a JWT valid for `ttl_seconds`) or, with `api_key`, an API key
    /// (valid until revoked, or for `ttl_seconds` when given), recorded in the audit log as
    /// issued `by`.
    pub fn issue(
        &self,
        name: &str,
        roles: &[Role],
        ttl_seconds: Option<i64>,
        api_key: bool,
        by: &Actor,
    ) -> Result<IssuedAccess, AccessError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(AccessError::Invalid {
                field: "name",
                message: format!("expected 1 to {MAX_NAME_CHARS} characters"),
            });
        }
        if roles.is_empty() {
            return Err(AccessError::Invalid {
                field: "role",
                message: "expected at least one role".into(),
            });
        }
        let ttl = match (ttl_seconds, api_key) {
            (Some(t), _) if t <= 0 => {
                return Err(AccessError::Invalid {
                    field: "ttl",
                    message: "expected a positive duration".into(),
                });
            }
            (Some(t), _) => Some(t),
            (None, true) => None,
            (None, false) => Some(DEFAULT_TOKEN_TTL_SECONDS),
        };
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let now = time::OffsetDateTime::now_utc();
        let random = uuid::Uuid::new_v4().simple().to_string();
        let id = if api_key {
            format!("key_{}", &random[..16])
        } else {
            format!("tok_{}", &random[..16])
        };
        let expires_at = ttl.map(|t| format_ts(now + time::Duration::seconds(t)));
        let row = AccessRow {
            id: id.clone(),
            kind: if api_key { "api_key" } else { "token" }.into(),
            name: name.to_string(),
            roles: roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(","),
            issued_at: format_ts(now),
            issued_by: by.render(),
            expires_at,
            revoked_at: None,
            revoked_by: None,
        };
        let (secret, key_hash) = if api_key {
            let mut bytes = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            let key = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
            let hash = key_hash(&key);
            (key, Some(hash))
        } else {
            let claims = Claims {
                sub: id.clone(),
                name: name.to_string(),
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                iat: now.unix_timestamp(),
                exp: now.unix_timestamp() + ttl.unwrap_or(DEFAULT_TOKEN_TTL_SECONDS),
            };
            let jwt = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
                .map_err(|e| AccessError::Malformed(e.to_string()))?;
            (jwt, None)
        };
        self.audit.store().write(|tx| {
            sql::insert(tx, &row, key_hash.as_deref())?;
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::TokenIssued,
                    subject: id.clone(),
                    outcome: Outcome::Ok,
                    detail: json!({
                        "kind": row.kind, "name": row.name, "roles": row.roles,
                        "expires_at": row.expires_at,
                    }),
                    critical: true,
                },
            )?;
            Ok::<_, AccessError>(())
        })?;
        Ok(IssuedAccess { row, secret })
    }

    /// Every token and key issued, newest first (never a secret).
    pub fn list(&self) -> Result<Vec<AccessRow>, AccessError> {
        Ok(self.audit.store().read(sql::list)?)
    }

    /// Revokes the token or key `id`; the next request that carries it is refused, in every
    /// process on the database.
    pub fn revoke(&self, id: &str, by: &Actor) -> Result<AccessRow, AccessError> {
        let path = || {
            self.checked
                .file()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let signal = self
            .checked
            .prepare()
            .map_err(|e| AccessError::Unsignalled {
                path: path(),
                message: e.to_string(),
            })?;
        let row = self.audit.store().write(|tx| {
            let row = sql::get(tx, id)?.ok_or_else(|| AccessError::NotFound(id.to_string()))?;
            if let Some(at) = &row.revoked_at {
                return Err(AccessError::Revoked {
                    kind: kind_name(&row.kind),
                    id: row.id.clone(),
                    at: at.clone(),
                });
            }
            let at = now_ts();
            sql::revoke(tx, id, &at, &by.render())?;
            self.audit.append_in(
                tx,
                &NewEvent {
                    actor: by.clone(),
                    action: Action::TokenRevoked,
                    subject: id.to_string(),
                    outcome: Outcome::Ok,
                    detail: json!({"kind": row.kind, "name": row.name}),
                    critical: true,
                },
            )?;
            Ok(AccessRow {
                revoked_at: Some(at),
                revoked_by: Some(by.render()),
                ..row
            })
        })?;
        self.checked
            .revoked(signal)
            .map_err(|e| AccessError::SignalLost {
                id: id.to_string(),
                path: path(),
                message: e.to_string(),
            })?;
        Ok(row)
    }

    /// Whether checking a token may wait (for the blocking pool then): on PostgreSQL its
    /// lookup is a network round trip, and an in-memory SQLite database has only the
    /// connection writes hold. A SQLite file's lookup runs on a connection of its own.
    pub fn check_may_wait(&self) -> bool {
        let store = self.audit.store();
        store.is_postgres() || matches!(store.location(), crate::store::Location::Memory)
    }

    /// Whether `bearer` looks like one of ours (an API key, or a JWT with our issuer), so the
    /// caller knows which check to run without trying each.
    pub fn is_ours(&self, bearer: &str) -> bool {
        if bearer.starts_with(API_KEY_PREFIX) {
            return true;
        }
        // Only the payload's `iss`, unverified (the check that follows verifies): every request
        // asks this, and decoding the whole token into a JSON value cost more than the rest of
        // a provider token's check.
        #[derive(serde::Deserialize)]
        struct Issuer<'a> {
            #[serde(borrow)]
            iss: Option<std::borrow::Cow<'a, str>>,
        }
        use base64::Engine;
        let mut parts = bearer.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| {
                serde_json::from_slice::<Issuer>(&json)
                    .ok()
                    .map(|c| c.iss.as_deref() == Some(ISSUER))
            })
            .unwrap_or(false)
    }

    /// The principal `bearer` (a local token or API key) acts as, or why it is refused.
    ///
    /// What a bearer was found to be is remembered under its SHA-256 (never the bearer)
    /// until a revocation is made (`checked.rs`): a token seen before is neither decoded nor
    /// looked up again, and its expiry and its row's revocation are judged on every request.
    pub fn check(&self, bearer: &str) -> Result<Principal, AccessError> {
        let key = key_hash(bearer);
        // The stamp is taken before the row is read: a revocation committed after it changes
        // the stamp, so a row read just before that revocation is not used again.
        let stamp = self.checked.stamp();
        let found = match stamp.and_then(|now| self.checked.get(&key, now)) {
            Some(found) => found,
            None => {
                let found = self.look_up(bearer, &key)?;
                if let Some(seen) = stamp {
                    self.checked.put(key, found.clone(), seen);
                }
                found
            }
        };
        let row = found.row;
        if let Some(at) = row.revoked_at {
            return Err(AccessError::Revoked {
                kind: kind_name(&row.kind),
                id: row.id,
                at,
            });
        }
        let now = time::OffsetDateTime::now_utc();
        if found.exp.is_some_and(|exp| exp <= now.unix_timestamp())
            || row
                .expires_at
                .as_deref()
                .is_some_and(|e| e <= format_ts(now).as_str())
        {
            return Err(AccessError::Expired);
        }
        let mut roles: Vec<Role> = row.roles.split(',').filter_map(Role::parse).collect();
        roles.sort();
        Ok(Principal {
            subject: row.id,
            name: row.name,
            roles,
            source: if row.kind == "api_key" {
                Source::ApiKey
            } else {
                Source::LocalToken
            },
        })
    }

    /// Verifies `bearer` (a JWT's signature and claims) and reads its row; `hash` is its
    /// SHA-256, which is how an API key's row is found.
    fn look_up(&self, bearer: &str, hash: &str) -> Result<Remembered, AccessError> {
        let store = self.audit.store();
        if bearer.starts_with(API_KEY_PREFIX) {
            let row = store
                .read_aside(|tx| sql::by_key_hash(tx, hash))?
                .ok_or(AccessError::UnknownKey)?;
            return Ok(Remembered { row, exp: None });
        }
        let claims = jsonwebtoken::decode::<Claims>(bearer, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AccessError::Expired,
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AccessError::BadSignature,
                other => AccessError::Malformed(format!("{other:?}")),
            })?
            .claims;
        let row = store
            .read_aside(|tx| sql::get(tx, &claims.sub))?
            .ok_or_else(|| AccessError::Malformed("no such token was issued".into()))?;
        Ok(Remembered {
            row,
            exp: Some(claims.exp),
        })
    }
}

/// How long an access token lasts when `--ttl` is not given: a day.
pub const DEFAULT_TOKEN_TTL_SECONDS: i64 = 24 * 3600;

fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn kind_name(kind: &str) -> &'static str {
    if kind == "api_key" {
        "API key"
    } else {
        "token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{ActorKind, AuditLog, AuditSigner};
    use crate::store::{Location, Store};

    fn tokens() -> Result<(tempfile::TempDir, AccessTokens), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(&Location::Memory)?;
        let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]));
        let audit = AuditLog::new(store, std::sync::Arc::new(signer));
        let tokens = AccessTokens::open(audit, dir.path())?;
        Ok((dir, tokens))
    }

    #[test]
    fn issue_check_revoke() -> Result<(), Box<dyn std::error::Error>> {
        let (_d, t) = tokens()?;
        let by = Actor::new(ActorKind::User, "me@host");
        let tok = t.issue("ci", &[Role::Agent], Some(60), false, &by)?;
        assert!(t.is_ours(&tok.secret));
        // Another issuer's JWT, one with no issuer, and what is not a JWT are not ours.
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = b64(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        for payload in [
            r#"{"iss":"https://idp.example.com","sub":"x"}"#,
            r#"{"sub":"x"}"#,
        ] {
            assert!(
                !t.is_ours(&format!("{header}.{}.c2ln", b64(payload))),
                "{payload}"
            );
        }
        let ours = format!("{header}.{}.c2ln", b64(&format!(r#"{{"iss":"{ISSUER}"}}"#)));
        assert!(t.is_ours(&ours));
        for junk in [
            "",
            "a.b",
            "a.b.c.d",
            "not a token",
            &format!("{header}.%%%.c2ln"),
        ] {
            assert!(!t.is_ours(junk), "{junk}");
        }
        let p = t.check(&tok.secret)?;
        assert_eq!(
            (p.name.as_str(), p.roles.clone()),
            ("ci", vec![Role::Agent])
        );
        assert_eq!(p.source, Source::LocalToken);
        let key = t.issue("scanner", &[Role::Compliance], None, true, &by)?;
        assert!(key.secret.starts_with(API_KEY_PREFIX));
        assert_eq!(t.check(&key.secret)?.source, Source::ApiKey);
        t.revoke(&tok.row.id, &by)?;
        let e = t.check(&tok.secret).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("revoked")), "{e:?}");
        assert!(matches!(
            t.check("mcpc_key_nope"),
            Err(AccessError::UnknownKey)
        ));
        assert!(matches!(
            t.revoke("tok_missing", &by),
            Err(AccessError::NotFound(_))
        ));
        assert!(matches!(
            t.issue(" ", &[Role::Agent], None, false, &by),
            Err(AccessError::Invalid { field: "name", .. })
        ));
        Ok(())
    }

    /// Two processes on one database file: each remembers the rows it checked, and a
    /// revocation made by the other is seen at the next check all the same.
    #[test]
    fn a_remembered_row_gives_way_to_a_revocation_from_another_process()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let database = dir.path().join("coordinator.db");
        let open = || -> Result<AccessTokens, Box<dyn std::error::Error>> {
            let store = Store::open(&Location::File(database.clone()))?;
            let signer = AuditSigner::from_key(ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]));
            Ok(AccessTokens::open(
                AuditLog::new(store, std::sync::Arc::new(signer)),
                dir.path(),
            )?)
        };
        let (server, cli) = (open()?, open()?);
        let by = Actor::new(ActorKind::User, "me@host");
        let tok = cli.issue("ci", &[Role::Agent], Some(60), false, &by)?;
        let key = cli.issue("scanner", &[Role::Compliance], None, true, &by)?;
        server.check(&tok.secret)?;
        server.check(&key.secret)?;

        // A row changed behind the store's back is not read again: the checks remember.
        server
            .audit
            .store()
            .write(|tx| sql::set_roles(tx, &tok.row.id, "admin"))?;
        assert_eq!(server.check(&tok.secret)?.roles, vec![Role::Agent]);

        // A revocation through the other process is refused at the next check, as is the
        // key (every row is read again after a revocation).
        cli.revoke(&tok.row.id, &by)?;
        assert!(super::super::checked::revocations_file(&database).exists());
        let e = server.check(&tok.secret).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("revoked")), "{e:?}");
        assert_eq!(server.check(&key.secret)?.roles, vec![Role::Compliance]);
        cli.revoke(&key.row.id, &by)?;
        assert!(server.check(&key.secret).is_err());

        // A remembered token still expires on time.
        let brief = cli.issue("brief", &[Role::Agent], Some(1), false, &by)?;
        server.check(&brief.secret)?;
        std::thread::sleep(std::time::Duration::from_millis(2100));
        assert!(matches!(
            server.check(&brief.secret),
            Err(AccessError::Expired)
        ));
        Ok(())
    }
}
