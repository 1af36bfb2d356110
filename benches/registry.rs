//! privreg against the reference registry (Debian's docker-registry, CNCF
//! Distribution 2.8.2), side by side in one run, both over TLS on loopback, with
//! the same client. Prints each measurement and the ratio privreg/reference.
//!
//!   cargo bench --bench registry            (needs docker-registry and wrk)
//!
//! Scenarios: monolithic push (POST + one PUT) and chunked push (16 MiB PATCHes) of
//! a 256 MiB blob, pull of that blob, manifest GET under 50 connections (wrk:
//! req/s and p99), 32 clients pushing small images at once, peak RSS; and
//! sequential small requests (new TLS connection per request, manifest PUT,
//! tags list, manifest GET, blob HEAD). `BENCH_SMALL=1` runs the small
//! requests only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use support::{free_port, wait_ready, write_pki};

mod support;

/// The tests' harness (SeaweedFS, privreg and Distribution processes) for the
/// S3 lines.
#[path = "../tests/common/mod.rs"]
mod common;

const BIG: usize = 256 << 20;
const CHUNK: usize = 16 << 20;
const RUNS: usize = 3;
const CLIENTS: usize = 32;
/// Requests per sequential measurement.
const SEQUENTIAL: usize = 500;
const IMAGES_PER_CLIENT: usize = 8;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Target {
    name: &'static str,
    url: String,
    pid: u32,
    client: reqwest::Client,
    ca: PathBuf,
}

#[derive(Default, Debug, Clone)]
struct Results {
    mono_mbs: f64,
    chunked_mbs: f64,
    pull_mbs: f64,
    manifest_rps: f64,
    manifest_p99_ms: f64,
    images_per_s: f64,
    peak_rss_mib: f64,
    new_conn_per_s: f64,
    new_conn_p50_ms: f64,
    new_conn_p99_ms: f64,
    manifest_put_per_s: f64,
    tags_list_per_s: f64,
    manifest_get_per_s: f64,
    blob_head_per_s: f64,
}

/// Sequential requests: (requests per second, p50 ms, p99 ms).
struct Sequential {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn sequential(latencies: &mut [Duration], total: Duration) -> Sequential {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    Sequential {
        per_s: latencies.len() as f64 / total.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Runs `one(i)` for i in 0..SEQUENTIAL, one after the other, timing each.
async fn timed<F, Fut>(mut one: F) -> Sequential
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut latencies = Vec::with_capacity(SEQUENTIAL);
    let start = Instant::now();
    for i in 0..SEQUENTIAL {
        let began = Instant::now();
        one(i).await;
        latencies.push(began.elapsed());
    }
    sequential(&mut latencies, start.elapsed())
}

/// A fresh TLS connection for every `GET /v2/` (no pooling), as a node that
/// pulls for the first time or a probe does.
async fn new_connections(t: &Target, fresh: &reqwest::Client) -> Sequential {
    timed(|_| async move {
        let r = fresh.get(format!("{}/v2/", t.url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{} GET /v2/", t.name);
        r.bytes().await.unwrap();
    })
    .await
}

/// Distinct manifests (new content each time) PUT one after the other, each
/// with its own tag.
async fn manifest_puts(t: &Target) -> Sequential {
    let layer = b"layer for the manifest PUT bench".to_vec();
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (ld, cd) = (sha256(&layer), sha256(&config));
    push_monolithic(t, "bench/puts", Bytes::from(layer.clone()), &ld).await;
    push_monolithic(t, "bench/puts", Bytes::from(config.clone()), &cd).await;
    let (ld, cd) = (&ld, &cd);
    let (layer_len, config_len) = (layer.len(), config.len());
    timed(|i| async move {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{layer_len}}}],"annotations":{{"n":"{i}"}}}}"#
        );
        let r = t
            .client
            .put(format!("{}/v2/bench/puts/manifests/t{i}", t.url))
            .header("content-type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{} PUT manifest", t.name);
    })
    .await
}

