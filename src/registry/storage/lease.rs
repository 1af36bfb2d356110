//! Garbage collection on storage several replicas share (an S3 bucket). The
//! in-process `PushGate` cannot see another replica's pushes, so on a bucket
//! a collection first takes a lease object in the bucket, which every
//! replica's push steps (the writes that make content referenced: a manifest
//! PUT, a blob commit or mount) consult.
//!
//! A collection has two phases, named in the lease:
//! - **Marking** (most of a collection on a large bucket: every repository's
//!   manifests are read). Pushes go on, and each push step writes a marker
//!   under `privreg/touched/` for every digest it references, after its
//!   checks and before its own writes (see `gc::Mark`).
//! - **Sweeping** (only when the mark found something to delete). Push steps
//!   wait until the collection ends (at most `hold_max`, then 429). Before a
//!   deletion the collector checks the item's marker: one written since the
//!   collection began keeps it.
//!
//! Why that is enough: a push step checks the lease at its start (trusting
//! an answer for at most `fresh`) and finishes, markers included, within
//! `step_budget`. A collector waits `fresh + step_budget` after writing its
//! lease, so every step that began before it was visible has finished when
//! the mark starts (the mark sees what it referenced); and again after
//! switching to sweeping, so every step that began while marking has written
//! its markers when the sweep starts. Steps longer than the budget are
//! logged.
//!
//! Taking the lease without a conditional write (not every S3 server honours
//! `If-None-Match`): a collector reads the lease, writes its own with a
//! random token, and reads it back after the settling wait; of collectors
//! that raced, only the last writer finds its token and goes on. A lease
//! names its expiry, so one whose collector died is ignored once expired,
//! and a collector stops deleting before its own lease runs out.
//!
//! A new blob is dated for the grace period by its object (a commit writes
//! or copies it, which dates it). A reused one (a mount, a second upload)
//! cannot be re-dated in place, so `touch` writes the same marker; markers
//! are removed once older than the grace period.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::driver::{FileInfo, StorageDriver};
use super::gc::Mark;
use super::{Result, StorageError};
use crate::registry::digest::Digest;

/// Where the lease lives, beside (not inside) Distribution's layout.
const LEASE_PATH: &str = "privreg/gc-lease";
const TOUCHED_DIR: &str = "privreg/touched";

/// The waits of the protocol (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimings {
    /// How long a push step trusts a "no lease" answer.
    pub fresh: Duration,
    /// The longest a push step may take after its check.
    pub step_budget: Duration,
    /// The longest a push step waits for a held lease before it is refused
    /// (429, retry).
    pub hold_max: Duration,
    /// How long a lease is valid: the longest a collection may run.
    pub ttl: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            fresh: Duration::from_secs(2),
            step_budget: Duration::from_secs(20),
            hold_max: Duration::from_secs(60),
            ttl: Duration::from_secs(30 * 60),
        }
    }
}

/// What a collection holding the lease is doing (see the module docs).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Phase {
    /// Pushes go on and mark what they reference.
    Marking,
    /// Pushes wait. The default: a lease without a phase holds pushes.
    #[default]
    Sweeping,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct LeaseRecord {
    holder: String,
    /// Seconds since the Unix epoch.
    until: u64,
    #[serde(default)]
    phase: Phase,
}

/// Timestamps of objects have whole seconds (S3's `Last-Modified`): a marker
/// dated up to this much before the lease may have been written after it.
const DATE_GRANULARITY: Duration = Duration::from_secs(1);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn busy(what: &'static str) -> StorageError {
    StorageError {
        op: what,
        path: PathBuf::from(LEASE_PATH),
        source: io::ErrorKind::ResourceBusy.into(),
    }
}

/// One replica's side of the bucket's collection lease.
#[derive(Debug)]
pub struct BucketLease {
    timings: LeaseTimings,
    /// When this replica last checked the lease and found pushes free to go,
    /// and whether a collection was marking then.
    seen: Mutex<Option<(Instant, bool)>>,
}

/// A held lease; released on drop (best effort: an expiry ends it anyway).
pub struct HeldLease<'a> {
    driver: &'a dyn StorageDriver,
    token: String,
    until: u64,
    margin: Duration,
    settle: Duration,
    /// When the lease was written, by the bucket's clock: markers since
    /// then count.
    started: SystemTime,
}

