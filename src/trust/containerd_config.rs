//! Does the node's containerd read the certs.d the agent writes? The answer is
//! in containerd's config `config_path`, and it depends on the release line, so
//! this module computes it for each and says so when they disagree, rather than
//! reporting success it cannot know.
//!
//! What containerd does (read in containerd's source, `cmd/containerd/server/config/config.go`
//! and `plugins/cri/images/plugin.go`):
//!
//! - The config is `version = 1` (or absent: plugin short names, `[plugins.cri]`),
//!   `2` (`[plugins."io.containerd.grpc.v1.cri".registry] config_path`) or `3`
//!   (containerd 2.x: `[plugins."io.containerd.cri.v1.images".registry]
//!   config_path`). 2.x migrates a version-2 file's CRI `registry` table into the
//!   images plugin (`configMigration` / `migrateConfig`).
//! - `imports` are loaded after the file that names them, breadth first; a
//!   relative import is relative to that file's directory; one containing `*` is
//!   a `filepath.Glob` (`resolveImports`); a file is loaded once.
//! - containerd 1.x replaces a plugin's whole table with an import's (issue
//!   #5837); since 2.0 plugin tables merge key by key (PR #9982, commit a21e379b6).
//! - `config_path` is a `:`-separated list (the CRI resolver's
//!   `filepath.SplitList`). Empty means certs.d is not read by CRI pulls, except
//!   that from 2.2.0 on Linux an empty `config_path` with no legacy `mirrors`
//!   defaults to `/etc/containerd/certs.d:/etc/docker/certs.d` (commit 5386802f8,
//!   moved to plugin init in 1d77b68f0).

use std::collections::{BTreeSet, VecDeque};
use std::path::{Component, Path, PathBuf};

use crate::trust::nodefs::{self, FsError};
use crate::trust::render::Layout;

/// More config files than this (imports of imports) is refused as unreasonable.
const MAX_FILES: usize = 64;
/// containerd 2.2's `config_path` when none is set and no mirrors are.
pub const DEFAULT_CONFIG_PATH_2_2: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";

const CRI_V2: &str = "io.containerd.grpc.v1.cri";
const IMAGES_V3: &str = "io.containerd.cri.v1.images";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading containerd config {path} failed")]
    Read {
        path: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("containerd config {path} is not valid TOML (containerd would not start with it)")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("containerd config {path} is not UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("containerd config {path}: import {import:?} is not a valid glob pattern")]
    BadGlob { path: PathBuf, import: String },
    #[error(
        "containerd config {path} imports {import}, which does not exist (containerd would not start)"
    )]
    MissingImport { path: PathBuf, import: PathBuf },
    #[error("containerd config imports more than {MAX_FILES} files")]
    TooManyFiles,
}

/// Where a `config_path` value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The config file (node path) that set it last.
    File(PathBuf),
    /// containerd 2.2's built-in default.
    Default,
}

/// What one containerd release line makes of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// `config_path` lists the directory the agent writes: its files take effect.
    Included { config_path: String, from: Source },
    /// `config_path` is set but lists other directories.
    Excluded { config_path: String, from: Source },
    /// No `config_path`: CRI pulls ignore certs.d entirely.
    Unset,
}

impl Finding {
    pub fn included(&self) -> bool {
        matches!(self, Finding::Included { .. })
    }
}

/// The answer for the node, per release line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCheck {
    /// Node path of the directory the agent writes (`/etc/containerd/certs.d`).
    pub wanted: PathBuf,
    /// Config files read, node paths, in containerd's load order. Empty when the
    /// config file does not exist: containerd then runs on built-in defaults.
    pub files: Vec<PathBuf>,
    /// containerd 1.x; `None` when the root config is version 3, which 1.x
    /// refuses to load.
    pub v1: Option<Finding>,
    /// containerd 2.0 and 2.1.
    pub v2_0: Finding,
    /// containerd 2.2 and later.
    pub v2_2: Finding,
}

/// The one-word summary readiness can rest on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every release line reads the agent's certs.d.
    Effective,
    /// None does: the files are written but containerd ignores them.
    NotEffective,
    /// It depends on the containerd version, which the agent cannot see.
    DependsOnVersion,
}

