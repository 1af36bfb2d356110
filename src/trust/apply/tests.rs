//! The writer against real directories (tempfile), through `trust::sync` as the
//! agent runs it.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::*;
use crate::trust::bundle::tests::entry;
use crate::trust::bundle::{Bundle, BundleEntry};
use crate::trust::render::Preset;
use crate::trust::{Outcome, SyncError, sync};

const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n10.0.0.5 db.lan\n";

/// A path under the root, with (content, mtime s, mtime ns, inode) for files.
type Snapshot = Vec<(PathBuf, Option<(Vec<u8>, i64, i64, u64)>)>;

struct Fixture {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    layout: Layout,
}

impl Fixture {
    fn new(preset: Preset) -> Self {
        let root = tempfile::tempdir().unwrap();
        for dir in ["etc/containerd", "etc/docker", "etc/containers"] {
            fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        fs::write(root.path().join("etc/hosts"), HOSTS).unwrap();
        Fixture {
            root,
            state: tempfile::tempdir().unwrap(),
            layout: preset.layout(),
        }
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.r().join(rel)
    }

    fn sync(&self, entries: &[BundleEntry]) -> Outcome {
        let json = serde_json::to_vec(&Bundle {
            registries: entries.to_vec(),
        })
        .unwrap();
        self.sync_json(&json).unwrap()
    }

    fn sync_json(&self, json: &[u8]) -> Result<Outcome, SyncError> {
        sync(self.r(), self.state.path(), &self.layout, json)
    }

    fn uninstall(&self) -> Report {
        uninstall(self.r(), self.state.path(), &self.layout).unwrap()
    }

    /// Every file and directory under the root (relative), with content and
    /// (mtime, inode) for files: a snapshot to prove nothing moved.
    fn snapshot(&self) -> Snapshot {
        fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let rel = p.strip_prefix(base).unwrap().to_owned();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    out.push((rel, None));
                    walk(base, &p, out);
                } else {
                    let content = fs::read(&p).unwrap_or_default();
                    out.push((rel, Some((content, m.mtime(), m.mtime_nsec(), m.ino()))));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.r(), self.r(), &mut out);
        out
    }
}

fn reg() -> BundleEntry {
    entry("tools/reg", "registry.internal", "10.96.0.20")
}

fn rel(paths: &[PathBuf]) -> Vec<String> {
    let mut v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.sort();
    v
}

