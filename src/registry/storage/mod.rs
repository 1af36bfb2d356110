//! Filesystem storage in CNCF Distribution's layout (documented in `paths`).
//!
//! The store is synchronous (std::fs) and the handlers call it on the blocking pool;
//! only upload bodies stream through the async `uploads` module.

mod fsio;
pub mod gc;
pub mod paths;
mod referrers;
pub mod space;
pub mod uploads;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use fsio::{IoContext, list_dirs, read_link, remove_tree, sync_dir, write_atomic, write_link};
pub use paths::Layout;

use super::digest::Digest;
use super::names::{RepoName, Tag};

/// An I/O failure, naming what the store was doing and where.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed for {}", path.display())]
pub struct StorageError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StorageError {
    /// A fixed, low-cardinality label for metrics.
    pub fn category(&self) -> &'static str {
        self.op
    }

    /// The filesystem had no room (ENOSPC): the client's to hear about.
    pub fn is_full(&self) -> bool {
        self.source.kind() == io::ErrorKind::StorageFull
    }
}

type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Clone)]
pub struct FsStore {
    layout: Layout,
    /// Shared by every clone: pushes against a running garbage collection.
    gate: std::sync::Arc<gc::PushGate>,
}

impl FsStore {
    pub fn new(data: &Path) -> Result<FsStore> {
        let layout = Layout::new(data);
        fs::create_dir_all(layout.repositories()).ctx("create data directory", layout.root())?;
        Ok(FsStore {
            layout,
            gate: Default::default(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// See `gc::PushGate`: every push step that makes content referenced runs
    /// through it.
    pub fn gate(&self) -> &gc::PushGate {
        &self.gate
    }

    /// Size of a blob in the global store.
    pub fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        let p = self.layout.blob_data(d);
        match fs::metadata(&p) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat blob", &p),
        }
    }

    /// Whether `repo` may serve blob `d`: it was pushed or mounted there as a layer
    /// or config, or it is one of the repository's manifests.
    pub fn repo_has_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        let linked = |dir: PathBuf| read_link(&dir.join("link")).map(|l| l.as_ref() == Some(d));
        Ok(linked(self.layout.layer_link_dir(repo, d))?
            || linked(self.layout.revision_link_dir(repo, d))?)
    }

    /// The blob's size if `repo` may serve it.
    pub fn stat_in_repo(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>> {
        if !self.repo_has_blob(repo, d)? {
            return Ok(None);
        }
        self.blob_size(d)
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.layout.blob_data(d);
        File::open(&p).ctx("open blob", &p)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.layout.blob_data(d);
        fs::read(&p).ctx("read blob", &p)
    }

    /// Marks blob `d` as just used (its modification time), best effort.
    pub fn touch_blob(&self, d: &Digest) {
        if let Ok(f) = File::options().write(true).open(self.layout.blob_data(d)) {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// Makes blob `d` (already in the global store) part of `repo`.
    pub fn link_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        write_link(&self.layout.layer_link_dir(repo, d), d)
    }

    /// Removes blob `d` from `repo`; the content stays for other repositories until
    /// garbage collection. `false` if `repo` did not hold it.
    pub fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        remove_tree(&self.layout.layer_link_dir(repo, d))
    }

    /// Moves a finished, verified upload file into the global store. If the blob is
    /// already there (another push of the same content won), the file is dropped.
    pub fn commit_blob_file(&self, file: &Path, d: &Digest) -> Result<()> {
        File::open(file)
            .and_then(|f| f.sync_all())
            .ctx("sync upload", file)?;
        if self.blob_size(d)?.is_some() {
            // Reused: date it now, so a collection's grace period covers it.
            self.touch_blob(d);
            return fs::remove_file(file).ctx("remove duplicate upload", file);
        }
        let dir = self.layout.blob_dir(d);
        fsio::create_dirs(&dir)?;
        let target = dir.join("data");
        fs::rename(file, &target).ctx("rename blob into place", &target)?;
        sync_dir(&dir)
    }

    /// Stores a verified manifest: content, revision link, referrer index, then tag.
    pub fn put_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        content: &[u8],
        tags: &[Tag],
        subject: Option<&Digest>,
    ) -> Result<()> {
        // A repository privreg creates is indexed from its first manifest on.
        let new_repo = !self.layout.repo(repo).join("_manifests").is_dir();
        if self.blob_size(d)?.is_none() {
            write_atomic(&self.layout.blob_data(d), content)?;
        }
        write_link(&self.layout.revision_link_dir(repo, d), d)?;
        if new_repo {
            self.mark_referrers_indexed(repo)?;
        } else if !self.referrers_indexed(repo)? {
            // A repository another registry wrote: index it on this first write.
            self.index_referrers(repo)?;
        }
        if let Some(subject) = subject {
            self.index_referrer(repo, subject, d)?;
        }
        for tag in tags {
            write_atomic(
                &self.layout.tag_index_link(repo, tag, d),
                d.to_string().as_bytes(),
            )?;
            write_atomic(
                &self.layout.tag_current_link(repo, tag),
                d.to_string().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// The digest a tag points to, if the tag exists and its manifest is still there.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        match read_link(&self.layout.tag_current_link(repo, tag))? {
            Some(d) if self.has_manifest(repo, &d)? => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    pub fn has_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        let link = read_link(&self.layout.revision_link_dir(repo, d).join("link"))?;
        Ok(link.as_ref() == Some(d) && self.blob_size(d)?.is_some())
    }

    /// Deletes a manifest from `repo`, with every tag that points to it and its
    /// entry in the referrers index of `subject`. `false` if it was not there.
    pub fn delete_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        subject: Option<&Digest>,
    ) -> Result<bool> {
        if !self.has_manifest(repo, d)? {
            return Ok(false);
        }
        for tag in list_dirs(&self.layout.tags(repo))? {
            let Some(tag) = Tag::parse(&tag) else {
                continue;
            };
            if read_link(&self.layout.tag_current_link(repo, &tag))?.as_ref() == Some(d) {
                remove_tree(&self.layout.tag_dir(repo, &tag))?;
            }
        }
        if let Some(subject) = subject {
            remove_tree(&self.layout.referrer_link_dir(repo, subject, d))?;
        }
        remove_tree(&self.layout.revision_link_dir(repo, d))?;
        Ok(true)
    }

    /// Deletes a tag (the manifest stays, reachable by digest). `false` if absent.
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        if read_link(&self.layout.tag_current_link(repo, tag))?.is_none() {
            return Ok(false);
        }
        remove_tree(&self.layout.tag_dir(repo, tag))
    }

    /// The repository's tags, sorted; `None` if the repository does not exist (holds
    /// no manifests: blobs or upload sessions alone do not make one, as in `repositories`).
    pub fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        if !self.layout.repo(repo).join("_manifests").is_dir() {
            return Ok(None);
        }
        let mut tags = Vec::new();
        for name in list_dirs(&self.layout.tags(repo))? {
            if let Some(tag) = Tag::parse(&name)
                && read_link(&self.layout.tag_current_link(repo, &tag))?.is_some()
            {
                tags.push(name);
            }
        }
        Ok(Some(tags))
    }

