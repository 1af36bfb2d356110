//! The storage driver: the few operations on named content that the registry
//! needs from where its bytes live, in the spirit of CNCF Distribution's
//! storage driver. Everything above it (the Distribution layout, links, tags,
//! the referrers index, garbage collection, upload sessions) is written once
//! against this trait, so a second backend (object storage) implements these
//! operations and nothing else, and keeps Distribution's paths.
//!
//! Paths are relative (`docker/registry/v2/blobs/...`), built by `Layout`
//! from validated names only; a driver still refuses an absolute path or a
//! `..` component. All operations block: callers run them on the blocking pool.
//! "Directories" exist while they hold something (as prefixes do in object
//! storage); the filesystem driver's empty directories read as existing.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::StorageError;
use super::fs_batch::{self, Durability, Source};
use super::fsio::{self, IoContext};
use super::journal::{self, Journal};
use super::space::Space;
use crate::registry::digest::{Algorithm, Digest};

type Result<T> = std::result::Result<T, StorageError>;

/// What `stat` says of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileInfo {
    /// Content length (0 for a directory).
    pub size: u64,
    pub modified: SystemTime,
    pub is_dir: bool,
}

/// Content to serve, from an offset.
pub type ContentReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where the registry's bytes live.
pub trait StorageDriver: Send + Sync + Debug + 'static {
    /// The whole content at `path` (small files: links, manifests); `None` if
    /// there is none.
    fn get_content(&self, path: &Path) -> Result<Option<Vec<u8>>>;

    /// Replaces the content at `path`, atomically (a reader sees the old
    /// content or the new, never a part) and durably.
    fn put_content(&self, path: &Path, content: &[u8]) -> Result<()>;

    /// `put_content` of each item, in order: a reader never sees a later
    /// item without the earlier ones (a crash may end the sequence early).
    /// All are durable on return. A backend that can, pays for durability
    /// once for the lot.
    fn put_contents(&self, items: &[(PathBuf, &[u8])]) -> Result<()> {
        items
            .iter()
            .try_for_each(|(path, content)| self.put_content(path, content))
    }

    /// A reader of the content at `path` from byte `offset`.
    fn reader(&self, path: &Path, offset: u64) -> Result<ContentReader>;

    /// A writer that appends to the content at `path` from byte `offset`,
    /// which must be the current length (0 creates it).
    fn writer(&self, path: &Path, offset: u64) -> Result<Box<dyn ContentWriter>>;

    /// Size, modification time and kind of `path`; `None` if it does not exist.
    fn stat(&self, path: &Path) -> Result<Option<FileInfo>>;

    /// Names of the entries directly under `path`, sorted; empty if none.
    fn list(&self, path: &Path) -> Result<Vec<String>>;

    /// Moves the content at `from` to `to` (replacing it), durably.
    fn move_content(&self, from: &Path, to: &Path) -> Result<()>;

    /// `move_content`, only if the content hashes to `expected`, checked on
    /// the very bytes moved; returns the content's digest. For storage that
    /// other processes write to, where what this one hashed as it received
    /// an upload may since have been replaced. Reads the content once.
    fn move_verified(&self, from: &Path, to: &Path, expected: &Digest) -> Result<Digest>;

    /// The digest of the content at `path`, read whole.
    fn hash_content(&self, path: &Path, algorithm: Algorithm) -> Result<Digest>;

    /// Deletes `path` and everything under it; `false` if nothing was there.
    fn delete(&self, path: &Path) -> Result<bool>;

    /// Dates `path` now, without changing it (garbage collection's grace
    /// period counts from the last use); best effort.
    fn touch(&self, path: &Path);

    /// Free and total space where uploads land, if the backend has a limit
    /// it can tell (object storage has none).
    fn space(&self) -> Option<Space>;

    /// A URL from which a client may GET the content at `path` itself for
    /// `valid` (a presigned object URL); `None` where the backend has none.
    fn url_for(&self, path: &Path, valid: std::time::Duration) -> Result<Option<String>> {
        let _ = (path, valid);
        Ok(None)
    }

    /// Ends writes that hold space without showing it (an object store's
    /// multipart uploads), left unfinished for `max_age` by a process that
    /// died; returns how many. A file system has none: what a killed writer
    /// left is upload data that the upload purge deletes.
    fn abort_abandoned_writes(&self, max_age: std::time::Duration) -> Result<usize> {
        let _ = max_age;
        Ok(0)
    }
}

/// Refuses a storage path that could leave a driver's root: an absolute
/// path, `..`, or a prefix. Every driver checks with this before it touches
/// anything.
pub(super) fn check_relative(path: &Path) -> Result<()> {
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(io::Error::from(io::ErrorKind::InvalidInput)).ctx("resolve storage path", path)
    }
}

