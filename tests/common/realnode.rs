//! A real single-node Kubernetes on this machine, owned by the test harness:
//! the control plane (tests/common/cluster.rs), containerd 1.6 (Debian) with the
//! CRI plugin, runc, the CNI bridge, kubelet and kube-proxy, all Kubernetes
//! binaries built by `scripts/k8s-tools.sh`.
//!
//! Isolation, so nothing on the host changes while it runs:
//! - **Network**: everything lives in the network namespace `privreg-node`
//!   (lo + a veth pair whose both ends stay inside, node IP 10.200.0.1, no
//!   default route). The test thread enters it with `setns` (thread-local), so
//!   the control plane, the tests' clients and every tool they spawn live there;
//!   the host's interfaces, routes and iptables are never touched.
//! - **Files**: containerd, kubelet and kube-proxy run in one private mount
//!   namespace where `/etc`, `/var/lib` and `/var/log` are overlays whose upper
//!   layers are this rig's directories, and `/run/containerd` a tmpfs. The node
//!   has its own `/etc/hosts`, `/etc/containerd/config.toml` and certs.d
//!   (exactly the paths the trust DaemonSet mounts, as on any node); what the
//!   node changed in `/etc` is visible in [`RealNode::node_etc_changes`]; the
//!   paths kubelet and libcni write outside their roots land in the overlays.
//!   One namespace for all three (not `ip netns exec` per daemon, which also
//!   remounts /sys and separates mounts: TESTRIG / the realnode reference).
//! - What stays global and is put back: the cgroups kubelet creates (kubepods,
//!   k8s.io) and the sysctls it sets (vm.overcommit_memory, kernel.panic*).
//!
//! Obstacles of this machine (each found by the shell reference, see its
//! README): CAP_SYS_RESOURCE is not in the bounding set, so runc cannot lower
//! oom_score_adj (containerd `restrict_oom_score_adj`, kubelet and kube-proxy
//! `oomScoreAdj: 0`); cgroup v1 (cgroupfs driver); no dummy interface module
//! (the node IP sits on a veth); unix socket paths of at most 107 bytes.
//!
//! One rig per machine (the netns name, cgroups and the host's /run/containerd
//! are global): a lock file makes a second copy refuse to start. A previous
//! run that was killed is cleaned up first. Dropping the rig stops everything
//! by PID, kills whatever is left in the namespace and deletes it, unmounts,
//! removes the cgroups and restores the sysctls; `PRIVREG_KEEP_NODE=1` keeps
//! the logs in `/tmp/privreg-node/logs` (they are kept on failure anyway).
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::cluster::{Binaries, ControlPlane};
use super::daemons::stop_child;
use super::{tool, tools_required};

pub const NETNS: &str = "privreg-node";
pub const NODE_NAME: &str = "privreg-node";
pub const NODE_IP: &str = "10.200.0.1";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// Fixed (one rig per machine) and short: unix sockets live below it.
pub const DIR: &str = "/tmp/privreg-node";
const LOCK: &str = "/run/lock/privreg-node.lock";
/// The pod sandbox image, made here (see [`pause_binary`]).
pub const PAUSE_IMAGE: &str = "privreg.test/pause:1";
/// Global tunables kubelet sets; saved before and restored after.
const SYSCTLS: [&str; 4] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
];

/// The node's programs.
#[derive(Clone, Debug)]
pub struct NodeBinaries {
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub kubectl: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub runc: PathBuf,
}

impl NodeBinaries {
    /// Every binary, or None (SKIPPED) outside CI; in CI a missing one panics.
    pub fn find() -> Option<NodeBinaries> {
        let k8s = |name: &str, var: &str| -> Option<PathBuf> {
            match super::cluster::k8s_tool(name, super::cluster::kubernetes_version(), var) {
                Ok(p) => Some(p),
                Err(e) if tools_required() => panic!("{e}; scripts/k8s-tools.sh builds it"),
                Err(e) => {
                    eprintln!("SKIPPED: {e}; run scripts/k8s-tools.sh");
                    None
                }
            }
        };
        Some(NodeBinaries {
            kubelet: k8s("kubelet", "PRIVREG_KUBELET")?,
            kube_proxy: k8s("kube-proxy", "PRIVREG_KUBE_PROXY")?,
            kubectl: k8s("kubectl", "PRIVREG_KUBECTL")?,
            containerd: tool("containerd", "PRIVREG_CONTAINERD")?,
            ctr: tool("ctr", "PRIVREG_CTR")?,
            runc: tool("runc", "PRIVREG_RUNC")?,
        })
    }
}

