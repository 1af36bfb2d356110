//! Crashes and broken clients over real sockets: kill -9 during many concurrent
//! pushes loses nothing that was acknowledged and shows nothing half-written; a
//! client that hangs up mid-body leaves nothing behind; upload sessions survive a
//! restart.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::oci::{
    OCI_MANIFEST, get_bytes, image_manifest, push_chunked, push_manifest, push_monolithic,
    random_bytes, start_upload,
};
use common::rawtls::{TlsConn, client_config};
use common::{Privreg, free_port, https_client, sha256, store};

const WORKERS: usize = 32;
/// Each worker stops after this many images even if nothing kills the server.
const MAX_ROUNDS: usize = 500;

/// What a worker pushed and the registry acknowledged with 201.
#[derive(Clone, Debug)]
enum Acked {
    Blob {
        repo: String,
        digest: String,
        len: usize,
    },
    Manifest {
        repo: String,
        tag: String,
        digest: String,
        bytes: Vec<u8>,
    },
}

#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<Acked>>,
    /// Every blob or manifest a worker began to push: (repo, digest, tag).
    attempted: Mutex<Vec<(String, String, Option<String>)>>,
    acked_manifests: AtomicUsize,
    in_flight: AtomicUsize,
    stop: AtomicBool,
}

impl Ledger {
    fn attempt(&self, repo: &str, digest: &str, tag: Option<&str>) {
        self.attempted.lock().unwrap().push((
            repo.to_owned(),
            digest.to_owned(),
            tag.map(str::to_owned),
        ));
    }

    fn ack(&self, a: Acked) {
        if matches!(a, Acked::Manifest { .. }) {
            self.acked_manifests.fetch_add(1, Ordering::SeqCst);
        }
        self.acked.lock().unwrap().push(a);
    }
}

/// Pushes images (config, one layer, manifest under a fresh tag) until the server
/// goes away or `stop` is set. Even workers push layers in one POST, odd ones in
/// 64 KiB chunks.
async fn worker(
    id: usize,
    generation: usize,
    base: String,
    client: reqwest::Client,
    ledger: Arc<Ledger>,
) {
    let repo = format!("crash/g{generation}/w{id:02}");
    for round in 0..MAX_ROUNDS {
        if ledger.stop.load(Ordering::SeqCst) {
            return;
        }
        let config = format!(
            r#"{{"os":"linux","worker":{id},"round":{round},"salt":"{}"}}"#,
            hex::encode(random_bytes(8))
        );
        let chunked = id % 2 == 1;
        let layer_len = if chunked {
            256 * 1024 + (id * 7919 + round * 104_729) % (1024 * 1024)
        } else {
            4096 + (id * 7919 + round * 104_729) % (192 * 1024)
        };
        let layer = random_bytes(layer_len);

        ledger.in_flight.fetch_add(1, Ordering::SeqCst);
        let outcome = async {
            let cd = sha256(config.as_bytes());
            ledger.attempt(&repo, &cd, None);
            push_monolithic(&client, &base, &repo, config.as_bytes().to_vec()).await?;
            ledger.ack(Acked::Blob {
                repo: repo.clone(),
                digest: cd,
                len: config.len(),
            });

            let ld = sha256(&layer);
            ledger.attempt(&repo, &ld, None);
            if chunked {
                push_chunked(&client, &base, &repo, &layer, 64 * 1024).await?;
            } else {
                push_monolithic(&client, &base, &repo, layer.clone()).await?;
            }
            ledger.ack(Acked::Blob {
                repo: repo.clone(),
                digest: ld,
                len: layer.len(),
            });

            let manifest = image_manifest(
                OCI_MANIFEST,
                config.as_bytes(),
                &[&layer],
                serde_json::json!({}),
            );
            let md = sha256(&manifest);
            let tag = format!("r{round}");
            ledger.attempt(&repo, &md, Some(&tag));
            push_manifest(&client, &base, &repo, &tag, OCI_MANIFEST, manifest.clone()).await?;
            ledger.ack(Acked::Manifest {
                repo: repo.clone(),
                tag,
                digest: md,
                bytes: manifest,
            });
            Ok::<(), String>(())
        }
        .await;
        ledger.in_flight.fetch_sub(1, Ordering::SeqCst);
        if outcome.is_err() {
            // The server is gone (killed): this push was never acknowledged.
            return;
        }
    }
}

