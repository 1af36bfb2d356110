//! The on-disk layout, which is CNCF Distribution's (`registry:2`), so that either
//! registry can serve a data directory the other wrote. Under `<data>`:
//!
//! ```text
//! docker/registry/v2/
//!   blobs/<alg>/<hex[0..2]>/<hex>/data          content, shared by every repository
//!   repositories/<name>/                        <name> may hold slashes
//!     _layers/<alg>/<hex>/link                  "<alg>:<hex>": the blob is in this repository
//!     _manifests/revisions/<alg>/<hex>/link     the manifest is in this repository
//!     _manifests/tags/<tag>/current/link        digest the tag points to now
//!     _manifests/tags/<tag>/index/<alg>/<hex>/link   digests the tag has pointed to
//!     _uploads/<id>/data                        bytes received so far
//!     _uploads/<id>/startedat                   RFC 3339 start time
//!     _referrers/<alg>/<subject-hex>/<alg>/<hex>/link
//!                                               privreg's own: manifests whose `subject`
//!                                               is <subject>; Distribution ignores
//!                                               underscore directories it does not know
//!     _referrers/indexed                        the index covers every revision (absent
//!                                               in a directory registry:2 wrote: privreg
//!                                               builds it on its first manifest write
//!                                               there; until then a query scans the
//!                                               revisions, writing nothing)
//! ```
//!
//! Everything is committed by writing a temporary file beside the target, fsync,
//! rename, fsync of the directory: a reader sees the old file or the new one, never
//! a partial one. Blob content is renamed from the upload into place.

use std::path::{Path, PathBuf};

use crate::registry::digest::Digest;
use crate::registry::names::{RepoName, Tag};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// `data` is the data directory; the layout lives under `data/docker/registry/v2`.
    pub fn new(data: &Path) -> Layout {
        Layout {
            root: data.join("docker").join("registry").join("v2"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_dir(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().name())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.blob_dir(d).join("data")
    }

    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories")
    }

    pub fn repo(&self, r: &RepoName) -> PathBuf {
        // RepoName's grammar admits no empty, dot or dot-dot component, so the join
        // stays under repositories/.
        self.repositories().join(r.as_str())
    }

    pub fn layer_link_dir(&self, r: &RepoName, d: &Digest) -> PathBuf {
        self.repo(r)
            .join("_layers")
            .join(d.algorithm().name())
            .join(d.hex())
    }

    pub fn revisions(&self, r: &RepoName) -> PathBuf {
        self.repo(r).join("_manifests").join("revisions")
    }

    pub fn revision_link_dir(&self, r: &RepoName, d: &Digest) -> PathBuf {
        self.revisions(r).join(d.algorithm().name()).join(d.hex())
    }

    pub fn tags(&self, r: &RepoName) -> PathBuf {
        self.repo(r).join("_manifests").join("tags")
    }

    pub fn tag_dir(&self, r: &RepoName, t: &Tag) -> PathBuf {
        self.tags(r).join(t.as_str())
    }

    pub fn tag_current_link(&self, r: &RepoName, t: &Tag) -> PathBuf {
        self.tag_dir(r, t).join("current").join("link")
    }

    pub fn tag_index_link(&self, r: &RepoName, t: &Tag, d: &Digest) -> PathBuf {
        self.tag_dir(r, t)
            .join("index")
            .join(d.algorithm().name())
            .join(d.hex())
            .join("link")
    }

    pub fn upload_dir(&self, r: &RepoName, id: &str) -> PathBuf {
        self.repo(r).join("_uploads").join(id)
    }

    pub fn referrers_marker(&self, r: &RepoName) -> PathBuf {
        self.repo(r).join("_referrers").join("indexed")
    }

    pub fn referrers_of(&self, r: &RepoName, subject: &Digest) -> PathBuf {
        self.repo(r)
            .join("_referrers")
            .join(subject.algorithm().name())
            .join(subject.hex())
    }

    pub fn referrer_link_dir(&self, r: &RepoName, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_of(r, subject)
            .join(d.algorithm().name())
            .join(d.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_distribution() {
        let l = Layout::new(Path::new("/var/lib/registry"));
        let d: Digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            .parse()
            .unwrap();
        let r = RepoName::parse("library/alpine").unwrap();
        let t = Tag::parse("3.20").unwrap();
        let v2 = "/var/lib/registry/docker/registry/v2";
        assert_eq!(
            l.blob_data(&d),
            PathBuf::from(format!("{v2}/blobs/sha256/e3/{}/data", d.hex()))
        );
        assert_eq!(
            l.layer_link_dir(&r, &d).join("link"),
            PathBuf::from(format!(
                "{v2}/repositories/library/alpine/_layers/sha256/{}/link",
                d.hex()
            ))
        );
        assert_eq!(
            l.revision_link_dir(&r, &d).join("link"),
            PathBuf::from(format!(
                "{v2}/repositories/library/alpine/_manifests/revisions/sha256/{}/link",
                d.hex()
            ))
        );
        assert_eq!(
            l.tag_current_link(&r, &t),
            PathBuf::from(format!(
                "{v2}/repositories/library/alpine/_manifests/tags/3.20/current/link"
            ))
        );
        assert_eq!(
            l.tag_index_link(&r, &t, &d),
            PathBuf::from(format!(
                "{v2}/repositories/library/alpine/_manifests/tags/3.20/index/sha256/{}/link",
                d.hex()
            ))
        );
        assert_eq!(
            l.upload_dir(&r, "u1").join("data"),
            PathBuf::from(format!("{v2}/repositories/library/alpine/_uploads/u1/data"))
        );
    }
}
