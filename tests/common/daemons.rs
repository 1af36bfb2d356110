//! Other real servers the tests start next to `privreg serve`, each stopped on
//! drop: the reference registry (Debian's `docker-registry`, CNCF Distribution
//! 2.8.2). Also the lookup of the Go-built client tools (crane, oras).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, tool, wait_for_port};

/// SIGTERM, a bounded wait, then SIGKILL.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdin(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A Go-built tool from `scripts/test-tools.sh`: `$env_var`, else the script's
/// cache (`${PRIVREG_CACHE:-~/.cache/privreg}/tools/<name>-*/<name>`), else PATH
/// (through `tool`, which fails in CI and skips elsewhere when it is missing).
pub fn go_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let cache = std::env::var_os("PRIVREG_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/privreg")));
    if let Some(tools) = cache.map(|c| c.join("tools"))
        && let Ok(entries) = std::fs::read_dir(&tools)
    {
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .map(|e| e.path().join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Some(p);
        }
    }
    tool(name, env_var)
}

/// `docker-registry serve` (Distribution 2.8.2) over TLS on a loopback port,
/// storing under `rootdirectory` = `root`. Stopped on drop.
pub struct DockerRegistry {
    pub port: u16,
    pub root: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl DockerRegistry {
    pub fn start(bin: &Path, root: &Path, cert: &Path, key: &Path) -> DockerRegistry {
        std::fs::create_dir_all(root).unwrap();
        let port = free_port();
        let config = root.with_extension(format!("registry-{port}.yml"));
        let log = root.with_extension(format!("registry-{port}.log"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: privreg-reference-registry-not-secret
  tls:
    certificate: {cert}
    key: {key}
health:
  storagedriver:
    enabled: false
",
                root = root.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        // REGISTRY_* variables override the config file; keep the caller's out.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn docker-registry");
        let addr = ([127, 0, 0, 1], port).into();
        wait_for_port(addr, &mut child, "docker-registry");
        DockerRegistry {
            port,
            root: root.to_owned(),
            config,
            log,
            child: Some(child),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.host())
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

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