impl HeldLease<'_> {
    /// Ends the marking phase: holds every replica's push steps from now on
    /// and waits until those that began while marking have written their
    /// markers.
    pub fn sweep(&self) -> Result<()> {
        self.check()?;
        write(
            self.driver,
            &LeaseRecord {
                holder: self.token.clone(),
                until: self.until,
                phase: Phase::Sweeping,
            },
        )?;
        std::thread::sleep(self.settle);
        Ok(())
    }

    /// Whether `marker` shows a use this collection must respect: within
    /// the grace period, or since the collection began. "Since" compares two
    /// dates the bucket gave (the lease object's and the marker's), so the
    /// replicas' clocks do not enter.
    pub fn counts(&self, marker: Option<FileInfo>, grace: Duration) -> bool {
        marker.is_some_and(|m| {
            super::gc::younger_than(Some(m), grace) || m.modified + DATE_GRANULARITY >= self.started
        })
    }

    /// Refuses to go on once the lease is about to expire: another replica
    /// may then take it, and its mark would not see this one's deletions.
    pub fn check(&self) -> Result<()> {
        if unix_now().saturating_add(self.margin.as_secs()) >= self.until {
            return Err(StorageError {
                op: "garbage collection ran out of its lease",
                path: PathBuf::from(LEASE_PATH),
                source: io::ErrorKind::TimedOut.into(),
            });
        }
        Ok(())
    }
}

impl Drop for HeldLease<'_> {
    fn drop(&mut self) {
        let path = Path::new(LEASE_PATH);
        if read(self.driver, path)
            .ok()
            .flatten()
            .is_some_and(|r| r.holder == self.token)
            && let Err(e) = self.driver.delete(path)
        {
            tracing::warn!(error = %e, "releasing the collection lease failed; it expires on its own");
        }
    }
}

fn write(driver: &dyn StorageDriver, record: &LeaseRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).map_err(|e| StorageError {
        op: "write the collection lease",
        path: PathBuf::from(LEASE_PATH),
        source: io::Error::other(e),
    })?;
    driver.put_content(Path::new(LEASE_PATH), &bytes)
}

