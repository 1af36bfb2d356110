//! The referrers index: `_referrers/<subject>/<manifest>` links, kept by manifest
//! writes and deletes. A repository another registry wrote has no index; it is
//! built on privreg's first manifest write there. Queries never write: without
//! an index they scan the repository's revisions.

use super::{Result, Store};
use crate::registry::digest::Digest;
use crate::registry::manifest::{self, ParsedManifest};
use crate::registry::names::RepoName;

impl Store {
    /// Whether the referrers index of `repo` covers every manifest in it.
    pub fn referrers_indexed(&self, repo: &RepoName) -> Result<bool> {
        self.exists(&self.layout.referrers_marker(repo))
    }

    /// Records that the referrers index of `repo` is complete.
    pub(super) fn mark_referrers_indexed(&self, repo: &RepoName) -> Result<()> {
        self.driver
            .put_content(&self.layout.referrers_marker(repo), b"")
    }

    /// Adds `d` to the referrers of `subject` in `repo`.
    pub(super) fn index_referrer(
        &self,
        repo: &RepoName,
        subject: &Digest,
        d: &Digest,
    ) -> Result<()> {
        self.write_link(&self.layout.referrer_link_dir(repo, subject, d), d)
    }

    /// Manifests in `repo` whose subject is `subject`. Reads only.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Digest>> {
        if !self.referrers_indexed(repo)? {
            return Ok(self
                .scan_subjects(repo)?
                .into_iter()
                .filter(|(s, _)| s == subject)
                .map(|(_, d)| d)
                .collect());
        }
        let base = self.layout.referrers_of(repo, subject);
        let mut out = Vec::new();
        for alg in self.driver.list(&base)? {
            for hex in self.driver.list(&base.join(&alg))? {
                if let Some(d) = self.read_link(&base.join(&alg).join(&hex).join("link"))?
                    && self.has_manifest(repo, &d)?
                {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Builds the index of `repo` from its revisions and marks it complete.
    pub(super) fn index_referrers(&self, repo: &RepoName) -> Result<()> {
        for (subject, d) in self.scan_subjects(repo)? {
            self.index_referrer(repo, &subject, &d)?;
        }
        self.mark_referrers_indexed(repo)
    }

    /// (subject, manifest) for every manifest of `repo` that has a subject.
    fn scan_subjects(&self, repo: &RepoName) -> Result<Vec<(Digest, Digest)>> {
        let mut found = Vec::new();
        for d in self.manifest_revisions(repo)? {
            if !self.has_manifest(repo, &d)? {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d) else {
                continue;
            };
            if let Ok(ParsedManifest {
                subject: Some(subject),
                ..
            }) = manifest::parse(None, &bytes)
            {
                found.push((subject, d));
            }
        }
        Ok(found)
    }
}
