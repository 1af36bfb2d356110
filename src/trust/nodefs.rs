//! The node's filesystem as the agent may touch it: paths resolved inside a host
//! root without following symlinks out of it, and durable writes.
//!
//! The agent runs as root with the node's directories mounted under a root
//! (`/host`, or `/` itself), so a symlink planted in a trust directory could
//! turn a write into one anywhere on the node. Hence:
//!
//! - a preset's base directory (`etc/containerd/certs.d`, ...) is walked one
//!   component at a time; a symlink on the way is followed only when its target is
//!   relative and made of plain names (no `/`-rooted target, no `..`), so it stays
//!   in the directory that holds it. That admits snapd's `current -> 7964` under
//!   `/var/snap/microk8s` and nothing that leaves the root;
//! - below a base, nothing may be a symlink: a managed directory, a file in it,
//!   or `/etc/hosts` that is a symlink is refused, never followed.
//!
//! Checks and writes are separate system calls; the directories involved are
//! root-owned, so only root could race them, and root needs no race.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Mode of every file the agent writes: they hold public certificates and
/// registry routing only.
pub const FILE_MODE: u32 = 0o644;
/// Mode of every directory the agent creates.
pub const DIR_MODE: u32 = 0o755;

/// How many same-directory symlinks a base path may pass through.
const MAX_LINKS: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a symlink; privreg does not follow symlinks here")]
    Symlink { path: PathBuf },
    #[error("{path} is a symlink to {target}, which leaves its directory")]
    SymlinkEscapes { path: PathBuf, target: PathBuf },
    #[error("{path} passes through more than {MAX_LINKS} symlinks")]
    TooManyLinks { path: PathBuf },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path} is not a plain relative path")]
    NotRelative { path: PathBuf },
    #[error("{path} is not UTF-8 text")]
    NotUtf8 { path: PathBuf },
}

pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|source| FsError::Io {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

/// What is at a path, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File,
    Dir,
    Symlink,
    Other,
}

pub fn kind(path: &Path) -> Result<Kind, FsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(Kind::Symlink),
        Ok(m) if m.is_dir() => Ok(Kind::Dir),
        Ok(m) if m.is_file() => Ok(Kind::File),
        Ok(_) => Ok(Kind::Other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Missing),
        Err(e) => Err(e).ctx("inspect", path),
    }
}

/// The physical path of `rel` (a base directory, relative to `root`), following
/// only symlinks that stay in their own directory. Components that do not exist
/// yet are appended as they are.
pub fn resolve_base(root: &Path, rel: &Path) -> Result<PathBuf, FsError> {
    let mut pending: VecDeque<PathBuf> = VecDeque::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => pending.push_back(PathBuf::from(name)),
            _ => return Err(FsError::NotRelative { path: rel.into() }),
        }
    }
    let mut cur = root.to_path_buf();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        let next = cur.join(&name);
        match kind(&next)? {
            Kind::Dir => cur = next,
            Kind::Missing => {
                cur = next;
                cur.extend(pending.drain(..));
            }
            Kind::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(FsError::TooManyLinks { path: next });
                }
                let target = fs::read_link(&next).ctx("read symlink", &next)?;
                let plain = target.components().count() > 0
                    && target
                        .components()
                        .all(|c| matches!(c, Component::Normal(_)));
                if !plain {
                    return Err(FsError::SymlinkEscapes { path: next, target });
                }
                for c in target.components().rev() {
                    pending.push_front(PathBuf::from(c.as_os_str()));
                }
            }
            Kind::File | Kind::Other => return Err(FsError::NotADirectory { path: next }),
        }
    }
    Ok(cur)
}