impl ConfigCheck {
    pub fn verdict(&self) -> Verdict {
        let all: Vec<bool> = self
            .v1
            .iter()
            .chain([&self.v2_0, &self.v2_2])
            .map(Finding::included)
            .collect();
        if all.iter().all(|b| *b) {
            Verdict::Effective
        } else if all.iter().all(|b| !*b) {
            Verdict::NotEffective
        } else {
            Verdict::DependsOnVersion
        }
    }
}

/// One parsed config file, reduced to what matters here.
struct FileView {
    path: PathBuf,
    version: i64,
    /// The CRI plugin table as 1.x sees it (`cri` or its full name).
    cri_v1: Option<toml::Table>,
    /// The images plugin's `registry` table as 2.x sees it, after migration.
    registry_v2: Option<toml::Table>,
    imports: Vec<String>,
}

/// Reads the layout's containerd config (and its imports) under `root` and
/// reports whether `config_path` includes the layout's containerd certs.d.
pub fn check(root: &Path, layout: &Layout) -> Result<ConfigCheck, ConfigError> {
    let main = Path::new("/").join(&layout.containerd_config);
    let wanted = Path::new("/").join(&layout.containerd_certs_d);
    let files = load(root, &main)?;

    let included = |config_path: &str, from: Source| {
        if lists(root, config_path, &wanted) {
            Finding::Included {
                config_path: config_path.to_owned(),
                from,
            }
        } else {
            Finding::Excluded {
                config_path: config_path.to_owned(),
                from,
            }
        }
    };

    let root_version = files.first().map(|f| f.version).unwrap_or(1);

    // 1.x: the last file with a CRI table wins, whole.
    let v1 = (root_version < 3).then(|| {
        let last = files
            .iter()
            .rev()
            .find_map(|f| f.cri_v1.as_ref().map(|t| (f, t)));
        match last.and_then(|(f, t)| {
            let path = t.get("registry")?.get("config_path")?.as_str()?;
            Some((f, path))
        }) {
            Some((f, path)) if !path.is_empty() => included(path, Source::File(f.path.clone())),
            _ => Finding::Unset,
        }
    });

    // 2.x: tables merge; the last file that sets config_path wins.
    let set = files.iter().rev().find_map(|f| {
        let path = f.registry_v2.as_ref()?.get("config_path")?.as_str()?;
        Some((f, path))
    });
    let mirrors = files.iter().any(|f| {
        f.registry_v2
            .as_ref()
            .and_then(|r| r.get("mirrors"))
            .and_then(|m| m.as_table())
            .is_some_and(|m| !m.is_empty())
    });
    let (v2_0, v2_2) = match set {
        Some((f, path)) if !path.is_empty() => {
            let found = included(path, Source::File(f.path.clone()));
            (found.clone(), found)
        }
        _ if mirrors => (Finding::Unset, Finding::Unset),
        _ => (
            Finding::Unset,
            included(DEFAULT_CONFIG_PATH_2_2, Source::Default),
        ),
    };

    Ok(ConfigCheck {
        wanted,
        files: files.into_iter().map(|f| f.path).collect(),
        v1,
        v2_0,
        v2_2,
    })
}

/// Whether the `:`-separated `config_path` lists `wanted`, comparing clean paths
/// and, failing that, where each resolves on the node (microk8s writes the
/// revision directory where the agent writes `current`).
fn lists(root: &Path, config_path: &str, wanted: &Path) -> bool {
    let wanted_clean = clean(wanted);
    let wanted_phys = nodefs::resolve_in_root(root, wanted).ok();
    config_path.split(':').filter(|p| !p.is_empty()).any(|p| {
        let p = Path::new(p);
        clean(p) == wanted_clean
            || (wanted_phys.is_some() && nodefs::resolve_in_root(root, p).ok() == wanted_phys)
    })
}

/// Lexical cleaning, like Go's `filepath.Clean` for absolute paths.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Loads the main config and its imports in containerd's order.
fn load(root: &Path, main: &Path) -> Result<Vec<FileView>, ConfigError> {
    let mut out = Vec::new();
    let mut loaded = BTreeSet::new();
    // (file, the file that imports it)
    let mut pending = VecDeque::from([(main.to_path_buf(), None::<PathBuf>)]);
    while let Some((path, importer)) = pending.pop_front() {
        if !loaded.insert(path.clone()) {
            continue;
        }
        if loaded.len() > MAX_FILES {
            return Err(ConfigError::TooManyFiles);
        }
        let Some(view) = read_view(root, &path)? else {
            return match importer {
                None => Ok(Vec::new()),
                Some(importer) => Err(ConfigError::MissingImport {
                    path: importer,
                    import: path,
                }),
            };
        };
        for import in &view.imports {
            for p in resolve_import(root, &path, import)? {
                pending.push_back((p, Some(path.clone())));
            }
        }
        out.push(view);
    }
    Ok(out)
}

