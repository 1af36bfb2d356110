//! `privreg gc` against CNCF Distribution's `registry garbage-collect` (Debian's
//! docker-registry 2.8.2): the reference registry writes a directory (shared
//! layers, an overwritten tag, a deleted manifest, a blob never referenced),
//! both collectors run on copies, and what remains must be the same. Then
//! what privreg keeps that Distribution 2.8 does not (children of a tagged
//! index, referrers), and that every remaining tag still pulls.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::json;

use common::daemons::DockerRegistry;
use common::oci::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, image_manifest, index_manifest};
use common::pki::TestPki;
use common::rawclient::Client;
use common::{Privreg, run, sha256, tool};

fn layer(name: &str) -> Vec<u8> {
    format!("layer {name} ").repeat(100).into_bytes()
}

/// Paths both registries own (blobs, manifests, tags): privreg's own
/// `_referrers` and its removal of stale `_layers` links are compared apart.
fn shared_tree(data: &Path) -> BTreeSet<String> {
    let root = data.join("docker/registry/v2");
    common::store::paths(&root)
        .into_iter()
        .filter(|p| !p.contains("_layers") && !p.contains("_referrers") && !p.contains("_uploads"))
        .filter(|p| root.join(p).is_file())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn reference_gc(registry: &Path, data: &Path, delete_untagged: bool) {
    let config = data.with_extension("gc.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n",
            data.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(registry);
    cmd.arg("garbage-collect");
    if delete_untagged {
        cmd.arg("--delete-untagged");
    }
    run(cmd.arg(&config));
}

fn privreg_gc(data: &Path, extra: &[&str]) -> String {
    let out = run(Command::new(env!("CARGO_BIN_EXE_privreg"))
        .arg("gc")
        .arg("--data")
        .arg(data)
        .args(extra));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn privreg_gc_leaves_what_distribution_garbage_collect_leaves() {
    let Some(registry) = tool("docker-registry", "DOCKER_REGISTRY") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::loopback(&dir.path().join("pki"));
    let data = dir.path().join("written");
    let mut reference = DockerRegistry::start(&registry, &data, &pki.server_cert, &pki.server_key);
    let addr = reference.host().parse().unwrap();
    let mut c = Client::connect(addr, &pki.ca);
    let (l1, l2, l3, l4, l5, l6) = (
        layer("1"),
        layer("2"),
        layer("3"),
        layer("4"),
        layer("5"),
        layer("6"),
    );
    c.image("team/a", "v1", &[&l1, &l2]);
    // The tag moves on: the first image is untagged now.
    c.image("team/a", "v1", &[&l2, &l3]);
    let (gone, _) = c.image("team/a", "gone", &[&l4]);
    c.delete("team/a", &gone);
    c.image("b", "latest", &[&l1, &l5]);
    // Pushed, never referenced.
    c.blob("b", &l6);
    // A manifest pushed by digest only, referencing that blob.
    let config = br#"{"os":"linux","architecture":"arm64"}"#;
    c.blob("b", config);
    let by_digest = image_manifest(DOCKER_MANIFEST, config, &[&l6], json!({}));
    c.manifest("b", &sha256(&by_digest), DOCKER_MANIFEST, &by_digest);
    drop(c);
    reference.stop();

    for delete_untagged in [false, true] {
        let name = if delete_untagged { "untagged" } else { "plain" };
        let (theirs, ours) = (
            dir.path().join(format!("{name}-distribution")),
            dir.path().join(format!("{name}-privreg")),
        );
        copy_dir(&data, &theirs);
        copy_dir(&data, &ours);
        let before = shared_tree(&data);
        reference_gc(&registry, &theirs, delete_untagged);
        let flags: &[&str] = if delete_untagged {
            &["--delete-untagged"]
        } else {
            &[]
        };
        // A dry run changes nothing and names what the real run deletes.
        let dry = privreg_gc(&ours, &[flags, &["--dry-run"]].concat());
        assert_eq!(
            shared_tree(&ours),
            before,
            "--dry-run changed the directory"
        );
        let report = privreg_gc(&ours, flags);
        assert_eq!(
            dry.replace("would delete", "deleted")
                .lines()
                .filter(|l| !l.contains("stale repository links"))
                .collect::<Vec<_>>(),
            report
                .lines()
                .filter(|l| !l.contains("stale repository links"))
                .collect::<Vec<_>>()
        );
        let (t, o) = (shared_tree(&theirs), shared_tree(&ours));
        assert!(
            t.len() < before.len(),
            "{name}: the reference collected nothing"
        );
        assert_eq!(
            o.symmetric_difference(&t).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{name}: privreg gc and registry garbage-collect disagree\nprivreg: {report}"
        );
        println!("{name}: {}", report.lines().last().unwrap_or_default());

        // What remains is served whole: every tag pulls, blob by blob.
        let args = pki.privreg_args();
        let reg = Privreg::start(&ours, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut c = Client::connect(reg.addr(), &pki.ca);
        for (repo, tag) in [("team/a", "v1"), ("b", "latest")] {
            let r = c
                .conn
                .request(
                    "GET",
                    &format!("/v2/{repo}/manifests/{tag}"),
                    &[("Accept", DOCKER_MANIFEST.into())],
                    b"",
                )
                .unwrap();
            assert_eq!(r.status, 200);
            let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
            for l in m["layers"].as_array().unwrap() {
                digests.push(l["digest"].as_str().unwrap().to_owned());
            }
            for d in digests {
                assert_eq!(
                    c.status(&format!("/v2/{repo}/blobs/{d}")),
                    200,
                    "{repo}:{tag} {d}"
                );
            }
        }
        // A collected blob is gone from the repositories that linked it too.
        assert_eq!(
            c.status(&format!("/v2/b/blobs/{}", sha256(&l6))),
            if delete_untagged { 404 } else { 200 }
        );
        assert_eq!(c.status(&format!("/v2/team/a/blobs/{}", sha256(&l4))), 404);
    }
}

/// Kept by privreg with --delete-untagged (Distribution 2.8 deletes them):
/// the untagged children of a tagged index and the referrers of a kept image.
#[test]
fn delete_untagged_keeps_index_children_and_referrers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let reg = Privreg::start(&data, &[]);
    let mut c = Client::connect(reg.addr(), &reg.ca());
    // Children pushed by digest only.
    let child = |c: &mut Client, arch: &str, l: &[u8]| {
        let config = format!(r#"{{"os":"linux","architecture":"{arch}"}}"#);
        c.blob("multi", config.as_bytes());
        c.blob("multi", l);
        let m = image_manifest(OCI_MANIFEST, config.as_bytes(), &[l], json!({}));
        c.manifest("multi", &sha256(&m), OCI_MANIFEST, &m);
        m
    };
    let (la, lb, lsig, lold) = (layer("a"), layer("b"), layer("sig"), layer("old"));
    let ma = child(&mut c, "amd64", &la);
    let mb = child(&mut c, "arm64", &lb);
    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &ma), (OCI_MANIFEST, &mb)],
        json!({}),
    );
    let index_digest = c.manifest("multi", "v1", OCI_INDEX, &index);
    // A signature attached to the index, untagged.
    c.blob("multi", b"{}");
    let sig = image_manifest(
        OCI_MANIFEST,
        b"{}",
        &[&lsig],
        json!({"artifactType": "application/vnd.example.sig",
               "subject": {"mediaType": OCI_INDEX, "digest": index_digest, "size": index.len()}}),
    );
    c.blob("multi", &lsig);
    c.manifest("multi", &sha256(&sig), OCI_MANIFEST, &sig);
    // Truly untagged: reachable from nothing.
    let old = child(&mut c, "s390x", &lold);
    drop(c);
    drop(reg);

    let report = privreg_gc(&data, &["--delete-untagged"]);
    assert!(report.contains(&sha256(&old)), "{report}");
    for kept in [&ma, &mb, &sig] {
        assert!(!report.contains(&sha256(kept)), "{report}");
    }
    let reg = Privreg::start(&data, &[]);
    let mut c = Client::connect(reg.addr(), &reg.ca());
    for (m, l) in [(&ma, &la), (&mb, &lb), (&sig, &lsig)] {
        assert_eq!(c.status(&format!("/v2/multi/manifests/{}", sha256(m))), 200);
        assert_eq!(c.status(&format!("/v2/multi/blobs/{}", sha256(l))), 200);
    }
    assert_eq!(
        c.status(&format!("/v2/multi/manifests/{}", sha256(&old))),
        404
    );
    assert_eq!(c.status(&format!("/v2/multi/blobs/{}", sha256(&lold))), 404);
    let referrers = c
        .conn
        .request(
            "GET",
            &format!("/v2/multi/referrers/{index_digest}"),
            &[],
            b"",
        )
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&referrers.body).unwrap();
    assert_eq!(body["manifests"][0]["digest"], sha256(&sig).as_str());
}