    /// Visits every directory that can hold a repository's own data
    /// (`_manifests`, `_layers`, `_uploads`...): `visit(name, special)` for
    /// each underscore entry `special` of repository `name`. Names outside the
    /// repository grammar are not entered.
    fn walk_repositories(
        &self,
        mut visit: impl FnMut(&RepoName, &str) -> Result<()>,
    ) -> Result<()> {
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            let dir = self.layout.repositories().join(&prefix);
            for name in list_dirs(&dir)? {
                if name.starts_with('_') {
                    if let Some(repo) = RepoName::parse(&prefix) {
                        visit(&repo, &name)?;
                    }
                    continue;
                }
                let child = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if RepoName::parse(&child).is_some() {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    /// (repository, session id) of every upload session whose data was last
    /// written more than `max_age` ago, in any repository (also ones that hold
    /// no manifest yet).
    pub fn stale_uploads(&self, max_age: std::time::Duration) -> Result<Vec<(RepoName, String)>> {
        let now = std::time::SystemTime::now();
        let mut stale = Vec::new();
        self.walk_repositories(|repo, special| {
            if special != "_uploads" {
                return Ok(());
            }
            for id in list_dirs(&self.layout.repo(repo).join("_uploads"))? {
                let session = self.layout.upload_dir(repo, &id);
                // A session without data (crashed between mkdir and create) is
                // dated by its directory.
                let modified = fs::metadata(session.join("data"))
                    .or_else(|_| fs::metadata(&session))
                    .and_then(|m| m.modified());
                let age = modified
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age > max_age {
                    stale.push((repo.clone(), id));
                }
            }
            Ok(())
        })?;
        Ok(stale)
    }

    /// Every repository that holds manifests, sorted.
    pub fn repositories(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        self.walk_repositories(|repo, special| {
            if special == "_manifests" {
                found.push(repo.to_string());
            }
            Ok(())
        })?;
        found.sort();
        Ok(found)
    }

    /// Every repository with blob links (`_layers`), with or without manifests.
    pub(crate) fn repositories_with_layers(&self) -> Result<Vec<RepoName>> {
        let mut found = Vec::new();
        self.walk_repositories(|repo, special| {
            if special == "_layers" {
                found.push(repo.clone());
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Every manifest revision of `repo`.
    pub fn manifest_revisions(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let base = self.layout.revisions(repo);
        let mut out = Vec::new();
        for alg in list_dirs(&base)? {
            for hex in list_dirs(&base.join(&alg))? {
                if let Some(d) = read_link(&base.join(&alg).join(&hex).join("link"))? {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = FsStore::new(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn manifests_tags_and_catalog() {
        let (_d, s) = store();
        let repo = RepoName::parse("a/b").unwrap();
        let tag = Tag::parse("v1").unwrap();
        let m = br#"{"schemaVersion":2}"#;
        let d = Digest::sha256_of(m);
        assert_eq!(s.tags(&repo).unwrap(), None);
        s.put_manifest(&repo, &d, m, std::slice::from_ref(&tag), None)
            .unwrap();
        assert_eq!(s.resolve_tag(&repo, &tag).unwrap(), Some(d.clone()));
        assert_eq!(s.tags(&repo).unwrap(), Some(vec!["v1".to_owned()]));
        assert_eq!(s.repositories().unwrap(), vec!["a/b".to_owned()]);
        assert!(s.repo_has_blob(&repo, &d).unwrap());
        assert!(s.delete_manifest(&repo, &d, None).unwrap());
        assert_eq!(s.resolve_tag(&repo, &tag).unwrap(), None);
        assert_eq!(s.tags(&repo).unwrap(), Some(vec![]));
        assert!(!s.delete_manifest(&repo, &d, None).unwrap());
    }

    #[test]
    fn referrers_follow_their_manifests() {
        let (_d, s) = store();
        let repo = RepoName::parse("r").unwrap();
        let subject = Digest::sha256_of(b"subject");
        let sig = br#"{"sig":1}"#;
        let sd = Digest::sha256_of(sig);
        s.put_manifest(&repo, &sd, sig, &[], Some(&subject))
            .unwrap();
        assert_eq!(s.referrers(&repo, &subject).unwrap(), vec![sd.clone()]);
        s.delete_manifest(&repo, &sd, Some(&subject)).unwrap();
        assert!(s.referrers(&repo, &subject).unwrap().is_empty());
    }

    #[test]
    fn blob_links_are_per_repository() {
        let (dir, s) = store();
        let a = RepoName::parse("a").unwrap();
        let b = RepoName::parse("b").unwrap();
        let file = dir.path().join("upload");
        fs::write(&file, b"layer").unwrap();
        let d = Digest::sha256_of(b"layer");
        s.commit_blob_file(&file, &d).unwrap();
        s.link_blob(&a, &d).unwrap();
        assert_eq!(s.stat_in_repo(&a, &d).unwrap(), Some(5));
        assert_eq!(s.stat_in_repo(&b, &d).unwrap(), None);
        assert!(s.unlink_blob(&a, &d).unwrap());
        assert_eq!(s.stat_in_repo(&a, &d).unwrap(), None);
        assert_eq!(s.blob_size(&d).unwrap(), Some(5));
    }
}