/// Everything acknowledged pulls back byte-identical; everything merely attempted
/// is either absent or whole; the files on disk are consistent.
async fn verify_after_crash(reg: &Privreg, ledger: &Ledger) -> (usize, usize) {
    let counts = verify_acknowledged(&reg.url(), &https_client(&reg.ca()), ledger).await;
    store::assert_consistent(&reg.data);
    counts
}

/// Every acknowledged push reads back identical from `base`; every other one
/// is absent or whole. Returns (acknowledged, interrupted).
async fn verify_acknowledged(
    base: &str,
    client: &reqwest::Client,
    ledger: &Ledger,
) -> (usize, usize) {
    let (client, base) = (client.clone(), base.to_owned());
    let acked = ledger.acked.lock().unwrap().clone();
    for a in &acked {
        match a {
            Acked::Blob { repo, digest, len } => {
                let (status, body) =
                    get_bytes(&client, &format!("{base}/v2/{repo}/blobs/{digest}")).await;
                assert_eq!(status, 200, "acknowledged blob {digest} in {repo} is lost");
                assert_eq!(
                    body.len(),
                    *len,
                    "acknowledged blob {digest} has the wrong size"
                );
                assert_eq!(
                    &sha256(&body),
                    digest,
                    "acknowledged blob {digest} is corrupt"
                );
            }
            Acked::Manifest {
                repo,
                tag,
                digest,
                bytes,
            } => {
                for reference in [tag, digest] {
                    let r = client
                        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
                        .header("accept", OCI_MANIFEST)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(
                        r.status(),
                        200,
                        "acknowledged manifest {repo}:{reference} is lost"
                    );
                    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
                    assert_eq!(
                        &r.bytes().await.unwrap()[..],
                        &bytes[..],
                        "{repo}:{reference}"
                    );
                }
            }
        }
    }
    let acked_digests: std::collections::HashSet<&str> = acked
        .iter()
        .map(|a| match a {
            Acked::Blob { digest, .. } | Acked::Manifest { digest, .. } => digest.as_str(),
        })
        .collect();
    let attempted = ledger.attempted.lock().unwrap().clone();
    let mut unacked = 0;
    for (repo, digest, tag) in &attempted {
        if acked_digests.contains(digest.as_str()) {
            continue;
        }
        unacked += 1;
        // Blob or manifest: whatever is visible must be whole.
        for url in [
            format!("{base}/v2/{repo}/blobs/{digest}"),
            format!("{base}/v2/{repo}/manifests/{digest}"),
        ] {
            let (status, body) = get_bytes(&client, &url).await;
            assert!(status == 200 || status == 404, "{url}: {status}");
            if status == 200 {
                assert_eq!(&sha256(&body), digest, "{url} is visible but not whole");
            }
        }
        if let Some(tag) = tag {
            let (status, body) =
                get_bytes(&client, &format!("{base}/v2/{repo}/manifests/{tag}")).await;
            assert!(status == 200 || status == 404, "{repo}:{tag}: {status}");
            if status == 200 {
                assert_eq!(
                    &sha256(&body),
                    digest,
                    "tag {repo}:{tag} points at something half-written"
                );
            }
        }
    }
    (acked.len(), unacked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = Privreg::start(&data, &[]);
    for generation in 0..2 {
        let ledger = Arc::new(Ledger::default());
        let client = https_client(&reg.ca());
        let tasks: Vec<_> = (0..WORKERS)
            .map(|i| {
                tokio::spawn(worker(
                    i,
                    generation,
                    reg.url(),
                    client.clone(),
                    ledger.clone(),
                ))
            })
            .collect();

        let in_flight = crash_midway(&ledger, tasks, &mut reg, None).await;
        let sessions_left = store::upload_dirs(&data).len();

        reg.restart();
        let (acked, unacked) = verify_after_crash(&reg, &ledger).await;
        eprintln!(
            "generation {generation}: {acked} acknowledged pushes intact, {unacked} interrupted ones \
             absent or whole, {in_flight} in flight at the kill, {sessions_left} sessions left open"
        );
        assert!(unacked > 0, "some pushes were interrupted");

        // The registry takes pushes again, including content whose push was cut off.
        let client = https_client(&reg.ca());
        let again = push_monolithic(&client, &reg.url(), "crash/after", random_bytes(10_000)).await;
        assert!(again.is_ok(), "{again:?}");
    }
    reg.stop();
}

/// Lets a good number of images through, then kills `victim` with SIGKILL in
/// the middle of the rest and waits (bounded) for every worker; returns the
/// pushes in flight at the kill. `other`'s log joins the victim's on failure.
async fn crash_midway(
    ledger: &Ledger,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    victim: &mut Privreg,
    other: Option<&Privreg>,
) -> usize {
    let logs = || {
        format!(
            "{}\n{}",
            victim.log(),
            other.map(Privreg::log).unwrap_or_default()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while ledger.acked_manifests.load(Ordering::SeqCst) < 48 {
        assert!(
            Instant::now() < deadline,
            "workers pushed too little: {}",
            logs()
        );
        assert!(
            tasks.iter().any(|t| !t.is_finished()),
            "all workers stopped early: {}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let in_flight = ledger.in_flight.load(Ordering::SeqCst);
    victim.kill9();
    ledger.stop.store(true, Ordering::SeqCst);
    assert!(in_flight > 0, "the kill should hit pushes in progress");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a worker hung after the kill")
            .unwrap();
    }
    in_flight
}

/// Sum of `privreg_http_requests_total` samples whose labels contain `labels`.
fn request_count(metrics: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("privreg_http_requests_total{") && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits (bounded) until the server has answered `n` requests matching `labels`.
async fn wait_for_requests(port: u16, labels: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(port).await;
        if request_count(&text, labels) >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {n} requests {labels}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_upload_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mport = free_port();
    let mut reg = Privreg::start(&data, &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    let client = https_client(&reg.ca());
    let base = reg.url();
    let blob = random_bytes(8 << 20);
    let digest = sha256(&blob);

    // A session holding the first 1000 bytes.
    let location = start_upload(&client, &base, "cut").await;
    let r = client
        .patch(format!("{base}{location}"))
        .header("content-range", "0-999")
        .body(blob[..1000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let session_file = {
        let id = location.rsplit('/').next().unwrap();
        store::v2(&data)
            .join("repositories/cut/_uploads")
            .join(id)
            .join("data")
    };
    let check_session = |what: &str| {
        assert_eq!(
            std::fs::read(&session_file).unwrap(),
            blob[..1000],
            "{what}: the session changed"
        );
        assert!(
            !store::blob_path(&data, &digest).exists(),
            "{what}: a blob appeared"
        );
    };

    // 1. Raw TLS: a chunk announced as 8 MiB, 3 MiB sent, then the connection drops.
    let (addr, ca) = (reg.addr(), reg.ca());
    let (loc, part) = (location.clone(), blob[1000..1000 + (3 << 20)].to_vec());
    let total = blob.len() - 1000;
    tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::connect(addr, client_config(&ca, &[])).unwrap();
        conn.send_head(
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", total.to_string()),
                ("Content-Range", format!("1000-{}", 1000 + total - 1)),
            ],
        )
        .unwrap();
        for piece in part.chunks(64 * 1024) {
            conn.send_body(piece).unwrap();
        }
        conn.abort();
    })
    .await
    .unwrap();
    wait_for_requests(mport, r#"endpoint="upload",method="PATCH""#, 2).await;
    let r = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-999");
    check_session("raw TLS PATCH cut off");

    // 2. reqwest: a streamed PATCH whose body stream fails after 2 MiB.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = blob[1000..1000 + (2 << 20)]
        .chunks(256 * 1024)
        .map(|c| Ok(c.to_vec()))
        .chain([Err(std::io::Error::other("the client gave up"))])
        .collect();
    let r = client
        .patch(format!("{base}{location}"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await;
    assert!(
        r.is_err(),
        "the aborted request cannot have an answer: {r:?}"
    );
    wait_for_requests(mport, r#"endpoint="upload",method="PATCH""#, 3).await;
    let r = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["range"], "0-999");
    check_session("aborted reqwest PATCH");

    // 3. Raw TLS: a monolithic POST cut off half-way.
    let (addr, ca) = (reg.addr(), reg.ca());
    let (d, part, len) = (digest.clone(), blob[..4 << 20].to_vec(), blob.len());
    tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::connect(addr, client_config(&ca, &[])).unwrap();
        conn.send_head(
            "POST",
            &format!("/v2/cut/blobs/uploads/?digest={d}"),
            &[
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", len.to_string()),
            ],
        )
        .unwrap();
        for piece in part.chunks(64 * 1024) {
            conn.send_body(piece).unwrap();
        }
        conn.abort();
    })
    .await
    .unwrap();
    wait_for_requests(mport, r#"endpoint="upload_start",method="POST""#, 2).await;
    check_session("monolithic POST cut off");
    assert_eq!(
        store::upload_dirs(&data),
        vec![session_file.parent().unwrap().to_owned()],
        "the cut-off POST left a session behind"
    );
    let r = client
        .head(format!("{base}/v2/cut/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    store::assert_consistent(&data);

    // The session still finishes, byte-exact.
    let r = client
        .put(format!("{base}{location}?digest={digest}"))
        .header("content-range", format!("1000-{}", blob.len() - 1))
        .body(blob[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (status, body) = get_bytes(&client, &format!("{base}/v2/cut/blobs/{digest}")).await;
    assert_eq!(status, 200);
    assert!(body == blob, "the finished blob differs");
    reg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_session_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = Privreg::start(&data, &[]);
    let blob = random_bytes(3 << 20);
    let digest = sha256(&blob);
    let (a, b) = (1 << 20, 2 << 20);

    let client = https_client(&reg.ca());
    let base = reg.url();
    let location = start_upload(&client, &base, "keep/me").await;
    let r = client
        .patch(format!("{base}{location}"))
        .header("content-range", format!("0-{}", a - 1))
        .body(blob[..a].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // A graceful restart.
    reg.restart();
    let client = https_client(&reg.ca());
    let r = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", a - 1)
    );
    let r = client
        .patch(format!("{base}{location}"))
        .header("content-range", format!("{a}-{}", b - 1))
        .body(blob[a..b].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", b - 1)
    );

    // A crash.
    reg.kill9();
    reg.restart();
    let client = https_client(&reg.ca());
    let r = client
        .get(format!("{base}{location}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", b - 1)
    );
    // A chunk out of order is still refused against the restored size.
    let r = client
        .patch(format!("{base}{location}"))
        .header("content-range", format!("0-{}", a - 1))
        .body(blob[..a].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["range"].to_str().unwrap(),
        format!("0-{}", b - 1)
    );

    let r = client
        .put(format!("{base}{location}?digest={digest}"))
        .body(blob[b..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let (status, body) = get_bytes(&client, &format!("{base}/v2/keep/me/blobs/{digest}")).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
    assert!(store::upload_dirs(&data).is_empty());
    reg.stop();
}

/// The checker above has teeth: a torn blob file or a dangling link fails it.
#[test]
fn consistency_check_catches_torn_blobs_and_dangling_links() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let blob = random_bytes(1000);
    let digest = sha256(&blob);
    let path = store::blob_path(&data, &digest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &blob).unwrap();
    assert_eq!(store::assert_consistent(&data), 1);

    std::fs::write(&path, &blob[..500]).unwrap();
    let torn = std::panic::catch_unwind(|| store::assert_consistent(&data));
    assert!(torn.is_err(), "a torn blob file must be caught");
    std::fs::write(&path, &blob).unwrap();

    let (_, hex) = digest.split_once(':').unwrap();
    let other = sha256(b"never stored");
    let link = store::v2(&data)
        .join("repositories/r/_layers/sha256")
        .join(hex);
    std::fs::create_dir_all(&link).unwrap();
    std::fs::write(link.join("link"), &other).unwrap();
    let dangling = std::panic::catch_unwind(|| store::assert_consistent(&data));
    assert!(dangling.is_err(), "a link to a missing blob must be caught");
}

/// Two replicas on one S3 bucket behind a per-request round-robin; one is
/// killed with SIGKILL while 32 clients push through both: every push that
/// was acknowledged pulls back identical through the other replica, and what
/// was cut off is absent or whole there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_one_s3_replica_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = common::daemons::SeaweedFs::start(dir.path(), "crash") else {
        return;
    };
    let pki = common::pki::TestPki::loopback(&dir.path().join("pki"));
    let replica = |n: usize| {
        let data = dir.path().join(format!("replica-{n}"));
        s3.start_privreg(&data, "crash", &pki.privreg_args())
    };
    let (mut doomed, survivor) = (replica(1), replica(2));
    let proxy = common::round_robin::RoundRobin::start(
        vec![doomed.url(), survivor.url()],
        &pki.server_cert,
        &pki.server_key,
        &pki.ca,
    );
    let client = https_client(&pki.ca);
    let ledger = Arc::new(Ledger::default());
    let tasks: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(i, 0, proxy.url(), client.clone(), ledger.clone())))
        .collect();
    let in_flight = crash_midway(&ledger, tasks, &mut doomed, Some(&survivor)).await;
    let (acked, unacked) = verify_acknowledged(&survivor.url(), &client, &ledger).await;
    eprintln!(
        "{acked} acknowledged pushes intact through the surviving replica, {unacked} \
         interrupted ones absent or whole, {in_flight} in flight at the kill; \
         requests per replica {:?}",
        proxy.counts()
    );
    assert!(proxy.counts().iter().all(|&c| c > 0));
    // The surviving replica takes pushes, including content cut off before.
    let again = push_monolithic(
        &client,
        &survivor.url(),
        "crash/after",
        random_bytes(10_000),
    )
    .await;
    assert!(again.is_ok(), "{again:?}");
}

/// A replica killed by SIGKILL in the middle of a large request body leaves
/// an S3 multipart upload behind: invisible, but its parts are stored. The
/// upload purge of a registry on the same bucket (the surviving replica)
/// aborts it and removes its record, so nothing of the request remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_body_on_s3_leaves_nothing_after_the_purge() {
    use privreg::registry::storage::s3::S3Driver;
    use privreg::registry::storage::{StorageDriver as _, Store};
    use privreg::registry::{AppState, RegistryConfig, metrics::Metrics};

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = common::daemons::SeaweedFs::start(dir.path(), "killed") else {
        return;
    };
    let pki = common::pki::TestPki::loopback(&dir.path().join("pki"));
    let mut doomed = s3.start_privreg(&dir.path().join("doomed"), "killed", &pki.privreg_args());
    let client = https_client(&pki.ca);
    let location = start_upload(&client, &doomed.url(), "cut").await;

    // 40 MiB of an announced 64 MiB: two parts sent, the third filling.
    let (addr, ca) = (doomed.addr(), pki.ca.clone());
    let conn = tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::connect(addr, client_config(&ca, &[])).unwrap();
        conn.send_head(
            "PATCH",
            &location,
            &[
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", (64u64 << 20).to_string()),
            ],
        )
        .unwrap();
        let piece = vec![7u8; 1 << 20];
        for _ in 0..40 {
            conn.send_body(&piece).unwrap();
        }
        conn
    })
    .await
    .unwrap();

    let driver = {
        let config = s3.config("killed");
        tokio::task::spawn_blocking(move || S3Driver::new(&config))
            .await
            .unwrap()
            .unwrap()
    };
    let records = || {
        let d = driver.clone();
        tokio::task::spawn_blocking(move || d.list(std::path::Path::new("privreg/multipart")))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while records().await.unwrap().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no multipart upload was recorded: {}",
            doomed.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.kill9();
    drop(conn);
    let left = s3.unfinished_multipart_uploads().await;
    assert_eq!(left.len(), 1, "the kill should leave one upload: {left:?}");

    let store = Store::in_bucket(driver.clone());
    let state = AppState::new(
        store,
        None,
        RegistryConfig::default(),
        Arc::new(Metrics::new()),
    );
    // The session itself is the registry's to purge by age; the multipart
    // upload is aborted by the same purge.
    state.uploads.purge(Duration::ZERO).await.unwrap();
    assert_eq!(
        s3.unfinished_multipart_uploads().await,
        Vec::<String>::new()
    );
    assert_eq!(records().await.unwrap().unwrap(), Vec::<String>::new());
    let d = driver.clone();
    let uploads = tokio::task::spawn_blocking(move || {
        d.list(std::path::Path::new(
            "docker/registry/v2/repositories/cut/_uploads",
        ))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(uploads.is_empty(), "{uploads:?}");
}
