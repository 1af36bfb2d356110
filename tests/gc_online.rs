//! Online garbage collection under load: pushers overwrite their tags with
//! images that share layers, a deleter removes old revisions, and collections
//! (with and without --delete-untagged) run back to back, all at once for a
//! bounded time. No push may fail because a collection deleted what it was
//! about to reference; afterwards every tag pulls byte-identical, and once the
//! grace period has passed nothing unreferenced remains.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

use common::daemons::SeaweedFs;
use common::oci::{OCI_MANIFEST, image_manifest, random_bytes};
use common::sha256;
use common::tools_required;
use privreg::registry::metrics::Metrics;
use privreg::registry::storage::Store;
use privreg::registry::storage::gc::GcOptions;
use privreg::registry::storage::lease::LeaseTimings;
use privreg::registry::storage::s3::S3Driver;
use privreg::registry::{AppState, RegistryConfig};

const PUSHERS: usize = 4;
const GRACE: Duration = Duration::from_secs(3);

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    let resp = app
        .clone()
        .oneshot(b.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

async fn push_blob(app: &Router, repo: &str, data: &[u8]) -> u16 {
    let d = sha256(data);
    call(
        app,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        None,
        data.to_vec(),
    )
    .await
    .0
}

#[derive(Default)]
struct Ledger {
    /// (repo, tag) -> manifest bytes the tag must serve.
    tags: HashMap<(String, String), Vec<u8>>,
    /// (repo, digest) of revisions a later push replaced.
    replaced: Vec<(String, String)>,
    failures: Vec<String>,
    /// Manifest PUTs refused because a collection took a blob first.
    retried: usize,
}

#[test]
fn online_gc_is_safe_beside_pushes_and_deletes() {
    stress(GRACE, false, on_disk);
}

/// How long the run lasts, and the pause of a collector between its runs.
struct Pace {
    activity: Duration,
    pause: Duration,
}

const ON_DISK: Pace = Pace {
    activity: Duration::from_secs(5),
    pause: Duration::ZERO,
};

fn on_disk() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    (
        vec![Store::new(&dir.path().join("data")).unwrap()],
        Box::new(dir),
    )
}

/// Two replicas on one bucket (two stores, each with its own in-process
/// gate): pushes alternate between them, and both schedule collections,
/// which the bucket's lease runs one at a time. Short lease waits, so that
/// several collections fit in the run.
fn on_a_bucket(dir: &std::path::Path) -> Stores {
    let Some(s3) = SeaweedFs::start(dir, "gc-online") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return (Vec::new(), Box::new(()));
    };
    let timings = LeaseTimings {
        fresh: Duration::from_millis(200),
        step_budget: Duration::from_millis(800),
        hold_max: Duration::from_secs(30),
        ttl: Duration::from_secs(120),
    };
    let stores = (0..2)
        .map(|_| Store::in_bucket_with(S3Driver::new(&s3.config("gc")).unwrap(), timings))
        .collect();
    (stores, Box::new(s3))
}

/// The same story on S3 with two replicas: a collection on one replica must
/// never delete what a manifest acknowledged through the other references.
/// Pushes wait while a collection sweeps, and with collections on both
/// replicas every few seconds (far more often than any schedule runs them)
/// a push can wait through several, until its blobs are older than the
/// grace period and collected: its manifest PUT is then refused
/// (MANIFEST_BLOB_UNKNOWN) and the client pushes again, as in the no-grace
/// test above. What must never happen is an acknowledged manifest with a
/// blob gone, which the checks after the run look for.
#[test]
fn online_gc_on_a_bucket_is_safe_beside_two_replicas_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let pace = Pace {
        activity: Duration::from_secs(20),
        pause: Duration::from_secs(3),
    };
    stress_paced(Duration::from_secs(10), true, pace, || {
        on_a_bucket(dir.path())
    });
}

/// Without a grace period a blob pushed before its manifest may be collected
/// first: the manifest PUT then fails cleanly (MANIFEST_BLOB_UNKNOWN) and the
/// client pushes again. What must never happen is an acknowledged manifest
/// whose blob is gone: the push gate, not the grace period, guarantees that.
#[test]
fn without_grace_pushes_may_retry_but_never_break() {
    stress(Duration::ZERO, true, on_disk);
}

/// The stores to serve from (one per replica), made inside the runtime, and
/// what must live as long as they do (their directory, their S3 server).
type Stores = (Vec<Store>, Box<dyn std::any::Any>);

