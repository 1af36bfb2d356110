//! Password guessing against a registry with htpasswd (bcrypt cost 10), side by
//! side: privreg (default failure budget), privreg without the budget (bcrypt
//! offloading alone) and Distribution 2.8.2 (Debian's docker-registry). For
//! each: p50/p99 of an authenticated manifest GET (and privreg's /healthz)
//! idle and while 64 connections send wrong passwords for an existing user,
//! and what remembering verified passwords costs (authenticated vs anonymous
//! GET rate on privreg).
//!
//!   cargo bench --bench auth            (needs docker-registry)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;
use support::{free_port, wait_ready, write_pki};

mod support;

const ATTACKERS: usize = 64;
const SAMPLES: usize = 200;
const COST: u32 = 10;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(ca: &Path, pool: usize) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(pool)
        .build()
        .unwrap()
}

fn basic(user: &str, password: &str) -> String {
    let t = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {t}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 (ms) of `SAMPLES` sequential GETs of `path`.
async fn latency(c: &reqwest::Client, url: &str, auth: Option<&str>) -> (f64, f64) {
    let mut ms = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let mut req = c
            .get(url)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let start = Instant::now();
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{url}: {}", r.status());
        let _ = r.bytes().await.unwrap();
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

/// Requests per second of GETs over 8 connections for 3 s.
async fn rate(ca: &Path, url: &str, auth: Option<String>) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url, auth, done) = (client(ca, 1), url.to_owned(), auth.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                let mut req = c
                    .get(&url)
                    .header("Accept", "application/vnd.oci.image.manifest.v1+json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                let r = req.send().await.unwrap();
                assert!(r.status().is_success());
                let _ = r.bytes().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / 3.0
}

async fn push_manifest(c: &reqwest::Client, base: &str, auth: &str) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let d = format!("sha256:{}", hex::encode(sha2::Sha256::digest(config)));
    let r = c
        .post(format!("{base}/v2/bench/auth/blobs/uploads/"))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let loc = if loc.starts_with("http") {
        loc
    } else {
        format!("{base}{loc}")
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{loc}{sep}digest={d}"))
        .header("Authorization", auth)
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": config.len()},
        "layers": []
    });
    let r = c
        .put(format!("{base}/v2/bench/auth/manifests/v1"))
        .header("Authorization", auth)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&m).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

struct Row {
    name: &'static str,
    idle: (f64, f64),
    attacked: (f64, f64),
    health_idle: Option<(f64, f64)>,
    health_attacked: Option<(f64, f64)>,
    guesses_checked: u64,
    guesses_refused: u64,
}

async fn measure(name: &'static str, base: &str, ca: &Path, health: bool) -> Row {
    let c = client(ca, 4);
    let good = basic("alice", "alice-password");
    push_manifest(&c, base, &good).await;
    let manifest = format!("{base}/v2/bench/auth/manifests/v1");
    let health_url = format!("{base}/healthz");
    let idle = latency(&c, &manifest, Some(&good)).await;
    let health_idle = if health {
        Some(latency(&c, &health_url, None).await)
    } else {
        None
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (checked, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let (c, url, stop, checked, refused) = (
            client(ca, 1),
            format!("{base}/v2/"),
            stop.clone(),
            checked.clone(),
            refused.clone(),
        );
        attackers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = c
                    .get(&url)
                    .header("Authorization", basic("alice", &format!("guess-{i}-{n}")))
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(429) => refused.fetch_add(1, Ordering::Relaxed),
                    _ => checked.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attacked = latency(&c, &manifest, Some(&good)).await;
    let health_attacked = if health {
        Some(latency(&c, &health_url, None).await)
    } else {
        None
    };
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = a.await;
    }
    Row {
        name,
        idle,
        attacked,
        health_idle,
        health_attacked,
        guesses_checked: checked.load(Ordering::Relaxed),
        guesses_refused: refused.load(Ordering::Relaxed),
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (ca_path, cert, key) = write_pki(root);
    let htpasswd = root.join("htpasswd");
    let hash = bcrypt::hash("alice-password", COST).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();

    let start_privreg = |name: &str, extra: &[&str]| {
        let port = free_port();
        let p = Proc(
            Command::new(env!("CARGO_BIN_EXE_privreg"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
                .arg(root.join(name))
                .arg("--tls-cert")
                .arg(&cert)
                .arg("--tls-key")
                .arg(&key)
                .arg("--htpasswd")
                .arg(&htpasswd)
                .args(extra)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .spawn()
                .expect("start privreg"),
        );
        wait_ready(port);
        (p, format!("https://127.0.0.1:{port}"))
    };
    let registry = std::env::var_os("DOCKER_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"));
    let ref_port = free_port();
    let ref_config = root.join("reference.yml");
    std::fs::write(
        &ref_config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp:\n  addr: 127.0.0.1:{ref_port}\n  tls: {{certificate: {}, key: {}}}\nauth:\n  htpasswd: {{realm: bench, path: {}}}\n",
            root.join("reference").display(),
            cert.display(),
            key.display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let reference = Proc(
        Command::new(&registry)
            .arg("serve")
            .arg(&ref_config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry"),
    );
    wait_ready(ref_port);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    {
        let (_p, url) = start_privreg("privreg", &[]);
        rows.push(rt.block_on(measure("privreg", &url, &ca_path, true)));
        let good = basic("alice", "alice-password");
        let (authed, anonymous) = rt.block_on(async {
            let m = format!("{url}/v2/bench/auth/manifests/v1");
            (rate(&ca_path, &m, Some(good)).await, 0.0)
        });
        let (_q, open_url) = start_privreg("privreg-open", &["--anonymous-pull"]);
        let anon = rt.block_on(async {
            push_manifest(
                &client(&ca_path, 1),
                &open_url,
                &basic("alice", "alice-password"),
            )
            .await;
            rate(
                &ca_path,
                &format!("{open_url}/v2/bench/auth/manifests/v1"),
                None,
            )
            .await
        });
        let _ = anonymous;
        println!(
            "authenticated manifest GET, 8 connections: {authed:.0}/s; anonymous: {anon:.0}/s; remembered-password check costs {:.1}%",
            (1.0 - authed / anon) * 100.0
        );
    }
    {
        let (_p, url) = start_privreg("privreg-nolimit", &["--auth-failures-per-minute", "0"]);
        rows.push(rt.block_on(measure("privreg, no failure budget", &url, &ca_path, true)));
    }
    rows.push(rt.block_on(measure(
        "distribution 2.8.2",
        &format!("https://127.0.0.1:{ref_port}"),
        &ca_path,
        false,
    )));
    drop(reference);

    let fmt = |(p50, p99): (f64, f64)| format!("{p50:.2} / {p99:.2}");
    let mut report = format!(
        "registry | manifest GET p50/p99 ms idle | under {ATTACKERS} guessing connections | /healthz idle | /healthz attacked | guesses checked | refused (429)\n"
    );
    for r in &rows {
        report.push_str(&format!(
            "{} | {} | {} | {} | {} | {} | {}\n",
            r.name,
            fmt(r.idle),
            fmt(r.attacked),
            r.health_idle.map(fmt).unwrap_or_else(|| "-".into()),
            r.health_attacked.map(fmt).unwrap_or_else(|| "-".into()),
            r.guesses_checked,
            r.guesses_refused
        ));
    }
    let (p, d) = (&rows[0], &rows[2]);
    report.push_str(&format!(
        "p99 under attack, privreg/distribution: {:.3}x\n",
        p.attacked.1 / d.attacked.1
    ));
    println!("{report}");
    let _ = std::fs::write(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-auth.txt"),
        &report,
    );
}
