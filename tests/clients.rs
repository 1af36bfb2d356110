//! Real clients against `privreg serve` over TLS with its generated local CA:
//! skopeo, crane, oras and containerd (ctr with a certs.d hosts directory).
//! Every image is built here byte by byte, so each test knows the exact digests
//! and bytes that must come back.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use common::containerd::Containerd;
use common::daemons::go_tool;
use common::images::{self, Blob, by_digest, host_arch, layout_blobs, layout_refs, write_layout};
use common::skopeo::Skopeo;
use common::{Privreg, https_client, run, run_failing, sha256, tool, view};

const UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";

/// The gzip'd tar layers are real: gzip and tar read them back to the same files.
#[test]
fn layers_are_valid_tar_gzip() {
    let (Some(gzip), Some(tar)) = (tool("gzip", "PRIVREG_GZIP"), tool("tar", "PRIVREG_TAR")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let img = images::random_image(host_arch(), 3);
    for (i, layer) in img.layers.iter().enumerate() {
        let path = dir.path().join(format!("layer{i}.tar.gz"));
        std::fs::write(&path, &layer.bytes).unwrap();
        run(Command::new(&gzip).arg("-t").arg(&path));
        let unzipped = run(Command::new(&gzip).arg("-dc").arg(&path)).stdout;
        assert_eq!(unzipped, img.tars[i]);
        let listing =
            String::from_utf8(run(Command::new(&tar).arg("-tzf").arg(&path)).stdout).unwrap();
        for (name, _) in &img.files[i] {
            assert!(listing.lines().any(|l| l == name), "{name} in {listing}");
        }
        let out = dir.path().join(format!("x{i}"));
        std::fs::create_dir(&out).unwrap();
        run(Command::new(&tar)
            .arg("-xzf")
            .arg(&path)
            .arg("-C")
            .arg(&out));
        for (name, data) in &img.files[i] {
            assert_eq!(&std::fs::read(out.join(name)).unwrap(), data, "{name}");
        }
    }
}

/// skopeo pushes an OCI layout (an image and a two-platform index) and copies
/// it back out to `oci:` and `dir:`: digests preserved, blobs byte-identical.
/// Without the CA it fails on the certificate.
/// Builds an image and a two-platform index into an OCI layout `dir/src`,
/// and has skopeo push them as `<repo>:v1` and `<repo>:multi` (every
/// platform) to `host`. Returns them and the layout.
fn skopeo_push_image_and_index(
    skopeo: &Skopeo,
    dir: &Path,
    host: &str,
    repo: &str,
    certs: &Path,
) -> (images::Image, images::MultiImage, PathBuf) {
    let img = images::random_image(host_arch(), 3);
    let multi = images::multi_image(vec![
        images::random_image("amd64", 2),
        images::random_image("arm64", 3),
    ]);
    let src = dir.join("src");
    write_layout(
        &src,
        &[("v1", &img.manifest), ("multi", &multi.index)],
        img.blobs().into_iter().chain(multi.blobs()),
    );
    for (tag, all) in [("v1", false), ("multi", true)] {
        skopeo.copy(
            &format!("oci:{}:{tag}", src.display()),
            &format!("docker://{host}/{repo}:{tag}"),
            all,
            certs,
        );
    }
    (img, multi, src)
}

#[tokio::test]
async fn skopeo_round_trips_image_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let Some(skopeo) = Skopeo::find(&dir.path().join("skopeo")) else {
        return;
    };
    let reg = Privreg::start(&dir.path().join("data"), &[]);
    let certs = reg.cert_dir();
    let host = reg.host();

    let (img, multi, src) =
        skopeo_push_image_and_index(&skopeo, dir.path(), &host, "clients/skopeo", &certs);

    // The registry holds exactly the bytes that were built here.
    let raw = skopeo.raw_manifest(&format!("{host}/clients/skopeo:v1"), &certs);
    assert_eq!(raw, img.manifest.bytes);
    assert_eq!(sha256(&raw), img.manifest.digest);
    let raw = skopeo.raw_manifest(&format!("{host}/clients/skopeo:multi"), &certs);
    assert_eq!(raw, multi.index.bytes);
    let client = https_client(&reg.ca());
    for (reference, blob) in [("v1", &img.manifest), ("multi", &multi.index)] {
        let m = view::manifest(&client, &reg.url(), "clients/skopeo", reference).await;
        assert_eq!(m.status, 200);
        assert_eq!(m.digest.as_deref(), Some(blob.digest.as_str()));
        assert_eq!(m.content_type.as_deref(), Some(blob.media_type.as_str()));
        assert_eq!(m.bytes, blob.bytes);
    }
    for child in &multi.images {
        let m = view::manifest(
            &client,
            &reg.url(),
            "clients/skopeo",
            &child.manifest.digest,
        )
        .await;
        assert_eq!((m.status, m.bytes), (200, child.manifest.bytes.clone()));
    }

    // Back out to fresh OCI layouts: the same digests under the same names, and
    // exactly the blobs that went in.
    let out = dir.path().join("out-image");
    skopeo.copy(
        &format!("docker://{host}/clients/skopeo:v1"),
        &format!("oci:{}:v1", out.display()),
        false,
        &certs,
    );
    assert_eq!(
        layout_refs(&out)["v1"]["digest"],
        img.manifest.digest.as_str()
    );
    assert_eq!(layout_blobs(&out), by_digest(img.blobs()));

    let out = dir.path().join("out-index");
    skopeo.copy(
        &format!("docker://{host}/clients/skopeo:multi"),
        &format!("oci:{}:multi", out.display()),
        true,
        &certs,
    );
    assert_eq!(
        layout_refs(&out)["multi"]["digest"],
        multi.index.digest.as_str()
    );
    assert_eq!(layout_blobs(&out), by_digest(multi.blobs()));

    // And to `dir:`: manifest.json plus one file per blob, named by hex digest.
    let out = dir.path().join("out-dir");
    skopeo.copy(
        &format!("docker://{host}/clients/skopeo:v1"),
        &format!("dir:{}", out.display()),
        false,
        &certs,
    );
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        img.manifest.bytes
    );
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(
            std::fs::read(out.join(b.hex())).unwrap(),
            b.bytes,
            "{}",
            b.digest
        );
    }

    // Without the CA: refused at the TLS handshake, for reads and for pushes.
    let err = run_failing(
        skopeo
            .cmd("inspect")
            .arg("--raw")
            .arg(format!("docker://{host}/clients/skopeo:v1")),
    );
    assert!(err.contains(UNKNOWN_CA), "{err}");
    let err = run_failing(
        skopeo
            .cmd("copy")
            .arg(format!("oci:{}:v1", src.display()))
            .arg(format!("docker://{host}/clients/skopeo:untrusted")),
    );
    assert!(err.contains(UNKNOWN_CA), "{err}");
}

