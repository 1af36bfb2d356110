//! HTTP Basic authentication against an htpasswd file of bcrypt entries.
//!
//! bcrypt is slow on purpose, so it never runs on the async workers: checks go
//! to the blocking pool behind a small semaphore. A verified password is
//! remembered (keyed to the user's current hash) so clients that send
//! credentials on every request pay bcrypt once. Failed attempts are budgeted
//! per user and per client address; an exhausted budget is answered 429 before
//! bcrypt runs. Unknown users are checked against a decoy hash of the same cost.
//! The file is re-read when it changes (a Secret update), without a restart.

mod htpasswd;
mod limiter;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

pub use htpasswd::{HtpasswdError, Users};
use limiter::FailureLimiter;

/// A remembered success is forgotten after this long without use.
const VERIFIED_IDLE: Duration = Duration::from_secs(300);

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET/HEAD of content.
    Pull,
    /// Anything that writes.
    Push,
    /// The repository list (`/v2/_catalog`).
    Catalog,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No or wrong credentials.
    Unauthorized,
    /// Too many failed attempts for this user or address; try again after this.
    TooManyAttempts { retry_after: Duration },
}

/// Who may do what without credentials, and how many failures are tolerated.
#[derive(Debug, Clone, Copy)]
pub struct AuthPolicy {
    /// Requests without credentials may pull.
    pub anonymous_pull: bool,
    /// With `anonymous_pull`: requests without credentials may also list the catalog.
    pub anonymous_catalog: bool,
    /// Failed logins allowed per user and per client address per minute (0: no limit).
    pub failures_per_minute: u32,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            anonymous_pull: false,
            anonymous_catalog: false,
            failures_per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum LimitKey {
    User(String),
    Address(IpAddr),
}

struct Verified {
    /// sha256 of the user's stored hash and the password that matched it.
    fingerprint: [u8; 32],
    used: Instant,
}

pub struct Authenticator {
    users: ArcSwap<Users>,
    /// The file and the sha256 of the content `users` came from (for reloads).
    source: Option<(PathBuf, Mutex<[u8; 32]>)>,
    policy: AuthPolicy,
    verified: Mutex<HashMap<String, Verified>>,
    failures: Mutex<FailureLimiter<LimitKey>>,
    /// bcrypt runs at most this many at once, on the blocking pool.
    bcrypt_slots: tokio::sync::Semaphore,
}

impl Authenticator {
    pub fn from_file(path: &Path, policy: AuthPolicy) -> Result<Self, HtpasswdError> {
        let text = read(path)?;
        let mut auth = Self::from_htpasswd(&text, policy)?;
        auth.source = Some((path.to_owned(), Mutex::new(Sha256::digest(&text).into())));
        Ok(auth)
    }

    pub fn from_htpasswd(text: &str, policy: AuthPolicy) -> Result<Self, HtpasswdError> {
        let slots = std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1);
        Ok(Authenticator {
            users: ArcSwap::from_pointee(Users::parse(text)?),
            source: None,
            policy,
            verified: Mutex::new(HashMap::new()),
            failures: Mutex::new(FailureLimiter::new(policy.failures_per_minute)),
            bcrypt_slots: tokio::sync::Semaphore::new(slots),
        })
    }

    pub fn policy(&self) -> AuthPolicy {
        self.policy
    }

