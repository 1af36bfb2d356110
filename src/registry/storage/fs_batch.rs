//! Several files placed in one durable step, for the filesystem driver.
//!
//! A manifest PUT writes four or five small files (content, revision link,
//! tag links, referrer link). Written one by one, each costs a file fsync and
//! one or two directory fsyncs, and each fsync is its own journal commit. Here
//! every file is written under a name nobody reads, all are synced, then all
//! are renamed into place in order and the directories that changed are
//! synced: on a journaling filesystem the first sync of each phase commits
//! most of the phase, and the syncs after it cost a cache flush rather than
//! a commit. Content is durable before any name points at it, so a crash
//! shows each file whole or not at all; renames reach the disk in the order they were made (ext4 and xfs
//! journal metadata in order), so what a later file refers to is never lost
//! while the later file survives.
//!
//! A directory the batch creates is built under a temporary name and renamed
//! into place with its files, so no reader (nor a crash) ever sees a
//! directory without its content: a listing can take entry names as they
//! are, as it does on object storage where a "directory" exists only while
//! something is in it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::StorageError;
use super::fsio::{self, IoContext};

type Result<T> = std::result::Result<T, StorageError>;

/// Whether a batch makes its work durable before returning, or leaves that
/// to whoever recorded it elsewhere first (the journal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    Synced,
    /// Written and renamed, not synced: only for what the journal holds.
    Deferred,
}

/// Where a staged file's bytes come from.
pub(crate) enum Source<'a> {
    Bytes(&'a [u8]),
    /// A complete file already in the store (an upload), moved, not copied.
    File(&'a Path),
}

/// A directory created under a temporary name, to appear at `target`.
struct NewDir {
    temp: PathBuf,
    target: PathBuf,
}

/// One rename into place, in batch order.
enum Step {
    /// A file whose directory exists.
    File { from: PathBuf, to: PathBuf },
    /// A new directory tree (index into `Batch::dirs`).
    Dir(usize),
}

/// A file staged inside a new directory tree, kept so a lost race for the
/// directory can still place it.
struct InTree<'a> {
    dir: usize,
    staged: PathBuf,
    target: PathBuf,
    source: &'a Source<'a>,
}

struct Batch<'a> {
    durability: Durability,
    steps: Vec<Step>,
    dirs: Vec<NewDir>,
    in_tree: Vec<InTree<'a>>,
    /// Upload files to move into a tree just before it is synced.
    moves_in: Vec<(PathBuf, PathBuf)>,
    /// Files and tree directories to sync before anything is renamed.
    sync_before: Vec<PathBuf>,
    /// Directories whose entries the renames change.
    sync_after: Vec<PathBuf>,
    /// Temporary files written so far (removed if the batch fails).
    temps: Vec<PathBuf>,
    renamed: usize,
}

/// Places every `(target, source)`, each atomically and (when `Synced`) all
/// durably, in order (see the module documentation). On error, nothing
/// staged is left behind; targets renamed before the error stay.
pub(crate) fn place_all(items: &[(PathBuf, Source<'_>)], durability: Durability) -> Result<()> {
    let mut batch = Batch::new(durability);
    let result = (|| {
        for (target, source) in items {
            batch.stage(target, source)?;
        }
        batch.commit()
    })();
    if result.is_err() {
        batch.discard();
    }
    result
}

fn parent(path: &Path) -> &Path {
    path.parent().expect("storage paths have parents")
}

/// The highest missing directory on the way to `dir` (whose parent exists);
/// `None` if `dir` exists.
fn first_missing(dir: &Path) -> Option<PathBuf> {
    if dir.is_dir() {
        return None;
    }
    let mut top = dir;
    while let Some(up) = top.parent()
        && !up.as_os_str().is_empty()
        && !up.is_dir()
    {
        top = up;
    }
    Some(top.to_owned())
}

fn write_new(path: &Path, content: &[u8]) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .ctx("write temporary file", path)
}

fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .ctx("sync", path)
}

/// Syncs every path. One after the other: syncing them on threads at the
/// same time measured no faster for one request here, and halved the rate of
/// 32 clients pushing at once (`cargo bench --bench registry`).
fn sync_each(paths: &[&Path]) -> Result<()> {
    paths.iter().try_for_each(|p| sync(p))
}