/// `GET tags/list` of the repository `manifest_puts` filled, one after the other.
async fn tags_lists(t: &Target) -> Sequential {
    timed(|_| async move {
        let r = t
            .client
            .get(format!("{}/v2/bench/puts/tags/list", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} tags list", t.name);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["tags"].as_array().map(Vec::len), Some(SEQUENTIAL));
    })
    .await
}

/// `GET` of the manifests `manifest_puts` stored, by tag, one after the other.
async fn manifest_gets(t: &Target) -> Sequential {
    timed(|i| async move {
        let r = t
            .client
            .get(format!("{}/v2/bench/puts/manifests/t{i}", t.url))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} manifest GET", t.name);
        r.bytes().await.unwrap();
    })
    .await
}

/// `HEAD` of one blob, one after the other.
async fn blob_heads(t: &Target, repo: &str, digest: &str) -> Sequential {
    timed(|_| async move {
        let r = t
            .client
            .head(format!("{}/v2/{repo}/blobs/{digest}", t.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} blob HEAD", t.name);
    })
    .await
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn location(base: &str, r: &reqwest::Response) -> String {
    let loc = r.headers()["location"].to_str().unwrap();
    if loc.starts_with("http") {
        loc.to_owned()
    } else {
        format!("{base}{loc}")
    }
}

fn with_digest(loc: &str, digest: &str) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={digest}")
}

async fn start_upload(t: &Target, repo: &str) -> String {
    let r = t
        .client
        .post(format!("{}/v2/{repo}/blobs/uploads/", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{} POST upload", t.name);
    location(&t.url, &r)
}

async fn push_monolithic(t: &Target, repo: &str, data: Bytes, digest: &str) {
    let loc = start_upload(t, repo).await;
    let r = t
        .client
        .put(with_digest(&loc, digest))
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{} PUT blob", t.name);
}

async fn push_chunked(t: &Target, repo: &str, data: &Bytes, digest: &str) {
    let mut loc = start_upload(t, repo).await;
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + CHUNK).min(data.len());
        let r = t
            .client
            .patch(&loc)
            .header("content-range", format!("{}-{}", offset, end - 1))
            .header("content-type", "application/octet-stream")
            .body(data.slice(offset..end))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{} PATCH", t.name);
        loc = location(&t.url, &r);
        offset = end;
    }
    let r = t
        .client
        .put(with_digest(&loc, digest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{} final PUT", t.name);
}

async fn pull(t: &Target, repo: &str, digest: &str) -> usize {
    let r = t
        .client
        .get(format!("{}/v2/{repo}/blobs/{digest}", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{} GET blob", t.name);
    let mut n = 0;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        n += chunk.unwrap().len();
    }
    n
}

/// Distinct content per run so no registry can skip work for a known digest.
fn big_blob(seed: u64) -> (Bytes, String) {
    let mut data = vec![0u8; BIG];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let digest = sha256(&data);
    (Bytes::from(data), digest)
}

fn mbs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

async fn push_image(t: &Target, repo: &str, tag: &str, seed: u64) {
    let layer: Vec<u8> = (0..64 * 1024)
        .map(|i| (i as u64 * 31 + seed * 7919) as u8)
        .collect();
    let layer = [seed.to_le_bytes().as_slice(), &layer].concat();
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let (ld, cd) = (sha256(&layer), sha256(&config));
    push_monolithic(t, repo, Bytes::from(layer.clone()), &ld).await;
    push_monolithic(t, repo, Bytes::from(config.clone()), &cd).await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let r = t
        .client
        .put(format!("{}/v2/{repo}/manifests/{tag}", t.url))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{} PUT manifest", t.name);
}

fn wrk_manifest(t: &Target, ca_dir: &Path) -> (f64, f64) {
    let _ = ca_dir;
    wrk_manifest_at(t.name, &t.url, 50)
}

/// wrk's manifest GETs on `url` over `connections`: (req/s, p99 ms).
fn wrk_manifest_at(name: &str, url: &str, connections: usize) -> (f64, f64) {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            "-d8s",
            "--latency",
            "-H",
            &format!("Accept: {OCI_MANIFEST}"),
        ])
        .arg(format!("{url}/v2/bench/small/manifests/v1"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let p99 = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(parse_wrk_duration)
        .unwrap_or(f64::NAN);
    if text.contains("Non-2xx") {
        panic!("{name}: wrk saw errors:\n{text}");
    }
    (rps, p99)
}

fn parse_wrk_duration(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => v,
    }
}

/// Monolithic and chunked pushes and pulls of 256 MiB blobs, then blob HEADs.
async fn big_blobs(t: &Target, res: &mut Results) {
    let mut mono = Duration::ZERO;
    let mut chunked = Duration::ZERO;
    let mut pulled = Duration::ZERO;
    let mut last = String::new();
    for run in 0..RUNS {
        let (data, digest) = big_blob(run as u64 * 2 + 1);
        let start = Instant::now();
        push_monolithic(t, "bench/big", data, &digest).await;
        mono += start.elapsed();

        let (data, digest) = big_blob(run as u64 * 2 + 2);
        let start = Instant::now();
        push_chunked(t, "bench/big", &data, &digest).await;
        chunked += start.elapsed();
        drop(data);

        let start = Instant::now();
        assert_eq!(pull(t, "bench/big", &digest).await, BIG);
        pulled += start.elapsed();
        last = digest;
    }
    res.blob_head_per_s = blob_heads(t, "bench/big", &last).await.per_s;
    res.mono_mbs = mbs(BIG * RUNS, mono);
    res.chunked_mbs = mbs(BIG * RUNS, chunked);
    res.pull_mbs = mbs(BIG * RUNS, pulled);
}

/// `BENCH_SMALL=1`: only the small-request lines (no 256 MiB pushes, no
/// wrk, no concurrent image pushes), for quick iterations on the request path.
fn small_only() -> bool {
    std::env::var_os("BENCH_SMALL").is_some()
}

async fn measure(t: &Target, dir: &Path) -> Results {
    let mut res = Results::default();
    if small_only() {
        let blob = b"blob for the HEAD bench".to_vec();
        let digest = sha256(&blob);
        push_monolithic(t, "bench/big", Bytes::from(blob), &digest).await;
        res.blob_head_per_s = blob_heads(t, "bench/big", &digest).await.per_s;
    } else {
        big_blobs(t, &mut res).await;
    }
    let fresh = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap(),
        )
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let conns = new_connections(t, &fresh).await;
    res.new_conn_per_s = conns.per_s;
    res.new_conn_p50_ms = conns.p50_ms;
    res.new_conn_p99_ms = conns.p99_ms;
    res.manifest_put_per_s = manifest_puts(t).await.per_s;
    res.tags_list_per_s = tags_lists(t).await.per_s;
    res.manifest_get_per_s = manifest_gets(t).await.per_s;

    if small_only() {
        return res;
    }
    push_image(t, "bench/small", "v1", 424242).await;
    let (rps, p99) = wrk_manifest(t, dir);
    res.manifest_rps = rps;
    res.manifest_p99_ms = p99;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let t2 = Target {
            name: t.name,
            url: t.url.clone(),
            pid: t.pid,
            client: t.client.clone(),
            ca: t.ca.clone(),
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..IMAGES_PER_CLIENT {
                let seed = (c * 1000 + i) as u64 + 1;
                push_image(&t2, &format!("bench/c{c}"), &format!("t{i}"), seed).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    res.images_per_s = (CLIENTS * IMAGES_PER_CLIENT) as f64 / start.elapsed().as_secs_f64();
    res.peak_rss_mib = peak_rss_mib(t.pid);
    res
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (ca_path, cert, key) = write_pki(root);
    if std::env::var_os("BENCH_S3").is_some() {
        return s3::main(root, &ca_path, &cert, &key);
    }

    // The reference registry, through the same script the tests use.
    let ref_port = free_port();
    let ref_data = root.join("reference").join("data");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reference-registry.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&ref_data)
        .arg(ref_port.to_string())
        .arg(&cert)
        .arg(&key)
        .output()
        .expect("start docker-registry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ref_pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    struct StopRef(PathBuf, PathBuf);
    impl Drop for StopRef {
        fn drop(&mut self) {
            let _ = Command::new("bash")
                .arg(&self.0)
                .arg("--stop")
                .arg(&self.1)
                .status();
        }
    }
    let _stop_ref = StopRef(script.clone(), ref_data.clone());

    let port = free_port();
    let privreg = Proc(
        Command::new(env!("CARGO_BIN_EXE_privreg"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(root.join("privreg"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start privreg"),
    );
    wait_ready(port);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let targets = [
        Target {
            name: "privreg",
            url: format!("https://127.0.0.1:{port}"),
            pid: privreg.0.id(),
            client: client(&ca_path),
            ca: ca_path.clone(),
        },
        Target {
            name: "distribution",
            url: format!("https://127.0.0.1:{ref_port}"),
            pid: ref_pid,
            client: client(&ca_path),
            ca: ca_path.clone(),
        },
    ];
    // BENCH_ONLY=privreg measures one side only (for profiling); no ratios then.
    let only = std::env::var("BENCH_ONLY").ok();
    let mut results = Vec::new();
    for t in targets
        .iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == t.name))
    {
        eprintln!("measuring {} ...", t.name);
        results.push(rt.block_on(measure(t, root)));
    }
    if results.len() < 2 {
        println!("{:#?}", results);
        return;
    }
    let (p, d) = (&results[0], &results[1]);
    let rows: [(&str, f64, f64, &str, &str); 14] = [
        (
            "new TLS connection + GET /v2/, sequential (per s)",
            p.new_conn_per_s,
            d.new_conn_per_s,
            "higher",
            ">= 2x",
        ),
        (
            "  its p50 (ms)",
            p.new_conn_p50_ms,
            d.new_conn_p50_ms,
            "lower",
            "",
        ),
        (
            "  its p99 (ms)",
            p.new_conn_p99_ms,
            d.new_conn_p99_ms,
            "lower",
            "",
        ),
        (
            "manifest PUT, sequential (per s)",
            p.manifest_put_per_s,
            d.manifest_put_per_s,
            "higher",
            ">= 3x",
        ),
        (
            "tags list (500 tags), sequential (per s)",
            p.tags_list_per_s,
            d.tags_list_per_s,
            "higher",
            "",
        ),
        (
            "manifest GET, sequential (per s)",
            p.manifest_get_per_s,
            d.manifest_get_per_s,
            "higher",
            ">= 4x",
        ),
        (
            "blob HEAD, sequential (per s)",
            p.blob_head_per_s,
            d.blob_head_per_s,
            "higher",
            ">= 4x",
        ),
        (
            "monolithic push 256 MiB (MB/s)",
            p.mono_mbs,
            d.mono_mbs,
            "higher",
            ">= 2.5x",
        ),
        (
            "chunked push 256 MiB (MB/s)",
            p.chunked_mbs,
            d.chunked_mbs,
            "higher",
            ">= 4x",
        ),
        ("pull 256 MiB (MB/s)", p.pull_mbs, d.pull_mbs, "higher", ""),
        (
            "manifest GET, 50 conns (req/s)",
            p.manifest_rps,
            d.manifest_rps,
            "higher",
            ">= 5x",
        ),
        (
            "manifest GET p99 (ms)",
            p.manifest_p99_ms,
            d.manifest_p99_ms,
            "lower",
            "",
        ),
        (
            "32 clients pushing images (images/s)",
            p.images_per_s,
            d.images_per_s,
            "higher",
            ">= 3x",
        ),
        (
            "peak RSS (MiB)",
            p.peak_rss_mib,
            d.peak_rss_mib,
            "lower",
            "<= 0.5x",
        ),
    ];
    let mut report =
        String::from("metric | privreg | distribution 2.8.2 | privreg/distribution | aim\n");
    for (name, a, b, better, aim) in rows {
        if a == 0.0 && b == 0.0 {
            continue; // not measured (BENCH_SMALL)
        }
        report.push_str(&format!(
            "{name} | {a:.1} | {b:.1} | {:.2}x ({better} is better) | {aim}\n",
            a / b
        ));
    }
    println!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-report.txt");
    let _ = std::fs::write(out, &report);
}

/// `BENCH_S3=1`: the object-storage lines. privreg and Distribution each on
/// their own prefix of one SeaweedFS bucket on loopback (built by
/// scripts/test-tools.sh), through the same client: pushes, pull, manifest
/// GETs under load; and the manifest GETs again with a second privreg
/// replica on the same bucket (two wrk runs at once, 25 connections on each
/// replica, against 50 on one). The pull is measured in both modes on both:
/// streaming (privreg's default; a second Distribution on the same prefix
/// with `redirect: disable`) and redirecting to presigned URLs
/// (Distribution's default; a third privreg replica).
mod s3 {
    use super::*;

    pub fn main(root: &Path, ca: &Path, cert: &Path, key: &Path) {
        let s3 = common::daemons::SeaweedFs::start(root, "bench")
            .expect("SeaweedFS (scripts/test-tools.sh builds it)");
        let replica = |n: usize, extra: &[&str]| {
            let data = root.join(format!("privreg-{n}"));
            let mut args: Vec<String> = [
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec();
            args.extend(extra.iter().map(|a| a.to_string()));
            s3.start_privreg(&data, "privreg", &args)
        };
        let (first, second) = (replica(1, &[]), replica(2, &[]));
        // A third, redirecting blob GETs to presigned URLs as Distribution
        // does by default: the pull line like for like.
        let redirecting = replica(3, &["--s3-redirect-seconds", "300"]);
        let registry = common::tool("docker-registry", "DOCKER_REGISTRY").expect("docker-registry");
        let storage = s3.distribution_storage("distribution");
        let reference = common::daemons::DockerRegistry::start_with_storage(
            &registry,
            &root.join("distribution"),
            &storage,
            cert,
            key,
        );
        // The same storage, streaming blob GETs itself: the pull like for
        // like with privreg's default.
        let streaming = common::daemons::DockerRegistry::start_with_storage(
            &registry,
            &root.join("distribution-streaming"),
            &format!("{storage}  redirect:\n    disable: true\n"),
            cert,
            key,
        );
        let targets = [
            Target {
                name: "privreg",
                url: first.url(),
                pid: first.pid().unwrap_or(0),
                client: client(ca),
                ca: ca.to_owned(),
            },
            Target {
                name: "distribution",
                url: reference.url(),
                pid: 0,
                client: client(ca),
                ca: ca.to_owned(),
            },
        ];
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut results = Vec::new();
        for t in &targets {
            eprintln!("measuring {} on S3 ...", t.name);
            let mut res = Results::default();
            rt.block_on(async {
                big_blobs(t, &mut res).await;
                push_image(t, "bench/small", "v1", 424242).await;
            });
            (res.manifest_rps, res.manifest_p99_ms) = wrk_manifest_at(t.name, &t.url, 50);
            results.push(res);
        }
        // The blobs each pushed, pulled again through the other mode: privreg
        // redirecting, Distribution streaming.
        let pull_again = |name: &'static str, url: String| {
            let target = Target {
                name,
                url,
                pid: 0,
                client: client(ca),
                ca: ca.to_owned(),
            };
            rt.block_on(async {
                let mut pulled = Duration::ZERO;
                for run in 0..RUNS {
                    let (data, digest) = big_blob(run as u64 * 2 + 1);
                    drop(data);
                    let start = Instant::now();
                    assert_eq!(pull(&target, "bench/big", &digest).await, BIG);
                    pulled += start.elapsed();
                }
                mbs(BIG * RUNS, pulled)
            })
        };
        let redirect_pull_mbs = pull_again("privreg (redirecting)", redirecting.url());
        let distribution_stream_mbs = pull_again("distribution (streaming)", streaming.url());
        // The second replica: both serve at once, half the connections each.
        let two_rps = wrk_manifest_over_both("privreg replica", [first.url(), second.url()]);
        // The same with each replica held to a CPU limit, as a pod's would
        // be: on this host the replicas otherwise share the two cores with
        // the S3 server and the load generator, so a second replica has no
        // CPU of its own to add.
        let limited = (|| {
            let one = CpuLimit::apply(first.pid()?, "privreg-bench-1", REPLICA_MILLICPU)?;
            let alone = wrk_manifest_at("privreg, 1 limited replica", &first.url(), 50).0;
            let two = CpuLimit::apply(second.pid()?, "privreg-bench-2", REPLICA_MILLICPU)?;
            let pair =
                wrk_manifest_over_both("privreg limited replica", [first.url(), second.url()]);
            drop((one, two));
            Some((alone, pair))
        })();
        let (p, d) = (&results[0], &results[1]);
        let rows = [
            (
                "monolithic push 256 MiB (MB/s)",
                p.mono_mbs,
                d.mono_mbs,
                "higher",
            ),
            (
                "chunked push 256 MiB (MB/s)",
                p.chunked_mbs,
                d.chunked_mbs,
                "higher",
            ),
            (
                "pull 256 MiB, both streaming (MB/s)",
                p.pull_mbs,
                distribution_stream_mbs,
                "higher",
            ),
            (
                "pull 256 MiB, privreg streaming, Distribution redirecting (each's default) (MB/s)",
                p.pull_mbs,
                d.pull_mbs,
                "higher",
            ),
            (
                "pull 256 MiB, both redirecting (MB/s)",
                redirect_pull_mbs,
                d.pull_mbs,
                "higher",
            ),
            (
                "blob HEAD, sequential (per s)",
                p.blob_head_per_s,
                d.blob_head_per_s,
                "higher",
            ),
            (
                "manifest GET, 50 conns (req/s)",
                p.manifest_rps,
                d.manifest_rps,
                "higher",
            ),
            (
                "manifest GET p99 (ms)",
                p.manifest_p99_ms,
                d.manifest_p99_ms,
                "lower",
            ),
        ];
        let mut report = String::from(
            "metric (S3: SeaweedFS on loopback) | privreg | distribution 2.8.2 | privreg/distribution\n",
        );
        for (name, a, b, better) in rows {
            report.push_str(&format!(
                "{name} | {a:.1} | {b:.1} | {:.2}x ({better} is better)\n",
                a / b
            ));
        }
        report.push_str(&format!(
            "manifest GET, 50 conns over 2 privreg replicas (req/s) | {two_rps:.1} | | {:.2}x one replica\n",
            two_rps / p.manifest_rps
        ));
        match limited {
            Some((alone, pair)) => report.push_str(&format!(
                "manifest GET, 50 conns, each replica limited to {REPLICA_MILLICPU}m CPU: 1 replica / 2 replicas (req/s) | {alone:.1} / {pair:.1} | | {:.2}x one replica\n",
                pair / alone
            )),
            None => report.push_str("manifest GET with CPU-limited replicas | not measured (needs root and the cgroup cpu controller) | |\n"),
        }
        println!("{report}");
        let _ = std::fs::write(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("bench-report-s3.txt"),
            &report,
        );
    }

    /// Manifest GETs on two replicas at once, 25 connections each (50 in
    /// all, as on one); their summed rate.
    fn wrk_manifest_over_both(name: &str, urls: [String; 2]) -> f64 {
        std::thread::scope(|scope| {
            urls.map(|url| scope.spawn(move || wrk_manifest_at(name, &url, 25).0))
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        })
    }

    /// CPU of each replica in the limited lines, in thousandths of a core.
    const REPLICA_MILLICPU: u32 = 300;

    /// A process held to a CPU quota in a cgroup of its own (v2, or v1's cpu
    /// controller); moved back and the cgroup removed on drop.
    struct CpuLimit {
        dir: PathBuf,
        parent: PathBuf,
        pid: u32,
    }

    impl CpuLimit {
        fn apply(pid: u32, name: &str, millicpu: u32) -> Option<CpuLimit> {
            let v2 = Path::new("/sys/fs/cgroup");
            let v1 = Path::new("/sys/fs/cgroup/cpu");
            let (parent, quota_file, quota) = if v2.join("cgroup.controllers").exists() {
                let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
                (v2, "cpu.max", format!("{} 100000", millicpu * 100))
            } else if v1.join("cpu.cfs_quota_us").exists() {
                (v1, "cpu.cfs_quota_us", (millicpu * 100).to_string())
            } else {
                return None;
            };
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir).ok()?;
            let limit = CpuLimit {
                dir: dir.clone(),
                parent: parent.to_owned(),
                pid,
            };
            std::fs::write(dir.join(quota_file), quota).ok()?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).ok()?;
            Some(limit)
        }
    }

    impl Drop for CpuLimit {
        fn drop(&mut self) {
            let _ = std::fs::write(self.parent.join("cgroup.procs"), self.pid.to_string());
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}