fn read_view(root: &Path, path: &Path) -> Result<Option<FileView>, ConfigError> {
    let phys = nodefs::resolve_in_root(root, path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let Some(bytes) = nodefs::read_file(&phys).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 { path: path.into() })?;
    let table: toml::Table = toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })?;
    let version = table
        .get("version")
        .and_then(|v| v.as_integer())
        .filter(|v| *v > 0)
        .unwrap_or(1);
    let imports = table
        .get("imports")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let plugins = table.get("plugins").and_then(|p| p.as_table());
    let plugin = |name: &str| {
        plugins
            .and_then(|p| p.get(name))
            .and_then(|t| t.as_table())
            .cloned()
    };
    // Version 1 names the CRI plugin `cri` (containerd's v1MigratePluginName).
    let cri_v1 = plugin(CRI_V2).or_else(|| if version == 1 { plugin("cri") } else { None });
    let registry_v2 = if version >= 3 {
        plugin(IMAGES_V3)
    } else {
        cri_v1.clone()
    }
    .and_then(|t| t.get("registry").and_then(|r| r.as_table()).cloned());
    Ok(Some(FileView {
        path: path.into(),
        version,
        cri_v1,
        registry_v2,
        imports,
    }))
}

/// containerd's `resolveImports`: clean, relative to the importing file's
/// directory, globbed only when it contains `*`.
fn resolve_import(root: &Path, parent: &Path, import: &str) -> Result<Vec<PathBuf>, ConfigError> {
    let path = Path::new(import);
    let path = if path.is_absolute() {
        clean(path)
    } else {
        clean(&parent.parent().unwrap_or(Path::new("/")).join(path))
    };
    if !import.contains('*') {
        return Ok(vec![path]);
    }
    let bad = || ConfigError::BadGlob {
        path: parent.into(),
        import: import.to_owned(),
    };
    let mut matches = vec![PathBuf::from("/")];
    for c in path.components() {
        let Component::Normal(name) = c else { continue };
        let name = name.to_str().ok_or_else(bad)?;
        let mut next = Vec::new();
        for dir in &matches {
            if !name.contains(['*', '?', '[', '\\']) {
                next.push(dir.join(name));
                continue;
            }
            let Ok(phys) = nodefs::resolve_in_root(root, dir) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&phys) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            names.sort();
            for n in names {
                if glob_match(name, &n).ok_or_else(bad)? {
                    next.push(dir.join(n));
                }
            }
        }
        matches = next;
    }
    // Like filepath.Glob, only what exists.
    Ok(matches
        .into_iter()
        .filter(|p| {
            nodefs::resolve_in_root(root, p)
                .ok()
                .is_some_and(|phys| std::fs::metadata(phys).is_ok())
        })
        .collect())
}