/// crane (go-containerregistry): push an OCI layout, append a layer to scratch,
/// then pull, manifest, digest, config, blob, ls and catalog. Go trusts the CA
/// through SSL_CERT_FILE.
#[test]
fn crane_push_append_pull_list() {
    let Some(crane) = go_tool("crane", "PRIVREG_CRANE") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reg = Privreg::start(&dir.path().join("data"), &[]);
    let host = reg.host();
    let crane = |args: &[&str]| {
        let mut c = Command::new(&crane);
        c.env("SSL_CERT_FILE", reg.ca())
            .env_remove("SSL_CERT_DIR")
            .args(args);
        c
    };
    let text = |c: &mut Command| String::from_utf8(run(c).stdout).unwrap();

    // push: an OCI layout directory holding one image.
    let img = images::random_image(host_arch(), 2);
    let src = dir.path().join("src");
    write_layout(&src, &[("v1", &img.manifest)], img.blobs());
    let pushed = format!("{host}/clients/crane:pushed");
    let out = text(&mut crane(&["push", src.to_str().unwrap(), &pushed]));
    assert_eq!(
        out.trim(),
        format!("{host}/clients/crane@{}", img.manifest.digest)
    );
    assert_eq!(
        text(&mut crane(&["digest", &pushed])).trim(),
        img.manifest.digest
    );
    assert_eq!(
        run(&mut crane(&["manifest", &pushed])).stdout,
        img.manifest.bytes
    );
    assert_eq!(
        run(&mut crane(&["config", &pushed])).stdout,
        img.config.bytes
    );
    for l in &img.layers {
        let blob = run(&mut crane(&[
            "blob",
            &format!("{host}/clients/crane@{}", l.digest),
        ]))
        .stdout;
        assert_eq!(blob, l.bytes);
    }

    // append: a plain tar as the only layer of an image from scratch. crane
    // compresses it; the config's diff_id is the digest of the tar itself.
    let files = vec![(
        "hello.txt".to_owned(),
        b"hello from crane append\n".to_vec(),
    )];
    let layer_tar = images::tar(&files);
    let tar_path = dir.path().join("layer.tar");
    std::fs::write(&tar_path, &layer_tar).unwrap();
    let appended = format!("{host}/clients/crane:appended");
    let out = text(&mut crane(&[
        "append",
        "--oci-empty-base",
        "-f",
        tar_path.to_str().unwrap(),
        "-t",
        &appended,
    ]));
    let digest = out
        .trim()
        .rsplit_once('@')
        .expect("crane append prints name@digest")
        .1
        .to_owned();
    let manifest = run(&mut crane(&["manifest", &appended])).stdout;
    assert_eq!(sha256(&manifest), digest);
    assert_eq!(text(&mut crane(&["digest", &appended])).trim(), digest);
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["mediaType"], images::OCI_MANIFEST);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let config: Value =
        serde_json::from_slice(&run(&mut crane(&["config", &appended])).stdout).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], json!([sha256(&layer_tar)]));
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let blob = run(&mut crane(&[
        "blob",
        &format!("{host}/clients/crane@{layer_digest}"),
    ]))
    .stdout;
    assert_eq!(sha256(&blob), layer_digest);
    assert_eq!(blob.len() as u64, layers[0]["size"].as_u64().unwrap());

    // pull to an OCI layout: every blob byte-identical.
    let out = dir.path().join("pulled");
    run(&mut crane(&[
        "pull",
        "--format",
        "oci",
        &pushed,
        out.to_str().unwrap(),
    ]));
    let expected = by_digest(img.blobs());
    let got = layout_blobs(&out);
    assert_eq!(got, expected);

    // ls and catalog.
    assert_eq!(
        text(&mut crane(&["ls", &format!("{host}/clients/crane")])),
        "appended\npushed\n"
    );
    assert_eq!(text(&mut crane(&["catalog", &host])), "clients/crane\n");

    // Without the CA (the machine's default trust only): x509.
    let err = run_failing(
        Command::new(go_tool("crane", "PRIVREG_CRANE").unwrap())
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .args(["digest", &pushed]),
    );
    assert!(err.contains(UNKNOWN_CA), "{err}");
}