impl<'a> Batch<'a> {
    fn new(durability: Durability) -> Batch<'a> {
        Batch {
            durability,
            steps: Vec::new(),
            dirs: Vec::new(),
            in_tree: Vec::new(),
            moves_in: Vec::new(),
            sync_before: Vec::new(),
            sync_after: Vec::new(),
            temps: Vec::new(),
            renamed: 0,
        }
    }

    fn synced(&self) -> bool {
        self.durability == Durability::Synced
    }

    fn stage(&mut self, target: &Path, source: &'a Source<'a>) -> Result<()> {
        let dir = parent(target);
        let Some(top) = first_missing(dir) else {
            let from = match source {
                Source::Bytes(content) => {
                    let temp = fsio::temp_beside(target);
                    write_new(&temp, content)?;
                    self.temps.push(temp.clone());
                    temp
                }
                Source::File(file) => file.to_path_buf(),
            };
            self.sync_before.push(from.clone());
            self.note_changed(dir);
            self.steps.push(Step::File {
                from,
                to: target.to_owned(),
            });
            return Ok(());
        };
        let index = match self.dirs.iter().position(|d| d.target == top) {
            Some(i) => i,
            None => {
                let temp = fsio::temp_beside(&top);
                fs::create_dir(&temp).ctx("create temporary directory", &temp)?;
                self.temps.push(temp.clone());
                self.sync_before.push(temp.clone());
                self.note_changed(parent(&top));
                self.dirs.push(NewDir { temp, target: top });
                self.steps.push(Step::Dir(self.dirs.len() - 1));
                self.dirs.len() - 1
            }
        };
        let tree = &self.dirs[index];
        let rel = target
            .strip_prefix(&tree.target)
            .expect("target under its new directory");
        let staged = tree.temp.join(rel);
        // Create the directories between the tree's top and the file; each
        // holds an entry, so each is synced.
        let mut created = Vec::new();
        let mut d = parent(&staged);
        while !d.is_dir() {
            created.push(d.to_owned());
            d = parent(d);
        }
        for d in created.into_iter().rev() {
            fs::create_dir(&d).ctx("create temporary directory", &d)?;
            self.sync_before.push(d);
        }
        match source {
            Source::Bytes(content) => {
                write_new(&staged, content)?;
                self.sync_before.push(staged.clone());
            }
            Source::File(file) => {
                self.sync_before.push(file.to_path_buf());
                self.moves_in.push((file.to_path_buf(), staged.clone()));
            }
        }
        self.in_tree.push(InTree {
            dir: index,
            staged,
            target: target.to_owned(),
            source,
        });
        Ok(())
    }

    fn note_changed(&mut self, dir: &Path) {
        if !self.sync_after.iter().any(|d| d == dir) {
            self.sync_after.push(dir.to_owned());
        }
    }

    fn commit(&mut self) -> Result<()> {
        for (from, to) in &self.moves_in {
            fs::rename(from, to).ctx("move into temporary directory", to)?;
        }
        if self.synced() {
            // A directory's sync covers the entries moved into it above.
            let before: Vec<&Path> = self
                .sync_before
                .iter()
                .map(|path| {
                    let moved = self.moves_in.iter().find(|(from, _)| from == path);
                    moved.map_or(path.as_path(), |(_, to)| to.as_path())
                })
                .collect();
            sync_each(&before)?;
        }
        for i in 0..self.steps.len() {
            match &self.steps[i] {
                Step::File { from, to } => {
                    fs::rename(from, to).ctx("rename into place", to)?;
                }
                Step::Dir(d) => self.place_dir(*d)?,
            }
            self.renamed = i + 1;
        }
        if !self.synced() {
            return Ok(());
        }
        let after: Vec<&Path> = self.sync_after.iter().map(PathBuf::as_path).collect();
        sync_each(&after)
    }

    /// Renames a new tree into place. If another writer created the
    /// directory meanwhile, each of the tree's files is placed into it one
    /// by one instead.
    fn place_dir(&mut self, index: usize) -> Result<()> {
        let NewDir { temp, target } = &self.dirs[index];
        match fs::rename(temp, target) {
            Ok(()) => return Ok(()),
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e).ctx("rename into place", target),
        }
        for file in self.in_tree.iter().filter(|f| f.dir == index) {
            fsio::create_dirs(parent(&file.target))?;
            match file.source {
                Source::Bytes(content) => fsio::write_atomic(&file.target, content)?,
                Source::File(_) => {
                    fs::rename(&file.staged, &file.target).ctx("move into place", &file.target)?;
                    fsio::sync_dir(parent(&file.target))?;
                }
            }
        }
        fs::remove_dir_all(temp).ctx("remove temporary directory", temp)
    }

    /// Removes what was staged and not placed; moves uploads back.
    fn discard(&mut self) {
        for (from, to) in &self.moves_in {
            if to.exists() {
                let _ = fs::rename(to, from);
            }
        }
        for step in self.steps.iter().skip(self.renamed) {
            match step {
                Step::File { from, .. } if self.temps.contains(from) => {
                    let _ = fs::remove_file(from);
                }
                Step::File { .. } => {}
                Step::Dir(d) => {
                    let _ = fs::remove_dir_all(&self.dirs[*d].temp);
                }
            }
        }
    }
}

