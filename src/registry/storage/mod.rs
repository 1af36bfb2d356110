//! The registry's storage: CNCF Distribution's layout (documented in `paths`)
//! over a storage driver (`driver`: where the bytes live; the filesystem today).
//!
//! The store is synchronous and the handlers call it on the blocking pool;
//! only upload bodies stream through the async `uploads` module.

pub mod driver;
mod fs_batch;
mod fsio;
pub mod gc;
mod journal;
pub mod lease;
mod manifest_cache;
pub mod paths;
mod referrers;
pub mod s3;
pub mod space;
pub mod uploads;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use driver::{FsDriver, StorageDriver};
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

    /// A collection holds pushes (or another replica's collection runs):
    /// the client's to retry.
    pub fn is_busy(&self) -> bool {
        self.source.kind() == io::ErrorKind::ResourceBusy
    }

    /// The filesystem had no room (ENOSPC): the client's to hear about.
    pub fn is_full(&self) -> bool {
        self.source.kind() == io::ErrorKind::StorageFull
    }

    /// Two requests wrote one range of an upload at once (see
    /// `ConflictingWrites`): the client's upload is unusable.
    pub fn is_conflicting_writes(&self) -> bool {
        self.source
            .get_ref()
            .is_some_and(|e| e.is::<ConflictingWrites>())
    }
}

/// Two requests wrote at one offset of an upload at once, on two replicas
/// of shared storage: its content is not one sequence of bytes any more, and
/// the client must start the upload again.
#[derive(Debug, thiserror::Error)]
#[error("two requests wrote at one offset of this upload at once")]
pub struct ConflictingWrites;

type Result<T> = std::result::Result<T, StorageError>;

#[derive(Debug, Clone)]
pub struct Store {
    driver: Arc<dyn StorageDriver>,
    /// Paths relative to the driver's root.
    layout: Layout,
    /// Shared by every clone: pushes against a running garbage collection.
    gate: Arc<gc::PushGate>,
    /// Set when other processes (replicas) write through the same storage:
    /// what this one holds in memory about it may be stale, and collections
    /// coordinate with them through the bucket's lease.
    lease: Option<Arc<lease::BucketLease>>,
    /// Manifest content read before, by digest (shared by every clone).
    manifests: Arc<manifest_cache::ManifestCache>,
}

impl Store {
    /// The store in a local data directory (created if missing).
    pub fn new(data: &Path) -> Result<Store> {
        Self::in_directory(FsDriver::open(data)?, data)
    }

    /// `new`, failing if another process (a running registry) holds the
    /// directory.
    pub fn new_exclusive(data: &Path) -> Result<Store> {
        Self::in_directory(FsDriver::open_exclusive(data)?, data)
    }

    fn in_directory(driver: FsDriver, data: &Path) -> Result<Store> {
        let store = Store::with_driver(Arc::new(driver));
        fsio::create_dirs(&data.join(store.layout.repositories()))?;
        Ok(store)
    }

    pub fn with_driver(driver: Arc<dyn StorageDriver>) -> Store {
        Store {
            driver,
            layout: Layout::new(Path::new("")),
            gate: Default::default(),
            lease: None,
            manifests: Default::default(),
        }
    }

    /// The store in an S3 bucket, which several replicas may serve at once.
    pub fn in_bucket(driver: s3::S3Driver) -> Store {
        Self::in_bucket_with(driver, lease::LeaseTimings::default())
    }

    /// [`Store::in_bucket`] with other waits for the collection lease.
    pub fn in_bucket_with(driver: s3::S3Driver, timings: lease::LeaseTimings) -> Store {
        Store {
            lease: Some(Arc::new(lease::BucketLease::new(timings))),
            ..Store::with_driver(Arc::new(driver))
        }
    }

    /// Whether other processes write through the same storage.
    pub fn shared(&self) -> bool {
        self.lease.is_some()
    }