/// An append in progress (one upload request's body).
pub trait ContentWriter: Send {
    /// Appends `chunks`, in order.
    fn write(&mut self, chunks: &[Bytes]) -> Result<()>;

    /// The content's length so far.
    fn size(&self) -> u64;

    /// Ends this append, keeping what was written (durability comes with
    /// `move_content`; a writer may start it early).
    fn close(self: Box<Self>) -> Result<()>;

    /// Ends this append, cutting the content back to where it started.
    fn cancel(self: Box<Self>) -> Result<()>;
}

/// The driver for a local directory (a PersistentVolume in a cluster).
#[derive(Debug, Clone)]
pub struct FsDriver {
    root: PathBuf,
    /// Small writes go through it (see `journal`); without it, every write
    /// is synced in place.
    journal: Option<Arc<Journal>>,
}

impl FsDriver {
    /// The driver without a journal: every write synced in place.
    pub fn new(root: &Path) -> FsDriver {
        FsDriver {
            root: root.to_owned(),
            journal: None,
        }
    }

    /// The driver with its write-ahead journal, after replaying what a crash
    /// left in it. Another process holding the journal (two registries on
    /// one directory) leaves this one without: slower, still durable.
    pub fn open(root: &Path) -> Result<FsDriver> {
        Self::open_with(root, false)
    }

    /// `open`, failing (`WouldBlock`) if another process holds the store:
    /// for what must not run beside a registry, such as offline collection.
    pub fn open_exclusive(root: &Path) -> Result<FsDriver> {
        Self::open_with(root, true)
    }