fn stress(grace: Duration, tolerate_blob_unknown: bool, make: impl FnOnce() -> Stores) {
    stress_paced(grace, tolerate_blob_unknown, ON_DISK, make)
}

fn stress_paced(
    grace: Duration,
    tolerate_blob_unknown: bool,
    pace: Pace,
    make: impl FnOnce() -> Stores,
) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (stores, _keep) = make();
        if stores.is_empty() {
            return; // SKIPPED: no S3 server here
        }
        let store = stores[0].clone();
        let apps: Vec<Router> = stores
            .iter()
            .map(|s| privreg::registry::router(AppState::new(s.clone(), None, RegistryConfig::default(), Arc::new(Metrics::new()))))
            .collect();
        let app = apps[0].clone();
        let shared_layers: Arc<Vec<Vec<u8>>> = Arc::new((0..6).map(|_| random_bytes(4096)).collect());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let deadline = Instant::now() + pace.activity;

        let mut tasks = Vec::new();
        for p in 0..PUSHERS {
            // Each pusher sends its blobs to one replica and its manifests to the next.
            let (app, manifest_app) = (apps[p % apps.len()].clone(), apps[(p + 1) % apps.len()].clone());
            let (layers, ledger) = (shared_layers.clone(), ledger.clone());
            tasks.push(tokio::spawn(async move {
                let repo = format!("team/r{}", p % 2);
                let mut n = 0usize;
                while Instant::now() < deadline && n < 10_000 {
                    n += 1;
                    let tag = format!("p{p}-t{}", n % 3);
                    let config = format!(r#"{{"os":"linux","architecture":"amd64","p":{p},"n":{n}}}"#);
                    let shared = &layers[(p + n) % layers.len()];
                    let unique = random_bytes(2048);
                    // As clients do, a layer the repository already has is
                    // not pushed again: the manifest alone references it, and
                    // only the gate (the bucket's lease) keeps a collection
                    // from deleting it meanwhile, however old it is.
                    let (has, _) = call(&app, "HEAD", &format!("/v2/{repo}/blobs/{}", sha256(shared)), None, vec![]).await;
                    let blobs: Vec<&[u8]> = if has == 200 {
                        vec![config.as_bytes(), unique.as_slice()]
                    } else {
                        vec![config.as_bytes(), shared.as_slice(), unique.as_slice()]
                    };
                    for blob in blobs {
                        let s = push_blob(&app, &repo, blob).await;
                        if s != 201 {
                            ledger.lock().unwrap().failures.push(format!("blob push {s}"));
                        }
                    }
                    let m = image_manifest(OCI_MANIFEST, config.as_bytes(), &[shared, &unique], json!({}));
                    let (s, body) = call(&manifest_app, "PUT", &format!("/v2/{repo}/manifests/{tag}"), Some(OCI_MANIFEST), m.clone()).await;
                    let mut l = ledger.lock().unwrap();
                    if s == 201 {
                        if let Some(old) = l.tags.insert((repo.clone(), tag.clone()), m.clone())
                            && old != m
                        {
                            l.replaced.push((repo.clone(), sha256(&old)));
                        }
                    } else if tolerate_blob_unknown
                        && s == 400
                        && String::from_utf8_lossy(&body).contains("MANIFEST_BLOB_UNKNOWN")
                    {
                        l.retried += 1;
                    } else {
                        l.failures.push(format!("manifest PUT {s}: {}", String::from_utf8_lossy(&body)));
                    }
                }
                n
            }));
        }
        // The deleter: replaced revisions go by digest, as a cleanup job would.
        {
            let (app, ledger) = (app.clone(), ledger.clone());
            tasks.push(tokio::spawn(async move {
                let mut deleted = 0;
                while Instant::now() < deadline {
                    let next = ledger.lock().unwrap().replaced.pop();
                    match next {
                        Some((repo, d)) => {
                            let (s, _) = call(&app, "DELETE", &format!("/v2/{repo}/manifests/{d}"), None, vec![]).await;
                            // 404: a collection with --delete-untagged got there first.
                            assert!(s == 202 || s == 404, "delete {s}");
                            deleted += 1;
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                deleted
            }));
        }
        // Collections, back to back, on every replica at once: on a bucket
        // the lease lets one run at a time and refuses the others (busy).
        let collectors: Vec<_> = stores
            .iter()
            .map(|store| {
                let store = store.clone();
                tokio::task::spawn_blocking(move || {
                    let mut runs = 0;
                    let mut deleted = 0;
                    while Instant::now() < deadline {
                        let opts = GcOptions {
                            dry_run: false,
                            delete_untagged: runs % 2 == 1,
                            grace,
                        };
                        match store.collect_garbage(&opts) {
                            Ok(report) => {
                                deleted += report.blobs_deleted.len();
                                runs += 1;
                                std::thread::sleep(pace.pause);
                            }
                            Err(e) if e.is_busy() => std::thread::sleep(Duration::from_millis(100)),
                            Err(e) => panic!("collection: {e:?}"),
                        }
                    }
                    (runs, deleted)
                })
            })
            .collect();
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.unwrap());
        }
        let (mut runs, mut deleted_during) = (0, 0);
        for c in collectors {
            let (r, d) = c.await.unwrap();
            runs += r;
            deleted_during += d;
        }
        let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
        println!(
            "grace {grace:?}: pushes per pusher {:?}, deletes {}, {runs} collections deleted {deleted_during} blobs during the run, {} manifest PUTs refused for a collected blob",
            &counts[..PUSHERS],
            counts[PUSHERS],
            ledger.retried
        );
        assert!(runs >= 2, "collections ran beside the pushes");
        assert!(ledger.tags.len() >= PUSHERS, "pushes went through: {:?}", ledger.tags.len());
        assert!(ledger.failures.is_empty(), "pushes failed: {:?}", ledger.failures);

        // Every tag pulls byte-identical, with every blob.
        let check = |ledger: &Ledger| {
            let app = app.clone();
            let tags = ledger.tags.clone();
            async move {
                for ((repo, tag), want) in tags {
                    let (s, got) = call(&app, "GET", &format!("/v2/{repo}/manifests/{tag}"), None, vec![]).await;
                    assert_eq!(s, 200, "{repo}:{tag}");
                    assert_eq!(got, want, "{repo}:{tag} changed");
                    let m: serde_json::Value = serde_json::from_slice(&got).unwrap();
                    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
                    for l in m["layers"].as_array().unwrap() {
                        digests.push(l["digest"].as_str().unwrap().to_owned());
                    }
                    for d in digests {
                        let (s, blob) = call(&app, "GET", &format!("/v2/{repo}/blobs/{d}"), None, vec![]).await;
                        assert_eq!(s, 200, "{repo}:{tag} blob {d}");
                        assert_eq!(sha256(&blob), d);
                    }
                }
            }
        };
        check(&ledger).await;

        // Past the grace period, a collection leaves nothing unreferenced: a
        // second one finds nothing to delete or spare.
        tokio::time::sleep(grace + Duration::from_millis(500)).await;
        let opts = GcOptions {
            dry_run: false,
            delete_untagged: true,
            grace,
        };
        // Off the async workers: the S3 driver blocks on the runtime.
        let (first, again) = {
            let (a, b) = (store.clone(), stores[stores.len() - 1].clone());
            tokio::task::spawn_blocking(move || {
                (a.collect_garbage(&opts).unwrap(), b.collect_garbage(&opts).unwrap())
            })
            .await
            .unwrap()
        };
        assert!(again.blobs_deleted.is_empty() && again.manifests_deleted.is_empty(), "{again:?}");
        assert_eq!(again.blobs_spared, 0, "{again:?}");
        println!(
            "final collection: {} blobs and {} manifests deleted, {} kept",
            first.blobs_deleted.len(),
            first.manifests_deleted.len(),
            again.blobs_kept
        );
        // Only what the tags reference is left: configs, layers, manifests.
        let mut referenced = std::collections::HashSet::new();
        for want in ledger.tags.values() {
            referenced.insert(sha256(want));
            let m: serde_json::Value = serde_json::from_slice(want).unwrap();
            referenced.insert(m["config"]["digest"].as_str().unwrap().to_owned());
            for l in m["layers"].as_array().unwrap() {
                referenced.insert(l["digest"].as_str().unwrap().to_owned());
            }
        }
        let left: std::collections::HashSet<String> =
            tokio::task::spawn_blocking(move || store.all_blobs().unwrap())
                .await
                .unwrap()
                .iter()
                .map(|d| d.to_string())
                .collect();
        assert_eq!(left, referenced);
        check(&ledger).await;
    });
}

