//! The pieces of a node the trust tests play: a ConfigMap volume updated the
//! way the kubelet does it, the `privreg trust` agent as a process, `privreg
//! serve` on any loopback address, and crictl, the CRI client that makes the
//! same image pulls kubelet makes. Every process is stopped on drop, every wait
//! is bounded.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::daemons::{go_tool, stop_child};
use super::wait_for_port;

/// Runs `cmd` to completion within `limit`, killing it past that (then panics
/// with what it printed so far).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {limit:?}:\n{}{}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// stdout and stderr of an output, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A ConfigMap volume as the kubelet's atomic writer keeps it: the data in a
/// timestamped `..<ts>` directory, `..data` a symlink to it (replaced by
/// renaming a temp symlink over it), and `bundle.json -> ..data/bundle.json`.
pub struct BundleVolume {
    pub dir: PathBuf,
    generation: u32,
    current: Option<String>,
}

impl BundleVolume {
    pub fn new(dir: &Path) -> BundleVolume {
        std::fs::create_dir_all(dir).unwrap();
        BundleVolume {
            dir: dir.to_owned(),
            generation: 0,
            current: None,
        }
    }

    /// The path the agent is given.
    pub fn path(&self) -> PathBuf {
        self.dir.join("bundle.json")
    }

    /// Publishes new content the way the kubelet does.
    pub fn publish(&mut self, bytes: &[u8]) {
        self.generation += 1;
        let ts = format!(
            "..2026_01_01_00_00_{:02}.{}",
            self.generation,
            std::process::id()
        );
        std::fs::create_dir(self.dir.join(&ts)).unwrap();
        std::fs::write(self.dir.join(&ts).join("bundle.json"), bytes).unwrap();
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let link = self.path();
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/bundle.json", &link).unwrap();
        }
        if let Some(old) = self.current.replace(ts) {
            std::fs::remove_dir_all(self.dir.join(old)).unwrap();
        }
    }
}

/// A blocking HTTP/1.0 GET (so the answer is never chunked): status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A `privreg trust` process (the DaemonSet's container, played by the test).
pub struct TrustAgent {
    pub metrics: SocketAddr,
    pub args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl TrustAgent {
    /// Starts `privreg trust` with `args` plus `--metrics-listen` on a free port,
    /// and waits (bounded) until `/healthz` answers.
    pub fn start(args: &[String], log: &Path) -> TrustAgent {
        TrustAgent::start_with_env(args, &[], log)
    }

    /// [`TrustAgent::start`] with environment variables (the container's `env`).
    pub fn start_with_env(args: &[String], env: &[(String, String)], log: &Path) -> TrustAgent {
        let metrics = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let mut all = vec!["trust".to_owned()];
        all.extend(args.iter().cloned());
        all.extend(["--metrics-listen".to_owned(), metrics.to_string()]);
        let file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_privreg"))
            .args(&all)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn privreg trust");
        wait_for_port(metrics, &mut child, "privreg trust");
        TrustAgent {
            metrics,
            args: all,
            log: log.to_owned(),
            child: Some(child),
        }
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics, path)
    }