/// For reading the node's own configuration only: the physical path of a node
/// path, resolved the way `chroot(root)` would see it. Every symlink is
/// followed, an absolute target starts again at `root`, and `..` stops at
/// `root`, so the result never leaves it. Missing components are appended.
pub fn resolve_in_root(root: &Path, node_path: &Path) -> Result<PathBuf, FsError> {
    /// Linux's own limit on symlinks in one lookup.
    const MAX_FOLLOW: usize = 40;
    let mut pending: VecDeque<PathBuf> = node_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut parts: Vec<PathBuf> = Vec::new();
    let mut links = 0;
    let mut missing = false;
    while let Some(name) = pending.pop_front() {
        if name.as_os_str() == ".." {
            parts.pop();
            continue;
        }
        if missing {
            parts.push(name);
            continue;
        }
        let next: PathBuf = std::iter::once(root.to_path_buf())
            .chain(parts.iter().cloned())
            .chain(std::iter::once(name.clone()))
            .collect();
        match kind(&next)? {
            Kind::Symlink => {
                links += 1;
                if links > MAX_FOLLOW {
                    return Err(FsError::TooManyLinks { path: next });
                }
                let target = fs::read_link(&next).ctx("read symlink", &next)?;
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(PathBuf::from(n)),
                        Component::ParentDir => pending.push_front(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            Kind::Missing => {
                missing = true;
                parts.push(name);
            }
            _ => parts.push(name),
        }
    }
    Ok(std::iter::once(root.to_path_buf()).chain(parts).collect())
}

/// Reads a regular file; `None` if missing; refuses symlinks and anything else.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, FsError> {
    match kind(path)? {
        Kind::Missing => Ok(None),
        Kind::File => match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", path),
        },
        Kind::Symlink => Err(FsError::Symlink { path: path.into() }),
        Kind::Dir | Kind::Other => Err(FsError::NotAFile { path: path.into() }),
    }
}

/// The permission bits of a regular file.
pub fn mode(path: &Path) -> Result<u32, FsError> {
    Ok(fs::symlink_metadata(path)
        .ctx("inspect", path)?
        .permissions()
        .mode()
        & 0o7777)
}

/// fsync a directory so a create, rename or remove inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("sync directory", dir)
}

