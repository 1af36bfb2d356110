//! A write-ahead journal for the filesystem driver's small writes.
//!
//! A manifest PUT places four or five small files; making each durable in
//! place costs a dozen fsyncs and two journal commits of the filesystem. Here
//! the whole write is first appended as one record to a preallocated file and
//! made durable with one `fdatasync` (the file's blocks are already written,
//! so no metadata changes and the filesystem commits nothing). The files are
//! then placed without syncs. After a crash, the records since the last
//! checkpoint are applied again, in order, at start; a checkpoint (one
//! `syncfs`) makes everything placed durable and retires the records.
//!
//! The journal's generation is in its file name: a checkpoint renames the
//! file to the next generation (one atomic step) and starts writing at the
//! front again. Every record carries its generation's random nonce and a
//! checksum, so the scan at start stops at the first record that is torn or
//! left over from an earlier generation. Record boundaries never move within
//! a generation (a withdrawn record stays, marked void), and the nonce cannot
//! be guessed: content a client sent, sitting in an old record, is never read
//! as a record of its own.
//!
//! The journal file is made at the first write, so a registry that only
//! serves what a directory holds changes nothing in it.
//!
//! What a record wrote or deleted is remembered until the next checkpoint
//! (`pending`): an operation outside the journal (a directory delete, an
//! upload moved into place) that touches one of those paths would otherwise
//! be undone by a replay, so it is either journaled too (deletes) or comes
//! after a checkpoint. The journal holds its file locked: a second process
//! on the same directory works without one (every write synced in place).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sha2::{Digest as _, Sha256};

use super::StorageError;
use super::fs_batch::{self, Durability, Source};
use super::fsio::{self, IoContext};

type Result<T> = std::result::Result<T, StorageError>;

const FILE_PREFIX: &str = ".privreg-journal.";
const MAGIC: [u8; 4] = *b"PRJ1";
const HEADER_LEN: usize = 32;
const CHECKSUM_LEN: usize = 12;
/// Room for thousands of manifest PUTs between checkpoints, written once
/// with zeros when the journal is created.
pub(crate) const DEFAULT_CAPACITY: u64 = 16 << 20;
pub(crate) const MIN_CAPACITY: u64 = 256 << 10;
/// Paths remembered between checkpoints (a bound on memory, and on the
/// work a replay can have).
const MAX_PENDING: usize = 16_384;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Put = 1,
    Delete = 2,
    /// A put whose placement failed: skipped.
    Void = 3,
}

/// Which journal file, and which records in it, are current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Generation {
    number: u64,
    nonce: u64,
}

impl Generation {
    fn next(self) -> Generation {
        Generation {
            number: self.number + 1,
            nonce: rand::random(),
        }
    }

    fn path(self, root: &Path) -> PathBuf {
        root.join(format!("{FILE_PREFIX}{}.{:016x}", self.number, self.nonce))
    }

    fn parse(name: &str) -> Option<Generation> {
        let (number, nonce) = name.strip_prefix(FILE_PREFIX)?.split_once('.')?;
        Some(Generation {
            number: number.parse().ok()?,
            nonce: u64::from_str_radix(nonce, 16).ok()?,
        })
    }
}

/// Paths are relative to the driver's root (so a volume mounted elsewhere
/// replays the same), contents are the files' whole contents.
pub(crate) struct Journal {
    root: PathBuf,
    /// The size of a journal file made here.
    capacity: u64,
    /// The root directory, locked: one journal per store.
    _owner: File,
    state: Mutex<State>,
    /// Signalled when a sync of the journal ends.
    synced: Condvar,
}

struct State {
    /// `None` until the first record.
    file: Option<Arc<File>>,
    generation: Generation,
    /// The current file's size.
    capacity: u64,
    /// Where the next record goes.
    end: u64,
    /// How much of this generation's file is known durable.
    durable_end: u64,
    /// A writer is syncing the file (the others wait for it, then one of
    /// them syncs what was appended meanwhile: one sync for many records).
    syncing: bool,
    /// A sync failed: what it should have made durable may be lost, and a
    /// later sync can report success without having written it (the page
    /// cache may have dropped the pages), so no write is acknowledged again.
    broken: bool,
    /// Absolute paths written or deleted by records since the last checkpoint.
    pending: BTreeSet<PathBuf>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("root", &self.root).finish()
    }
}