#[test]
fn first_apply_writes_everything_and_the_second_nothing() {
    let f = Fixture::new(Preset::Containerd);
    let out = f.sync(&[reg()]);
    assert!(out.converged(), "{out:?}");
    assert_eq!(
        rel(&out.report.written),
        [
            "etc/containerd/certs.d/10.96.0.20:5000/ca.crt",
            "etc/containerd/certs.d/10.96.0.20:5000/hosts.toml",
            "etc/containerd/certs.d/registry.internal:5000/ca.crt",
            "etc/containerd/certs.d/registry.internal:5000/hosts.toml",
            "etc/containers/certs.d/10.96.0.20:5000/ca.crt",
            "etc/containers/certs.d/registry.internal:5000/ca.crt",
            "etc/docker/certs.d/10.96.0.20:5000/ca.crt",
            "etc/docker/certs.d/registry.internal:5000/ca.crt",
            "etc/hosts",
        ]
    );
    let hosts_toml =
        fs::read_to_string(f.path("etc/containerd/certs.d/registry.internal:5000/hosts.toml"))
            .unwrap();
    assert!(hosts_toml.contains("[host.\"https://10.96.0.20:5000\"]"));
    assert!(hosts_toml.contains("ca = \"/etc/containerd/certs.d/registry.internal:5000/ca.crt\""));
    let ca = f.path("etc/docker/certs.d/registry.internal:5000/ca.crt");
    assert_eq!(
        fs::metadata(&ca).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(
        fs::read_to_string(&ca)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    let marker: DirRecord = serde_json::from_slice(
        &fs::read(f.path("etc/docker/certs.d/registry.internal:5000/.privreg-managed")).unwrap(),
    )
    .unwrap();
    assert_eq!(marker.registry, "tools/reg");
    assert!(marker.created);
    assert_eq!(
        fs::read_to_string(f.path("etc/hosts")).unwrap(),
        format!(
            "{HOSTS}{}\n10.96.0.20 registry.internal\n{}\n",
            render::HOSTS_BEGIN,
            render::HOSTS_END
        )
    );
    let state = load_state(f.state.path()).unwrap();
    assert_eq!(state.dirs.len(), 6);
    assert_eq!(
        state.created_bases,
        [
            "etc/containerd/certs.d",
            "etc/containers/certs.d",
            "etc/docker/certs.d"
        ]
        .map(PathBuf::from)
        .into()
    );

    let before = f.snapshot();
    let state_before = fs::metadata(f.state.path().join(STATE_FILE)).unwrap();
    let again = f.sync(&[reg()]);
    assert!(again.converged());
    assert!(
        again.report.written.is_empty(),
        "{:?}",
        again.report.written
    );
    assert_eq!(again.report.unchanged.len(), 9);
    assert_eq!(f.snapshot(), before, "a converged node sees no write");
    let state_after = fs::metadata(f.state.path().join(STATE_FILE)).unwrap();
    assert_eq!(
        (state_before.ino(), state_before.mtime_nsec()),
        (state_after.ino(), state_after.mtime_nsec())
    );
}

#[test]
fn a_registry_that_goes_is_removed_and_others_stay() {
    let f = Fixture::new(Preset::Containerd);
    let other = entry("tools/other", "other.internal", "10.96.0.21");
    f.sync(&[reg(), other.clone()]);
    let out = f.sync(std::slice::from_ref(&other));
    assert!(out.converged(), "{out:?}");
    assert!(
        !f.path("etc/containerd/certs.d/registry.internal:5000")
            .exists()
    );
    assert!(!f.path("etc/docker/certs.d/10.96.0.20:5000").exists());
    assert!(
        f.path("etc/containerd/certs.d/other.internal:5000/hosts.toml")
            .exists()
    );
    assert!(
        rel(&out.report.removed)
            .contains(&"etc/containerd/certs.d/registry.internal:5000".to_owned())
    );
    let hosts = fs::read_to_string(f.path("etc/hosts")).unwrap();
    assert!(!hosts.contains("registry.internal") && hosts.contains("other.internal"));

    // Nothing left: the node is back to how it was, base directories included.
    let out = f.sync(&[]);
    assert!(out.converged());
    assert_eq!(fs::read_to_string(f.path("etc/hosts")).unwrap(), HOSTS);
    for base in [
        "etc/containerd/certs.d",
        "etc/docker/certs.d",
        "etc/containers/certs.d",
    ] {
        assert_eq!(fs::read_dir(f.path(base)).unwrap().count(), 0, "{base}");
    }
    let report = f.uninstall();
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert!(!f.path("etc/containerd/certs.d").exists());
    assert!(!f.state.path().join(STATE_FILE).exists());
}

#[test]
fn another_registrys_files_are_never_touched() {
    let f = Fixture::new(Preset::Containerd);
    let users = [
        (
            "etc/containerd/certs.d/docker.io/hosts.toml",
            "server = \"https://registry-1.docker.io\"\n",
        ),
        (
            "etc/containerd/certs.d/mirror.lan:5000/hosts.toml",
            "# mine\n",
        ),
        ("etc/containerd/certs.d/mirror.lan:5000/ca.crt", "my ca\n"),
        ("etc/docker/certs.d/mirror.lan:5000/ca.crt", "my ca\n"),
        ("etc/containerd/certs.d/stray-file", "x"),
    ];
    for (p, c) in users {
        fs::create_dir_all(f.path(p).parent().unwrap()).unwrap();
        fs::write(f.path(p), c).unwrap();
    }
    let before: Vec<_> = users
        .iter()
        .map(|(p, _)| {
            let m = fs::metadata(f.path(p)).unwrap();
            (fs::read(f.path(p)).unwrap(), m.mtime_nsec(), m.ino())
        })
        .collect();
    f.sync(&[reg()]);
    f.sync(&[]);
    f.uninstall();
    let after: Vec<_> = users
        .iter()
        .map(|(p, _)| {
            let m = fs::metadata(f.path(p)).unwrap();
            (fs::read(f.path(p)).unwrap(), m.mtime_nsec(), m.ino())
        })
        .collect();
    assert_eq!(before, after);
    assert!(
        !f.path("etc/containerd/certs.d/docker.io/.privreg-managed")
            .exists()
    );
    // The base existed (it held the user's files), so it stays.
    assert!(f.path("etc/containerd/certs.d").is_dir());
}

#[test]
fn a_users_directory_for_the_same_name_is_backed_up_and_restored_byte_for_byte() {
    let f = Fixture::new(Preset::Containerd);
    let dir = f.path("etc/containerd/certs.d/registry.internal:5000");
    fs::create_dir_all(&dir).unwrap();
    let original = b"# my own routing\r\nserver = \"https://registry.internal:5000\"\n\xff\n";
    fs::write(dir.join("hosts.toml"), original).unwrap();
    fs::set_permissions(dir.join("hosts.toml"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(dir.join("client.cert"), b"user client cert").unwrap();

    let out = f.sync(&[reg()]);
    assert!(out.converged(), "{out:?}");
    assert_eq!(
        rel(&out.report.backed_up),
        ["etc/containerd/certs.d/registry.internal:5000/hosts.toml"]
    );
    assert_eq!(
        fs::read(dir.join(".privreg-backup/hosts.toml")).unwrap(),
        original
    );
    assert!(
        fs::read_to_string(dir.join("hosts.toml"))
            .unwrap()
            .contains("Managed by privreg")
    );
    let marker: DirRecord = serde_json::from_slice(&fs::read(dir.join(MARKER)).unwrap()).unwrap();
    assert!(!marker.created);
    assert_eq!(marker.backups, ["hosts.toml".to_owned()].into());

    // A second pass does not back up privreg's own file over the original.
    let again = f.sync(&[reg()]);
    assert!(again.report.backed_up.is_empty());
    assert_eq!(
        fs::read(dir.join(".privreg-backup/hosts.toml")).unwrap(),
        original
    );

    // The entry goes: the original comes back with its mode; the directory and
    // the user's other file stay; privreg's ca.crt (new here) goes.
    let out = f.sync(&[]);
    assert!(out.converged(), "{out:?}");
    assert_eq!(
        rel(&out.report.restored),
        ["etc/containerd/certs.d/registry.internal:5000/hosts.toml"]
    );
    assert_eq!(fs::read(dir.join("hosts.toml")).unwrap(), original);
    assert_eq!(
        fs::metadata(dir.join("hosts.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let mut left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["client.cert", "hosts.toml"]);
}

#[test]
fn uninstall_restores_backups_and_removes_the_rest() {
    let f = Fixture::new(Preset::Containerd);
    let dir = f.path("etc/docker/certs.d/registry.internal:5000");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("ca.crt"), b"the user's old CA").unwrap();
    f.sync(&[reg()]);
    let report = f.uninstall();
    assert!(report.converged(), "{report:?}");
    assert_eq!(fs::read(dir.join("ca.crt")).unwrap(), b"the user's old CA");
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(f.path("etc/hosts")).unwrap(), HOSTS);
    assert!(!f.path("etc/containerd/certs.d").exists());
    assert!(f.path("etc/docker/certs.d").is_dir(), "it existed before");
    assert!(!f.state.path().join(STATE_FILE).exists());
}

#[test]
fn etc_hosts_is_edited_in_place_and_restored() {
    let f = Fixture::new(Preset::Containerd);
    let hosts = f.path("etc/hosts");
    let ino = fs::metadata(&hosts).unwrap().ino();
    f.sync(&[reg()]);
    assert_eq!(
        fs::metadata(&hosts).unwrap().ino(),
        ino,
        "same inode: edited in place"
    );
    // A user line added after privreg's block survives the next edits.
    let mut text = fs::read_to_string(&hosts).unwrap();
    text.push_str("192.168.1.9 nas\n");
    fs::write(&hosts, &text).unwrap();
    let mut no_hosts_line = reg();
    no_hosts_line.hosts_entry = None;
    f.sync(&[no_hosts_line]);
    assert_eq!(
        fs::read_to_string(&hosts).unwrap(),
        format!("{HOSTS}192.168.1.9 nas\n")
    );
    assert_eq!(fs::metadata(&hosts).unwrap().ino(), ino);

    // A half-written block is reported, not guessed at.
    fs::write(&hosts, format!("{HOSTS}{}\nx y\n", render::HOSTS_BEGIN)).unwrap();
    let out = f.sync(&[reg()]);
    assert!(!out.converged());
    assert!(out.report.skipped.iter().any(|s| matches!(
        s.reason,
        SkipReason::HostsFile(HostsFileError::Unterminated(4))
    )));
}

#[test]
fn a_bad_bundle_leaves_the_last_good_state() {
    let f = Fixture::new(Preset::Containerd);
    f.sync(&[reg()]);
    let before = f.snapshot();
    assert!(matches!(
        f.sync_json(b"{not json"),
        Err(SyncError::Bundle(_))
    ));
    assert_eq!(f.snapshot(), before);

    // The entry itself turns bad: its files and hosts line stay as they were.
    let mut bad = reg();
    bad.ca_pem = "garbage".into();
    let out = f.sync(&[bad]);
    assert!(!out.converged());
    assert_eq!(out.rejected.len(), 1);
    assert!(
        out.report
            .skipped
            .iter()
            .all(|s| matches!(s.reason, SkipReason::KeptForRejectedEntry))
    );
    assert_eq!(out.report.skipped.len(), 6);
    assert_eq!(f.snapshot(), before);

    // And the good entry is applied alongside another's refusal.
    let mut thief = entry("tools/thief", "registry.internal", "10.96.0.66");
    thief.hosts_entry = None;
    let out = f.sync(&[reg(), thief]);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].registry, "tools/thief");
    assert_eq!(f.snapshot(), before);
}

#[test]
fn symlinks_are_refused_not_followed() {
    let f = Fixture::new(Preset::Containerd);
    let outside = tempfile::tempdir().unwrap();
    fs::create_dir_all(f.path("etc/containerd/certs.d")).unwrap();
    symlink(
        outside.path(),
        f.path("etc/containerd/certs.d/registry.internal:5000"),
    )
    .unwrap();
    fs::create_dir_all(f.path("etc/docker/certs.d/registry.internal:5000")).unwrap();
    symlink(
        outside.path().join("ca"),
        f.path("etc/docker/certs.d/registry.internal:5000/ca.crt"),
    )
    .unwrap();
    let out = f.sync(&[reg()]);
    assert!(!out.converged());
    let refused: Vec<_> = out
        .report
        .skipped
        .iter()
        .filter(|s| matches!(s.reason, SkipReason::Fs(FsError::Symlink { .. })))
        .map(|s| s.path.display().to_string())
        .collect();
    assert_eq!(
        refused,
        [
            "etc/containerd/certs.d/registry.internal:5000",
            "etc/docker/certs.d/registry.internal:5000"
        ]
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);

    // A base that leaves the root is refused too.
    let f = Fixture::new(Preset::Containerd);
    fs::remove_dir(f.path("etc/docker")).unwrap();
    symlink(outside.path(), f.path("etc/docker")).unwrap();
    let out = f.sync(&[reg()]);
    assert!(
        out.report
            .skipped
            .iter()
            .any(|s| matches!(s.reason, SkipReason::Fs(FsError::SymlinkEscapes { .. })))
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn k3s_generated_directories_are_left_to_k3s() {
    let f = Fixture::new(Preset::K3s);
    let dir = f.path("var/lib/rancher/k3s/agent/etc/containerd/certs.d/registry.internal:5000");
    fs::create_dir_all(&dir).unwrap();
    let generated =
        "# File generated by k3s. DO NOT EDIT.\nserver = \"https://registry.internal:5000\"\n";
    fs::write(dir.join("hosts.toml"), generated).unwrap();
    let out = f.sync(&[reg()]);
    assert!(out.report.skipped.iter().any(|s| matches!(
        &s.reason,
        SkipReason::ManagedByOther(p) if p == "k3s"
    )));
    assert_eq!(
        fs::read_to_string(dir.join("hosts.toml")).unwrap(),
        generated
    );
    assert!(!dir.join(MARKER).exists());
    // The IP form is privreg's to write.
    assert!(
        f.path("var/lib/rancher/k3s/agent/etc/containerd/certs.d/10.96.0.20:5000/hosts.toml")
            .exists()
    );
}

#[test]
fn temporaries_left_by_a_crash_do_not_pin_a_directory() {
    let f = Fixture::new(Preset::Containerd);
    f.sync(&[reg()]);
    let dir = f.path("etc/docker/certs.d/registry.internal:5000");
    fs::write(dir.join(".ca.crt.privreg-0123abcd"), b"half").unwrap();
    let out = f.sync(&[]);
    assert!(out.converged(), "{out:?}");
    assert!(!dir.exists());
}

#[test]
fn a_lost_state_file_is_rebuilt_from_the_markers() {
    let f = Fixture::new(Preset::Containerd);
    f.sync(&[reg()]);
    fs::remove_file(f.state.path().join(STATE_FILE)).unwrap();
    let again = f.sync(&[reg()]);
    assert!(again.report.written.is_empty());
    assert!(
        again.report.backed_up.is_empty(),
        "its own files are not a user's"
    );
    f.sync(&[]);
    assert!(
        !f.path("etc/containerd/certs.d/registry.internal:5000")
            .exists()
    );
}

#[test]
fn an_absent_runtime_is_skipped_benignly() {
    let f = Fixture::new(Preset::Containerd);
    fs::remove_dir(f.path("etc/docker")).unwrap();
    let out = f.sync(&[reg()]);
    assert!(out.converged(), "{out:?}");
    assert!(out.report.skipped.iter().any(|s| matches!(
        &s.reason,
        SkipReason::RuntimeAbsent(p) if p == Path::new("etc/docker")
    )));
    assert!(!f.path("etc/docker").exists());
}

#[test]
fn microk8s_writes_through_current_and_ipv6_dirs_are_bracketed() {
    let f = Fixture::new(Preset::Microk8s);
    fs::create_dir_all(f.path("var/snap/microk8s/7964/args/certs.d")).unwrap();
    symlink("7964", f.path("var/snap/microk8s/current")).unwrap();
    let out = f.sync(&[entry("tools/reg", "registry.internal", "fd00::10")]);
    assert!(out.converged(), "{out:?}");
    let dir = f.path("var/snap/microk8s/7964/args/certs.d/[fd00::10]:5000");
    assert!(dir.join("hosts.toml").is_file());
    assert!(
        fs::read_to_string(dir.join("hosts.toml"))
            .unwrap()
            .contains("ca = \"/var/snap/microk8s/current/args/certs.d/[fd00::10]:5000/ca.crt\"")
    );
    assert!(
        fs::read_to_string(f.path("etc/hosts"))
            .unwrap()
            .contains("fd00::10 registry.internal\n")
    );
    // The state keeps the path as rendered, through `current`.
    let state = load_state(f.state.path()).unwrap();
    assert!(state.dirs.contains_key(Path::new(
        "var/snap/microk8s/current/args/certs.d/[fd00::10]:5000"
    )));
    f.sync(&[]);
    assert!(!dir.exists());
}

#[test]
fn a_corrupt_state_file_stops_before_touching_the_node() {
    let f = Fixture::new(Preset::Containerd);
    fs::write(f.state.path().join(STATE_FILE), b"{").unwrap();
    let before = f.snapshot();
    let err = f.sync_json(br#"{"registries": []}"#).unwrap_err();
    assert!(matches!(
        err,
        SyncError::Apply(ApplyError::ParseState { .. })
    ));
    assert_eq!(f.snapshot(), before);
}