/// How long each phase of [`RealNode::start`] took.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStartTimes {
    pub namespaces: Duration,
    pub control_plane: Duration,
    pub containerd: Duration,
    pub node_ready: Duration,
    pub total: Duration,
}

struct NodeDaemon {
    name: &'static str,
    child: Child,
}

pub struct RealNode {
    pub cp: ControlPlane,
    pub bins: NodeBinaries,
    pub dir: PathBuf,
    pub times: NodeStartTimes,
    daemons: Vec<NodeDaemon>,
    teardown: Teardown,
}

/// What [`RealNode`] changed on the host, undone on drop (also when start
/// fails half way).
struct Teardown {
    _lock: File,
    host_netns: File,
    sysctls: Vec<(String, String)>,
    made_run_containerd: bool,
    keep_logs: bool,
}

fn dir() -> PathBuf {
    PathBuf::from(DIR)
}

fn mount_ns_file() -> PathBuf {
    dir().join("mnt.ns")
}

/// `nsenter --mount=<the node's mount namespace> -- program`: a command that
/// sees the node's files. The network namespace is inherited from the calling
/// thread (the test thread is inside the node's).
pub fn in_node(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--mount={}", mount_ns_file().display()))
        .arg("--")
        .arg(program);
    c
}

fn sh(script: &str) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    if !out.status.success() {
        panic!(
            "`{script}` failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn sh_quiet(script: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) {
    let ns = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

impl RealNode {
    /// Starts the node; None (SKIPPED) when a binary is missing outside CI.
    /// Must run on a current-thread runtime: the thread that calls it is moved
    /// into the node's network namespace, and everything the test does from
    /// then on (clients, spawned tools) happens there.
    pub async fn start(images: &[&Path]) -> Option<RealNode> {
        let cp_bins = Binaries::find()?;
        let bins = NodeBinaries::find()?;
        if !Path::new("/usr/lib/cni/bridge").is_file() {
            if tools_required() {
                panic!("/usr/lib/cni/bridge is required (Debian containernetworking-plugins)");
            }
            eprintln!("SKIPPED: no CNI plugins (Debian containernetworking-plugins)");
            return None;
        }
        let t0 = Instant::now();
        let mut times = NodeStartTimes::default();
        let lock = take_lock();
        clean_stale();
        let host_netns = File::open("/proc/thread-self/ns/net").expect("own netns");
        let made_run_containerd = !Path::new("/run/containerd").exists();
        let mut teardown = Teardown {
            _lock: lock,
            host_netns,
            sysctls: Vec::new(),
            made_run_containerd,
            keep_logs: std::env::var_os("PRIVREG_KEEP_NODE").is_some(),
        };
        for s in SYSCTLS {
            let v = std::fs::read_to_string(format!("/proc/sys/{}", s.replace('.', "/")))
                .unwrap_or_default();
            teardown.sysctls.push((s.to_owned(), v.trim().to_owned()));
        }
        // From here on a panic unwinds through `teardown`'s Drop.
        make_namespaces(&mut teardown);
        times.namespaces = t0.elapsed();

        let t = Instant::now();
        let mut cp = ControlPlane::start_for_node(cp_bins, SERVICE_CIDR, NODE_IP).await;
        cp.start_scheduler().await;
        times.control_plane = t.elapsed();

        let mut node = RealNode {
            cp,
            bins,
            dir: dir(),
            times,
            daemons: Vec::new(),
            teardown,
        };
        let t = Instant::now();
        node.start_containerd();
        let pause = pause_image_archive(&node.dir.join("images"));
        node.import_image(&pause);
        for image in images {
            node.import_image(image);
        }
        node.times.containerd = t.elapsed();

        let t = Instant::now();
        node.start_kubelet_and_proxy();
        node.wait_node_ready().await;
        node.times.node_ready = t.elapsed();
        node.times.total = t0.elapsed();
        eprintln!(
            "real node {NODE_NAME} ready in {:.1?} (namespaces {:.1?}, control plane {:.1?}, \
             containerd + images {:.1?}, kubelet to Ready {:.1?})",
            node.times.total,
            node.times.namespaces,
            node.times.control_plane,
            node.times.containerd,
            node.times.node_ready
        );
        Some(node)
    }

    pub async fn client(&self) -> kube::Client {
        self.cp.client().await
    }

    /// `kubectl --kubeconfig <admin>` with the node's kubectl.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.bins.kubectl);
        c.arg("--kubeconfig").arg(self.cp.kubeconfig_path());
        c
    }

    pub fn kubeconfig(&self) -> &Path {
        self.cp.kubeconfig_path()
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new(&self.bins.ctr);
        c.arg("--address")
            .arg(self.dir.join("containerd/containerd.sock"))
            .args(["--namespace", "k8s.io"]);
        c
    }

    /// Imports an image archive (OCI or docker) into the CRI's namespace.
    pub fn import_image(&self, archive: &Path) {
        let out = self
            .ctr()
            .args(["images", "import", "--all-platforms"])
            .arg(archive)
            .output()
            .expect("ctr import");
        assert!(
            out.status.success(),
            "ctr images import {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A local PersistentVolume of StorageClass `local` (the default class the
    /// rig makes) at `<dir>/volumes/<name>`, owned by `uid` as a cluster admin
    /// prepares a local volume for a non-root workload.
    pub async fn provide_volume(&self, name: &str, size: &str, uid: u32) {
        self.provide(name, size, uid, "local").await
    }

    /// A hostPath PersistentVolume of StorageClass `local`, left owned by root
    /// as hostPath directories are: fsGroup does not apply to it.
    pub async fn provide_host_path_volume(&self, name: &str, size: &str) {
        self.provide(name, size, 0, "hostPath").await
    }

    /// The directory of a volume made by [`RealNode::provide_volume`].
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }

    async fn provide(&self, name: &str, size: &str, uid: u32, source: &str) {
        use k8s_openapi::api::core::v1::PersistentVolume;
        let path = self.dir.join("volumes").join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(uid), Some(uid)).unwrap();
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "local",
                source: {"path": path.display().to_string()},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}
                ]}]}},
            }
        }))
        .unwrap();
        let api: kube::Api<PersistentVolume> = kube::Api::all(self.client().await);
        api.create(&Default::default(), &pv)
            .await
            .expect("create PersistentVolume");
    }

    /// Files the node added or changed under `/etc/<sub>` since it started
    /// (the overlay's upper layer; whiteouts of deleted files included), as
    /// paths relative to `/etc`.
    pub fn node_etc_changes(&self, sub: &str) -> Vec<String> {
        let upper = self.dir.join("overlay/etc/upper");
        let base = upper.join(sub);
        let mut found = Vec::new();
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p.clone());
                }
                found.push(p.strip_prefix(&upper).unwrap().display().to_string());
            }
        }
        found.sort();
        found
    }

    /// The node's view of a file (through its mount namespace).
    pub fn read_node_file(&self, path: &str) -> Option<String> {
        let out = in_node("cat").arg(path).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Restarts containerd (SIGTERM, wait, start again; containers keep running
    /// under their shims) and then kubelet, as a node upgrade or a crash would.
    pub async fn restart_containerd_and_kubelet(&mut self) {
        for name in ["kubelet", "containerd"] {
            if let Some(i) = self.daemons.iter().position(|d| d.name == name) {
                let mut d = self.daemons.remove(i);
                stop_child(&mut d.child, Duration::from_secs(20));
            }
        }
        self.start_containerd();
        self.spawn_kubelet();
        self.wait_node_ready().await;
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Panics with the tails of every node log.
    pub fn fail(&self, msg: &str) -> ! {
        let mut text = format!("{msg}\n");
        for name in ["containerd", "kubelet", "kube-proxy"] {
            let log = self.log(name);
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- {name} log tail:\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        panic!("{text}");
    }

    fn spawn(&mut self, name: &'static str, program: &Path, args: &[String]) {
        let logs = self.dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{name}.log")))
            .unwrap();
        let child = in_node(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.daemons.push(NodeDaemon { name, child });
    }

    fn start_containerd(&mut self) {
        let socket = self.dir.join("containerd/containerd.sock");
        let _ = std::fs::remove_file(&socket);
        let containerd = self.bins.containerd.clone();
        self.spawn(
            "containerd",
            &containerd,
            &["--config".into(), "/etc/containerd/config.toml".into()],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = socket.exists()
                && self
                    .ctr()
                    .arg("version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            if Instant::now() > deadline {
                self.fail("containerd did not answer within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_kubelet_and_proxy(&mut self) {
        let d = self.dir.clone();
        let kubelet_kubeconfig = self
            .cp
            .kubeconfig_for_user(&format!("system:node:{NODE_NAME}"), &["system:nodes"]);
        std::fs::copy(&kubelet_kubeconfig, d.join("kubelet.kubeconfig")).unwrap();
        let proxy_kubeconfig = self.cp.kubeconfig_for_user("system:kube-proxy", &[]);
        std::fs::write(d.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        std::fs::write(
            d.join("kubelet-config.yaml"),
            kubelet_config(&d, &self.cp.ca_path()),
        )
        .unwrap();
        std::fs::write(
            d.join("kube-proxy-config.yaml"),
            kube_proxy_config(&proxy_kubeconfig),
        )
        .unwrap();
        self.spawn_kubelet();
        let proxy = self.bins.kube_proxy.clone();
        self.spawn(
            "kube-proxy",
            &proxy,
            &[
                format!("--config={}", d.join("kube-proxy-config.yaml").display()),
                "--v=2".into(),
            ],
        );
    }

    fn spawn_kubelet(&mut self) {
        let d = self.dir.clone();
        let kubelet = self.bins.kubelet.clone();
        self.spawn(
            "kubelet",
            &kubelet,
            &[
                format!("--config={}", d.join("kubelet-config.yaml").display()),
                format!("--kubeconfig={}", d.join("kubelet.kubeconfig").display()),
                format!("--root-dir={}", d.join("kubelet").display()),
                format!("--cert-dir={}", d.join("kubelet/pki").display()),
                format!("--hostname-override={NODE_NAME}"),
                format!("--node-ip={NODE_IP}"),
                "--v=1".into(),
            ],
        );
    }

    async fn wait_node_ready(&mut self) {
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(self.client().await);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = nodes
                .get_opt(NODE_NAME)
                .await
                .ok()
                .flatten()
                .is_some_and(|n| {
                    n.status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            if ready {
                return;
            }
            for d in &mut self.daemons {
                if let Ok(Some(status)) = d.child.try_wait() {
                    let name = d.name;
                    self.fail(&format!(
                        "{name} exited ({status}) before the node was Ready"
                    ));
                }
            }
            if Instant::now() > deadline {
                self.fail("the node did not become Ready within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        // kubelet first (it would restart what we kill), then every container
        // and sandbox with its shim, then containerd and kube-proxy.
        if let Some(i) = self.daemons.iter().position(|d| d.name == "kubelet") {
            let mut d = self.daemons.remove(i);
            stop_child(&mut d.child, Duration::from_secs(10));
        }
        if self.dir.join("containerd/containerd.sock").exists() {
            let tasks = self.ctr().args(["tasks", "ls", "-q"]).output();
            for t in tasks
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
                .lines()
            {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-s", "SIGKILL", t])
                    .output();
            }
        }
        for d in self.daemons.iter_mut().rev() {
            stop_child(&mut d.child, Duration::from_secs(10));
        }
        self.daemons.clear();
        self.cp.stop();
        if failing {
            self.teardown.keep_logs = true;
        }
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        // Whatever still runs in the namespace (shims, containers) dies with it.
        kill_netns_processes();
        // SAFETY: back to the host's network namespace for the cleanup commands.
        unsafe { libc::setns(self.host_netns.as_raw_fd(), libc::CLONE_NEWNET) };
        sh_quiet(&format!("ip netns del {NETNS}"));
        // The mount namespace goes once nothing holds it: with it every overlay,
        // tmpfs, pod volume and container rootfs mounted inside.
        unmount_under(&dir());
        remove_cgroups();
        for (k, v) in &self.sysctls {
            if !v.is_empty() {
                let _ = std::fs::write(format!("/proc/sys/{}", k.replace('.', "/")), v);
            }
        }
        if self.made_run_containerd {
            sh_quiet(
                "rmdir /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/fifo /run/containerd/s /run/containerd 2>/dev/null",
            );
        }
        wipe_dir(self.keep_logs);
        let left = leftovers();
        if !left.is_empty() {
            eprintln!("real node teardown: still there:\n{left}");
        } else {
            eprintln!(
                "real node torn down{}",
                if self.keep_logs {
                    " (logs kept in /tmp/privreg-node/logs)"
                } else {
                    ""
                }
            );
        }
    }
}

/// The machine-wide lock: a second rig refuses to start instead of fighting
/// over the namespace, cgroups and /run/containerd.
fn take_lock() -> File {
    std::fs::create_dir_all("/run/lock").unwrap();
    let f = File::create(LOCK).expect("create the rig lock file");
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(
        rc, 0,
        "another real node runs on this machine ({LOCK} is locked); only one can"
    );
    f
}

/// Removes what a killed earlier run left (the lock is ours, so nothing else
/// uses it).
fn clean_stale() {
    if Path::new(&format!("/run/netns/{NETNS}")).exists() {
        eprintln!("real node: cleaning up after an earlier run");
        kill_netns_processes();
        sh_quiet(&format!("ip netns del {NETNS}"));
    }
    unmount_under(&dir());
    remove_cgroups();
    wipe_dir(false);
}

fn kill_netns_processes() {
    for _ in 0..3 {
        let out = Command::new("ip")
            .args(["netns", "pids", NETNS])
            .stderr(Stdio::null())
            .output();
        let pids = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids
            .split_whitespace()
            .filter(|p| *p != std::process::id().to_string())
            .collect();
        if pids.is_empty() {
            return;
        }
        sh_quiet(&format!("kill -9 {}", pids.join(" ")));
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn unmount_under(d: &Path) {
    let out = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let prefix = d.display().to_string();
    let mut targets: Vec<&str> = text
        .lines()
        .filter(|t| *t == prefix || t.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        sh_quiet(&format!("umount '{t}' || umount -l '{t}'"));
    }
}

fn remove_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        for top in ["kubepods", "kubepods.slice", "k8s.io"] {
            let p = h.path().join(top);
            if p.is_dir() {
                sh_quiet(&format!(
                    "find '{}' -depth -type d -exec rmdir {{}} \\;",
                    p.display()
                ));
            }
        }
    }
}

fn wipe_dir(keep_logs: bool) {
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for e in entries.flatten() {
        if keep_logs && (e.file_name() == "logs" || e.file_name() == "pod-logs") {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    if !keep_logs {
        let _ = std::fs::remove_dir(DIR);
    }
}

fn leftovers() -> String {
    let mut left = String::new();
    if let Ok(o) = Command::new("ps").args(["-eo", "pid=,args="]).output() {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.contains(&format!("{DIR}/")) && !l.contains("ps -eo") {
                left.push_str(&format!("process: {l}\n"));
            }
        }
    }
    if let Ok(o) = Command::new("findmnt")
        .args(["-rn", "-o", "TARGET"])
        .output()
    {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            if l.starts_with(DIR) {
                left.push_str(&format!("mount: {l}\n"));
            }
        }
    }
    if Path::new(&format!("/run/netns/{NETNS}")).exists() {
        left.push_str(&format!("netns: {NETNS}\n"));
    }
    left
}

/// The network namespace (entered by this thread) and the node's mount
/// namespace with its overlays.
fn make_namespaces(_teardown: &mut Teardown) {
    let d = dir();
    std::fs::create_dir_all(d.join("logs")).unwrap();
    sh(&format!(
        "ip netns add {NETNS}
         ip -n {NETNS} link set lo up
         ip -n {NETNS} link add node0 type veth peer name node0p
         ip -n {NETNS} addr add {NODE_IP}/24 dev node0
         ip -n {NETNS} link set node0p up
         ip -n {NETNS} link set node0 up
         ip -n {NETNS} route add {SERVICE_CIDR} dev node0
         ip netns exec {NETNS} sysctl -qw net.ipv4.ip_forward=1"
    ));
    // Pod traffic crossing the bridge goes through iptables (kube-proxy's DNAT
    // for pod → ClusterIP); absent when br_netfilter is not loaded.
    sh_quiet(&format!(
        "modprobe br_netfilter; ip netns exec {NETNS} sysctl -qw net.bridge.bridge-nf-call-iptables=1"
    ));
    enter_netns(Path::new(&format!("/run/netns/{NETNS}")));

    // The node's /etc, /var/lib, /var/log: the host's as the lower layer, this
    // rig's directories as the upper. Files the node needs from the start are
    // put in the upper layer before it is mounted.
    let overlay = d.join("overlay");
    for sub in ["etc", "var/lib", "var/log"] {
        let key = sub.replace('/', "-");
        std::fs::create_dir_all(overlay.join(&key).join("upper")).unwrap();
        std::fs::create_dir_all(overlay.join(&key).join("work")).unwrap();
    }
    let etc = overlay.join("etc/upper");
    std::fs::create_dir_all(etc.join("containerd/certs.d")).unwrap();
    std::fs::write(etc.join("containerd/config.toml"), containerd_config(&d)).unwrap();
    std::fs::write(
        etc.join("hosts"),
        format!("127.0.0.1 localhost\n{NODE_IP} {NODE_NAME}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(d.join("cni/net.d")).unwrap();
    std::fs::write(d.join("cni/net.d/10-privreg-node.conflist"), cni_config(&d)).unwrap();
    std::fs::create_dir_all("/run/containerd").unwrap();

    // A private mount namespace, kept by a bind mount of its file. Its parent
    // mount must be private for that, hence the bind of the rig dir onto itself.
    let ns_file = mount_ns_file();
    File::create(&ns_file).unwrap();
    let ds = d.display();
    sh(&format!(
        "mount --bind {ds} {ds} && mount --make-private {ds} && \
         unshare --mount={ns} --propagation private true",
        ns = ns_file.display()
    ));
    let mut script = String::new();
    for sub in ["etc", "var/lib", "var/log"] {
        let key = sub.replace('/', "-");
        let o = overlay.join(&key);
        script.push_str(&format!(
            "mount -t overlay privreg-node-{key} -o lowerdir=/{sub},upperdir={},workdir={} /{sub} && ",
            o.join("upper").display(),
            o.join("work").display()
        ));
    }
    script.push_str("mount -t tmpfs privreg-node-run /run/containerd");
    let out = in_node("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "mounting the node's overlays: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn containerd_config(d: &Path) -> String {
    let d = d.display();
    format!(
        r#"# The node's containerd (Debian 1.6): private root, state and sockets;
# cgroupfs; CNI from Debian's plugins; certs.d where a node keeps it.
version = 2
root = "{d}/containerd/data"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd/containerd.sock"

[ttrpc]
  address = "{d}/containerd/containerd-ttrpc.sock"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/containerd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    netns_mounts_under_state_dir = true
    # CAP_SYS_RESOURCE is not in this machine's bounding set: runc cannot
    # lower oom_score_adj to the sandbox's -998.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{d}/cni/net.d"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
"#
    )
}

fn cni_config(d: &Path) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "privreg-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": d.join("cni/ipam").display().to_string(),
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": "10.244.0.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    }))
    .unwrap()
}

fn kubelet_config(d: &Path, ca: &Path) -> String {
    let d = d.display();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://{d}/containerd/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
clusterDomain: cluster.local
resolvConf: {d}/resolv.conf
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
protectKernelDefaults: false
# CAP_SYS_RESOURCE is not in this machine's bounding set.
oomScoreAdj: 0
podLogsDir: {d}/pod-logs
syncFrequency: 10s
"#,
        ca = ca.display()
    )
}

fn kube_proxy_config(kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
mode: iptables
clusterCIDR: 10.244.0.0/16
hostnameOverride: {NODE_NAME}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["10.200.0.0/24"]
# 0: leave the (partly global) conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
"#,
        kc = kubeconfig.display()
    )
}

/// A static x86-64 program that waits for signals forever (`pause(2)` in a
/// loop): the pod sandbox's process. The CRI stops sandboxes with SIGKILL, and
/// no pod here shares a PID namespace, so it need not reap. None elsewhere.
pub fn pause_binary() -> Option<Vec<u8>> {
    if std::env::consts::ARCH != "x86_64" {
        return None;
    }
    // loop: mov eax, 34 (pause); syscall; jmp loop
    let code: [u8; 9] = [0xb8, 34, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];
    Some(super::images::elf_executable(&code, &[]))
}

/// The sandbox image as an OCI archive that `ctr images import` names
/// [`PAUSE_IMAGE`].
fn pause_image_archive(dir: &Path) -> PathBuf {
    use super::images::{REF_NAME, host_arch, image_running, tar, write_layout};
    let binary = pause_binary().expect("the real node runs on x86-64 only");
    let img = image_running(
        host_arch(),
        vec![vec![("bin/pause".to_owned(), binary)]],
        serde_json::json!({}),
        "/bin/pause",
    );
    let layout = dir.join("pause");
    std::fs::create_dir_all(&layout).unwrap();
    write_layout(&layout, &[(PAUSE_IMAGE, &img.manifest)], img.blobs());
    // containerd's import names an image by this annotation.
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]["annotations"] = serde_json::json!({
        REF_NAME: PAUSE_IMAGE,
        "io.containerd.image.name": PAUSE_IMAGE,
    });
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let files: Vec<(String, Vec<u8>)> = walk(&layout)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(&layout).unwrap().display().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    let archive = dir.join("pause.tar");
    std::fs::write(&archive, tar(&files)).unwrap();
    archive
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
