//! Two `privreg serve` replicas on one SeaweedFS bucket, racing: pushes of
//! different manifests to one tag through both at once end with one winner,
//! the same through either replica, and no corrupt state (every pushed
//! manifest readable by digest, the tag listed once). A tag's current link is
//! one object written whole, so the last write wins; its history keeps every
//! revision, as Distribution's layout does.

mod common;

use std::collections::HashSet;

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