/// oras: push a file artifact with an artifact type, attach a signature-like
/// referrer, discover it through the referrers API, pull both back unchanged.
#[tokio::test]
async fn oras_push_attach_discover_pull() {
    let Some(oras) = go_tool("oras", "PRIVREG_ORAS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reg = Privreg::start(&dir.path().join("data"), &[]);
    let host = reg.host();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let oras = |args: &[&str]| {
        let mut c = Command::new(&oras);
        c.current_dir(&work)
            .arg(args[0])
            .arg("--ca-file")
            .arg(reg.ca())
            .args(&args[1..]);
        c
    };
    let json_of = |c: &mut Command| -> Value { serde_json::from_slice(&run(c).stdout).unwrap() };

    const ARTIFACT: &str = "application/vnd.privreg.test.artifact";
    const SIGNATURE: &str = "application/vnd.privreg.test.signature";
    let payload = images::random_bytes(70_000);
    std::fs::write(work.join("artifact.bin"), &payload).unwrap();
    let reference = format!("{host}/clients/oras:v1");
    let pushed = json_of(&mut oras(&[
        "push",
        "--format",
        "json",
        "--artifact-type",
        ARTIFACT,
        &reference,
        "artifact.bin:application/octet-stream",
    ]));
    let subject = pushed["digest"]
        .as_str()
        .expect("digest in oras push --format json")
        .to_owned();
    assert_eq!(pushed["artifactType"], ARTIFACT);

    // The manifest stored is the one oras made: same digest, artifactType kept.
    let client = https_client(&reg.ca());
    let m = view::manifest(&client, &reg.url(), "clients/oras", "v1").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.digest.as_deref(), Some(subject.as_str()));
    assert_eq!(sha256(&m.bytes), subject);
    let manifest: Value = serde_json::from_slice(&m.bytes).unwrap();
    assert_eq!(manifest["artifactType"], ARTIFACT);
    assert_eq!(manifest["layers"][0]["digest"], sha256(&payload).as_str());

    // attach: a referrer whose subject is the artifact.
    let signature = br#"{"signed":"privreg test","by":"nobody"}"#;
    std::fs::write(work.join("sig.json"), signature).unwrap();
    let attached = json_of(&mut oras(&[
        "attach",
        "--format",
        "json",
        "--artifact-type",
        SIGNATURE,
        "--annotation",
        "org.example.kind=signature",
        &reference,
        "sig.json:application/vnd.privreg.test.sig+json",
    ]));
    let referrer = attached["digest"].as_str().unwrap().to_owned();

    // discover lists it.
    let found = json_of(&mut oras(&["discover", "--format", "json", &reference]));
    assert_eq!(found["digest"], subject.as_str());
    let referrers = found["referrers"]
        .as_array()
        .expect("referrers in oras discover --format json");
    assert_eq!(referrers.len(), 1, "{found}");
    assert_eq!(referrers[0]["digest"], referrer.as_str());
    assert_eq!(referrers[0]["artifactType"], SIGNATURE);

    // The registry answered through the referrers API, not oras's tag fallback
    // (which would have pushed a `sha256-<hex>` tag).
    let r = view::get(
        &client,
        &reg.url(),
        &format!("/v2/clients/oras/referrers/{subject}"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type.as_deref(), Some(images::OCI_INDEX));
    let index: Value = serde_json::from_slice(&r.bytes).unwrap();
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], referrer.as_str());
    assert_eq!(listed[0]["artifactType"], SIGNATURE);
    assert_eq!(listed[0]["annotations"]["org.example.kind"], "signature");
    let tags = view::get(&client, &reg.url(), "/v2/clients/oras/tags/list").await;
    let tags: Value = serde_json::from_slice(&tags.bytes).unwrap();
    assert_eq!(tags["tags"], json!(["v1"]));
    let filtered = view::get(
        &client,
        &reg.url(),
        &format!("/v2/clients/oras/referrers/{subject}?artifactType=application%2Fvnd.other"),
    )
    .await;
    let filtered: Value = serde_json::from_slice(&filtered.bytes).unwrap();
    assert_eq!(filtered["manifests"], json!([]));

    // pull: identical bytes, for the artifact and for the referrer.
    let out = dir.path().join("pulled");
    run(&mut oras(&[
        "pull",
        "-o",
        out.to_str().unwrap(),
        &reference,
    ]));
    assert_eq!(std::fs::read(out.join("artifact.bin")).unwrap(), payload);
    let out = dir.path().join("pulled-sig");
    run(&mut oras(&[
        "pull",
        "-o",
        out.to_str().unwrap(),
        &format!("{host}/clients/oras@{referrer}"),
    ]));
    assert_eq!(std::fs::read(out.join("sig.json")).unwrap(), signature);
}

