//! Console sessions and form tokens, in this process's memory: a session is a person logged
//! in from one browser (the overseer with the passphrase, or someone the identity provider
//! vouched for) (an `HttpOnly`, `SameSite=Strict` cookie holds its random id),
//! and every form carries a one-time token issued for it, so that a forged or replayed form
//! is refused. A console restart logs everyone out, which is the safe direction.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

/// The start of the session cookie's name; each console adds its port
/// ([`Console::cookie_name`](super::Console::cookie_name)), because browsers keep one cookie
/// jar per host, not per port, and consoles on one machine must not overwrite each other's.
pub const COOKIE: &str = "mcpc_session";
/// Form tokens a session keeps at once (the oldest go first: a page left open for hours then
/// submitted is asked to reload).
const FORMS_PER_SESSION: usize = 256;
/// Used tokens remembered, to tell a replayed form from a forged one.
const USED_PER_SESSION: usize = 256;
/// Login form tokens kept before any session exists.
const LOGIN_FORMS: usize = 1024;
/// How long a login form stays usable.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a session lasts, however busy.
const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The key sessions are kept under: the SHA-256 of the cookie value, so the map never holds a
/// value that would log someone in.
type Key = [u8; 32];

/// Who is logged in, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Person {
    /// The overseer's name, or the provider's name for the person.
    pub name: String,
    /// How they proved who they are.
    pub login: Login,
    /// Where they connect from, `IP:PORT` as first seen.
    pub remote: String,
    key: Key,
}

/// How a person logged in.
#[derive(Debug, Clone)]
pub enum Login {
    /// The overseer's passphrase (local use): the credential row it matched.
    Passphrase { credential: i64 },
    /// The identity provider (team mode), authorization code with PKCE.
    Provider(ProviderLogin),
}

/// What the identity provider said about a person who logged in through it.
#[derive(Debug, Clone)]
pub struct ProviderLogin {
    /// The principal: subject, name and roles as the provider's tokens say them.
    pub principal: crate::auth::Principal,
    /// When the provider last asked this person for their password in a flow this console
    /// started (its ID token's `auth_time`, checked against the flow's start), if it did.
    pub authenticated_at: Option<Instant>,
}

impl Person {
    /// The overseer credential a passphrase session logged in with.
    pub fn credential(&self) -> Option<i64> {
        match &self.login {
            Login::Passphrase { credential } => Some(*credential),
            Login::Provider(_) => None,
        }
    }

    /// The principal a provider session acts as.
    pub fn principal(&self) -> Option<&crate::auth::Principal> {
        match &self.login {
            Login::Passphrase { .. } => None,
            Login::Provider(p) => Some(&p.principal),
        }
    }
}

struct Session {
    person: Person,
    created: Instant,
    last: Instant,
    forms: VecDeque<String>,
    used: VecDeque<String>,
}

/// Why a form was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormRefusal {
    /// The token was never issued to this session (a forged or foreign form).
    Forged,
    /// The token was already used once (the same form sent again).
    Replayed,
}

impl FormRefusal {
    pub fn message(self) -> &'static str {
        match self {
            FormRefusal::Forged => {
                "this form was not issued to your session (a forged, foreign or expired form); reload the page and try again"
            }
            FormRefusal::Replayed => {
                "this form was already submitted once; reload the page to act again"
            }
        }
    }
}