    /// The value of one sample line of `/metrics` (`name{labels}` exactly).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        text.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    /// Polls `check` every 20 ms until it holds; panics after `limit` (or if the
    /// agent exits) with the agent's log and `/readyz`. Returns the time taken.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            if check(self) {
                return start.elapsed();
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "privreg trust exited ({status}) while waiting for {what}:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not within {limit:?}\n/readyz: {:?}\nlog:\n{}",
                    self.get("/readyz"),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&mut self, limit: Duration) -> Duration {
        self.wait_for("/readyz 200", limit, |a| {
            a.get("/readyz").is_some_and(|(c, _)| c == 200)
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then a bounded wait for the exit status.
    pub fn sigterm(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the agent runs");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "privreg trust did not exit within {limit:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for TrustAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `privreg trust --uninstall` with `args`, bounded.
pub fn trust_uninstall(args: &[String]) -> Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_privreg"))
            .arg("trust")
            .args(args)
            .arg("--uninstall")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
        Duration::from_secs(30),
    )
}

/// `privreg serve` on any loopback address (a stand-in for a ClusterIP), stopped on drop.
pub struct Serve {
    pub addr: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Serve {
    pub fn start(addr: SocketAddr, data: &Path, extra: &[String]) -> Serve {
        std::fs::create_dir_all(data).unwrap();
        let log = data.with_extension("log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_privreg"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            // Keep the free-space guard independent of the test machine's disk.
            .env("PRIVREG_MIN_FREE_SPACE", "64Mi")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn privreg serve");
        wait_for_port(addr, &mut child, "privreg serve");
        Serve {
            addr,
            log,
            child: Some(child),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

/// crictl against one containerd socket, with a private config file.
pub struct Crictl {
    pub bin: PathBuf,
    config: PathBuf,
}

impl Crictl {
    /// `None` (skip) when crictl is missing outside CI (scripts/test-tools.sh builds it).
    pub fn find(socket: &Path, dir: &Path) -> Option<Crictl> {
        let bin = go_tool("crictl", "PRIVREG_CRICTL")?;
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("crictl.yaml");
        let endpoint = format!("unix://{}", socket.display());
        std::fs::write(
            &config,
            format!("runtime-endpoint: {endpoint}\nimage-endpoint: {endpoint}\ntimeout: 60\n"),
        )
        .unwrap();
        Some(Crictl { bin, config })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--config").arg(&self.config);
        c
    }

    /// `crictl pull <reference>` (the CRI `PullImage` kubelet calls), bounded.
    pub fn pull(&self, reference: &str) -> Output {
        output_within(
            self.cmd()
                .args(["pull", "--pull-timeout", "60s", reference]),
            Duration::from_secs(90),
        )
    }

    /// `crictl rmi <reference>`, checked.
    pub fn rmi(&self, reference: &str) {
        let out = output_within(self.cmd().args(["rmi", reference]), Duration::from_secs(30));
        assert!(
            out.status.success(),
            "crictl rmi {reference}: {}",
            text(&out)
        );
    }

    /// The repo digests containerd's CRI records for `reference`.
    pub fn repo_digests(&self, reference: &str) -> Vec<String> {
        let out = output_within(
            self.cmd().args(["inspecti", "-o", "json", reference]),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "crictl inspecti {reference}: {}",
            text(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"]["repoDigests"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// containerd 1.6 as a node runs it, but private: its own root, state, socket
/// and CRI stream port, and, in a private mount namespace, the node root's
/// `etc/containerd` bind-mounted over `/etc/containerd`. So containerd reads
/// `/etc/containerd/config.toml` with `config_path = "/etc/containerd/certs.d"`
/// and resolves the absolute `ca` paths of hosts.toml exactly as on a node,
/// while the agent sees the same files under its `--node-root`. The machine's
/// own `/etc/containerd` is untouched (the mount lives and dies with the
/// namespace). Stopped on drop.
pub struct NodeContainerd {
    pub dir: PathBuf,
    /// The node root: `<root>/etc/containerd/{config.toml,certs.d}`.
    pub root: PathBuf,
    pub socket: PathBuf,
    ctr: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeContainerd {
    /// `None` (skip) when unshare is missing outside CI. Panics with
    /// containerd's log if it does not answer within 30 s.
    pub fn start(containerd: &Path, ctr: &Path, dir: &Path) -> Option<NodeContainerd> {
        let unshare = super::tool("unshare", "PRIVREG_UNSHARE")?;
        assert!(
            Path::new("/etc/containerd").is_dir(),
            "/etc/containerd is the mount point for the node's view (Debian's containerd package creates it)"
        );
        let root = dir.join("node");
        let etc = root.join("etc/containerd");
        std::fs::create_dir_all(etc.join("certs.d")).unwrap();
        let socket = dir.join("containerd.sock");
        std::fs::write(
            etc.join("config.toml"),
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
    config_path = "/etc/containerd/certs.d"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                stream = super::free_port(),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let out = std::fs::File::create(&log).unwrap();
        // `exec`: the PID we hold is containerd's own.
        let child = Command::new(unshare)
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/containerd && exec "$1" --config /etc/containerd/config.toml"#)
            .arg(&etc)
            .arg(containerd)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn containerd");
        let mut c = NodeContainerd {
            dir: dir.to_owned(),
            root,
            socket,
            ctr: ctr.to_owned(),
            log,
            child: Some(child),
        };
        c.wait_ready();
        Some(c)
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
                let out = output_within(
                    Command::new(&self.ctr)
                        .arg("--address")
                        .arg(&self.socket)
                        .arg("version"),
                    Duration::from_secs(10),
                );
                if out.status.success() {
                    return;
                }
                last = text(&out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd did not answer within 30 s: {last}\n{}",
            self.log()
        );
    }

    /// `<node root>/etc/containerd/certs.d`.
    pub fn certs_d(&self) -> PathBuf {
        self.root.join("etc/containerd/certs.d")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeContainerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(20));
        }
    }
}