/// A record written, not yet known durable.
#[derive(Clone, Copy)]
struct Appended {
    start: u64,
    end: u64,
    generation: u64,
}

/// What a checkpoint-free write has to hold while it works on the store.
pub(crate) struct Guard<'a> {
    journal: &'a Journal,
    state: MutexGuard<'a, State>,
}

impl Journal {
    /// The journal of the store at `root` (a directory that exists):
    /// replays what the last run left, then starts a new generation. `None`
    /// if another process holds it.
    pub(crate) fn open(root: &Path, capacity: u64) -> Result<Option<Journal>> {
        let owner = File::open(root).ctx("open storage root", root)?;
        match rustix::fs::flock(&owner, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(io::Error::from(e)).ctx("lock storage root", root),
        }
        let (file, generation, current_capacity) = match current_generation(root)? {
            Some(generation) => {
                let path = generation.path(root);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .ctx("open journal", &path)?;
                let len = file.metadata().ctx("open journal", &path)?.len();
                (Some(Arc::new(file)), generation, len)
            }
            None => (
                None,
                Generation {
                    number: 0,
                    nonce: 0,
                },
                0,
            ),
        };
        let journal = Journal {
            root: root.to_owned(),
            capacity,
            _owner: owner,
            state: Mutex::new(State {
                file,
                generation,
                capacity: current_capacity,
                end: 0,
                durable_end: 0,
                syncing: false,
                broken: false,
                pending: BTreeSet::new(),
            }),
            synced: Condvar::new(),
        };
        let replayed = journal.replay()?;
        if replayed > 0 {
            tracing::info!(records = replayed, "storage journal replayed");
        }
        journal.lock().checkpoint()?;
        Ok(Some(journal))
    }

