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

use common::oci::{OCI_MANIFEST, image_manifest, random_bytes};
use common::sha256;
use privreg::registry::metrics::Metrics;
use privreg::registry::storage::Store;
use privreg::registry::storage::gc::GcOptions;
use privreg::registry::{AppState, RegistryConfig};

const PUSHERS: usize = 4;
const ACTIVITY: Duration = Duration::from_secs(5);
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
    stress(GRACE, false);
}

/// Without a grace period a blob pushed before its manifest may be collected
/// first: the manifest PUT then fails cleanly (MANIFEST_BLOB_UNKNOWN) and the
/// client pushes again. What must never happen is an acknowledged manifest
/// whose blob is gone: the push gate, not the grace period, guarantees that.
#[test]
fn without_grace_pushes_may_retry_but_never_break() {
    stress(Duration::ZERO, true);
}

fn stress(grace: Duration, tolerate_blob_unknown: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(&tmp.path().join("data")).unwrap();
        let state = AppState::new(store.clone(), None, RegistryConfig::default(), Arc::new(Metrics::new()));
        let app = privreg::registry::router(state);
        let shared_layers: Arc<Vec<Vec<u8>>> = Arc::new((0..6).map(|_| random_bytes(4096)).collect());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let deadline = Instant::now() + ACTIVITY;

        let mut tasks = Vec::new();
        for p in 0..PUSHERS {
            let (app, layers, ledger) = (app.clone(), shared_layers.clone(), ledger.clone());
            tasks.push(tokio::spawn(async move {
                let repo = format!("team/r{}", p % 2);
                let mut n = 0usize;
                while Instant::now() < deadline && n < 10_000 {
                    n += 1;
                    let tag = format!("p{p}-t{}", n % 3);
                    let config = format!(r#"{{"os":"linux","architecture":"amd64","p":{p},"n":{n}}}"#);
                    let shared = &layers[(p + n) % layers.len()];
                    let unique = random_bytes(2048);
                    for blob in [config.as_bytes(), shared.as_slice(), unique.as_slice()] {
                        let s = push_blob(&app, &repo, blob).await;
                        if s != 201 {
                            ledger.lock().unwrap().failures.push(format!("blob push {s}"));
                        }
                    }
                    let m = image_manifest(OCI_MANIFEST, config.as_bytes(), &[shared, &unique], json!({}));
                    let (s, body) = call(&app, "PUT", &format!("/v2/{repo}/manifests/{tag}"), Some(OCI_MANIFEST), m.clone()).await;
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
        // Collections, back to back.
        let collector = {
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
                    let report = store.collect_garbage(&opts).expect("collection");
                    deleted += report.blobs_deleted.len();
                    runs += 1;
                }
                (runs, deleted)
            })
        };
        let mut counts = Vec::new();
        for t in tasks {
            counts.push(t.await.unwrap());
        }
        let (runs, deleted_during) = collector.await.unwrap();
        let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
        println!(
            "grace {grace:?}: pushes per pusher {:?}, deletes {}, {runs} collections deleted {deleted_during} blobs during the run, {} manifest PUTs refused for a collected blob",
            &counts[..PUSHERS],
            counts[PUSHERS],
            ledger.retried
        );
        assert!(runs >= 2, "collections ran beside the pushes");
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
        let first = store.collect_garbage(&opts).unwrap();
        let again = store.collect_garbage(&opts).unwrap();
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
            store.all_blobs().unwrap().iter().map(|d| d.to_string()).collect();
        assert_eq!(left, referenced);
        check(&ledger).await;
    });
}