/// Go's `filepath.Match` for one path component: `*`, `?`, `[...]` with ranges
/// and `^` negation, `\` escapes. `None` for a malformed pattern.
fn glob_match(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn class(p: &[char], mut i: usize, c: char) -> Option<(bool, usize)> {
        // p[i] is just after '['.
        let negate = p.get(i) == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let &ch = p.get(i)?;
            if ch == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            let lo = if ch == '\\' {
                i += 1;
                *p.get(i)?
            } else {
                ch
            };
            i += 1;
            let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|c| *c != ']') {
                i += 1;
                let h = if p.get(i) == Some(&'\\') {
                    i += 1;
                    *p.get(i)?
                } else {
                    *p.get(i)?
                };
                i += 1;
                h
            } else {
                lo
            };
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    fn go(p: &[char], pi: usize, n: &[char], ni: usize) -> Option<bool> {
        if pi == p.len() {
            return Some(ni == n.len());
        }
        match p[pi] {
            '*' => {
                for k in ni..=n.len() {
                    if go(p, pi + 1, n, k)? {
                        return Some(true);
                    }
                }
                Some(false)
            }
            '?' => Some(ni < n.len() && go(p, pi + 1, n, ni + 1)?),
            '[' => {
                let Some(&c) = n.get(ni) else {
                    // Still validate the pattern.
                    class(p, pi + 1, '\0')?;
                    return Some(false);
                };
                let (ok, next) = class(p, pi + 1, c)?;
                Some(ok && go(p, next, n, ni + 1)?)
            }
            '\\' => {
                let &lit = p.get(pi + 1)?;
                Some(n.get(ni) == Some(&lit) && go(p, pi + 2, n, ni + 1)?)
            }
            lit => Some(n.get(ni) == Some(&lit) && go(p, pi + 1, n, ni + 1)?),
        }
    }
    go(&p, 0, &n, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::render::Preset;
    use std::fs;

    fn node(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = root.path().join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        root
    }

    fn check_containerd(root: &tempfile::TempDir) -> ConfigCheck {
        check(root.path(), &Preset::Containerd.layout()).unwrap()
    }

    fn file(path: &str) -> Source {
        Source::File(path.into())
    }

    #[test]
    fn version_2_with_config_path() {
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
        )]);
        let c = check_containerd(&root);
        let found = Finding::Included {
            config_path: "/etc/containerd/certs.d".into(),
            from: file("/etc/containerd/config.toml"),
        };
        assert_eq!(c.v1, Some(found.clone()));
        assert_eq!(c.v2_0, found);
        assert_eq!(c.v2_2, found);
        assert_eq!(c.verdict(), Verdict::Effective);
        assert_eq!(c.files, [PathBuf::from("/etc/containerd/config.toml")]);
        assert_eq!(c.wanted, PathBuf::from("/etc/containerd/certs.d"));
    }

    #[test]
    fn version_3_with_a_list_of_paths() {
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/docker/certs.d:/etc/containerd/certs.d/'\n",
        )]);
        let c = check_containerd(&root);
        assert_eq!(c.v1, None, "1.x cannot load version 3");
        assert!(c.v2_0.included() && c.v2_2.included());
        assert_eq!(c.verdict(), Verdict::Effective);
    }

    #[test]
    fn config_path_elsewhere_is_excluded() {
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/other/certs.d\"\n",
        )]);
        let c = check_containerd(&root);
        assert_eq!(
            c.v2_0,
            Finding::Excluded {
                config_path: "/etc/other/certs.d".into(),
                from: file("/etc/containerd/config.toml")
            }
        );
        assert_eq!(c.verdict(), Verdict::NotEffective);
    }

    #[test]
    fn unset_config_path_depends_on_the_release() {
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n",
        )]);
        let c = check_containerd(&root);
        assert_eq!(c.v1, Some(Finding::Unset));
        assert_eq!(c.v2_0, Finding::Unset);
        assert_eq!(
            c.v2_2,
            Finding::Included {
                config_path: DEFAULT_CONFIG_PATH_2_2.into(),
                from: Source::Default
            }
        );
        assert_eq!(c.verdict(), Verdict::DependsOnVersion);

        // Legacy mirrors switch 2.2's default off.
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n",
        )]);
        assert_eq!(check_containerd(&root).verdict(), Verdict::NotEffective);

        // The k3s/rke2 paths are never in 2.2's default.
        let root = node(&[(
            "/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
            "version = 3\n",
        )]);
        let c = check(root.path(), &Preset::K3s.layout()).unwrap();
        assert!(matches!(c.v2_2, Finding::Excluded { .. }));
        assert_eq!(c.verdict(), Verdict::NotEffective);
    }

    #[test]
    fn version_1_short_names() {
        let root = node(&[(
            "/etc/containerd/config.toml",
            "[plugins.cri.registry]\nconfig_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n",
        )]);
        assert_eq!(check_containerd(&root).verdict(), Verdict::Effective);
    }

    #[test]
    fn imports_are_followed_with_globs_relative_to_the_file() {
        let root = node(&[
            (
                "/etc/containerd/config.toml",
                "version = 2\nimports = [\"conf.d/*.toml\", \"/etc/extra.toml\"]\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n",
            ),
            (
                "/etc/containerd/conf.d/10-cni.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/opt/cni/bin\"\n",
            ),
            (
                "/etc/containerd/conf.d/20-registry.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
            ),
            ("/etc/containerd/conf.d/ignored.conf", "not toml ["),
            ("/etc/extra.toml", "version = 2\n"),
        ]);
        let c = check_containerd(&root);
        assert_eq!(
            c.files,
            [
                "/etc/containerd/config.toml",
                "/etc/containerd/conf.d/10-cni.toml",
                "/etc/containerd/conf.d/20-registry.toml",
                "/etc/extra.toml"
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            c.v2_0,
            Finding::Included {
                config_path: "/etc/containerd/certs.d".into(),
                from: file("/etc/containerd/conf.d/20-registry.toml")
            }
        );
        assert_eq!(c.v2_0, c.v1.clone().unwrap());

        // In 1.x a later import's CRI table replaces the whole table, so a
        // registry-less drop-in after the registry one loses config_path.
        fs::write(
            root.path().join("etc/containerd/conf.d/30-runtime.toml"),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n",
        )
        .unwrap();
        let c = check_containerd(&root);
        assert_eq!(c.v1, Some(Finding::Unset));
        assert!(c.v2_0.included());
        assert_eq!(c.verdict(), Verdict::DependsOnVersion);
    }

    #[test]
    fn version_2_imports_under_a_version_3_root_are_migrated() {
        let root = node(&[
            (
                "/etc/containerd/config.toml",
                "version = 3\nimports = ['/etc/containerd/conf.d/*.toml']\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/elsewhere'\n",
            ),
            (
                "/etc/containerd/conf.d/old.toml",
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
            ),
        ]);
        let c = check_containerd(&root);
        assert_eq!(c.v1, None);
        assert_eq!(c.verdict(), Verdict::Effective);
    }

    #[test]
    fn missing_files_and_bad_toml_are_typed() {
        let root = node(&[]);
        let c = check_containerd(&root);
        assert!(c.files.is_empty());
        assert_eq!(c.v1, Some(Finding::Unset));
        assert_eq!(c.verdict(), Verdict::DependsOnVersion);

        let root = node(&[("/etc/containerd/config.toml", "version = [")]);
        assert!(matches!(
            check(root.path(), &Preset::Containerd.layout()),
            Err(ConfigError::Parse { .. })
        ));
        let root = node(&[(
            "/etc/containerd/config.toml",
            "version = 2\nimports = [\"/etc/containerd/missing.toml\"]\n",
        )]);
        assert!(matches!(
            check(root.path(), &Preset::Containerd.layout()),
            Err(ConfigError::MissingImport { .. })
        ));
        // An import cycle is loaded once, as containerd does.
        let root = node(&[
            (
                "/etc/containerd/config.toml",
                "version = 2\nimports = [\"a.toml\"]\n",
            ),
            (
                "/etc/containerd/a.toml",
                "version = 2\nimports = [\"config.toml\"]\n",
            ),
        ]);
        assert_eq!(check_containerd(&root).files.len(), 2);
    }

    #[test]
    fn microk8s_revision_path_matches_current() {
        let root = node(&[(
            "/var/snap/microk8s/7964/args/containerd.toml",
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/var/snap/microk8s/7964/args/certs.d\"\n",
        )]);
        fs::create_dir_all(root.path().join("var/snap/microk8s/7964/args/certs.d")).unwrap();
        std::os::unix::fs::symlink("7964", root.path().join("var/snap/microk8s/current")).unwrap();
        let c = check(root.path(), &Preset::Microk8s.layout()).unwrap();
        assert_eq!(c.verdict(), Verdict::Effective);
    }

    #[test]
    fn go_glob_semantics() {
        assert_eq!(glob_match("*.toml", "a.toml"), Some(true));
        assert_eq!(glob_match("*.toml", "a.conf"), Some(false));
        assert_eq!(glob_match("?.toml", "ab.toml"), Some(false));
        assert_eq!(glob_match("[a-c]*", "b1"), Some(true));
        assert_eq!(glob_match("[^a-c]*", "b1"), Some(false));
        assert_eq!(glob_match("\\*", "*"), Some(true));
        assert_eq!(glob_match("[a-", "a"), None);
        assert_eq!(glob_match("*", ""), Some(true));
    }
}