/// Creates one directory (its parent must exist) with [`DIR_MODE`], durably.
pub fn create_dir(path: &Path) -> Result<(), FsError> {
    fs::create_dir(path).ctx("create directory", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(DIR_MODE)).ctx("chmod", path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Replaces `dir/name` with `content` atomically: a temporary file beside it,
/// fsync, rename, fsync of the directory. A reader sees the old file or the new
/// one, never half of either. The rename replaces a symlink rather than
/// following it.
pub fn write_atomic(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<(), FsError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(
        "{}{}",
        temp_prefix(name),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create temporary file", &tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .ctx("chmod", &tmp)?;
        f.write_all(content).ctx("write", &tmp)?;
        f.sync_all().ctx("sync", &tmp)?;
        fs::rename(&tmp, &path).ctx("rename into place", &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temporary name [`write_atomic`] uses for `name`, before its unique suffix.
fn temp_prefix(name: &str) -> String {
    format!(".{name}.privreg-")
}

/// Removes temporaries [`write_atomic`] left for `names` in `dir` (a crash
/// between create and rename), so a directory privreg made can be removed.
pub fn remove_temp_files(dir: &Path, names: &[&str]) -> Result<(), FsError> {
    let prefixes: Vec<String> = names.iter().map(|n| temp_prefix(n)).collect();
    for entry in fs::read_dir(dir).ctx("list", dir)? {
        let entry = entry.ctx("list", dir)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            remove_file(&entry.path())?;
        }
    }
    Ok(())
}

/// Rewrites an existing regular file in place, keeping its inode, owner and
/// mode: for `/etc/hosts`, which is often a bind-mount target (a rename onto a
/// mount point fails with EBUSY) and watched by other tools. Not atomic; the
/// content is written whole before the length is cut, then fsynced.
pub fn write_in_place(path: &Path, content: &[u8]) -> Result<(), FsError> {
    if kind(path)? != Kind::File {
        return Err(FsError::NotAFile { path: path.into() });
    }
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .ctx("open for writing", path)?;
    f.write_all(content).ctx("write", path)?;
    f.set_len(content.len() as u64).ctx("truncate", path)?;
    f.sync_all().ctx("sync", path)
}

/// Removes a regular file (not a symlink's target); missing is fine.
pub fn remove_file(path: &Path) -> Result<bool, FsError> {
    match kind(path)? {
        Kind::Missing => Ok(false),
        Kind::File => match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx("remove", path),
        },
        Kind::Symlink => Err(FsError::Symlink { path: path.into() }),
        Kind::Dir | Kind::Other => Err(FsError::NotAFile { path: path.into() }),
    }
}

/// Removes an empty directory. `Ok(false)` when it is not empty (someone else's
/// files are in it) or already gone.
pub fn remove_empty_dir(path: &Path) -> Result<bool, FsError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(e) => Err(e).ctx("remove directory", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn base_resolution_follows_only_same_directory_links() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("var/snap/microk8s/7964/args")).unwrap();
        symlink("7964", r.join("var/snap/microk8s/current")).unwrap();
        assert_eq!(
            resolve_base(r, Path::new("var/snap/microk8s/current/args/certs.d")).unwrap(),
            r.join("var/snap/microk8s/7964/args/certs.d")
        );
        // A multi-component relative target is followed component by component.
        fs::create_dir_all(r.join("a/real/inner")).unwrap();
        symlink("real/inner", r.join("a/link")).unwrap();
        assert_eq!(
            resolve_base(r, Path::new("a/link/x")).unwrap(),
            r.join("a/real/inner/x")
        );

        symlink("/etc", r.join("abs")).unwrap();
        assert!(matches!(
            resolve_base(r, Path::new("abs/certs.d")),
            Err(FsError::SymlinkEscapes { .. })
        ));
        fs::create_dir_all(r.join("etc")).unwrap();
        symlink("../../outside", r.join("etc/containerd")).unwrap();
        assert!(matches!(
            resolve_base(r, Path::new("etc/containerd/certs.d")),
            Err(FsError::SymlinkEscapes { .. })
        ));
        symlink("loop", r.join("loop")).unwrap();
        assert!(matches!(
            resolve_base(r, Path::new("loop/x")),
            Err(FsError::TooManyLinks { .. })
        ));
        assert!(matches!(
            resolve_base(r, Path::new("/etc/x")),
            Err(FsError::NotRelative { .. })
        ));
        assert!(matches!(
            resolve_base(r, Path::new("etc/../x")),
            Err(FsError::NotRelative { .. })
        ));
    }

    #[test]
    fn reading_resolves_like_a_chroot() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("nix/store/abc")).unwrap();
        fs::create_dir_all(r.join("etc/containerd")).unwrap();
        // An absolute target starts again at the root, not at the real /.
        symlink(
            "/nix/store/abc/config.toml",
            r.join("etc/containerd/config.toml"),
        )
        .unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/etc/containerd/config.toml")).unwrap(),
            r.join("nix/store/abc/config.toml")
        );
        // `..` stops at the root.
        symlink("../../../../../../etc", r.join("nix/up")).unwrap();
        assert_eq!(
            resolve_in_root(r, Path::new("/nix/up/containerd")).unwrap(),
            r.join("etc/containerd")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/../../etc/x/../y")).unwrap(),
            r.join("etc/y")
        );
    }

    #[test]
    fn writes_are_atomic_with_the_mode_asked_and_refuse_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_atomic(d, "f", b"one", FILE_MODE).unwrap();
        assert_eq!(fs::read(d.join("f")).unwrap(), b"one");
        assert_eq!(mode(&d.join("f")).unwrap(), 0o644);
        // Only the target remains: no temporary file left behind.
        assert_eq!(fs::read_dir(d).unwrap().count(), 1);

        symlink("/etc/passwd", d.join("link")).unwrap();
        assert!(matches!(
            read_file(&d.join("link")),
            Err(FsError::Symlink { .. })
        ));
        assert!(matches!(
            remove_file(&d.join("link")),
            Err(FsError::Symlink { .. })
        ));
        assert!(matches!(
            write_in_place(&d.join("link"), b"x"),
            Err(FsError::NotAFile { .. })
        ));
        assert_eq!(read_file(&d.join("missing")).unwrap(), None);

        fs::write(d.join("hosts"), b"a long first version\n").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(d.join("hosts")).unwrap());
        write_in_place(&d.join("hosts"), b"short\n").unwrap();
        assert_eq!(fs::read(d.join("hosts")).unwrap(), b"short\n");
        let after = std::os::unix::fs::MetadataExt::ino(&fs::metadata(d.join("hosts")).unwrap());
        assert_eq!(ino, after);
    }
}
