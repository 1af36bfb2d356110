//! Durable file primitives: atomic replace, link files, directory fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StorageError;
use crate::registry::digest::Digest;

pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, StorageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, StorageError> {
        self.map_err(|source| StorageError {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

/// A sibling path for a temporary file that no other writer will pick.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    path.with_file_name(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()))
}

/// fsync a directory so a rename or create inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// Creates `dir` and its parents; fsyncs the parents of what it created.
pub(crate) fn create_dirs(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Replaces `path` with `content` atomically and durably.
pub(crate) fn write_atomic(path: &Path, content: &[u8]) -> Result<(), StorageError> {
    let dir = path.parent().expect("storage paths have parents");
    create_dirs(dir)?;
    let tmp = temp_beside(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create temporary file", &tmp)?;
        f.write_all(content).ctx("write temporary file", &tmp)?;
        f.sync_all().ctx("sync temporary file", &tmp)?;
        fs::rename(&tmp, path).ctx("rename into place", path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a Distribution link file (`<dir>/link` holding the digest).
pub(crate) fn write_link(dir: &Path, d: &Digest) -> Result<(), StorageError> {
    write_atomic(&dir.join("link"), d.to_string().as_bytes())
}

/// Reads a link file; `None` if it does not exist or does not hold a digest.
pub(crate) fn read_link(path: &Path) -> Result<Option<Digest>, StorageError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(e).ctx("read link", path),
    }
}

/// Removes a directory tree; `false` if it was not there.
pub(crate) fn remove_tree(dir: &Path) -> Result<bool, StorageError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).ctx("remove directory", dir),
    }
}

/// Names of the subdirectories of `dir`, sorted; empty if `dir` does not exist.
pub(crate) fn list_dirs(dir: &Path) -> Result<Vec<String>, StorageError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list directory", dir),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.ctx("list directory", dir)?;
        if entry.file_type().ctx("stat", &entry.path())?.is_dir()
            && let Ok(name) = entry.file_name().into_string()
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/link");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn links_round_trip_and_garbage_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"x");
        write_link(dir.path(), &d).unwrap();
        assert_eq!(read_link(&dir.path().join("link")).unwrap(), Some(d));
        fs::write(dir.path().join("link"), "garbage").unwrap();
        assert_eq!(read_link(&dir.path().join("link")).unwrap(), None);
        assert_eq!(read_link(&dir.path().join("none/link")).unwrap(), None);
    }
}