/// The sessions and pending login forms of one console.
pub struct Sessions {
    sessions: Mutex<HashMap<Key, Session>>,
    login_forms: Mutex<VecDeque<(String, Instant)>>,
    idle: Duration,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn key_of(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    pub fn new(idle: Duration) -> Self {
        Sessions {
            sessions: Mutex::new(HashMap::new()),
            login_forms: Mutex::new(VecDeque::new()),
            idle,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session; returns the cookie value (shown once, never stored as such).
    pub fn create(&self, name: &str, login: Login, remote: &str) -> String {
        let token = random_token();
        let key = key_of(&token);
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, s| !self.ended(s, now));
        map.insert(
            key,
            Session {
                person: Person {
                    name: name.to_string(),
                    login,
                    remote: remote.to_string(),
                    key,
                },
                created: now,
                last: now,
                forms: VecDeque::new(),
                used: VecDeque::new(),
            },
        );
        token
    }

    fn ended(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last) > self.idle || now.duration_since(s.created) > MAX_AGE
    }

    /// The person behind a cookie value, if the session is live (and marks it used).
    pub fn get(&self, token: &str) -> Option<Person> {
        let key = key_of(token);
        let now = Instant::now();
        let mut map = self.map();
        let ended = self.ended(map.get(&key)?, now);
        if ended {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last = now;
        Some(s.person.clone())
    }

    /// Whether `person`'s session is still live, without marking it used: a page that only
    /// watches (the event stream) does not keep an idle session alive.
    pub fn is_live(&self, person: &Person) -> bool {
        let now = Instant::now();
        self.map()
            .get(&person.key)
            .is_some_and(|s| !self.ended(s, now))
    }

    /// Ends a session.
    pub fn end(&self, person: &Person) {
        self.map().remove(&person.key);
    }

    /// Ends every passphrase session of a credential other than `current` (after a passphrase
    /// change or reset, the old passphrase's sessions must not go on deciding). Sessions the
    /// identity provider opened do not depend on the passphrase.
    pub fn end_other_credentials(&self, current: i64) {
        self.map()
            .retain(|_, s| s.person.credential().is_none_or(|c| c == current));
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        let now = Instant::now();
        self.map().values().filter(|s| !self.ended(s, now)).count()
    }

    /// Issues a one-time token for a form shown to `person`.
    pub fn issue_form(&self, person: &Person) -> String {
        let token = random_token();
        if let Some(s) = self.map().get_mut(&person.key) {
            if s.forms.len() >= FORMS_PER_SESSION {
                s.forms.pop_front();
            }
            s.forms.push_back(token.clone());
        }
        token
    }

    /// Takes a form token: succeeds once per issued token.
    pub fn take_form(&self, person: &Person, token: &str) -> Result<(), FormRefusal> {
        let mut map = self.map();
        let s = map.get_mut(&person.key).ok_or(FormRefusal::Forged)?;
        if let Some(i) = s.forms.iter().position(|t| t == token) {
            s.forms.remove(i);
            if s.used.len() >= USED_PER_SESSION {
                s.used.pop_front();
            }
            s.used.push_back(token.to_string());
            return Ok(());
        }
        if s.used.iter().any(|t| t == token) {
            return Err(FormRefusal::Replayed);
        }
        Err(FormRefusal::Forged)
    }

    /// Issues a one-time token for the login form (before anyone is logged in).
    pub fn issue_login_form(&self) -> String {
        let token = random_token();
        let mut forms = self.login_forms.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        forms.retain(|(_, at)| now.duration_since(*at) < LOGIN_FORM_TTL);
        if forms.len() >= LOGIN_FORMS {
            forms.pop_front();
        }
        forms.push_back((token.clone(), now));
        token
    }

    /// Takes a login form token: succeeds once per issued token, within its lifetime.
    pub fn take_login_form(&self, token: &str) -> Result<(), FormRefusal> {
        let mut forms = self.login_forms.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match forms.iter().position(|(t, _)| t == token) {
            Some(i) => {
                let fresh = forms
                    .remove(i)
                    .is_some_and(|(_, at)| now.duration_since(at) < LOGIN_FORM_TTL);
                if fresh {
                    Ok(())
                } else {
                    Err(FormRefusal::Forged)
                }
            }
            None => Err(FormRefusal::Forged),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: Login = Login::Passphrase { credential: 1 };

    #[test]
    fn a_form_token_works_once_and_only_for_its_session() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let a = sessions.create("ada", PASS, "127.0.0.1:1");
        let b = sessions.create("ada", PASS, "127.0.0.1:2");
        let (Some(pa), Some(pb)) = (sessions.get(&a), sessions.get(&b)) else {
            panic!("both sessions are live");
        };
        let token = sessions.issue_form(&pa);
        assert_eq!(sessions.take_form(&pb, &token), Err(FormRefusal::Forged));
        assert_eq!(sessions.take_form(&pa, &token), Ok(()));
        assert_eq!(sessions.take_form(&pa, &token), Err(FormRefusal::Replayed));
        assert_eq!(sessions.take_form(&pa, "0000"), Err(FormRefusal::Forged));
    }

    #[test]
    fn an_idle_session_ends_and_a_logged_out_one_is_gone() {
        let sessions = Sessions::new(Duration::from_millis(30));
        let a = sessions.create("ada", PASS, "127.0.0.1:1");
        let Some(person) = sessions.get(&a) else {
            panic!("the session is live");
        };
        std::thread::sleep(Duration::from_millis(60));
        assert!(sessions.get(&a).is_none(), "idle past the limit");
        let b = sessions.create("ada", PASS, "127.0.0.1:1");
        assert!(sessions.get(&b).is_some());
        sessions.end(&person);
        let Some(pb) = sessions.get(&b) else {
            panic!("ending another session leaves this one");
        };
        sessions.end(&pb);
        assert!(sessions.get(&b).is_none());
    }

    #[test]
    fn a_login_form_token_works_once() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let t = sessions.issue_login_form();
        assert_eq!(sessions.take_login_form(&t), Ok(()));
        assert_eq!(sessions.take_login_form(&t), Err(FormRefusal::Forged));
    }
}