    fn open_with(root: &Path, exclusive: bool) -> Result<FsDriver> {
        fsio::create_dirs(root)?;
        // A sixty-fourth of a small volume (a 24 MiB test volume keeps most
        // of its room), at most `DEFAULT_CAPACITY`.
        let total = rustix::fs::statvfs(root)
            .map(|st| st.f_blocks.saturating_mul(st.f_frsize))
            .unwrap_or(u64::MAX);
        let capacity = (total / 64).clamp(journal::MIN_CAPACITY, journal::DEFAULT_CAPACITY);
        let journal = match Journal::open(root, capacity) {
            Ok(Some(journal)) => Some(journal),
            Ok(None) if exclusive => {
                return Err(io::Error::from(io::ErrorKind::WouldBlock)).ctx(
                    "lock the data directory (another privreg process holds it)",
                    root,
                );
            }
            Ok(None) => {
                tracing::warn!(
                    root = %root.display(),
                    "another process holds the storage journal; writing without it"
                );
                None
            }
            // A full volume still serves what it holds.
            Err(e) if e.is_full() => {
                tracing::warn!(error = %e, "no room for the storage journal; writing without it");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(FsDriver {
            root: root.to_owned(),
            journal: journal.map(Arc::new),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` under the root; refuses what could leave it.
    fn resolve(&self, path: &Path) -> Result<PathBuf> {
        check_relative(path)?;
        Ok(self.root.join(path))
    }
}

impl StorageDriver for FsDriver {
    fn get_content(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        let p = self.resolve(path)?;
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if fsio::absent(&e) || e.kind() == io::ErrorKind::IsADirectory => Ok(None),
            Err(e) => Err(e).ctx("read", &p),
        }
    }

    fn put_content(&self, path: &Path, content: &[u8]) -> Result<()> {
        self.put_contents(&[(path.to_owned(), content)])
    }

    fn put_contents(&self, items: &[(PathBuf, &[u8])]) -> Result<()> {
        let staged = items
            .iter()
            .map(|(path, content)| Ok((self.resolve(path)?, Source::Bytes(content))))
            .collect::<Result<Vec<_>>>()?;
        let Some(journal) = &self.journal else {
            return fs_batch::place_all(&staged, Durability::Synced);
        };
        if journal.put(items)? {
            return Ok(());
        }
        // Too large for a record: in place, with nothing pending over it.
        let targets: Vec<&Path> = staged.iter().map(|(p, _)| p.as_path()).collect();
        let _quiet = journal.settle(&targets)?;
        fs_batch::place_all(&staged, Durability::Synced)
    }

    fn reader(&self, path: &Path, offset: u64) -> Result<ContentReader> {
        let p = self.resolve(path)?;
        let mut file = File::open(&p).ctx("open", &p)?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).ctx("seek", &p)?;
        }
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    fn writer(&self, path: &Path, offset: u64) -> Result<Box<dyn ContentWriter>> {
        let p = self.resolve(path)?;
        if offset == 0 {
            if let Some(journal) = &self.journal {
                drop(journal.settle(&[&p])?);
            }
            if let Some(dir) = p.parent() {
                fsio::create_dirs(dir)?;
            }
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(offset == 0)
            .truncate(false)
            .open(&p)
            .ctx("open for append", &p)?;
        file.seek(SeekFrom::Start(offset)).ctx("seek", &p)?;
        Ok(Box::new(fsio::AppendFile::new(file, p, offset)))
    }

    fn stat(&self, path: &Path) -> Result<Option<FileInfo>> {
        let p = self.resolve(path)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(FileInfo {
                size: if m.is_dir() { 0 } else { m.len() },
                modified: m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                is_dir: m.is_dir(),
            })),
            Err(e) if fsio::absent(&e) => Ok(None),
            Err(e) => Err(e).ctx("stat", &p),
        }
    }

    fn list(&self, path: &Path) -> Result<Vec<String>> {
        let p = self.resolve(path)?;
        let entries = match fs::read_dir(&p) {
            Ok(e) => e,
            Err(e) if fsio::absent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("list directory", &p),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.ctx("list directory", &p)?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn move_content(&self, from: &Path, to: &Path) -> Result<()> {
        let (from, to) = (self.resolve(from)?, self.resolve(to)?);
        if let Some(journal) = &self.journal {
            // Only a blob's data is moved, and a record can only have written
            // the same bytes there (the path is their digest): once no older
            // record can replay over it, journaled writes need not wait.
            drop(journal.settle(&[&to])?);
        }
        fs_batch::place_all(&[(to, Source::File(&from))], Durability::Synced)
    }

    fn move_verified(&self, from: &Path, to: &Path, expected: &Digest) -> Result<Digest> {
        // One process owns a directory: nothing can replace the file between
        // this read and the move.
        let actual = self.hash_content(from, expected.algorithm())?;
        if &actual == expected {
            self.move_content(from, to)?;
        }
        Ok(actual)
    }

    fn hash_content(&self, path: &Path, algorithm: Algorithm) -> Result<Digest> {
        use std::io::Read as _;
        let source = self.resolve(path)?;
        let mut file = File::open(&source).ctx("open", &source)?;
        let mut hasher = algorithm.hasher();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = file.read(&mut buf).ctx("read", &source)?;
            if n == 0 {
                return Ok(hasher.finish());
            }
            hasher.update(&buf[..n]);
        }
    }

    fn delete(&self, path: &Path) -> Result<bool> {
        let p = self.resolve(path)?;
        match &self.journal {
            Some(journal) => journal.delete(&p),
            None => fs_batch::remove(&p, Durability::Synced),
        }
    }

    fn touch(&self, path: &Path) {
        if let Ok(p) = self.resolve(path)
            && let Ok(f) = File::options().write(true).open(p)
        {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    fn space(&self) -> Option<Space> {
        let st = rustix::fs::statvfs(&self.root).ok()?;
        Some(Space {
            free: st.f_bavail.saturating_mul(st.f_frsize),
            total: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_and_absence_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let d = FsDriver::new(dir.path());
        let p = Path::new("a/b/link");
        assert_eq!(d.get_content(p).unwrap(), None);
        assert_eq!(d.stat(p).unwrap(), None);
        d.put_content(p, b"one").unwrap();
        assert_eq!(d.get_content(p).unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(d.list(Path::new("a")).unwrap(), vec!["b".to_owned()]);
        assert!(d.stat(Path::new("a/b")).unwrap().unwrap().is_dir);
        assert_eq!(d.stat(p).unwrap().unwrap().size, 3);
        // A file where a directory is expected reads as empty, not an error.
        assert!(d.list(p).unwrap().is_empty());
        assert!(d.delete(Path::new("a")).unwrap());
        assert!(!d.delete(Path::new("a")).unwrap());
    }

    #[test]
    fn appends_cancel_back_to_their_start_and_move_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let d = FsDriver::new(dir.path());
        let p = Path::new("up/data");
        let mut w = d.writer(p, 0).unwrap();
        w.write(&[Bytes::from_static(b"abc"), Bytes::new()])
            .unwrap();
        w.close().unwrap();
        let mut w = d.writer(p, 3).unwrap();
        w.write(&[Bytes::from_static(b"def")]).unwrap();
        assert_eq!(w.size(), 6);
        w.cancel().unwrap();
        assert_eq!(d.get_content(p).unwrap().as_deref(), Some(&b"abc"[..]));
        d.move_content(p, Path::new("blobs/x/data")).unwrap();
        assert_eq!(d.get_content(p).unwrap(), None);
        assert_eq!(
            d.get_content(Path::new("blobs/x/data")).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
    }

    #[test]
    fn paths_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let d = FsDriver::new(&dir.path().join("root"));
        for bad in ["../x", "/etc/passwd", "a/../../x"] {
            assert!(d.put_content(Path::new(bad), b"x").is_err(), "{bad}");
            assert!(d.get_content(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