fn hosts_toml(server: Option<&str>, host: &str, ca: bool) -> String {
    let mut s = String::new();
    if let Some(server) = server {
        s.push_str(&format!("server = \"{server}\"\n\n"));
    }
    s.push_str(&format!(
        "[host.\"{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    ));
    if ca {
        s.push_str("  ca = \"ca.crt\"\n");
    }
    s
}

/// Asserts that `ns` of containerd holds `reference` at `image`'s manifest
/// digest, and every blob of `image` with the exact bytes.
fn assert_pulled(ctrd: &Containerd, ns: &str, reference: &str, manifest: &Blob, blobs: &[&Blob]) {
    let list = String::from_utf8(run(ctrd.ctr(ns).args(["images", "ls"])).stdout).unwrap();
    let line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} in\n{list}"));
    assert!(line.contains(&manifest.digest), "{line}");
    for b in blobs {
        let got = run(ctrd.ctr(ns).args(["content", "get", &b.digest])).stdout;
        assert_eq!(got, b.bytes, "{} in containerd", b.digest);
    }
}

/// containerd 1.6 pulls from privreg the way a node does: through
/// `certs.d/<host:port>/hosts.toml`. Without `ca` the pull fails on the
/// certificate; with it the image is pulled and unpacked; changes apply live.
/// A friendly name redirected by hosts.toml to https://127.0.0.1:<port> (no DNS)
/// pulls too, because the certificate carries the IP SAN, and containerd's
/// `?ns=<name>` query parameter is accepted.
#[tokio::test]
async fn containerd_pulls_through_hosts_toml() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(containerd), Some(ctr)) = (
        tool("containerd", "PRIVREG_CONTAINERD"),
        tool("ctr", "PRIVREG_CTR"),
    ) else {
        return;
    };
    let Some(skopeo) = Skopeo::find(&dir.path().join("skopeo")) else {
        return;
    };
    if !common::root_or_skip("containerd") {
        return;
    }
    let reg = Privreg::start(&dir.path().join("data"), &[]);
    let certs = reg.cert_dir();
    let (host, port) = (reg.host(), reg.port);

    // Three images, so each case fetches its own blobs, and an index.
    let hello = |who: &str| {
        vec![(
            format!("etc/hello-{who}.txt"),
            format!("hello from privreg to {who}\n").into_bytes(),
        )]
    };
    let mk = |who: &str| {
        images::image(
            host_arch(),
            vec![
                hello(who),
                vec![("data/random.bin".to_owned(), images::random_bytes(50_000))],
            ],
            json!({ "org.opencontainers.image.title": who }),
        )
    };
    let (direct, named, mirrored) = (mk("direct"), mk("named"), mk("mirrored"));
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let multi = images::multi_image(vec![mk("multi"), images::random_image(other_arch, 1)]);
    let src = dir.path().join("src");
    write_layout(
        &src,
        &[
            ("direct", &direct.manifest),
            ("named", &named.manifest),
            ("mirrored", &mirrored.manifest),
            ("multi", &multi.index),
        ],
        direct
            .blobs()
            .into_iter()
            .chain(named.blobs())
            .chain(mirrored.blobs())
            .chain(multi.blobs()),
    );
    for (tag, repo, all) in [
        ("direct", "ctr/direct", false),
        ("named", "ctr/named", false),
        ("mirrored", "ctr/mirrored", false),
        ("multi", "ctr/multi", true),
    ] {
        skopeo.copy(
            &format!("oci:{}:{tag}", src.display()),
            &format!("docker://{host}/{repo}:v1"),
            all,
            &certs,
        );
    }

    let ctrd = Containerd::start(&containerd, &ctr, &dir.path().join("containerd"));
    let server = format!("https://{host}");

    // The localhost trap (TESTRIG A3 case A): with no hosts.toml containerd
    // speaks plain HTTP to 127.0.0.1, and privreg's TLS port refuses it.
    let out = ctrd.pull("trap", &format!("{host}/ctr/direct:v1"));
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "plain-HTTP pull succeeded:\n{err}");
    // privreg answers the plain request with a TLS alert, which Go reports as
    // `malformed HTTP response "\x15\x03\x03..."` (Go servers answer 400 instead).
    assert!(
        err.contains(&format!(
            "Head \"http://{host}/v2/ctr/direct/manifests/v1\""
        )),
        "{err}"
    );

    // No `ca`: the TLS handshake fails on the unknown CA.
    ctrd.write_host(&host, &hosts_toml(Some(&server), &server, false), None);
    let reference = format!("{host}/ctr/direct:v1");
    let out = ctrd.pull("direct", &reference);
    let err = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "pull without ca succeeded:\n{err}");
    assert!(err.contains(UNKNOWN_CA), "{err}");
    assert!(
        err.contains(&format!("https://{host}/v2/ctr/direct/manifests/v1")),
        "{err}"
    );

    // Live, with no restart: ca.crt next to hosts.toml, named by `ca`.
    ctrd.write_host(
        &host,
        &hosts_toml(Some(&server), &server, true),
        Some(&reg.ca()),
    );
    let out = ctrd.pull("direct", &reference);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("unpacking linux/{}", host_arch()))
            && text.contains(&direct.manifest.digest),
        "{text}"
    );
    assert_pulled(
        &ctrd,
        "direct",
        &reference,
        &direct.manifest,
        &direct.blobs(),
    );
    // The unpacked rootfs holds the files of both layers.
    {
        let rootfs = ctrd.mount_image("direct", &reference, &dir.path().join("rootfs"));
        for (name, data) in direct.files.iter().flatten() {
            assert_eq!(
                &std::fs::read(rootfs.target.join(name)).unwrap(),
                data,
                "{name} in the rootfs"
            );
        }
    }

    // The index: containerd picks this machine's platform.
    let reference = format!("{host}/ctr/multi:v1");
    let out = ctrd.pull("multi", &reference);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mine = &multi.images[0];
    assert_pulled(&ctrd, "multi", &reference, &multi.index, &mine.blobs());

    // Friendly name, no DNS: `server` and the host block both name 127.0.0.1.
    let name = format!("registry.test:{port}");
    ctrd.write_host(
        &name,
        &hosts_toml(Some(&server), &server, true),
        Some(&reg.ca()),
    );
    let reference = format!("{name}/ctr/named:v1");
    let out = ctrd.pull("named", &reference);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_pulled(&ctrd, "named", &reference, &named.manifest, &named.blobs());

    // Mirror only (no `server` key): containerd tries the host block first.
    let name = format!("mirror.test:{port}");
    ctrd.write_host(&name, &hosts_toml(None, &server, true), Some(&reg.ca()));
    let reference = format!("{name}/ctr/mirrored:v1");
    let out = ctrd.pull("mirrored", &reference);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_pulled(
        &ctrd,
        "mirrored",
        &reference,
        &mirrored.manifest,
        &mirrored.blobs(),
    );

    // The query parameter containerd adds when a host block serves another name.
    let client = https_client(&reg.ca());
    let ns = format!("ns=mirror.test%3A{port}");
    let m = view::manifest(&client, &reg.url(), "ctr/mirrored", &format!("v1?{ns}")).await;
    assert_eq!(
        (m.status, m.digest.as_deref()),
        (200, Some(mirrored.manifest.digest.as_str()))
    );
    let head = client
        .head(format!("{}/v2/ctr/mirrored/manifests/v1?{ns}", reg.url()))
        .header("Accept", view::ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    for b in mirrored.blobs().iter().skip(1) {
        let got = view::get(
            &client,
            &reg.url(),
            &format!("/v2/ctr/mirrored/blobs/{}?{ns}", b.digest),
        )
        .await;
        assert_eq!((got.status, &got.bytes), (200, &b.bytes));
    }

    drop(ctrd);
}