    /// Runs a push step (see `gc::PushGate`): on shared storage, as the
    /// bucket's lease allows (see `lease`).
    pub fn pushing<T>(&self, step: impl FnOnce(gc::Mark) -> Result<T>) -> Result<T> {
        match &self.lease {
            Some(lease) => lease.push_step(self.driver.as_ref(), |in_bucket| {
                self.gate.pushing(|in_process| {
                    step(&|referenced| {
                        in_bucket(referenced)?;
                        in_process(referenced)
                    })
                })
            }),
            None => self.gate.pushing(step),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn driver(&self) -> &Arc<dyn StorageDriver> {
        &self.driver
    }

    /// Whether the storage answers and holds the layout's repositories
    /// directory (created at start: without it the volume is not the one
    /// the registry opened), for readiness.
    pub fn reachable(&self) -> bool {
        if self.shared() {
            // A bucket has no directories: that it answers is what counts.
            // A stat costs a few requests; a listing grows with the registry.
            return self.driver.stat(&self.layout.repositories()).is_ok();
        }
        self.driver
            .stat(&self.layout.repositories())
            .is_ok_and(|i| i.is_some_and(|i| i.is_dir))
    }

    /// Writes a Distribution link file (`<dir>/link` holding the digest).
    fn write_link(&self, dir: &Path, d: &Digest) -> Result<()> {
        self.driver
            .put_content(&dir.join("link"), d.to_string().as_bytes())
    }

    /// Reads a link file; `None` if it does not exist or does not hold a digest.
    fn read_link(&self, path: &Path) -> Result<Option<Digest>> {
        Ok(self
            .driver
            .get_content(path)?
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.trim().parse().ok()))
    }

    fn exists(&self, path: &Path) -> Result<bool> {
        Ok(self.driver.stat(path)?.is_some())
    }

    /// Size of a blob in the global store.
    pub fn blob_size(&self, d: &Digest) -> Result<Option<u64>> {
        Ok(self
            .driver
            .stat(&self.layout.blob_data(d))?
            .filter(|i| !i.is_dir)
            .map(|i| i.size))
    }

    /// Whether `repo` may serve blob `d`: it was pushed or mounted there as a layer
    /// or config, or it is one of the repository's manifests.
    pub fn repo_has_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        let linked = |dir: PathBuf| {
            self.read_link(&dir.join("link"))
                .map(|l| l.as_ref() == Some(d))
        };
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

    /// A URL a client may fetch blob `d` from itself, valid for `valid`
    /// (object storage's presigned URL); `None` where there is none.
    pub fn blob_url(&self, d: &Digest, valid: std::time::Duration) -> Result<Option<String>> {
        self.driver.url_for(&self.layout.blob_data(d), valid)
    }

    /// A reader of blob `d` from byte `offset`.
    pub fn open_blob(&self, d: &Digest, offset: u64) -> Result<driver::ContentReader> {
        self.driver.reader(&self.layout.blob_data(d), offset)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.layout.blob_data(d);
        self.driver.get_content(&p)?.ok_or_else(|| StorageError {
            op: "read blob",
            path: p,
            source: io::ErrorKind::NotFound.into(),
        })
    }

    /// Marks blob `d` as just used (its modification time), best effort.
    pub fn touch_blob(&self, d: &Digest) {
        match &self.lease {
            // An object's date cannot be changed in place: a marker dates it.
            Some(_) => lease::BucketLease::touch(self.driver.as_ref(), d),
            None => self.driver.touch(&self.layout.blob_data(d)),
        }
    }

    /// Makes blob `d` (already in the global store) part of `repo`.
    pub fn link_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        self.write_link(&self.layout.layer_link_dir(repo, d), d)
    }