/// The race the marking phase closes, made to happen: a collection on one
/// replica has read every manifest when a push step on the other replica
/// makes an old, unreferenced layer referenced again, by a manifest that the
/// mark never saw. The push step marks what it referenced, and the marker
/// keeps the layer through the sweep (without it the sweep deletes the
/// layer of an acknowledged manifest). Pushes were not held while marking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_after_the_mark_keeps_its_blobs_through_the_sweep() {
    use privreg::registry::digest::Digest;
    use privreg::registry::names::{RepoName, Tag};
    use privreg::registry::storage::StorageDriver as _;

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "gc-mark") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return;
    };
    let timings = LeaseTimings {
        fresh: Duration::from_millis(100),
        step_budget: Duration::from_secs(3),
        hold_max: Duration::from_secs(30),
        ttl: Duration::from_secs(120),
    };
    let replica = || Store::in_bucket_with(S3Driver::new(&s3.config("mark")).unwrap(), timings);
    let (a, b) = (replica(), replica());
    let lease = S3Driver::new(&s3.config("mark")).unwrap();
    let app = privreg::registry::router(AppState::new(
        a.clone(),
        None,
        RegistryConfig::default(),
        Arc::new(Metrics::new()),
    ));

    // An image whose manifest is then deleted: its blobs are unreferenced.
    let (config, layer) = (br#"{"os":"linux"}"#.to_vec(), random_bytes(4096));
    assert_eq!(push_blob(&app, "team/app", &config).await, 201);
    assert_eq!(push_blob(&app, "team/app", &layer).await, 201);
    let first = image_manifest(OCI_MANIFEST, &config, &[&layer], json!({}));
    let (s, _) = call(
        &app,
        "PUT",
        "/v2/team/app/manifests/v1",
        Some(OCI_MANIFEST),
        first.clone(),
    )
    .await;
    assert_eq!(s, 201);
    let (s, _) = call(
        &app,
        "DELETE",
        &format!("/v2/team/app/manifests/{}", sha256(&first)),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, 202);

    let collector = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            a.collect_garbage(&GcOptions {
                dry_run: false,
                delete_untagged: false,
                grace: Duration::ZERO,
            })
        })
    };
    let phase_is = |phase: &'static str| {
        let lease = lease.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let record = lease
                    .get_content(std::path::Path::new("privreg/gc-lease"))
                    .unwrap();
                if record.is_some_and(|r| String::from_utf8_lossy(&r).contains(phase)) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the collection never reached {phase}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    tokio::task::spawn_blocking(phase_is("marking"))
        .await
        .unwrap();

    // A push step on the other replica starts while the collection marks,
    // and writes its manifest once the mark is over.
    let second = image_manifest(OCI_MANIFEST, &config, &[&layer], json!({"again": "yes"}));
    let pushed = {
        let (b, second, wait) = (b.clone(), second.clone(), phase_is("sweeping"));
        let digests: Vec<Digest> = [&config, &layer, &second]
            .iter()
            .map(|x| sha256(x).parse().unwrap())
            .collect();
        tokio::task::spawn_blocking(move || {
            b.pushing(|mark| {
                wait();
                mark(&digests)?;
                let repo = RepoName::parse("team/app").unwrap();
                b.put_manifest(
                    &repo,
                    &digests[2],
                    &second,
                    &[Tag::parse("v2").unwrap()],
                    None,
                )
            })
        })
    };
    pushed.await.unwrap().unwrap();
    let report = collector.await.unwrap().unwrap();
    // Only the deleted manifest's own blob goes; the layer and config
    // were old and unreferenced at the mark, and are spared by markers.
    let deleted: Vec<String> = report
        .blobs_deleted
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        deleted,
        [sha256(&first)],
        "the sweep deleted what the push referenced: {report:?}"
    );
    assert_eq!(report.blobs_spared, 2, "{report:?}");

    // The acknowledged manifest pulls whole.
    let (s, got) = call(&app, "GET", "/v2/team/app/manifests/v2", None, vec![]).await;
    assert_eq!((s, got), (200, second));
    for blob in [&config, &layer] {
        let (s, got) = call(
            &app,
            "GET",
            &format!("/v2/team/app/blobs/{}", sha256(blob)),
            None,
            vec![],
        )
        .await;
        assert_eq!((s, &got), (200, blob));
    }
}