    fn lock(&self) -> Guard<'_> {
        Guard {
            journal: self,
            state: self.state(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as a record
        // boundary: nothing is half-updated in memory.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies every valid record of the current generation, in order.
    fn replay(&self) -> Result<usize> {
        let guard = self.lock();
        let State {
            file: Some(file),
            generation,
            capacity,
            ..
        } = &*guard.state
        else {
            return Ok(0);
        };
        let mut bytes = vec![0; *capacity as usize];
        file.read_exact_at(&mut bytes, 0)
            .ctx("read journal", &generation.path(&self.root))?;
        let mut offset = 0;
        let mut count = 0;
        while let Some((kind, payload, len)) = parse_record(&bytes[offset..], generation.nonce) {
            match kind {
                Kind::Void => {}
                Kind::Put => {
                    let items = parse_items(payload)
                        .into_iter()
                        .filter_map(|(p, c)| Some((self.resolve(p)?, Source::Bytes(c))))
                        .collect::<Vec<_>>();
                    fs_batch::place_all(&items, Durability::Deferred)?;
                }
                Kind::Delete => {
                    if let Some(p) = self.resolve(payload) {
                        fs_batch::remove(&p, Durability::Deferred)?;
                    }
                }
            }
            offset += len;
            count += 1;
        }
        Ok(count)
    }

    /// A record's path under the root, if it is a plain relative path.
    fn resolve(&self, raw: &[u8]) -> Option<PathBuf> {
        let rel = Path::new(std::str::from_utf8(raw).ok()?);
        let plain = rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        (plain && !raw.is_empty()).then(|| self.root.join(rel))
    }

    /// Places `items` (relative path, content), each atomically, in order,
    /// durable on return through the journal. `Ok(false)` if the write is too
    /// large for a record: the caller writes it in place (after `settle`).
    pub(crate) fn put(&self, items: &[(PathBuf, &[u8])]) -> Result<bool> {
        let mut payload = Vec::new();
        for (rel, content) in items {
            let raw = rel.as_os_str().as_encoded_bytes();
            let (Ok(path_len), Ok(content_len)) =
                (u16::try_from(raw.len()), u32::try_from(content.len()))
            else {
                return Ok(false);
            };
            payload.extend_from_slice(&path_len.to_le_bytes());
            payload.extend_from_slice(&content_len.to_le_bytes());
            payload.extend_from_slice(raw);
            payload.extend_from_slice(content);
        }
        if (HEADER_LEN + payload.len()) as u64 > self.capacity / 4 {
            return Ok(false);
        }
        let placed: Vec<(PathBuf, Source<'_>)> = items
            .iter()
            .map(|(rel, content)| (self.root.join(rel), Source::Bytes(content)))
            .collect();
        let (appended, result) = {
            let mut guard = self.lock();
            let appended = guard.append(Kind::Put, &payload, placed.len())?;
            // Placed in record order (under the lock); visible before the
            // record is durable, as a rename is before its directory's sync,
            // and acknowledged only after.
            let result = fs_batch::place_all(&placed, Durability::Deferred);
            // Even a failed placement may have put some files in place.
            guard
                .state
                .pending
                .extend(placed.into_iter().map(|(p, _)| p));
            if result.is_err() {
                guard.retract(appended.start, &payload)?;
            }
            (appended, result)
        };
        self.commit(appended)?;
        result.map(|()| true)
    }

    /// Returns once the record `appended` is durable. Whoever finds no sync
    /// running syncs everything appended so far; the others wait for it.
    fn commit(&self, appended: Appended) -> Result<()> {
        let mut state = self.state();
        loop {
            if state.broken {
                return Err(io::Error::other("an earlier sync of the journal failed"))
                    .ctx("write journal", &state.generation.path(&self.root));
            }
            // A checkpoint since the append made everything durable.
            if state.generation.number != appended.generation || state.durable_end >= appended.end {
                return Ok(());
            }
            if state.syncing {
                state = self.synced.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.syncing = true;
            let (generation, target) = (state.generation, state.end);
            let file = state.file.clone().expect("a record was written");
            drop(state);
            let result = file.sync_data();
            state = self.state();
            state.syncing = false;
            match result {
                Ok(()) if state.generation == generation => {
                    state.durable_end = state.durable_end.max(target);
                }
                Ok(()) => {}
                Err(e) => {
                    state.broken = true;
                    self.synced.notify_all();
                    return Err(e).ctx("sync journal", &generation.path(&self.root));
                }
            }
            self.synced.notify_all();
        }
    }

    /// Deletes `path` (absolute, under the root) and everything under it,
    /// durably. Journaled when a pending record wrote there (so a replay
    /// cannot bring it back); otherwise synced in place.
    pub(crate) fn delete(&self, path: &Path) -> Result<bool> {
        let mut guard = self.lock();
        if !guard.touches_pending(path) {
            return fs_batch::remove(path, Durability::Synced);
        }
        let rel = path.strip_prefix(&self.root).expect("path under the root");
        let appended = guard.append(Kind::Delete, rel.as_os_str().as_encoded_bytes(), 1)?;
        guard.state.pending.insert(path.to_owned());
        let removed = fs_batch::remove(path, Durability::Deferred);
        drop(guard);
        self.commit(appended)?;
        removed
    }

    /// Before a write outside the journal to `paths` (absolute): makes sure
    /// no pending record can replay over it. The guard keeps journaled writes
    /// out until the caller's write is done.
    pub(crate) fn settle(&self, paths: &[&Path]) -> Result<Guard<'_>> {
        let mut guard = self.lock();
        if paths.iter().any(|p| guard.touches_pending(p)) {
            guard.checkpoint()?;
        }
        Ok(guard)
    }

    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.lock().state.generation.number
    }
}

impl Guard<'_> {
    /// Whether a pending record wrote or deleted `path`, anything under it,
    /// or a directory above it (a replayed delete of that directory would
    /// take `path` with it).
    fn touches_pending(&self, path: &Path) -> bool {
        let pending = &self.state.pending;
        pending
            .range(path.to_path_buf()..)
            .next()
            .is_some_and(|p| p.starts_with(path))
            || path.ancestors().skip(1).any(|a| pending.contains(a))
    }

    /// Appends one record (`Journal::commit` makes it durable);
    /// checkpoints first when the journal is full.
    fn append(&mut self, kind: Kind, payload: &[u8], paths: usize) -> Result<Appended> {
        let len = (HEADER_LEN + payload.len()) as u64;
        if self.state.file.is_none() {
            let generation = self.state.generation.next();
            self.state.file = Some(Arc::new(create(
                &self.journal.root,
                self.journal.capacity,
                generation,
            )?));
            self.state.generation = generation;
            self.state.capacity = self.journal.capacity;
        }
        if self.state.end + len > self.state.capacity
            || self.state.pending.len() + paths > MAX_PENDING
        {
            self.checkpoint()?;
        }
        let record = encode(kind, self.state.generation.nonce, payload);
        let path = self.state.generation.path(&self.journal.root);
        let file = self.state.file.as_ref().expect("made above");
        file.write_all_at(&record, self.state.end)
            .ctx("write journal", &path)?;
        let start = self.state.end;
        self.state.end += len;
        Ok(Appended {
            start,
            end: self.state.end,
            generation: self.state.generation.number,
        })
    }

    /// Withdraws the put record of `payload` appended at `start` (its
    /// placement failed, and must not come back at the next start): its
    /// header is rewritten as a void record's (made durable with the record
    /// by `Journal::commit`). It keeps its place, so the records after it are
    /// found where they were written.
    fn retract(&mut self, start: u64, payload: &[u8]) -> Result<()> {
        let path = self.state.generation.path(&self.journal.root);
        let void = encode(Kind::Void, self.state.generation.nonce, payload);
        let file = self.state.file.as_ref().expect("a record was written");
        file.write_all_at(&void[..HEADER_LEN], start)
            .ctx("write journal", &path)
    }

    /// Makes everything placed so far durable (one `syncfs`), then retires
    /// every record by moving to the next generation.
    fn checkpoint(&mut self) -> Result<()> {
        if self.state.file.is_none() {
            // No record was ever written.
            self.state.pending.clear();
            return Ok(());
        }
        let root = &self.journal.root;
        let dir = &self.journal._owner;
        rustix::fs::syncfs(dir)
            .map_err(io::Error::from)
            .ctx("sync filesystem", root)?;
        let next = self.state.generation.next();
        let (from, to) = (self.state.generation.path(root), next.path(root));
        fs::rename(&from, &to).ctx("advance journal", &to)?;
        dir.sync_all().ctx("sync directory", root)?;
        self.state.generation = next;
        self.state.end = 0;
        self.state.durable_end = 0;
        self.state.pending.clear();
        Ok(())
    }
}

/// The generation of the journal file left by the last run; older
/// generations (none, unless something else put one there) and half-made
/// new files are removed.
fn current_generation(root: &Path) -> Result<Option<Generation>> {
    let mut found: Vec<(u64, Generation, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("list storage root", root),
    };
    for entry in entries {
        let entry = entry.ctx("list storage root", root)?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(FILE_PREFIX)) else {
            continue;
        };
        match Generation::parse(name) {
            Some(generation) => found.push((generation.number, generation, entry.path())),
            None => {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    found.sort_by_key(|(number, ..)| *number);
    let newest = found.pop();
    for (_, _, older) in found {
        let _ = fs::remove_file(older);
    }
    Ok(newest.map(|(_, generation, _)| generation))
}

/// A new journal of `capacity` zeros: written and synced under a temporary
/// name, then renamed into place, so its blocks are allocated and written
/// before the first record (an overwrite then changes no metadata).
fn create(root: &Path, capacity: u64, generation: Generation) -> Result<File> {
    let temp = root.join(format!("{FILE_PREFIX}new"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        let zeros = vec![0u8; 1 << 20];
        let mut left = capacity;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        Ok(file)
    })();
    let file = match result {
        Ok(file) => file,
        Err(e) => {
            let _ = fs::remove_file(&temp);
            return Err(e).ctx("create journal", &temp);
        }
    };
    let path = generation.path(root);
    fs::rename(&temp, &path).ctx("create journal", &path)?;
    fsio::sync_dir(root)?;
    Ok(file)
}

fn checksum(header: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(&header[..HEADER_LEN - CHECKSUM_LEN])
        .chain_update(payload)
        .finalize();
    digest[..CHECKSUM_LEN].try_into().expect("digest is longer")
}

/// magic (4) | kind (1) | zero (3) | generation nonce (8) | payload length
/// (4) | checksum of all before it and the payload (12) | payload
fn encode(kind: Kind, nonce: u64, payload: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + payload.len());
    record.extend_from_slice(&MAGIC);
    record.extend_from_slice(&[kind as u8, 0, 0, 0]);
    record.extend_from_slice(&nonce.to_le_bytes());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let sum = checksum(&record, payload);
    record.extend_from_slice(&sum);
    record.extend_from_slice(payload);
    record
}

/// The record at the start of `bytes` if it is whole and of the generation
/// of `nonce`: its kind, payload and length.
fn parse_record(bytes: &[u8], nonce: u64) -> Option<(Kind, &[u8], usize)> {
    let header = bytes.get(..HEADER_LEN)?;
    if header[..4] != MAGIC || u64::from_le_bytes(header[8..16].try_into().ok()?) != nonce {
        return None;
    }
    let kind = match header[4] {
        1 => Kind::Put,
        2 => Kind::Delete,
        3 => Kind::Void,
        _ => return None,
    };
    let len = u32::from_le_bytes(header[16..20].try_into().ok()?) as usize;
    let payload = bytes.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    (checksum(header, payload) == header[20..]).then_some((kind, payload, HEADER_LEN + len))
}

/// A put record's (path, content) pairs; a checksummed record is well formed,
/// but a malformed tail is dropped rather than trusted.
fn parse_items(mut payload: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut items = Vec::new();
    while payload.len() >= 6 {
        let path_len = u16::from_le_bytes([payload[0], payload[1]]) as usize;
        let content_len = u32::from_le_bytes(payload[2..6].try_into().expect("4 bytes")) as usize;
        let Some(rest) = payload.get(6..) else { break };
        let (Some(path), Some(content)) = (
            rest.get(..path_len),
            rest.get(path_len..path_len + content_len),
        ) else {
            break;
        };
        items.push((path, content));
        payload = &rest[path_len + content_len..];
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 64 << 10;

    fn open(root: &Path) -> Journal {
        Journal::open(root, SMALL).unwrap().expect("not locked")
    }

    fn put(j: &Journal, items: &[(&str, &[u8])]) {
        let items: Vec<(PathBuf, &[u8])> =
            items.iter().map(|(p, c)| (PathBuf::from(p), *c)).collect();
        assert!(j.put(&items).unwrap());
    }

    /// Writes raw bytes into the current journal file, as a crash or an
    /// older generation could have left them.
    fn scribble(j: &Journal, bytes: &[u8], at: u64) {
        let guard = j.lock();
        guard
            .state
            .file
            .as_ref()
            .unwrap()
            .write_all_at(bytes, at)
            .unwrap();
    }

    /// A durable write in place, as the driver does one outside the journal.
    fn write_outside(j: &Journal, root: &Path, rel: &str, content: &[u8]) {
        let _guard = j.settle(&[&root.join(rel)]).unwrap();
        fsio::write_atomic(&root.join(rel), content).unwrap();
    }

    fn nonce(j: &Journal) -> u64 {
        j.lock().state.generation.nonce
    }

    fn read(root: &Path, rel: &str) -> Option<Vec<u8>> {
        fs::read(root.join(rel)).ok()
    }

    /// What a power loss right after the writes could leave: the journal,
    /// and none of the files placed without a sync.
    fn lose_unsynced(root: &Path, dirs: &[&str]) {
        for d in dirs {
            let _ = fs::remove_dir_all(root.join(d));
        }
    }

    #[test]
    fn acknowledged_writes_come_back_in_order_after_a_crash() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        put(&j, &[("t/a/current/link", b"1"), ("b/data", b"blob")]);
        put(&j, &[("t/a/current/link", b"2")]);
        put(&j, &[("t/gone/link", b"x")]);
        assert!(j.delete(&root.join("t/gone")).unwrap());
        assert_eq!(read(root, "t/a/current/link").as_deref(), Some(&b"2"[..]));
        drop(j);
        lose_unsynced(root, &["t", "b"]);
        let j = open(root);
        assert_eq!(read(root, "t/a/current/link").as_deref(), Some(&b"2"[..]));
        assert_eq!(read(root, "b/data").as_deref(), Some(&b"blob"[..]));
        assert!(!root.join("t/gone").exists());
        // The replay was checkpointed: a second crash has nothing to redo.
        drop(j);
        lose_unsynced(root, &["t", "b"]);
        let _j = open(root);
        assert_eq!(read(root, "b/data"), None);
    }

    #[test]
    fn concurrent_writers_share_syncs_and_all_come_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = Journal::open(root, DEFAULT_CAPACITY).unwrap().unwrap();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let j = &j;
                scope.spawn(move || {
                    for i in 0..40 {
                        let content = format!("{t}-{i}");
                        put(j, &[(&format!("w/{t}/{i}/link"), content.as_bytes())]);
                    }
                });
            }
        });
        drop(j);
        lose_unsynced(root, &["w"]);
        let _j = open(root);
        for t in 0..8 {
            for i in 0..40 {
                let want = format!("{t}-{i}");
                assert_eq!(
                    read(root, &format!("w/{t}/{i}/link")),
                    Some(want.into_bytes())
                );
            }
        }
    }

    #[test]
    fn a_torn_record_ends_the_replay_without_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        put(&j, &[("a/link", b"kept")]);
        let generation = j.generation();
        let end = j.lock().state.end;
        // The next record reached the disk only in part.
        let mut torn = encode(Kind::Put, nonce(&j), b"\x06\x00\x01\x00\x00\x00b/linkX");
        torn.truncate(torn.len() - 3);
        scribble(&j, &torn, end);
        drop(j);
        lose_unsynced(root, &["a"]);
        let j = open(root);
        assert_eq!(read(root, "a/link").as_deref(), Some(&b"kept"[..]));
        assert_eq!(read(root, "b/link"), None);
        assert!(j.generation() > generation);
    }

    #[test]
    fn a_full_journal_checkpoints_and_keeps_going() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        let first = j.generation();
        let content = vec![7u8; 1000];
        for i in 0..200 {
            put(&j, &[(&format!("r/{i}/link"), &content)]);
        }
        assert!(
            j.generation() > first,
            "200 KB of records in a 64 KiB journal"
        );
        for i in 0..200 {
            assert_eq!(read(root, &format!("r/{i}/link")).unwrap(), content);
        }
        // Too large for a record: the caller writes it in place.
        let big = vec![0u8; SMALL as usize];
        assert!(!j.put(&[(PathBuf::from("big"), &big)]).unwrap());
    }

    #[test]
    fn a_write_outside_the_journal_is_not_undone_by_a_replay() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        put(&j, &[("b/data", b"journaled")]);
        let before = j.generation();
        write_outside(&j, root, "b/data", b"in place");
        assert!(j.generation() > before, "the pending record was retired");
        drop(j);
        let _j = open(root);
        assert_eq!(read(root, "b/data").as_deref(), Some(&b"in place"[..]));
    }

    #[test]
    fn a_write_under_a_journaled_delete_is_not_undone_by_a_replay() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        put(&j, &[("blob/x/data", b"manifest")]);
        assert!(j.delete(&root.join("blob/x")).unwrap());
        // The same blob, uploaded again, moved in outside the journal.
        write_outside(&j, root, "blob/x/data", b"manifest");
        drop(j);
        let _j = open(root);
        assert_eq!(read(root, "blob/x/data").as_deref(), Some(&b"manifest"[..]));
    }

    #[test]
    fn a_failed_placement_is_withdrawn() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        // A file where a directory must be.
        fs::write(root.join("blocker"), b"").unwrap();
        let items = [(PathBuf::from("blocker/x/link"), &b"x"[..])];
        assert!(j.put(&items).is_err());
        put(&j, &[("after/link", b"a")]);
        drop(j);
        fs::remove_file(root.join("blocker")).unwrap();
        let _j = open(root);
        assert_eq!(read(root, "blocker/x/link"), None);
        assert_eq!(read(root, "after/link").as_deref(), Some(&b"a"[..]));
    }

    #[test]
    fn a_store_that_is_only_read_is_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("docker")).unwrap();
        let j = open(tmp.path());
        j.delete(&tmp.path().join("absent")).unwrap();
        drop(j);
        let _j = open(tmp.path());
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["docker"]);
    }

    #[test]
    fn a_second_process_on_the_same_store_gets_no_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let _first = open(tmp.path());
        assert!(Journal::open(tmp.path(), SMALL).unwrap().is_none());
    }

    #[test]
    fn records_of_other_generations_and_bad_paths_are_not_applied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let j = open(root);
        put(&j, &[("first/link", b"1")]);
        let stale = encode(Kind::Put, nonce(&j) ^ 1, b"\x06\x00\x01\x00\x00\x00c/linkX");
        scribble(&j, &stale, 0);
        drop(j);
        let j = open(root);
        assert_eq!(read(root, "c/link"), None);
        let escape = encode(Kind::Put, nonce(&j), b"\x04\x00\x01\x00\x00\x00../xX");
        scribble(&j, &escape, 0);
        drop(j);
        let _j = open(root);
        assert!(!tmp.path().parent().unwrap().join("x").exists());
    }
}
