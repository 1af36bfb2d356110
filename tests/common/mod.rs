//! Shared helpers for the integration tests: start and stop `privreg serve` (and
//! other real servers), find the real client tools, and make HTTPS clients.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Waits (bounded) until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr} within 30 s");
}

/// Whether missing tools fail the test (CI) or skip it (a developer's machine).
pub fn tools_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("PRIVREG_REQUIRE_TOOLS").is_some()
}

/// Finds a real tool: `$env_var`, else `name` on PATH. In CI a missing tool fails
/// the test; elsewhere the test says it is skipped and returns early.
pub fn tool(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if tools_required() {
            panic!("{name} is required (set {env_var} or put it on PATH; .ci/run installs it)");
        }
        eprintln!("SKIPPED: {name} not found (set {env_var}); run scripts/test-tools.sh");
    }
    found
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command that is expected to fail; returns its combined output.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `privreg serve` process on a loopback port, stopped on drop.
pub struct Privreg {
    pub port: u16,
    pub data: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Privreg {
    /// Starts `privreg serve` with its generated local CA in `data/tls`.
    pub fn start(data: &Path, extra: &[&str]) -> Privreg {
        Self::start_on(free_port(), data, extra)
    }

    pub fn start_on(port: u16, data: &Path, extra: &[&str]) -> Privreg {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--data".into(),
            data.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = Privreg {
            port,
            data: data.to_owned(),
            args,
            child: None,
            log: data.with_extension(format!("{port}.log")),
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_privreg"))
            .args(&self.args)
            .env("RUST_LOG", "info")
            // Data lives on the test machine's disk: keep the free-space guard
            // from depending on how full that disk is (a test's own
            // --min-free-space still wins).
            .env("PRIVREG_MIN_FREE_SPACE", "64Mi")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn privreg serve");
        wait_for_port(self.addr(), &mut child, "privreg serve");
        self.child = Some(child);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:<port>`, as clients name the registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.host())
    }

    /// The generated CA (when no --tls-cert was given).
    pub fn ca(&self) -> PathBuf {
        self.data.join("tls").join("ca.crt")
    }

    /// A directory holding only `ca.crt`, for `--cert-dir` style flags.
    pub fn cert_dir(&self) -> PathBuf {
        let dir = self.data.with_extension("certs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.ca(), dir.join("ca.crt")).unwrap();
        dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again with the same arguments and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

impl Drop for Privreg {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An async HTTPS client that trusts only `ca`.
pub fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
        .tls_built_in_root_certs(false)
        .build()
        .expect("build client")
}

/// sha256 digest string of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub mod cluster;
pub mod containerd;
pub mod daemons;
pub mod images;
pub mod kubelet;
pub mod node;
pub mod oci;
pub mod operator;
pub mod pki;
pub mod rawclient;
pub mod rawtls;
pub mod realnode;
pub mod registry_pod;
pub mod round_robin;
pub mod skopeo;
pub mod store;
pub mod trust_pod;
pub mod view;

/// Whether this process runs as root; if not, the test is SKIPPED outside CI
/// (a failure in CI): `what` names the part that needs root.
pub fn root_or_skip(what: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if !root {
        assert!(!tools_required(), "{what} needs root");
        eprintln!("SKIPPED: {what} needs root");
    }
    root
}
