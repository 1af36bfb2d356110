//! Looking at a data directory from the outside: every file, every blob, and the
//! invariants a crash must not break.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `<data>/docker/registry/v2`
pub fn v2(data: &Path) -> PathBuf {
    data.join("docker").join("registry").join("v2")
}

/// Every regular file under `root` (relative path -> content); absent root:
/// empty. The registry's write-ahead journal is left out: its records say
/// what the other files already show.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if !is_journal(&e.path()) {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

/// The registry's write-ahead journal (`<data>/.privreg-journal.*`).
fn is_journal(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".privreg-journal."))
}

/// The path of blob `digest`'s `data` file.
pub fn blob_path(data: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap();
    v2(data)
        .join("blobs")
        .join(alg)
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

/// Every `blobs/<alg>/<2>/<hex>/data` file, as (digest, path).
pub fn blob_files(data: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let blobs = v2(data).join("blobs");
    for alg in dir_names(&blobs) {
        for two in dir_names(&blobs.join(&alg)) {
            for hex in dir_names(&blobs.join(&alg).join(&two)) {
                let p = blobs.join(&alg).join(&two).join(&hex).join("data");
                if p.is_file() {
                    out.push((format!("{alg}:{hex}"), p));
                }
            }
        }
    }
    out
}

fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        // Temporaries (a write or a directory being built, cut off by a
        // kill): outside every name grammar, never read by the registry.
        .filter(|name| !name.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Digest of `bytes` in the algorithm of `like` (`sha256:…` or `sha512:…`).
pub fn digest_like(like: &str, bytes: &[u8]) -> String {
    if like.starts_with("sha512:") {
        super::oci::sha512(bytes)
    } else {
        super::sha256(bytes)
    }
}

/// Panics unless every blob `data` file hashes to its directory name, and every
/// link in every repository names a blob that is there. Returns the blob count.
pub fn assert_consistent(data: &Path) -> usize {
    let blobs = blob_files(data);
    for (digest, path) in &blobs {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &digest_like(digest, &bytes),
            digest,
            "partial or corrupt blob file {} ({} bytes)",
            path.display(),
            bytes.len()
        );
    }
    let repos = v2(data).join("repositories");
    for (rel, content) in files(&repos) {
        if !rel.ends_with("/link")
            || rel.contains("/_uploads/")
            || rel.split('/').any(|part| part.starts_with('.'))
        {
            continue;
        }
        let target = String::from_utf8(content).unwrap();
        assert!(
            blob_path(data, target.trim()).is_file(),
            "link {rel} names {target}, which has no blob data"
        );
        if let Some((_, rest)) = rel.split_once("/_manifests/tags/")
            && rest.ends_with("/current/link")
        {
            // A tag is written after its manifest's revision link.
            let repo = rel.split("/_manifests/").next().unwrap();
            let (alg, hex) = target.trim().split_once(':').unwrap();
            let revision = repos
                .join(repo)
                .join("_manifests/revisions")
                .join(alg)
                .join(hex)
                .join("link");
            assert!(
                revision.is_file(),
                "tag {rel} points to {target} without a revision link"
            );
        }
    }
    blobs.len()
}

/// The upload session directories under every repository.
pub fn upload_dirs(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![v2(data).join("repositories")];
    while let Some(dir) = stack.pop() {
        for name in dir_names(&dir) {
            let p = dir.join(&name);
            if name == "_uploads" {
                out.extend(dir_names(&p).into_iter().map(|id| p.join(id)));
            } else {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every path (directories too) under `root`, relative; the journal left out.
pub fn paths(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            if is_journal(&e.path()) {
                continue;
            }
            out.insert(e.path().strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}
