//! Two `privreg serve` replicas on one SeaweedFS bucket, racing: pushes of
//! different manifests to one tag through both at once end with one winner,
//! the same through either replica, and no corrupt state (every pushed
//! manifest readable by digest, the tag listed once). A tag's current link is
//! one object written whole, so the last write wins; its history keeps every
//! revision, as Distribution's layout does.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use privreg::registry::storage::Store;
use privreg::registry::storage::s3::S3Driver;

use serde_json::json;

use common::daemons::SeaweedFs;
use common::oci::{OCI_MANIFEST, get_bytes, image_manifest, push_manifest, push_monolithic};
use common::pki::TestPki;
use common::{https_client, sha256, tools_required};

const RACERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_one_tag_through_two_replicas_end_with_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "same-tag") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return;
    };
    let pki = TestPki::loopback(&dir.path().join("pki"));
    let replicas: Vec<_> = (0..2)
        .map(|n| {
            s3.start_privreg(
                &dir.path().join(format!("replica-{n}")),
                "race",
                &pki.privreg_args(),
            )
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let client = https_client(&pki.ca);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = common::oci::random_bytes(64 << 10);
    push_monolithic(&client, &urls[0], "race", config.clone())
        .await
        .unwrap();
    push_monolithic(&client, &urls[1], "race", layer.clone())
        .await
        .unwrap();

    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (client, url) = (client.clone(), urls[i % 2].clone());
            let manifest = image_manifest(
                OCI_MANIFEST,
                &config,
                &[&layer],
                json!({"annotations": {"racer": i.to_string()}}),
            );
            tokio::spawn(async move {
                push_manifest(&client, &url, "race", "latest", OCI_MANIFEST, manifest)
                    .await
                    .map_err(|e| format!("racer {i}: {e}"))
            })
        })
        .collect();
    let mut pushed = HashSet::new();
    for racer in racers {
        pushed.insert(racer.await.unwrap().unwrap());
    }
    assert_eq!(
        pushed.len(),
        RACERS,
        "every push acknowledged, each its own"
    );

    // One winner, the same through either replica, and one of those pushed.
    let mut answers = Vec::new();
    for url in &urls {
        let (status, body) = get_bytes(&client, &format!("{url}/v2/race/manifests/latest")).await;
        assert_eq!(status, 200);
        answers.push(body);
    }
    assert!(answers[0] == answers[1], "both replicas serve one winner");
    let winner = sha256(&answers[0]);
    assert!(
        pushed.contains(&winner),
        "the tag points at a pushed manifest"
    );
    // Nothing lost or torn: every revision by digest, whole, through both.
    for d in &pushed {
        for url in &urls {
            let (status, body) = get_bytes(&client, &format!("{url}/v2/race/manifests/{d}")).await;
            assert_eq!(status, 200, "{d} through {url}");
            assert_eq!(&sha256(&body), d);
        }
    }
    for url in &urls {
        let (status, body) = get_bytes(&client, &format!("{url}/v2/race/tags/list")).await;
        assert_eq!(status, 200);
        let tags: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(tags["tags"], json!(["latest"]), "the tag listed once");
    }
    eprintln!(
        "{RACERS} pushes to one tag through two replicas: {winner} won, the others kept by digest"
    );
}

