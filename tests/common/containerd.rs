//! containerd 1.6 without systemd (TESTRIG A1): a private config with its own
//! root, state, gRPC socket and CRI stream port, and `config_path` pointing at a
//! fake node root's `etc/containerd/certs.d`. Stopped on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::daemons::stop_child;
use super::free_port;

pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// `<node root>/etc/containerd/certs.d`: one directory per `host:port`.
    pub hosts_dir: PathBuf,
    ctr: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd under `dir` and waits (bounded) until `ctr version`
    /// answers. Panics with containerd's log if it cannot start.
    pub fn start(containerd: &Path, ctr: &Path, dir: &Path) -> Containerd {
        let node_root = dir.join("node");
        let hosts_dir = node_root.join("etc/containerd/certs.d");
        std::fs::create_dir_all(&hosts_dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{hosts}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                stream = free_port(),
                hosts = hosts_dir.display(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir: dir.to_owned(),
            socket,
            hosts_dir,
            ctr: ctr.to_owned(),
            log,
            child: Some(child),
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "containerd exited during startup ({status}):\n{}",
                    self.log()
                );
            }
            if self.socket.exists() {
                let out = self
                    .ctr_cmd(None)
                    .arg("version")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                if out.status.success() {
                    return;
                }
                last = String::from_utf8_lossy(&out.stderr).into_owned();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not answer within 30 s: {last}\n{}",
            self.log()
        );
    }

    fn ctr_cmd(&self, namespace: Option<&str>) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address").arg(&self.socket);
        if let Some(ns) = namespace {
            cmd.arg("--namespace").arg(ns);
        }
        cmd
    }

    /// `ctr --address <socket> --namespace <ns>`.
    pub fn ctr(&self, namespace: &str) -> Command {
        self.ctr_cmd(Some(namespace))
    }

    /// `ctr images pull --hosts-dir <certs.d> <reference>`, not checked.
    pub fn pull(&self, namespace: &str, reference: &str) -> Output {
        self.ctr(namespace)
            .args(["images", "pull", "--hosts-dir"])
            .arg(&self.hosts_dir)
            .arg(reference)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ctr")
    }

    /// Writes `certs.d/<host>/hosts.toml` (and `ca.crt` when given), each file to a
    /// temp name then renamed, `ca.crt` first, as a trust agent would.
    pub fn write_host(&self, host: &str, hosts_toml: &str, ca: Option<&Path>) -> PathBuf {
        let dir = self.hosts_dir.join(host);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(ca) = ca {
            std::fs::copy(ca, dir.join("ca.crt.tmp")).unwrap();
            std::fs::rename(dir.join("ca.crt.tmp"), dir.join("ca.crt")).unwrap();
        }
        std::fs::write(dir.join("hosts.toml.tmp"), hosts_toml).unwrap();
        std::fs::rename(dir.join("hosts.toml.tmp"), dir.join("hosts.toml")).unwrap();
        dir
    }

    /// `ctr images mount <reference> <target>`: the unpacked rootfs, read-only,
    /// unmounted (and its snapshot removed) when the guard drops.
    pub fn mount_image<'a>(
        &'a self,
        namespace: &str,
        reference: &str,
        target: &Path,
    ) -> Mounted<'a> {
        std::fs::create_dir_all(target).unwrap();
        let out = self
            .ctr(namespace)
            .args(["images", "mount", reference])
            .arg(target)
            .stdin(Stdio::null())
            .output()
            .expect("spawn ctr");
        assert!(
            out.status.success(),
            "ctr images mount {reference}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted {
            containerd: self,
            namespace: namespace.to_owned(),
            target: target.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(20));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An image rootfs mounted by `ctr images mount`.
pub struct Mounted<'a> {
    containerd: &'a Containerd,
    namespace: String,
    pub target: PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let ok = self
            .containerd
            .ctr(&self.namespace)
            .args(["images", "unmount", "--rm"])
            .arg(&self.target)
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            let _ = Command::new("umount")
                .arg(&self.target)
                .stdin(Stdio::null())
                .status();
        }
    }
}
