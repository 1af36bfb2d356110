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
    go_tool_named(name, name, env_var)
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
        let storage = format!("  filesystem:\n    rootdirectory: {}\n", root.display());
        Self::start_with_storage(bin, root, &storage, cert, key)
    }

    /// `start` with another `storage:` driver block (indented two spaces, as
    /// under `storage:`); `root` then only places the config and the log.
    pub fn start_with_storage(
        bin: &Path,
        root: &Path,
        storage: &str,
        cert: &Path,
        key: &Path,
    ) -> DockerRegistry {
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
{storage}  delete:
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
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        // REGISTRY_* variables override the config file; keep the caller's
        // out, and the AWS SDK's (an AWS_CA_BUNDLE makes its S3 driver fail
        // to start).
        for (k, _) in std::env::vars_os() {
            let k_str = k.to_string_lossy();
            if k_str.starts_with("REGISTRY_") || k_str.starts_with("AWS_") {
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

/// SeaweedFS (`weed mini`: master, volume server, filer and S3 gateway in one
/// process) on loopback ports, with one S3 identity and one bucket, storing
/// under `dir`. Stopped on drop.
pub struct SeaweedFs {
    pub s3_port: u16,
    /// The filer's HTTP API: where the server keeps what S3 does not list.
    filer_port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    log: PathBuf,
    child: Option<Child>,
}

impl SeaweedFs {
    /// `None` when the binary is missing outside CI (the test is skipped).
    pub fn start(dir: &Path, bucket: &str) -> Option<SeaweedFs> {
        let bin = go_tool_named("seaweedfs", "weed", "PRIVREG_SEAWEEDFS")?;
        let data = dir.join("weed");
        std::fs::create_dir_all(&data).unwrap();
        let (access_key, secret_key) = ("privregtest".to_owned(), "privreg-test-secret".to_owned());
        let identities = dir.join("s3-identities.json");
        std::fs::write(
            &identities,
            format!(
                r#"{{"identities":[{{"name":"privreg","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        // Every listener on its own free port (the defaults would collide
        // with a second instance); gRPC ports are not derived from HTTP ones.
        let (s3_port, filer_port) = (free_port(), free_port());
        let mut cmd = Command::new(&bin);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .arg(format!("-s3.config={}", identities.display()))
            .arg(format!("-bucket={bucket}"))
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-filer.port={filer_port}"));
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port.grpc",
            "s3.port.grpc",
            "webdav.port",
            "admin.port",
            "admin.port.grpc",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()));
        }
        cmd.args([
            "-admin.port.legacy=0",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]);
        let log = dir.join("weed.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn weed mini");
        wait_for_port(([127, 0, 0, 1], s3_port).into(), &mut child, "SeaweedFS S3");
        let s3 = SeaweedFs {
            s3_port,
            filer_port,
            bucket: bucket.to_owned(),
            access_key,
            secret_key,
            log,
            child: Some(child),
        };
        s3.wait_for_bucket();
        Some(s3)
    }

    /// `privreg serve` flags for this bucket under `prefix`, with the
    /// credentials in files under `dir` (as a mounted Secret would hold them).
    pub fn privreg_args(&self, prefix: &str, dir: &Path) -> Vec<String> {
        std::fs::create_dir_all(dir).unwrap();
        let (id_file, key_file) = (dir.join("s3-access-key"), dir.join("s3-secret-key"));
        std::fs::write(&id_file, &self.access_key).unwrap();
        std::fs::write(&key_file, &self.secret_key).unwrap();
        [
            "--s3-bucket",
            &self.bucket,
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-path-style",
            "--s3-allow-http",
            "--s3-prefix",
            prefix,
            "--s3-access-key-file",
            id_file.to_str().unwrap(),
            "--s3-secret-key-file",
            key_file.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// `privreg serve` on this bucket under `prefix`, its local state (and
    /// the credential files) in `data`, with `extra` flags (TLS...).
    pub fn start_privreg(&self, data: &Path, prefix: &str, extra: &[String]) -> super::Privreg {
        let mut args = extra.to_vec();
        args.extend(self.privreg_args(prefix, data));
        super::Privreg::start(data, &args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Distribution's `storage:` block (its s3 driver) for this bucket under
    /// `prefix`, for `DockerRegistry::start_with_storage`.
    pub fn distribution_storage(&self, prefix: &str) -> String {
        format!(
            "  s3:\n    accesskey: {}\n    secretkey: {}\n    region: us-east-1\n    \
             regionendpoint: {}\n    forcepathstyle: true\n    bucket: {}\n    \
             rootdirectory: /{prefix}\n    secure: false\n    v4auth: true\n",
            self.access_key,
            self.secret_key,
            self.endpoint(),
            self.bucket
        )
    }

    /// The S3 driver's settings for this server's bucket under `prefix`.
    pub fn config(&self, prefix: &str) -> privreg::registry::storage::s3::S3Config {
        privreg::registry::storage::s3::S3Config {
            endpoint: Some(self.endpoint()),
            bucket: self.bucket.clone(),
            region: "us-east-1".to_owned(),
            prefix: prefix.to_owned(),
            path_style: true,
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            allow_http: true,
            ..Default::default()
        }
    }

    /// The bucket is made after the S3 port opens: waits (bounded) until a
    /// signed listing of it answers. On a thread of its own, with its own
    /// runtime, so callers inside a runtime can wait too.
    fn wait_for_bucket(&self) {
        let config = self.config("");
        let answered = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let driver = rt
                .block_on(async { privreg::registry::storage::s3::S3Driver::new(&config) })
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                use privreg::registry::storage::StorageDriver as _;
                match driver.list(Path::new("")) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .join()
        .unwrap();
        if let Err(e) = answered {
            panic!("the SeaweedFS bucket never answered: {e}\n{}", self.log());
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The bucket's multipart uploads that were neither completed nor
    /// aborted, as the server keeps them (`.uploads/<id>` in its filer; S3's
    /// own listing call needs a signer the tests do not have).
    pub async fn unfinished_multipart_uploads(&self) -> Vec<String> {
        let url = format!(
            "http://127.0.0.1:{}/buckets/{}/.uploads/",
            self.filer_port, self.bucket
        );
        let response = reqwest::Client::new()
            .get(&url)
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return Vec::new();
        }
        let text = response.text().await.unwrap();
        let listing: serde_json::Value = serde_json::from_str(&text).unwrap();
        listing["Entries"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["FullPath"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(10));
        }
    }
}

/// `go_tool` for a tool whose cache directory and binary names differ
/// (`seaweedfs-<version>/weed`).
pub fn go_tool_named(dir_name: &str, bin: &str, env_var: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let cache = std::env::var_os("PRIVREG_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/privreg")));
    let mut found: Vec<PathBuf> = cache
        .and_then(|c| std::fs::read_dir(c.join("tools")).ok())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{dir_name}-"))
        })
        .map(|e| e.path().join(bin))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop().or_else(|| tool(bin, env_var))
}