/// The rename of a directory failed because the target now exists and is not
/// empty (another writer created it first).
fn lost_race(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists
    )
}

/// Deletes a file or a directory tree at once; `false` if nothing was there.
pub(crate) fn remove(path: &Path, durability: Durability) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => {
            fs::remove_file(path).ctx("remove", path)?;
            if durability == Durability::Synced {
                fsio::sync_dir(parent(path))?;
            }
            Ok(true)
        }
        Ok(_) => remove_dir_at_once(path, durability),
        Err(e) if fsio::absent(&e) => Ok(false),
        Err(e) => Err(e).ctx("stat", path),
    }
}

/// Deletes a directory tree so that it disappears at once: renamed to a
/// temporary name beside it (one atomic step, synced when `Synced`), then
/// removed.
pub(crate) fn remove_dir_at_once(dir: &Path, durability: Durability) -> Result<bool> {
    let gone = fsio::temp_beside(dir);
    match fs::rename(dir, &gone) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound) => return Ok(false),
        Err(e) => return Err(e).ctx("remove directory", dir),
    }
    if durability == Durability::Synced {
        fsio::sync_dir(parent(dir))?;
    }
    fs::remove_dir_all(&gone).ctx("remove directory", &gone)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn places_files_in_new_and_existing_directories_and_leaves_no_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("old")).unwrap();
        let upload = r.join("upload");
        fs::write(&upload, b"uploaded").unwrap();
        place_all(
            &[
                (r.join("old/a"), Source::Bytes(b"a")),
                (r.join("new/x/current/link"), Source::Bytes(b"c")),
                (r.join("new/x/index/sha256/d/link"), Source::Bytes(b"i")),
                (r.join("blobs/ab/data"), Source::File(&upload)),
            ],
            Durability::Synced,
        )
        .unwrap();
        assert_eq!(fs::read(r.join("old/a")).unwrap(), b"a");
        assert_eq!(fs::read(r.join("new/x/current/link")).unwrap(), b"c");
        assert_eq!(fs::read(r.join("new/x/index/sha256/d/link")).unwrap(), b"i");
        assert_eq!(fs::read(r.join("blobs/ab/data")).unwrap(), b"uploaded");
        assert!(!upload.exists());
        assert_eq!(names(r), ["blobs", "new", "old"]);
        assert_eq!(names(&r.join("old")), ["a"]);
        // Replacing keeps one file.
        place_all(
            &[(r.join("old/a"), Source::Bytes(b"b"))],
            Durability::Synced,
        )
        .unwrap();
        assert_eq!(names(&r.join("old")), ["a"]);
        assert_eq!(fs::read(r.join("old/a")).unwrap(), b"b");
    }

    #[test]
    fn a_directory_created_meanwhile_still_receives_the_files() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let items = [(r.join("t/current/link"), Source::Bytes(b"mine"))];
        let mut batch = Batch::new(Durability::Synced);
        batch.stage(&items[0].0, &items[0].1).unwrap();
        // Another writer creates the tag first.
        fs::create_dir_all(r.join("t/index")).unwrap();
        fs::write(r.join("t/index/other"), b"theirs").unwrap();
        batch.commit().unwrap();
        assert_eq!(fs::read(r.join("t/current/link")).unwrap(), b"mine");
        assert_eq!(fs::read(r.join("t/index/other")).unwrap(), b"theirs");
        assert_eq!(names(r), ["t"]);
    }

    #[test]
    fn a_failed_batch_leaves_no_temporaries_and_returns_the_upload() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let upload = r.join("upload");
        fs::write(&upload, b"uploaded").unwrap();
        // A file where a directory must be: the first item cannot be placed,
        // after the upload was moved into its temporary directory.
        fs::write(r.join("blocker"), b"").unwrap();
        let err = place_all(
            &[
                (r.join("blocker/x/link"), Source::Bytes(b"x")),
                (r.join("blobs/ab/data"), Source::File(&upload)),
            ],
            Durability::Synced,
        );
        assert!(err.is_err());
        assert_eq!(fs::read(&upload).unwrap(), b"uploaded");
        assert_eq!(names(r), ["blocker", "upload"]);
    }

    #[test]
    fn directories_disappear_at_once() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("tags/t/current")).unwrap();
        fs::write(r.join("tags/t/current/link"), b"x").unwrap();
        assert!(remove_dir_at_once(&r.join("tags/t"), Durability::Synced).unwrap());
        assert!(!remove_dir_at_once(&r.join("tags/t"), Durability::Synced).unwrap());
        assert!(names(&r.join("tags")).is_empty());
    }
}
