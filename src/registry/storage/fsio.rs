//! Durable file primitives of the filesystem driver: atomic replace,
//! directory fsync, appends that can be cut back.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

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

/// A sibling path for a temporary file or directory that no other writer
/// will pick and no listing takes for content (names starting with a dot are
/// outside every name grammar of the layout). It keeps the start of the
/// target's name for whoever looks, within NAME_MAX (255 bytes) even beside a
/// 255-byte repository name component.
pub(crate) fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let cut = (0..=name.len().min(64))
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    path.with_file_name(format!(
        ".{}.tmp-{}",
        &name[..cut],
        uuid::Uuid::new_v4().simple()
    ))
}

/// Whether an error means nothing is at the path (or a file stands where a
/// directory was expected on the way to it).
pub(crate) fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
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

/// Start writeback of what was written every this many bytes, so the fsync
/// before the move into place has little left to flush.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// An append to a local file (`FsDriver::writer`).
pub(crate) struct AppendFile {
    file: File,
    path: PathBuf,
    start: u64,
    size: u64,
    unsynced: u64,
    writeback: Option<std::thread::JoinHandle<()>>,
}

impl AppendFile {
    /// `file` is positioned at `start`, its current length.
    pub(crate) fn new(file: File, path: PathBuf, start: u64) -> AppendFile {
        AppendFile {
            file,
            path,
            start,
            size: start,
            unsynced: 0,
            writeback: None,
        }
    }

    fn failed(&self, source: io::Error) -> StorageError {
        StorageError {
            op: "write upload",
            path: self.path.clone(),
            source,
        }
    }

    /// fdatasync on a second handle, beside further writes: it only brings the
    /// fsync before the move forward, so its result does not matter here.
    fn start_writeback(&mut self) {
        if self.writeback.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        if let Ok(clone) = self.file.try_clone() {
            self.writeback = Some(std::thread::spawn(move || {
                let _ = clone.sync_data();
            }));
            self.unsynced = 0;
        }
    }
}

impl super::driver::ContentWriter for AppendFile {
    fn write(&mut self, chunks: &[bytes::Bytes]) -> Result<(), StorageError> {
        use std::io::IoSlice;
        // Empty frames would make write_vectored return 0 (WriteZero); skip them.
        let mut slices: Vec<IoSlice<'_>> = chunks
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| IoSlice::new(c))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => return Err(self.failed(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.size += n as u64;
                    self.unsynced += n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.failed(e)),
            }
        }
        if self.unsynced >= WRITEBACK_EVERY {
            self.start_writeback();
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn close(mut self: Box<Self>) -> Result<(), StorageError> {
        // A chunk of a longer upload starts its writeback now rather than at
        // the move into place.
        if self.unsynced >= 256 << 10 {
            self.start_writeback();
        }
        Ok(())
    }

    fn cancel(self: Box<Self>) -> Result<(), StorageError> {
        self.file
            .set_len(self.start)
            .ctx("cut back upload", &self.path)
    }
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
}
