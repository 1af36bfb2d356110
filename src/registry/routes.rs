//! The registry's URL space, parsed in one pure function. Repository names hold
//! slashes, so the router has one wildcard and this parser reads the path from the
//! right, where the fixed words (`manifests`, `blobs`, `tags/list`...) are.

use super::digest::Digest;
use super::names::{RepoName, Tag};

/// A manifest is addressed by tag or by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
}

impl Endpoint {
    /// A fixed, low-cardinality label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::Blob(..) => "blob",
            Endpoint::UploadStart(_) => "upload_start",
            Endpoint::Upload(..) => "upload",
            Endpoint::Referrers(..) => "referrers",
        }
    }
}

/// Why a path under `/v2/` names no endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a registry path at all.
    NotFound,
    /// The repository name breaks the grammar (or tries to leave the storage root).
    InvalidName,
    /// The tag breaks the grammar.
    InvalidTag,
    /// A digest in the path is malformed or of an unsupported algorithm.
    InvalidDigest,
    /// The upload id is not one this registry could have issued.
    InvalidUploadId,
}

/// Parses the raw (still percent-encoded) request path.
pub fn parse(path: &str) -> Result<Endpoint, RouteError> {
    let rest = match path {
        "/v2" | "/v2/" => return Ok(Endpoint::Base),
        _ => path.strip_prefix("/v2/").ok_or(RouteError::NotFound)?,
    };
    if rest == "_catalog" {
        return Ok(Endpoint::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name_of = |upto: usize| -> Result<RepoName, RouteError> {
        if upto == 0 {
            return Err(RouteError::NotFound);
        }
        RepoName::parse(&rest[..segs[..upto].iter().map(|s| s.len() + 1).sum::<usize>() - 1])
            .ok_or(RouteError::InvalidName)
    };
    let digest = |s: &str| s.parse::<Digest>().map_err(|_| RouteError::InvalidDigest);
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Endpoint::Tags(name_of(n - 2)?));
    }
    if n >= 4 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let name = name_of(n - 3)?;
        let id = segs[n - 1];
        if id.is_empty() {
            return Ok(Endpoint::UploadStart(name));
        }
        uuid::Uuid::try_parse(id).map_err(|_| RouteError::InvalidUploadId)?;
        return Ok(Endpoint::Upload(name, id.to_owned()));
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Endpoint::UploadStart(name_of(n - 2)?));
    }
    if n < 3 {
        return Err(RouteError::NotFound);
    }
    let last = segs[n - 1];
    match segs[n - 2] {
        "manifests" => {
            let name = name_of(n - 2)?;
            let reference = if last.contains(':') {
                Reference::Digest(digest(last)?)
            } else {
                Reference::Tag(Tag::parse(last).ok_or(RouteError::InvalidTag)?)
            };
            Ok(Endpoint::Manifest(name, reference))
        }
        "blobs" => Ok(Endpoint::Blob(name_of(n - 2)?, digest(last)?)),
        "referrers" => Ok(Endpoint::Referrers(name_of(n - 2)?, digest(last)?)),
        _ => Err(RouteError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[test]
    fn base_and_catalog() {
        assert_eq!(parse("/v2/"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2"), Ok(Endpoint::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Endpoint::Catalog));
        assert_eq!(parse("/v1/"), Err(RouteError::NotFound));
    }

    #[test]
    fn multi_segment_names() {
        assert_eq!(
            parse("/v2/a/b/c/tags/list"),
            Ok(Endpoint::Tags(name("a/b/c")))
        );
        let ep = parse(&format!("/v2/org/blobs/uploads/blobs/{D}")).unwrap();
        assert_eq!(
            ep,
            Endpoint::Blob(name("org/blobs/uploads"), D.parse().unwrap())
        );
        assert_eq!(
            parse("/v2/org/manifests/manifests/latest"),
            Ok(Endpoint::Manifest(
                name("org/manifests"),
                Reference::Tag(Tag::parse("latest").unwrap())
            ))
        );
    }

    #[test]
    fn manifests_by_tag_and_digest() {
        assert_eq!(
            parse(&format!("/v2/x/manifests/{D}")),
            Ok(Endpoint::Manifest(
                name("x"),
                Reference::Digest(D.parse().unwrap())
            ))
        );
        assert_eq!(parse("/v2/x/manifests/.bad"), Err(RouteError::InvalidTag));
        assert_eq!(
            parse("/v2/x/manifests/sha256:zz"),
            Err(RouteError::InvalidDigest)
        );
    }

    #[test]
    fn uploads() {
        assert_eq!(
            parse("/v2/x/y/blobs/uploads/"),
            Ok(Endpoint::UploadStart(name("x/y")))
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads"),
            Ok(Endpoint::UploadStart(name("x")))
        );
        let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
        assert_eq!(
            parse(&format!("/v2/x/blobs/uploads/{id}")),
            Ok(Endpoint::Upload(name("x"), id.into()))
        );
        assert_eq!(
            parse("/v2/x/blobs/uploads/..%2f..%2fetc"),
            Err(RouteError::InvalidUploadId)
        );
    }

    #[test]
    fn escaping_names_are_invalid() {
        for p in [
            format!("/v2/../x/blobs/{D}"),
            format!("/v2/%2e%2e/x/blobs/{D}"),
            format!("/v2/a/./b/blobs/{D}"),
            format!("/v2//abs/blobs/{D}"),
            format!("/v2/Upper/blobs/{D}"),
            format!("/v2/{}/blobs/{D}", "a".repeat(256)),
        ] {
            assert_eq!(parse(&p), Err(RouteError::InvalidName), "{p}");
        }
    }

    #[test]
    fn referrers() {
        assert_eq!(
            parse(&format!("/v2/x/referrers/{D}")),
            Ok(Endpoint::Referrers(name("x"), D.parse().unwrap()))
        );
    }

    #[test]
    fn unknown_paths() {
        assert_eq!(parse("/v2/x"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/x/unknown/y"), Err(RouteError::NotFound));
        assert_eq!(parse("/v2/manifests/latest"), Err(RouteError::NotFound));
    }
}
