//! Who is asking: HTTP Basic for scripts, a session cookie for the page (`POST /login`), and
//! the rule of what needs a user. Reading is open on a loopback listener (the NOC screen on the
//! gateway itself); on any other listener reading needs a user too. Commands always do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::http::HeaderMap;
use base64::Engine;

use super::users::Users;

/// The session cookie's name.
pub const COOKIE: &str = "emberwatch_session";
/// How long a login lasts: a night shift and a margin.
pub const SESSION_TTL: Duration = Duration::from_secs(14 * 3600);
/// Sessions held at most; the oldest go first (a flood of logins cannot grow memory).
pub const MAX_SESSIONS: usize = 10_000;
/// Password checks at once: each argon2 check takes about 19 MiB for a moment.
const CHECKS: usize = 2;

/// Users (reread when the file changes) and sessions.
pub struct Auth {
    file: PathBuf,
    users: Mutex<(Option<SystemTime>, Users)>,
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    checks: tokio::sync::Semaphore,
    /// Whether reading is open (a loopback listener).
    pub open_reading: bool,
}

/// What a request proved about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Nobody,
    User(String),
    /// Credentials were given and are wrong (or the session expired).
    Refused,
}

impl Auth {
    pub fn new(file: PathBuf, open_reading: bool) -> Auth {
        Auth {
            file,
            users: Mutex::new((None, Users::default())),
            sessions: Mutex::new(HashMap::new()),
            checks: tokio::sync::Semaphore::new(CHECKS),
            open_reading,
        }
    }

    /// The users, reread if the file changed since the last look.
    fn users(&self) -> Users {
        let mtime = std::fs::metadata(&self.file)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != mtime || mtime.is_none() {
            match Users::load(&self.file) {
                Ok(u) => *cached = (mtime, u),
                Err(e) => {
                    tracing::error!("console: {e}; logins fail until it is fixed");
                    *cached = (None, Users::default());
                }
            }
        }
        cached.1.clone()
    }

    /// Checks a name and password (off the async threads: argon2 is deliberately slow).
    pub async fn check(&self, name: &str, password: &str) -> bool {
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let users = self.users();
        let (name, password) = (name.to_string(), password.to_string());
        tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .unwrap_or(false)
    }

    /// A new session for `user`: its cookie value.
    pub fn login(&self, user: &str) -> String {
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        s.retain(|_, (_, until)| *until > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                s.remove(&oldest);
            }
        }
        s.insert(token.clone(), (user.to_string(), now + SESSION_TTL));
        token
    }

    pub fn logout(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Who sent these headers: Basic credentials first, then the session cookie.
    pub async fn who(&self, headers: &HeaderMap) -> Who {
        if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
            let Some((name, password)) = auth.to_str().ok().and_then(basic) else {
                return Who::Refused;
            };
            return if self.check(&name, &password).await {
                Who::User(name)
            } else {
                Who::Refused
            };
        }
        match session_cookie(headers) {
            None => Who::Nobody,
            Some(token) => {
                let s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                match s.get(&token) {
                    Some((user, until)) if *until > Instant::now() => Who::User(user.clone()),
                    _ => Who::Refused,
                }
            }
        }
    }
}

/// `Basic base64(name:password)` → (name, password).
fn basic(header: &str) -> Option<(String, String)> {
    let b64 = header.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (n, p) = text.split_once(':')?;
    Some((n.to_string(), p.to_string()))
}

/// The session token from the `Cookie` header.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_and_cookies_are_read() {
        assert_eq!(
            basic("Basic a2ltOnMzY3JldDp3aXRoOmNvbG9ucw=="),
            Some(("kim".into(), "s3cret:with:colons".into()))
        );
        assert_eq!(basic("Bearer x"), None);
        assert_eq!(basic("Basic !!!"), None);
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            "a=1; emberwatch_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
    }
}
