//! The htpasswd file: `user:bcrypt-hash` lines, as `htpasswd -B` writes them.

use std::collections::HashMap;
use std::path::PathBuf;

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

/// The users of one version of the file.
#[derive(Debug)]
pub struct Users {
    /// user -> bcrypt hash
    hashes: HashMap<String, String>,
    /// A hash of a random password at the highest cost in the file: unknown users
    /// are checked against it, so a wrong user name costs what a wrong password
    /// costs and timing does not tell which names exist.
    decoy: String,
}

/// bcrypt's cost is the two digits after `$2y$`.
fn cost(hash: &str) -> Option<u32> {
    hash.get(4..6)?.parse().ok()
}

impl Users {
    pub fn parse(text: &str) -> Result<Users, HtpasswdError> {
        let mut hashes = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .filter(|(u, h)| !u.is_empty() && !h.is_empty())
                .ok_or(HtpasswdError::Malformed { line: i + 1 })?;
            let bcrypt_prefix = ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p));
            if !bcrypt_prefix || cost(hash).is_none() {
                return Err(HtpasswdError::NotBcrypt {
                    line: i + 1,
                    user: user.to_owned(),
                });
            }
            hashes.insert(user.to_owned(), hash.to_owned());
        }
        let decoy_cost = hashes
            .values()
            .filter_map(|h| cost(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST)
            .clamp(4, 31);
        let secret: [u8; 16] = rand::random();
        let decoy = bcrypt::hash(hex::encode(secret), decoy_cost)
            .map(|h| h.to_string())
            .unwrap_or_default();
        Ok(Users { hashes, decoy })
    }

    /// The hash to check a password against, and whether the user exists.
    pub fn hash_for(&self, user: &str) -> (&str, bool) {
        match self.hashes.get(user) {
            Some(h) => (h, true),
            None => (&self.decoy, false),
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_errors() {
        let hash = bcrypt::hash("pw", 5).unwrap();
        let users = Users::parse(&format!("# c\n\nu:{hash}\n")).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users.hash_for("u"), (hash.as_str(), true));
        let (decoy, known) = users.hash_for("nobody");
        assert!(!known);
        assert_eq!(cost(decoy), Some(5), "decoy costs what real entries cost");
        assert!(matches!(
            Users::parse("u:{SHA}abc"),
            Err(HtpasswdError::NotBcrypt { line: 1, .. })
        ));
        assert!(matches!(
            Users::parse("nocolon"),
            Err(HtpasswdError::Malformed { line: 1 })
        ));
        assert!(matches!(
            Users::parse("u:$2y$xx$abc"),
            Err(HtpasswdError::NotBcrypt { line: 1, .. })
        ));
    }
}