    /// Removes blob `d` from `repo`; the content stays for other repositories until
    /// garbage collection. `false` if `repo` did not hold it.
    pub fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        self.driver.delete(&self.layout.layer_link_dir(repo, d))
    }

    /// Makes the upload at `upload` blob `d` (or drops it if the blob is
    /// there already). On shared storage the content is hashed as it moves
    /// (`StorageDriver::move_verified`), or where it lies when the blob is
    /// there already: returns the digest of what was there when it is not
    /// `d`, and then nothing moved.
    pub fn commit_blob_file(&self, upload: &Path, d: &Digest) -> Result<Option<Digest>> {
        if self.blob_size(d)?.is_some() {
            // Nothing moves, but the upload must still hold `d`: on shared
            // storage no replica hashed it as it came.
            if self.shared() {
                let actual = self.driver.hash_content(upload, d.algorithm())?;
                if &actual != d {
                    return Ok(Some(actual));
                }
            }
            // Reused: date it now, so a collection's grace period covers it.
            self.touch_blob(d);
            self.driver.delete(upload)?;
            return Ok(None);
        }
        let blob = self.layout.blob_data(d);
        if self.shared() {
            let actual = self.driver.move_verified(upload, &blob, d)?;
            return Ok((&actual != d).then_some(actual));
        }
        self.driver.move_content(upload, &blob)?;
        Ok(None)
    }

    /// Stores a verified manifest, in one durable step of the driver, in an
    /// order where nothing visible points at what is not yet there: content,
    /// the referrers index entry, the revision link (the manifest is now in
    /// the repository), then each tag's index entry and current link.
    pub fn put_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        content: &[u8],
        tags: &[Tag],
        subject: Option<&Digest>,
    ) -> Result<()> {
        // A repository privreg creates is indexed from its first manifest on;
        // one another registry wrote is indexed on this first write.
        let new_repo = !self.exists(&self.layout.repo(repo).join("_manifests"))?;
        if !new_repo && !self.referrers_indexed(repo)? {
            self.index_referrers(repo)?;
        }
        let link = d.to_string();
        let link = link.as_bytes();
        let mut items: Vec<(PathBuf, &[u8])> = Vec::with_capacity(4 + 2 * tags.len());
        if self.blob_size(d)?.is_none() {
            items.push((self.layout.blob_data(d), content));
        }
        if new_repo {
            items.push((self.layout.referrers_marker(repo), b""));
        }
        if let Some(subject) = subject {
            items.push((
                self.layout.referrer_link_dir(repo, subject, d).join("link"),
                link,
            ));
        }
        items.push((self.layout.revision_link_dir(repo, d).join("link"), link));
        for tag in tags {
            items.push((self.layout.tag_index_link(repo, tag, d), link));
            items.push((self.layout.tag_current_link(repo, tag), link));
        }
        self.driver.put_contents(&items)
    }

    /// The digest a tag points to, if the tag exists and its manifest is still there.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        match self.read_link(&self.layout.tag_current_link(repo, tag))? {
            Some(d) if self.has_manifest(repo, &d)? => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// The digest tag `tag` of `repo` points to, if it exists (the manifest
    /// itself may be gone: see `manifest_in_repo`).
    pub fn tag_link(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        self.read_link(&self.layout.tag_current_link(repo, tag))
    }

    /// The content of manifest `d` if `repo` holds it. The revision link is
    /// read from storage every time; the content, once read, from memory.
    pub fn manifest_in_repo(&self, repo: &RepoName, d: &Digest) -> Result<Option<bytes::Bytes>> {
        if !self.revision_linked(repo, d)? {
            return Ok(None);
        }
        if let Some(content) = self.manifests.get(d) {
            return Ok(Some(content));
        }
        let Some(content) = self.driver.get_content(&self.layout.blob_data(d))? else {
            return Ok(None);
        };
        let content = bytes::Bytes::from(content);
        self.manifests.insert(d.clone(), content.clone());
        Ok(Some(content))
    }

    pub fn has_manifest(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        Ok(self.revision_linked(repo, d)? && self.blob_size(d)?.is_some())
    }

    /// Whether `repo`'s revision link for manifest `d` names it.
    fn revision_linked(&self, repo: &RepoName, d: &Digest) -> Result<bool> {
        let link = self.read_link(&self.layout.revision_link_dir(repo, d).join("link"))?;
        Ok(link.as_ref() == Some(d))
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
        for tag in self.driver.list(&self.layout.tags(repo))? {
            let Some(tag) = Tag::parse(&tag) else {
                continue;
            };
            if self
                .read_link(&self.layout.tag_current_link(repo, &tag))?
                .as_ref()
                == Some(d)
            {
                self.driver.delete(&self.layout.tag_dir(repo, &tag))?;
            }
        }
        if let Some(subject) = subject {
            self.driver
                .delete(&self.layout.referrer_link_dir(repo, subject, d))?;
        }
        self.driver
            .delete(&self.layout.revision_link_dir(repo, d))?;
        Ok(true)
    }

    /// Deletes a tag (the manifest stays, reachable by digest). `false` if absent.
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        if self
            .read_link(&self.layout.tag_current_link(repo, tag))?
            .is_none()
        {
            return Ok(false);
        }
        self.driver.delete(&self.layout.tag_dir(repo, tag))
    }

    /// The repository's tags, sorted; `None` if the repository does not exist (holds
    /// no manifests: blobs or upload sessions alone do not make one, as in `repositories`).
    /// Names only, as Distribution lists them: a tag directory appears with
    /// its current link and disappears at once (the driver's directories
    /// exist only with content), so no link needs reading.
    pub fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        // In a bucket, a prefix is gone with its last key: a repository whose
        // manifests were all deleted still holds its layers.
        let dir = self.layout.repo(repo);
        if !self.exists(&dir.join("_manifests"))? && !self.exists(&dir.join("_layers"))? {
            return Ok(None);
        }
        let mut tags = self.driver.list(&self.layout.tags(repo))?;
        tags.retain(|name| Tag::parse(name).is_some());
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
            for name in self.driver.list(&dir)? {
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
            for id in self.driver.list(&self.layout.repo(repo).join("_uploads"))? {
                let session = self.layout.upload_dir(repo, &id);
                // A session without data (crashed between mkdir and create) is
                // dated by its directory; one whose data cannot be read (two
                // writes at one offset on a bucket) by its start, so that
                // it still ends, and without stopping the purge of others.
                let info = match self.driver.stat(&session.join("data")) {
                    Ok(Some(info)) => Some(info),
                    Ok(None) => self.driver.stat(&session)?,
                    Err(e) => {
                        tracing::debug!(error = %e, "upload data unreadable; dated by its start");
                        match self.driver.stat(&session.join("startedat")) {
                            Ok(Some(info)) => Some(info),
                            Ok(None) | Err(_) => self.driver.stat(&session)?,
                        }
                    }
                };
                let age = info
                    .and_then(|i| now.duration_since(i.modified).ok())
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
        for alg in self.driver.list(&base)? {
            for hex in self.driver.list(&base.join(&alg))? {
                if let Some(d) = self.read_link(&base.join(&alg).join(&hex).join("link"))? {
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

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn a_store_held_by_a_registry_is_not_opened_exclusively() {
        let (dir, held) = store();
        let err = Store::new_exclusive(dir.path()).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::WouldBlock);
        // Shared opening still works (without the journal).
        Store::new(dir.path()).unwrap();
        drop(held);
        Store::new_exclusive(dir.path()).unwrap();
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
        std::fs::write(dir.path().join("upload"), b"layer").unwrap();
        let d = Digest::sha256_of(b"layer");
        assert_eq!(s.commit_blob_file(Path::new("upload"), &d).unwrap(), None);
        s.link_blob(&a, &d).unwrap();
        assert_eq!(s.stat_in_repo(&a, &d).unwrap(), Some(5));
        assert_eq!(s.stat_in_repo(&b, &d).unwrap(), None);
        assert!(s.unlink_blob(&a, &d).unwrap());
        assert_eq!(s.stat_in_repo(&a, &d).unwrap(), None);
        assert_eq!(s.blob_size(&d).unwrap(), Some(5));
    }
}
