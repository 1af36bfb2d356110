//! Garbage collection: mark every blob a kept manifest references, sweep the
//! rest. Offline (`privreg gc`) it runs alone on a data directory, also one
//! `registry:2` wrote; online (`privreg serve`) the `PushGate` keeps blobs
//! that a push in progress may be about to reference, and on a bucket the
//! lease does the same across replicas (see `lease`). Deletions, of blobs
//! and of untagged manifests, all happen after the whole mark, in the sweep,
//! which is the only phase that holds other replicas' pushes.
//!
//! Kept manifests: every manifest revision of every repository, or with
//! `delete_untagged` only those reachable from a tag: a tagged manifest, the
//! children of a kept index, and the referrers (OCI `subject`) of a kept
//! manifest. Distribution 2.8 deletes untagged children of a tagged index too
//! (an image list loses its platforms); privreg does not.
//!
//! After the sweep, repository links to blobs that no longer exist are removed:
//! otherwise a later push of the same content elsewhere would make the blob
//! readable again through a repository that had lost it.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::lease::{BucketLease, HeldLease};
use super::{Result, Store};
use crate::registry::digest::Digest;
use crate::registry::manifest;
use crate::registry::names::{RepoName, Tag};

#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Delete manifests that no tag reaches.
    pub delete_untagged: bool,
    /// Blobs written or reused more recently than this are kept even when
    /// unreferenced (a push in progress uploads blobs before its manifest).
    pub grace: Duration,
}

/// What a collection found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// (repository, manifest) deleted because no tag reaches it.
    pub manifests_deleted: Vec<(String, Digest)>,
    pub blobs_deleted: Vec<Digest>,
    pub bytes_freed: u64,
    pub blobs_kept: usize,
    /// Unreferenced blobs kept because they are younger than the grace period
    /// or a push in progress referenced them.
    pub blobs_spared: usize,
    pub layer_links_removed: usize,
}

/// What a push step calls with the digests it is about to make referenced.
pub type Mark<'a> = &'a dyn Fn(&[Digest]) -> Result<()>;

/// Keeps a collection running beside pushes from deleting what a push is
/// about to reference. Every write that makes a blob or manifest referenced
/// (a manifest PUT with its reference check, a blob commit or mount) runs
/// under the read side; the collector takes the write side to start (so no
/// push straddles the start of its mark) and for each deletion, after checking
/// that no push since the mark began referenced the item and that the item is
/// older than the grace period (reused blobs are touched, so "older" means
/// "not used lately").
///
/// A push step tells what it references through a [`Mark`], after its checks
/// (so a refused request marks nothing) and before its own writes (so a step
/// that fails halfway, its first writes visible, is covered too).
#[derive(Debug, Default)]
pub struct PushGate {
    lock: RwLock<()>,
    /// Some while a collection runs: what pushes referenced since it began.
    recent: Mutex<Option<HashSet<Digest>>>,
}

impl PushGate {
    /// Runs a push step `f`, which calls its [`Mark`] with what it is about
    /// to make referenced before it writes.
    pub fn pushing<T>(&self, f: impl FnOnce(Mark) -> Result<T>) -> Result<T> {
        let _shared = self.lock.read().unwrap_or_else(|e| e.into_inner());
        f(&|referenced| {
            if let Some(recent) = self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                recent.extend(referenced.iter().cloned());
            }
            Ok(())
        })
    }

    fn begin(&self) {
        let _exclusive = self.lock.write().unwrap_or_else(|e| e.into_inner());
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashSet::new());
    }

    fn end(&self) {
        *self.recent.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn recently_referenced(&self, d: &Digest) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|r| r.contains(d))
    }

    /// Runs `f` with pushes held off.
    fn exclusive<T>(&self, f: impl FnOnce() -> T) -> T {
        let _exclusive = self.lock.write().unwrap_or_else(|e| e.into_inner());
        f()
    }
}

/// Ends the gate's collection on every exit path.
struct Collecting<'a>(&'a PushGate);

impl Drop for Collecting<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Whether `path` was modified less than `grace` ago (or cannot be dated).
pub(super) fn younger_than(info: Option<super::driver::FileInfo>, grace: Duration) -> bool {
    info.and_then(|i| SystemTime::now().duration_since(i.modified).ok())
        .is_none_or(|age| age < grace)
}