    /// Whether a request with `headers` from `peer` may have `access`.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        access: Access,
        peer: Option<IpAddr>,
    ) -> Result<(), Denied> {
        match basic_credentials(headers) {
            Some((user, password)) => self.verify(&user, &password, peer).await,
            // Credentials that cannot be read are wrong credentials, never anonymous.
            None if headers.contains_key(header::AUTHORIZATION) => Err(Denied::Unauthorized),
            None => {
                let anonymous = match access {
                    Access::Pull => self.policy.anonymous_pull,
                    Access::Catalog => self.policy.anonymous_pull && self.policy.anonymous_catalog,
                    Access::Push => false,
                };
                if anonymous {
                    Ok(())
                } else {
                    Err(Denied::Unauthorized)
                }
            }
        }
    }

    async fn verify(&self, user: &str, password: &str, peer: Option<IpAddr>) -> Result<(), Denied> {
        let users = self.users.load_full();
        let (hash, known) = users.hash_for(user);
        let fingerprint = fingerprint(hash, password);
        if known && self.remembered(user, &fingerprint) {
            return Ok(());
        }
        let keys = limit_keys(user, peer);
        {
            // Every check spends a failure up front (refunded on success), so
            // concurrent guesses cannot all pass the budget before one fails.
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if let Some(retry_after) = keys.iter().filter_map(|k| failures.blocked(k, now)).max() {
                return Err(Denied::TooManyAttempts { retry_after });
            }
            for k in &keys {
                failures.record_failure(k, now);
            }
        }
        let matched = {
            // The semaphore is never closed; a failed acquire only means no limit.
            let _slot = self.bcrypt_slots.acquire().await;
            let (password, hash) = (password.to_owned(), hash.to_owned());
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        if !(matched && known) {
            return Err(Denied::Unauthorized);
        }
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for k in &keys {
                failures.refund(k, now);
            }
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.insert(
            user.to_owned(),
            Verified {
                fingerprint,
                used: Instant::now(),
            },
        );
        Ok(())
    }

    fn remembered(&self, user: &str, fingerprint: &[u8; 32]) -> bool {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match verified.get_mut(user) {
            Some(v) if &v.fingerprint == fingerprint && v.used.elapsed() < VERIFIED_IDLE => {
                v.used = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Re-reads the htpasswd file if its content changed. A file that does not
    /// parse is refused and the previous users stay. Blocking.
    pub fn reload_if_changed(&self) -> Result<bool, HtpasswdError> {
        let Some((path, seen)) = &self.source else {
            return Ok(false);
        };
        let text = read(path)?;
        let sum: [u8; 32] = Sha256::digest(&text).into();
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == sum {
            return Ok(false);
        }
        // Remember even content that fails to parse: it is reported once, not on
        // every check, and the next change is tried again.
        *seen = sum;
        let users = Users::parse(&text)?;
        self.users.store(Arc::new(users));
        // Remembered passwords are keyed to hashes, so changed or removed users
        // no longer match; dropping them all is simply tidier.
        self.verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(true)
    }

    /// Checks the file every `every` for changes.
    pub fn watch(self: Arc<Self>, every: Duration) {
        if self.source.is_none() {
            return;
        }
        super::periodic::blocking_every(every, false, "htpasswd reload", move || {
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(users = self.users.load().len(), "htpasswd file reloaded")
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "htpasswd file not reloaded; the previous users stay in effect"
                ),
            }
        });
    }
}

fn read(path: &Path) -> Result<String, HtpasswdError> {
    std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
        path: path.to_owned(),
        source,
    })
}

fn fingerprint(hash: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hash.as_bytes());
    h.update([0]);
    h.update(password.as_bytes());
    h.finalize().into()
}