/// Two requests for the same upload offset on two replicas at once (a client
/// that retries on another connection, or one that means harm): each
/// replica checked the offset before the other wrote. Whatever the replicas
/// then accept, a blob may only ever be committed under the digest of the
/// bytes it holds: the finish hashes the very bytes it moves, not what its
/// replica received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_at_one_offset_never_commit_a_blob_under_another_digest() {
    use common::oci::start_upload;
    use common::rawtls::{TlsConn, client_config};

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "same-offset") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return;
    };
    let pki = TestPki::loopback(&dir.path().join("pki"));
    let (a, b) = (
        s3.start_privreg(&dir.path().join("a"), "race", &pki.privreg_args()),
        s3.start_privreg(&dir.path().join("b"), "race", &pki.privreg_args()),
    );
    let client = https_client(&pki.ca);
    let location = start_upload(&client, &a.url(), "race").await;
    // A first request, through A: 4 KiB both later contents share.
    let r = client
        .patch(format!("{}{location}", a.url()))
        .header("content-range", "0-4095")
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", a.log());
    let (genuine, forged) = (vec![1u8; 4096], vec![2u8; 4096]);

    // B takes a PATCH at offset 4096 and receives half of its body...
    let (addr, ca, loc) = (b.addr(), pki.ca.clone(), location.clone());
    let mut slow = tokio::task::spawn_blocking(move || {
        let mut conn = TlsConn::connect(addr, client_config(&ca, &[])).unwrap();
        conn.send_head(
            "PATCH",
            &loc,
            &[
                ("Content-Type", "application/octet-stream".into()),
                ("Content-Length", "4096".into()),
                ("Content-Range", "4096-8191".into()),
            ],
        )
        .unwrap();
        conn.send_body(&[2u8; 2048]).unwrap();
        conn
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // ...while A takes the genuine bytes at the same offset, whole.
    let r = client
        .patch(format!("{}{location}", a.url()))
        .header("content-range", "4096-8191")
        .header("content-type", "application/octet-stream")
        .body(genuine.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", a.log());
    // Then B's body ends: its bytes land after A's.
    let slow_answer = tokio::task::spawn_blocking(move || {
        slow.send_body(&[2u8; 2048]).unwrap();
        slow.read_response(false).map(|r| r.status)
    })
    .await
    .unwrap();
    eprintln!("the racing PATCH on B answered {slow_answer:?}");
    let genuine = [vec![0u8; 4096], genuine].concat();
    let forged = [vec![0u8; 4096], forged].concat();

    // The client finishes through A, naming the genuine digest.
    let want = sha256(&genuine);
    let r = client
        .put(format!("{}{location}?digest={want}", a.url()))
        .send()
        .await
        .unwrap();
    let finished = r.status();
    eprintln!("the finish on A answered {finished}");
    for url in [a.url(), b.url()] {
        let r = client
            .get(format!("{url}/v2/race/blobs/{want}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let got = r.bytes().await.unwrap();
            assert_eq!(
                sha256(&got),
                want,
                "blob {want} holds other bytes (forged: {})",
                got == forged
            );
        } else {
            assert_eq!(r.status(), 404);
            assert!(!finished.is_success(), "a 201 for a blob that is not there");
        }
    }
    // Here both requests were accepted, so the upload holds two contents
    // for one range: the client is told to start again (not a 500).
    if slow_answer == Ok(202) {
        assert_eq!(finished, 400);
        // Such an upload still ends: the purge dates it by its start
        // (without stopping at it), and a replica that never saw it can
        // cancel it.
        let store = Store::in_bucket(S3Driver::new(&s3.config("race")).unwrap());
        let stale = tokio::task::spawn_blocking(move || store.stale_uploads(Duration::ZERO))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stale.len(), 1, "{stale:?}");
        let c = s3.start_privreg(&dir.path().join("c"), "race", &pki.privreg_args());
        let r = client
            .delete(format!("{}{location}", c.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{}", c.log());
    }
}

/// On a bucket no replica hashes an upload as it comes: the finish hashes
/// what it commits. When the named blob is stored already nothing moves, and
/// the upload must still hold it; otherwise a client could link any stored
/// blob into its repository by naming its digest over other bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_naming_a_stored_blob_is_still_checked() {
    use common::oci::start_upload;

    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(dir.path(), "known-blob") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return;
    };
    let pki = TestPki::loopback(&dir.path().join("pki"));
    let a = s3.start_privreg(&dir.path().join("a"), "known", &pki.privreg_args());
    let client = https_client(&pki.ca);
    let secret = common::oci::random_bytes(4096);
    let stored = push_monolithic(&client, &a.url(), "owner/app", secret)
        .await
        .unwrap();

    let location = start_upload(&client, &a.url(), "other/app").await;
    let r = client
        .patch(format!("{}{location}", a.url()))
        .header("content-type", "application/octet-stream")
        .body(b"not the blob".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", a.log());
    let r = client
        .put(format!("{}{location}?digest={stored}", a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    let r = client
        .head(format!("{}/v2/other/app/blobs/{stored}", a.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the blob was linked without its bytes");
}
