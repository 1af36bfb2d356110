//! Repository names and tags, validated by the grammar of the OCI Distribution spec.
//! Validation is also what keeps a name from escaping the storage root: no
//! component may be empty, `.`/`..`, upper case or percent-encoded.

use std::fmt;

/// A validated repository name such as `library/alpine`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A validated tag such as `v1.2.3`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_TAG_LEN: usize = 128;

impl RepoName {
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
    pub fn parse(s: &str) -> Option<RepoName> {
        (!s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(valid_component))
            .then(|| RepoName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators between alphanumeric runs: one '.', one or two '_', or any number of '-'.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl Tag {
    /// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
    pub fn parse(s: &str) -> Option<Tag> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        (first_ok && rest_ok && b.len() <= MAX_TAG_LEN).then(|| Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_spec_names() {
        for ok in [
            "a",
            "library/alpine",
            "my-org/my_repo",
            "a__b",
            "a---b",
            "foo.bar/baz",
            "x/y/z/w",
            "0",
        ] {
            assert!(RepoName::parse(ok).is_some(), "{ok:?}");
        }
    }

    #[test]
    fn rejects_names_that_break_the_grammar_or_escape() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "/abs",
            "a//b",
            "a/",
            "Upper",
            "a___b",
            "a._b",
            "-a",
            "a-",
            "%2e%2e",
            "a/%2e%2e/b",
            "a b",
            long.as_str(),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad:?} must be rejected");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_some());
    }

    #[test]
    fn tags_follow_the_grammar() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_some(), "{ok:?}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "sha256:abc", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_none(), "{bad:?}");
        }
    }
}