fn limit_keys(user: &str, peer: Option<IpAddr>) -> Vec<LimitKey> {
    let mut keys = vec![LimitKey::User(user.to_owned())];
    if let Some(ip) = peer {
        keys.push(LimitKey::Address(ip.to_canonical()));
    }
    keys
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(user: &str, password: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
        h
    }

    fn policy(anonymous_pull: bool) -> AuthPolicy {
        AuthPolicy {
            anonymous_pull,
            ..AuthPolicy::default()
        }
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[tokio::test]
    async fn bcrypt_entries_authenticate() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = Authenticator::from_htpasswd(&format!("# users\nalice:{hash}\n"), policy(false))
            .unwrap();
        let ok = |r: Result<(), Denied>| r.is_ok();
        assert!(ok(auth
            .check(&headers("alice", "s3cret"), Access::Push, PEER)
            .await));
        assert!(
            ok(auth
                .check(&headers("alice", "s3cret"), Access::Pull, PEER)
                .await),
            "remembered path"
        );
        assert!(!ok(auth
            .check(&headers("alice", "wrong"), Access::Pull, PEER)
            .await));
        assert!(!ok(auth
            .check(&headers("bob", "s3cret"), Access::Pull, PEER)
            .await));
        assert!(!ok(auth.check(&HeaderMap::new(), Access::Pull, PEER).await));
    }

    #[tokio::test]
    async fn anonymous_pull_allows_reads_only() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = Authenticator::from_htpasswd(&format!("u:{hash}"), policy(true)).unwrap();
        let none = HeaderMap::new();
        assert_eq!(auth.check(&none, Access::Pull, PEER).await, Ok(()));
        assert_eq!(
            auth.check(&none, Access::Push, PEER).await,
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            auth.check(&none, Access::Catalog, PEER).await,
            Err(Denied::Unauthorized),
            "the catalog needs a login unless anonymous_catalog"
        );
        assert_eq!(
            auth.check(&headers("u", "bad"), Access::Pull, PEER).await,
            Err(Denied::Unauthorized),
            "wrong credentials are never anonymous"
        );
        let open = Authenticator::from_htpasswd(
            &format!("u:{hash}"),
            AuthPolicy {
                anonymous_catalog: true,
                ..policy(true)
            },
        )
        .unwrap();
        assert_eq!(open.check(&none, Access::Catalog, PEER).await, Ok(()));
    }

    #[tokio::test]
    async fn failures_are_limited_per_user_and_address() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = Authenticator::from_htpasswd(
            &format!("u:{hash}\nv:{hash}"),
            AuthPolicy {
                failures_per_minute: 3,
                ..policy(false)
            },
        )
        .unwrap();
        // A client that logged in before the attack keeps working.
        assert_eq!(
            auth.check(&headers("u", "pw"), Access::Pull, PEER).await,
            Ok(())
        );
        for _ in 0..3 {
            assert_eq!(
                auth.check(&headers("u", "guess"), Access::Pull, PEER).await,
                Err(Denied::Unauthorized)
            );
        }
        let Err(Denied::TooManyAttempts { retry_after }) =
            auth.check(&headers("u", "guess"), Access::Pull, PEER).await
        else {
            panic!("the fourth failure in a minute is refused");
        };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(20));
        assert_eq!(
            auth.check(&headers("u", "pw"), Access::Pull, PEER).await,
            Ok(())
        );
        // The address is spent too, for every user; another address is not.
        assert!(matches!(
            auth.check(&headers("v", "pw"), Access::Pull, PEER).await,
            Err(Denied::TooManyAttempts { .. })
        ));
        let other = Some("10.1.2.3".parse().unwrap());
        assert_eq!(
            auth.check(&headers("v", "pw"), Access::Pull, other).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn reload_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let a = bcrypt::hash("a-pw", 4).unwrap();
        let b = bcrypt::hash("b-pw", 4).unwrap();
        std::fs::write(&path, format!("a:{a}\nb:{b}\n")).unwrap();
        let auth = Authenticator::from_file(&path, policy(false)).unwrap();
        assert_eq!(
            auth.check(&headers("b", "b-pw"), Access::Push, PEER).await,
            Ok(())
        );
        assert!(!auth.reload_if_changed().unwrap(), "unchanged");
        std::fs::write(&path, format!("a:{a}\n")).unwrap();
        assert!(auth.reload_if_changed().unwrap());
        assert_eq!(
            auth.check(&headers("b", "b-pw"), Access::Push, PEER).await,
            Err(Denied::Unauthorized),
            "a removed user is out at once, remembered password or not"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(auth.reload_if_changed().is_err());
        assert_eq!(
            auth.check(&headers("a", "a-pw"), Access::Push, PEER).await,
            Ok(()),
            "a broken file leaves the previous users"
        );
    }
}