impl Store {
    /// Every blob in the global store.
    pub fn all_blobs(&self) -> Result<Vec<Digest>> {
        let base = self.layout.root().join("blobs");
        let mut out = Vec::new();
        for alg in self.driver.list(&base)? {
            for prefix in self.driver.list(&base.join(&alg))? {
                for hex in self.driver.list(&base.join(&alg).join(&prefix))? {
                    if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>()
                        && self.blob_size(&d)?.is_some()
                    {
                        out.push(d);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The digest each tag of `repo` points to now.
    fn tag_targets(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for name in self.driver.list(&self.layout.tags(repo))? {
            if let Some(tag) = Tag::parse(&name)
                && let Some(d) = self.read_link(&self.layout.tag_current_link(repo, &tag))?
            {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Marks what `repo` keeps; adds to `untagged` the manifests no tag
    /// reaches when `delete_untagged` (the sweep deletes them).
    fn mark_repo(
        &self,
        repo: &RepoName,
        opts: &GcOptions,
        marked: &mut HashSet<Digest>,
        untagged: &mut Vec<Untagged>,
    ) -> Result<()> {
        let mut parsed = HashMap::new();
        for d in self.manifest_revisions(repo)? {
            if !self.has_manifest(repo, &d)? {
                continue;
            }
            // A manifest that no longer parses (schema 1, foreign types) keeps
            // only itself.
            let m = self
                .read_blob(&d)
                .ok()
                .and_then(|b| manifest::parse(None, &b).ok());
            parsed.insert(d, m);
        }
        let kept: HashSet<Digest> = if opts.delete_untagged {
            reachable_from_tags(&parsed, self.tag_targets(repo)?)
        } else {
            parsed.keys().cloned().collect()
        };
        for (digest, manifest) in parsed {
            if kept.contains(&digest) {
                mark(marked, &digest, manifest.as_ref());
            } else {
                untagged.push(Untagged {
                    repo: repo.clone(),
                    digest,
                    manifest,
                });
            }
        }
        Ok(())
    }

    /// Deletes an untagged manifest unless, re-checked with pushes held
    /// off, it was tagged, pushed or used meanwhile; `false` if spared.
    fn sweep_manifest(
        &self,
        m: &Untagged,
        opts: &GcOptions,
        held: Option<&HeldLease>,
    ) -> Result<bool> {
        let (repo, d) = (&m.repo, &m.digest);
        let link = self.layout.revision_link_dir(repo, d).join("link");
        self.gate.exclusive(|| -> Result<bool> {
            if younger_than(self.driver.stat(&link)?, opts.grace)
                || self.gate.recently_referenced(d)
                || self.marked_by_a_push(d, opts.grace, held)?
                || self.tag_targets(repo)?.contains(d)
            {
                return Ok(false);
            }
            if !opts.dry_run {
                let subject = m.manifest.as_ref().and_then(|m| m.subject.clone());
                self.delete_manifest(repo, d, subject.as_ref())?;
                // The tags' history of it goes too, as in Distribution.
                for name in self.driver.list(&self.layout.tags(repo))? {
                    if let Some(tag) = Tag::parse(&name)
                        && let Some(dir) = self.layout.tag_index_link(repo, &tag, d).parent()
                    {
                        self.driver.delete(dir)?;
                    }
                }
            }
            Ok(true)
        })
    }

    /// Mark and sweep, safe beside pushes that go through the store's gate
    /// and, on shared storage, beside other replicas' pushes (the bucket's
    /// lease, see `lease`). Refused (ResourceBusy) while another replica's
    /// collection holds the lease.
    pub fn collect_garbage(&self, opts: &GcOptions) -> Result<GcReport> {
        let held = match &self.lease {
            Some(lease) => match lease.acquire(self.driver.as_ref())? {
                Some(held) => Some(held),
                None => return Err(super::lease::busy("another replica collects garbage")),
            },
            None => None,
        };
        self.collect_holding(opts, held.as_ref())
    }

    /// Whether a push step (of any replica) marked `d` as used within the
    /// grace period or since the collection began (shared storage only).
    fn marked_by_a_push(
        &self,
        d: &Digest,
        grace: Duration,
        held: Option<&HeldLease>,
    ) -> Result<bool> {
        if self.lease.is_none() {
            return Ok(false);
        }
        let marker = BucketLease::touched(self.driver.as_ref(), d)?;
        Ok(match held {
            Some(held) => held.counts(marker, grace),
            None => marker.is_some() && younger_than(marker, grace),
        })
    }

    /// Whether blob `d` (object dated `info`) was written or used lately.
    fn blob_is_young(
        &self,
        d: &Digest,
        info: Option<super::driver::FileInfo>,
        grace: Duration,
        held: Option<&HeldLease>,
    ) -> Result<bool> {
        // No marker: never reused, so the object's date was the answer.
        Ok(younger_than(info, grace) || self.marked_by_a_push(d, grace, held)?)
    }

    fn collect_holding(&self, opts: &GcOptions, held: Option<&HeldLease>) -> Result<GcReport> {
        let still_held = || held.map_or(Ok(()), HeldLease::check);
        self.gate.begin();
        let _collecting = Collecting(&self.gate);
        let mut report = GcReport::default();

        // Mark: pushes go on (on a bucket they mark what they reference).
        let mut marked = HashSet::new();
        let mut untagged = Vec::new();
        let repos: Vec<RepoName> = self
            .repositories()?
            .iter()
            .filter_map(|r| RepoName::parse(r))
            .collect();
        for repo in &repos {
            still_held()?;
            self.mark_repo(repo, opts, &mut marked, &mut untagged)?;
        }
        // Blobs no kept manifest references; those young already are left
        // out here, so a collection that finds nothing old never holds pushes.
        let mut unmarked = Vec::new();
        for blob in self.all_blobs()? {
            if marked.contains(&blob) {
                report.blobs_kept += 1;
                continue;
            }
            let info = self.driver.stat(&self.layout.blob_data(&blob))?;
            if self.blob_is_young(&blob, info, opts.grace, held)? {
                report.blobs_spared += 1;
            } else {
                unmarked.push(blob);
            }
        }

        // Sweep: on a bucket, every replica's push steps now wait.
        if let Some(held) = held
            && !opts.dry_run
            && !(untagged.is_empty() && unmarked.is_empty())
        {
            held.sweep()?;
        }
        for m in &untagged {
            still_held()?;
            if self.sweep_manifest(m, opts, held)? {
                report
                    .manifests_deleted
                    .push((m.repo.to_string(), m.digest.clone()));
            } else {
                // Still referenced for this run: keep what it references too.
                mark(&mut marked, &m.digest, m.manifest.as_ref());
            }
        }
        for blob in unmarked {
            if marked.contains(&blob) {
                report.blobs_kept += 1;
                continue;
            }
            let data = self.layout.blob_data(&blob);
            still_held()?;
            let deleted = self.gate.exclusive(|| -> Result<Option<u64>> {
                let info = self.driver.stat(&data)?;
                if self.blob_is_young(&blob, info, opts.grace, held)?
                    || self.gate.recently_referenced(&blob)
                {
                    return Ok(None);
                }
                let size = info.map_or(0, |i| i.size);
                if !opts.dry_run {
                    self.driver.delete(&self.layout.blob_dir(&blob))?;
                }
                Ok(Some(size))
            })?;
            match deleted {
                Some(size) => {
                    report.bytes_freed += size;
                    report.blobs_deleted.push(blob);
                }
                None => report.blobs_spared += 1,
            }
        }
        if !opts.dry_run {
            report.layer_links_removed = self.remove_dangling_layer_links()?;
            if self.lease.is_some() {
                BucketLease::prune_touched(self.driver.as_ref(), opts.grace, |d| {
                    Ok(self.blob_size(d)?.is_some())
                })?;
            }
        }
        report.manifests_deleted.sort();
        report.blobs_deleted.sort();
        Ok(report)
    }

    /// Removes `_layers` links whose blob is gone, in every repository
    /// (also ones that hold no manifest).
    fn remove_dangling_layer_links(&self) -> Result<usize> {
        let mut removed = 0;
        for repo in self.repositories_with_layers()? {
            let layers = self.layout.repo(&repo).join("_layers");
            for alg in self.driver.list(&layers)? {
                for hex in self.driver.list(&layers.join(&alg))? {
                    let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                        continue;
                    };
                    if self.blob_size(&d)?.is_none() {
                        self.driver.delete(&self.layout.layer_link_dir(&repo, &d))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}

/// A manifest revision no tag reaches: deleted by the sweep unless used
/// meanwhile.
struct Untagged {
    repo: RepoName,
    digest: Digest,
    manifest: Option<manifest::ParsedManifest>,
}

/// Marks manifest `d` and what it references.
fn mark(marked: &mut HashSet<Digest>, d: &Digest, m: Option<&manifest::ParsedManifest>) {
    marked.insert(d.clone());
    if let Some(m) = m {
        marked.extend(m.blobs.iter().cloned());
        marked.extend(m.children.iter().cloned());
    }
}

/// Manifests reachable from `tags`: through index children and referrers.
fn reachable_from_tags(
    parsed: &HashMap<Digest, Option<manifest::ParsedManifest>>,
    tags: Vec<Digest>,
) -> HashSet<Digest> {
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (d, m) in parsed {
        if let Some(subject) = m.as_ref().and_then(|m| m.subject.as_ref()) {
            referrers.entry(subject).or_default().push(d);
        }
    }
    let mut kept = HashSet::new();
    let mut queue: Vec<Digest> = tags
        .into_iter()
        .filter(|d| parsed.contains_key(d))
        .collect();
    while let Some(d) = queue.pop() {
        if !kept.insert(d.clone()) {
            continue;
        }
        if let Some(Some(m)) = parsed.get(&d) {
            queue.extend(
                m.children
                    .iter()
                    .filter(|c| parsed.contains_key(*c))
                    .cloned(),
            );
        }
        if let Some(rs) = referrers.get(&d) {
            queue.extend(rs.iter().map(|r| (*r).clone()));
        }
    }
    kept
}