/// skopeo, crane and containerd against two replicas on one S3 bucket behind
/// a proxy that sends each request to the other replica: what one client
/// pushes through both, every client pulls back identical through both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_push_and_pull_through_two_s3_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let Some(skopeo) = Skopeo::find(&dir.path().join("skopeo")) else {
        return;
    };
    let (Some(crane), Some(containerd), Some(ctr)) = (
        go_tool("crane", "PRIVREG_CRANE"),
        tool("containerd", "PRIVREG_CONTAINERD"),
        tool("ctr", "PRIVREG_CTR"),
    ) else {
        return;
    };
    if !common::root_or_skip("containerd") {
        return;
    }
    let Some(s3) = common::daemons::SeaweedFs::start(dir.path(), "clients") else {
        return;
    };
    let pki = common::pki::TestPki::loopback(&dir.path().join("pki"));
    let replica = |n: usize| {
        let data = dir.path().join(format!("replica-{n}"));
        s3.start_privreg(&data, "clients", &pki.privreg_args())
    };
    let replicas = [replica(1), replica(2)];
    let proxy = common::round_robin::RoundRobin::start(
        replicas.iter().map(|r| r.url()).collect(),
        &pki.server_cert,
        &pki.server_key,
        &pki.ca,
    );
    let host = proxy.host();

    // skopeo pushes an image and a two-platform index.
    let (img, multi, _) =
        skopeo_push_image_and_index(&skopeo, dir.path(), &host, "replicas/skopeo", &pki.cert_dir);

    // crane pushes another image; then reads both back, blob by blob.
    let crane = |args: &[&str]| {
        let mut c = Command::new(&crane);
        c.env("SSL_CERT_FILE", &pki.ca)
            .env_remove("SSL_CERT_DIR")
            .args(args);
        c
    };
    let other = images::random_image(host_arch(), 2);
    let other_src = dir.path().join("other");
    write_layout(&other_src, &[("v1", &other.manifest)], other.blobs());
    run(&mut crane(&[
        "push",
        other_src.to_str().unwrap(),
        &format!("{host}/replicas/crane:v1"),
    ]));
    for (repo, image) in [("skopeo", &img), ("crane", &other)] {
        let reference = format!("{host}/replicas/{repo}:v1");
        assert_eq!(
            run(&mut crane(&["manifest", &reference])).stdout,
            image.manifest.bytes
        );
        for b in image.blobs() {
            let got = run(&mut crane(&[
                "blob",
                &format!("{host}/replicas/{repo}@{}", b.digest),
            ]))
            .stdout;
            assert_eq!(got, b.bytes, "{repo} blob {}", b.digest);
        }
    }

    // skopeo pulls the index back whole.
    let out = dir.path().join("out-multi");
    skopeo.copy(
        &format!("docker://{host}/replicas/skopeo:multi"),
        &format!("oci:{}:multi", out.display()),
        true,
        &pki.cert_dir,
    );
    assert_eq!(layout_blobs(&out), by_digest(multi.blobs()));

    // containerd pulls what crane pushed, as a node would.
    let ctrd = Containerd::start(&containerd, &ctr, &dir.path().join("containerd"));
    let server = format!("https://{host}");
    ctrd.write_host(
        &host,
        &hosts_toml(Some(&server), &server, true),
        Some(&pki.ca),
    );
    let reference = format!("{host}/replicas/crane:v1");
    let pulled = ctrd.pull("replicas", &reference);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert_pulled(
        &ctrd,
        "replicas",
        &reference,
        &other.manifest,
        &other.blobs(),
    );
    let counts = proxy.counts();
    assert!(counts.iter().all(|&c| c > 10), "{counts:?}");
}