fn read(driver: &dyn StorageDriver, path: &Path) -> Result<Option<LeaseRecord>> {
    Ok(driver
        .get_content(path)?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

impl BucketLease {
    pub fn new(timings: LeaseTimings) -> BucketLease {
        BucketLease {
            timings,
            seen: Mutex::new(None),
        }
    }

    /// A lease another collection holds now (unexpired), if any.
    fn held(&self, driver: &dyn StorageDriver) -> Result<Option<LeaseRecord>> {
        Ok(read(driver, Path::new(LEASE_PATH))?.filter(|r| r.until > unix_now()))
    }

    /// Waits while a collection sweeps (at most `hold_max`, then refuses with
    /// ResourceBusy); returns whether a collection is marking.
    fn wait_for_push(&self, driver: &dyn StorageDriver) -> Result<bool> {
        let fresh = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, marking)) = fresh
            && at.elapsed() < self.timings.fresh
        {
            return Ok(marking);
        }
        let started = Instant::now();
        loop {
            let marking = match self.held(driver)? {
                None => false,
                Some(r) if r.phase == Phase::Marking => true,
                Some(_) => {
                    if started.elapsed() >= self.timings.hold_max {
                        return Err(busy("push held by a garbage collection"));
                    }
                    std::thread::sleep(Duration::from_millis(250));
                    continue;
                }
            };
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), marking));
            return Ok(marking);
        }
    }

    /// Runs a push step: at once, or once a sweeping collection ends. While a
    /// collection marks, what the step passes to its [`Mark`] gets a marker.
    pub fn push_step<T>(
        &self,
        driver: &dyn StorageDriver,
        step: impl FnOnce(Mark) -> Result<T>,
    ) -> Result<T> {
        let marking = self.wait_for_push(driver)?;
        let checked = Instant::now();
        let out = step(&|referenced| {
            if !marking {
                return Ok(());
            }
            // Not best effort: a sweep would not know of this use. A
            // manifest may list a digest more than once.
            let unique: std::collections::BTreeSet<&Digest> = referenced.iter().collect();
            for d in unique {
                driver.put_content(&Self::touched_path(d), b"")?;
            }
            Ok(())
        });
        if checked.elapsed() > self.timings.step_budget {
            tracing::warn!(
                elapsed_ms = checked.elapsed().as_millis() as u64,
                budget_ms = self.timings.step_budget.as_millis() as u64,
                "a push step outlasted the collection lease's budget; a collection that began meanwhile may not have seen it"
            );
        }
        out
    }

    /// Takes the lease for one collection (marking), or `None` when another
    /// replica holds it (or won the race for it).
    pub fn acquire<'a>(&self, driver: &'a dyn StorageDriver) -> Result<Option<HeldLease<'a>>> {
        if self.held(driver)?.is_some() {
            return Ok(None);
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let until = unix_now().saturating_add(self.timings.ttl.as_secs());
        write(
            driver,
            &LeaseRecord {
                holder: token.clone(),
                until,
                phase: Phase::Marking,
            },
        )?;
        let started = driver
            .stat(Path::new(LEASE_PATH))?
            .map_or_else(SystemTime::now, |i| i.modified);
        let settle = self.timings.fresh + self.timings.step_budget;
        let held = HeldLease {
            driver,
            token: token.clone(),
            until,
            margin: self.timings.step_budget,
            settle,
            started,
        };
        // Every push step that began before the lease was visible ends, and
        // a racing collector's write lands, before the read-back.
        std::thread::sleep(settle);
        match read(driver, Path::new(LEASE_PATH))? {
            Some(r) if r.holder == token => Ok(Some(held)),
            // Another collector wrote after this one: it goes on (and the
            // drop leaves its lease alone).
            _ => Ok(None),
        }
    }

    /// The marker `touch` writes for blob `d`.
    pub fn touched_path(d: &Digest) -> PathBuf {
        Path::new(TOUCHED_DIR)
            .join(d.algorithm().name())
            .join(d.hex())
    }

    /// Dates blob `d` as used now (best effort).
    pub fn touch(driver: &dyn StorageDriver, d: &Digest) {
        if let Err(e) = driver.put_content(&Self::touched_path(d), b"") {
            tracing::warn!(error = %e, digest = %d, "dating a reused blob failed");
        }
    }

    /// The marker of blob `d`'s last reuse, if it was reused.
    pub fn touched(driver: &dyn StorageDriver, d: &Digest) -> Result<Option<FileInfo>> {
        driver.stat(&Self::touched_path(d))
    }

    /// Removes touch markers older than `grace` (they no longer keep anything)
    /// and those of blobs that are gone; returns how many.
    pub fn prune_touched(
        driver: &dyn StorageDriver,
        grace: Duration,
        exists: impl Fn(&Digest) -> Result<bool>,
    ) -> Result<usize> {
        let mut removed = 0;
        let root = Path::new(TOUCHED_DIR);
        for alg in driver.list(root)? {
            for hex in driver.list(&root.join(&alg))? {
                let path = root.join(&alg).join(&hex);
                let old = driver
                    .stat(&path)?
                    .is_none_or(|i| !super::gc::younger_than(Some(i), grace));
                let gone = match format!("{alg}:{hex}").parse::<Digest>() {
                    Ok(d) => !exists(&d)?,
                    Err(_) => true,
                };
                if (old || gone) && driver.delete(&path)? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::storage::driver::FsDriver;

    fn quick() -> LeaseTimings {
        LeaseTimings {
            fresh: Duration::from_millis(10),
            step_budget: Duration::from_millis(40),
            hold_max: Duration::from_millis(300),
            ttl: Duration::from_secs(120),
        }
    }

    /// Two replicas' sides of one bucket (here a directory: the protocol
    /// needs only reads, writes and deletes).
    fn two_replicas() -> (tempfile::TempDir, FsDriver, BucketLease, BucketLease) {
        let dir = tempfile::tempdir().unwrap();
        let driver = FsDriver::open(dir.path()).unwrap();
        (
            dir,
            driver,
            BucketLease::new(quick()),
            BucketLease::new(quick()),
        )
    }

    fn digest(n: u8) -> Digest {
        format!("sha256:{}", hex::encode([n; 32])).parse().unwrap()
    }

    /// A push step on `replica` that makes `d` referenced.
    fn push(replica: &BucketLease, driver: &FsDriver, d: &Digest) -> Result<u8> {
        replica.push_step(driver, |mark| {
            mark(std::slice::from_ref(d))?;
            Ok(7)
        })
    }

    #[test]
    fn pushes_mark_while_a_collection_marks_and_wait_while_it_sweeps() {
        let (_dir, driver, a, b) = two_replicas();
        let held = a.acquire(&driver).unwrap().expect("the lease is free");
        assert!(b.acquire(&driver).unwrap().is_none(), "held by the other");

        // Marking: pushes on either replica go on, and mark what they used.
        let (used, unused) = (digest(1), digest(2));
        assert_eq!(push(&b, &driver, &used).unwrap(), 7);
        let marker = BucketLease::touched(&driver, &used).unwrap();
        assert!(marker.is_some(), "the push left no marker");
        assert!(BucketLease::touched(&driver, &unused).unwrap().is_none());
        // Even with no grace period, a marker since the start counts; one
        // from before does not.
        assert!(held.counts(marker, Duration::ZERO));
        let before = FileInfo {
            modified: SystemTime::now() - Duration::from_secs(60),
            ..marker.unwrap()
        };
        assert!(!held.counts(Some(before), Duration::ZERO));
        assert!(held.counts(Some(before), Duration::from_secs(120)));

        // Sweeping: pushes wait, then are refused (429 at the edge).
        held.sweep().unwrap();
        let waited = Instant::now();
        let refused = push(&b, &driver, &used).unwrap_err();
        assert!(refused.is_busy(), "{refused:?}");
        assert!(waited.elapsed() >= quick().hold_max);
        assert!(push(&a, &driver, &used).unwrap_err().is_busy());
        held.check().unwrap();
        drop(held);
        // Released: pushes run unmarked, and the next collection may start.
        driver.delete(&BucketLease::touched_path(&unused)).unwrap();
        std::thread::sleep(quick().fresh);
        assert_eq!(push(&b, &driver, &unused).unwrap(), 7);
        assert!(BucketLease::touched(&driver, &unused).unwrap().is_none());
        assert!(b.acquire(&driver).unwrap().is_some());
    }

    /// A step that fails after some of its writes (a tag moved, its
    /// revision not) has still marked what it references: the client's
    /// error does not make its visible writes safe to sweep from under.
    #[test]
    fn a_push_step_that_fails_halfway_while_marking_has_marked() {
        let (_dir, driver, a, b) = two_replicas();
        let held = a.acquire(&driver).unwrap().expect("the lease is free");
        let layer = digest(5);
        let failed = b.push_step(&driver, |mark| {
            mark(std::slice::from_ref(&layer))?;
            driver.put_content(Path::new("repo/tag/link"), b"half")?;
            Err::<(), _>(StorageError {
                op: "put",
                path: "repo/revision/link".into(),
                source: io::Error::other("the bucket went away"),
            })
        });
        assert!(failed.is_err());
        let marker = BucketLease::touched(&driver, &layer).unwrap();
        assert!(held.counts(marker, Duration::ZERO), "no marker: {marker:?}");
    }

    #[test]
    fn a_push_waiting_on_a_sweep_runs_once_the_lease_is_released() {
        let (_dir, driver, a, b) = two_replicas();
        let held = a.acquire(&driver).unwrap().expect("free");
        held.sweep().unwrap();
        std::thread::scope(|s| {
            let push = s.spawn(|| {
                let started = Instant::now();
                let out = b.push_step(&driver, |_| Ok("pushed"));
                (out.unwrap(), started.elapsed())
            });
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
            let (out, waited) = push.join().unwrap();
            assert_eq!(out, "pushed");
            assert!(waited >= Duration::from_millis(100), "{waited:?}");
        });
    }

    /// A lease written by a version without phases holds pushes.
    #[test]
    fn a_lease_without_a_phase_holds_pushes() {
        let (_dir, driver, _, b) = two_replicas();
        let old = format!(r#"{{"holder":"old","until":{}}}"#, unix_now() + 60);
        driver
            .put_content(Path::new(LEASE_PATH), old.as_bytes())
            .unwrap();
        assert!(push(&b, &driver, &digest(3)).unwrap_err().is_busy());
    }

    #[test]
    fn an_expired_lease_is_ignored() {
        let (_dir, driver, a, b) = two_replicas();
        // A collector that died long ago.
        let stale = LeaseRecord {
            holder: "dead".into(),
            until: unix_now() - 1,
            phase: Phase::Sweeping,
        };
        driver
            .put_content(Path::new(LEASE_PATH), &serde_json::to_vec(&stale).unwrap())
            .unwrap();
        assert_eq!(push(&b, &driver, &digest(4)).unwrap(), 7);
        assert!(a.acquire(&driver).unwrap().is_some());
    }

    /// Two collectors that both found the lease free: the one whose write
    /// landed last goes on; the other backs off and leaves that lease alone.
    #[test]
    fn of_racing_collectors_the_last_writer_goes_on() {
        let (_dir, driver, a, _) = two_replicas();
        let winner = LeaseRecord {
            holder: "other-replica".into(),
            until: unix_now() + 60,
            phase: Phase::Marking,
        };
        std::thread::scope(|s| {
            let collector = s.spawn(|| a.acquire(&driver).unwrap().is_some());
            // During the collector's settling wait, the other's write lands.
            std::thread::sleep(Duration::from_millis(20));
            driver
                .put_content(Path::new(LEASE_PATH), &serde_json::to_vec(&winner).unwrap())
                .unwrap();
            assert!(!collector.join().unwrap(), "it backs off");
        });
        assert_eq!(read(&driver, Path::new(LEASE_PATH)).unwrap(), Some(winner));
    }
}
