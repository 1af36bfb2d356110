//! HTTP Basic authentication against an htpasswd file of bcrypt entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("reading htpasswd file {} failed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("htpasswd line {line}: expected `user:bcrypt-hash`")]
    Malformed { line: usize },
    #[error(
        "htpasswd line {line}: user {user:?} has a non-bcrypt hash; create entries with `htpasswd -B`"
    )]
    NotBcrypt { line: usize, user: String },
}

/// Who may do what.
pub struct Authenticator {
    /// user -> bcrypt hash
    users: HashMap<String, String>,
    anonymous_pull: bool,
    /// user -> sha256(password) of the last password bcrypt accepted. bcrypt costs
    /// tens of milliseconds by design; clients send credentials on every request.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl Authenticator {
    pub fn from_file(path: &Path, anonymous_pull: bool) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_htpasswd(&text, anonymous_pull)
    }

    pub fn from_htpasswd(text: &str, anonymous_pull: bool) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .filter(|(u, h)| !u.is_empty() && !h.is_empty())
                .ok_or(HtpasswdError::Malformed { line: i + 1 })?;
            if !["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p)) {
                return Err(HtpasswdError::NotBcrypt {
                    line: i + 1,
                    user: user.to_owned(),
                });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(Authenticator {
            users,
            anonymous_pull,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the request may go on. `read` is true for pulls (GET/HEAD).
    pub fn allows(&self, headers: &HeaderMap, read: bool) -> bool {
        match basic_credentials(headers) {
            Some((user, password)) => self.verify(&user, &password),
            // Credentials that cannot be read are wrong credentials, never anonymous.
            None if headers.contains_key(header::AUTHORIZATION) => false,
            None => read && self.anonymous_pull,
        }
    }

    /// Whether requests without credentials can read.
    pub fn anonymous_pull(&self) -> bool {
        self.anonymous_pull
    }

    fn verify(&self, user: &str, password: &str) -> bool {
        let Some(hash) = self.users.get(user) else {
            return false;
        };
        let fingerprint: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.get(user) == Some(&fingerprint) {
            return true;
        }
        drop(verified);
        if bcrypt::verify(password, hash).unwrap_or(false) {
            verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            verified.insert(user.to_owned(), fingerprint);
            true
        } else {
            false
        }
    }
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

    #[test]
    fn bcrypt_entries_authenticate() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth =
            Authenticator::from_htpasswd(&format!("# users\nalice:{hash}\n"), false).unwrap();
        assert!(auth.allows(&headers("alice", "s3cret"), false));
        assert!(
            auth.allows(&headers("alice", "s3cret"), true),
            "cached path"
        );
        assert!(!auth.allows(&headers("alice", "wrong"), true));
        assert!(!auth.allows(&headers("bob", "s3cret"), true));
        assert!(!auth.allows(&HeaderMap::new(), true));
    }

    #[test]
    fn anonymous_pull_allows_reads_only() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = Authenticator::from_htpasswd(&format!("u:{hash}"), true).unwrap();
        assert!(auth.allows(&HeaderMap::new(), true));
        assert!(!auth.allows(&HeaderMap::new(), false));
        assert!(
            !auth.allows(&headers("u", "bad"), true),
            "wrong credentials are never anonymous"
        );
    }

    #[test]
    fn non_bcrypt_entries_are_refused() {
        let r = Authenticator::from_htpasswd("u:{SHA}abc", false);
        assert!(matches!(r, Err(HtpasswdError::NotBcrypt { line: 1, .. })));
        assert!(matches!(
            Authenticator::from_htpasswd("nocolon", false),
            Err(HtpasswdError::Malformed { line: 1 })
        ));
    }
}
