//! Data-directory compatibility with the reference registry (Debian's
//! `docker-registry`, CNCF Distribution 2.8.2), both ways: one server writes the
//! directory, is stopped, and the other serves the same directory. Both use one
//! test CA, so the same clients reach both. The directory is registry:2's
//! `rootdirectory` and privreg's `--data` (blobs under `docker/registry/v2`).

mod common;

use std::path::Path;

use common::daemons::DockerRegistry;
use common::images::{
    self, MultiImage, by_digest, host_arch, layout_blobs, layout_refs, write_layout,
};
use common::pki::TestPki;
use common::skopeo::Skopeo;
use common::view::{self, View};
use common::{Privreg, https_client, run, tool};

/// Every file under `root` with its content, by relative path.
fn files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// What both tests push: an image under two tags, a two-platform index, and the
/// image converted by skopeo to Docker schema 2 (a digest only the registry knows).
struct Content {
    img: images::Image,
    multi: MultiImage,
}

const REFS: &[(&str, &str)] = &[
    ("compat/image", "v1"),
    ("compat/image", "v2"),
    ("compat/multi", "v1"),
    ("compat/docker", "v1"),
];

fn push_all(skopeo: &Skopeo, dir: &Path, host: &str, certs: &Path) -> Content {
    let img = images::random_image(host_arch(), 3);
    let multi = images::multi_image(vec![
        images::random_image("amd64", 2),
        images::random_image("arm64", 2),
    ]);
    let src = dir.join("src");
    write_layout(
        &src,
        &[("v1", &img.manifest), ("multi", &multi.index)],
        img.blobs().into_iter().chain(multi.blobs()),
    );
    let src = src.display();
    skopeo.copy(
        &format!("oci:{src}:v1"),
        &format!("docker://{host}/compat/image:v1"),
        false,
        certs,
    );
    skopeo.copy(
        &format!("oci:{src}:v1"),
        &format!("docker://{host}/compat/image:v2"),
        false,
        certs,
    );
    skopeo.copy(
        &format!("oci:{src}:multi"),
        &format!("docker://{host}/compat/multi:v1"),
        true,
        certs,
    );
    // Converted on the way (so no --preserve-digests here).
    run(skopeo
        .cmd("copy")
        .args(["--format", "v2s2", "--dest-cert-dir"])
        .arg(certs)
        .arg(format!("oci:{src}:v1"))
        .arg(format!("docker://{host}/compat/docker:v1")));
    Content { img, multi }
}

/// The view of what was pushed, checked against what was built.
fn check_view(v: &View, c: &Content) {
    let get = |repo: &str, reference: &str| &v.manifests[&(repo.to_owned(), reference.to_owned())];
    for tag in ["v1", "v2"] {
        let m = get("compat/image", tag);
        assert_eq!(m.bytes, c.img.manifest.bytes);
        assert_eq!(m.digest.as_deref(), Some(c.img.manifest.digest.as_str()));
        assert_eq!(m.content_type.as_deref(), Some(images::OCI_MANIFEST));
    }
    let m = get("compat/multi", "v1");
    assert_eq!(m.bytes, c.multi.index.bytes);
    assert_eq!(m.content_type.as_deref(), Some(images::OCI_INDEX));
    for child in &c.multi.images {
        assert_eq!(
            get("compat/multi", &child.manifest.digest).bytes,
            child.manifest.bytes
        );
    }
    let m = get("compat/docker", "v1");
    assert_eq!(
        m.content_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(m.digest.as_deref(), Some(common::sha256(&m.bytes).as_str()));
    // Every blob built here was served with its bytes (the Docker image's
    // layers are the same gzip'd tars; only its config and manifest differ).
    let served: std::collections::BTreeMap<_, _> = v
        .blobs
        .iter()
        .map(|((_, d), b)| (d.clone(), b.clone()))
        .collect();
    for b in c.img.blobs().into_iter().skip(1).chain(
        c.multi
            .images
            .iter()
            .flat_map(|i| i.blobs().into_iter().skip(1)),
    ) {
        assert_eq!(served.get(&b.digest), Some(&b.bytes), "blob {}", b.digest);
    }
    assert_eq!(
        v.tags["compat/image"]["tags"],
        serde_json::json!(["v1", "v2"])
    );
    assert_eq!(v.tags["compat/multi"]["tags"], serde_json::json!(["v1"]));
    assert_eq!(
        v.catalog["repositories"],
        serde_json::json!(["compat/docker", "compat/image", "compat/multi"])
    );
}

/// skopeo copies everything back out of the server at `host` into OCI layouts:
/// the same digests and exactly the blobs that were built.
fn pull_all(skopeo: &Skopeo, dir: &Path, host: &str, certs: &Path, c: &Content) {
    std::fs::create_dir_all(dir).unwrap();
    let out = dir.join("pulled-image");
    skopeo.copy(
        &format!("docker://{host}/compat/image:v2"),
        &format!("oci:{}:v2", out.display()),
        false,
        certs,
    );
    assert_eq!(
        layout_refs(&out)["v2"]["digest"],
        c.img.manifest.digest.as_str()
    );
    assert_eq!(layout_blobs(&out), by_digest(c.img.blobs()));
    let out = dir.join("pulled-multi");
    skopeo.copy(
        &format!("docker://{host}/compat/multi:v1"),
        &format!("oci:{}:v1", out.display()),
        true,
        certs,
    );
    assert_eq!(
        layout_refs(&out)["v1"]["digest"],
        c.multi.index.digest.as_str()
    );
    assert_eq!(layout_blobs(&out), by_digest(c.multi.blobs()));
}

/// skopeo pushes everything (`push_all`) to the server at `url`/`host`,
/// built under `dir`; returns what was pushed and how the server shows it.
async fn write_all(
    skopeo: &Skopeo,
    client: &reqwest::Client,
    pki: &TestPki,
    (url, host): (&str, &str),
    dir: &Path,
) -> (Content, View) {
    let content = push_all(skopeo, dir, host, &pki.cert_dir);
    let shown = view::view(client, url, REFS).await;
    check_view(&shown, &content);
    (content, shown)
}

/// The server at `url`/`host`, reading what another wrote, shows it as the
/// writer did (`before`), and skopeo pulls it all back into `out`. Returns
/// how it shows it.
async fn read_back(
    skopeo: &Skopeo,
    client: &reqwest::Client,
    pki: &TestPki,
    (url, host): (&str, &str),
    (before, content): (&View, &Content),
    out: &Path,
    what: &str,
) -> View {
    let after = view::view(client, url, REFS).await;
    check_view(&after, content);
    assert_eq!(after.sorted(), before.sorted(), "{what}");
    pull_all(skopeo, out, host, &pki.cert_dir, content);
    after
}

fn setup(dir: &Path) -> Option<(Skopeo, std::path::PathBuf, TestPki)> {
    let skopeo = Skopeo::find(&dir.join("skopeo"))?;
    let registry = tool("docker-registry", "DOCKER_REGISTRY")?;
    Some((skopeo, registry, TestPki::loopback(&dir.join("pki"))))
}

/// docker-registry writes the directory; privreg serves it unchanged.
#[tokio::test]
async fn privreg_serves_a_reference_registry_directory() {
    let dir = tempfile::tempdir().unwrap();
    let Some((skopeo, registry, pki)) = setup(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let client = https_client(&pki.ca);

    let mut reference = DockerRegistry::start(&registry, &data, &pki.server_cert, &pki.server_key);
    let server = (reference.url(), reference.host());
    let (content, before) =
        write_all(&skopeo, &client, &pki, (&server.0, &server.1), dir.path()).await;
    reference.stop();
    assert!(
        data.join("docker/registry/v2/repositories/compat/image/_manifests/tags/v1")
            .is_dir()
    );

    let tree = files(&data);
    let args = pki.privreg_args();
    let reg = Privreg::start(&data, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let after = read_back(
        &skopeo,
        &client,
        &pki,
        (&reg.url(), &reg.host()),
        (&before, &content),
        &dir.path().join("from-privreg"),
        "privreg shows the directory as docker-registry did",
    )
    .await;
    assert!(
        after.is_lexical(),
        "privreg lists tags and repositories in lexical order: {:?}",
        after.tags
    );
    // Serving reads changed nothing on disk.
    assert!(
        files(&data) == tree,
        "privreg modified the directory while only serving reads"
    );
}

/// privreg writes the directory; docker-registry serves it unchanged.
#[tokio::test]
async fn reference_registry_serves_a_privreg_directory() {
    let dir = tempfile::tempdir().unwrap();
    let Some((skopeo, registry, pki)) = setup(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let client = https_client(&pki.ca);

    let args = pki.privreg_args();
    let mut reg = Privreg::start(&data, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let server = (reg.url(), reg.host());
    let (content, before) =
        write_all(&skopeo, &client, &pki, (&server.0, &server.1), dir.path()).await;
    reg.stop();
    assert!(
        before.is_lexical(),
        "privreg lists tags and repositories in lexical order: {:?}",
        before.tags
    );

    let reference = DockerRegistry::start(&registry, &data, &pki.server_cert, &pki.server_key);
    read_back(
        &skopeo,
        &client,
        &pki,
        (&reference.url(), &reference.host()),
        (&before, &content),
        &dir.path().join("from-reference"),
        "docker-registry shows the directory as privreg did",
    )
    .await;
    assert!(
        !reference.log().contains("level=error"),
        "{}",
        reference.log()
    );
}

/// oras's artifact and its referrer, written by one server and served by the
/// other. Returns (subject digest, referrer digest, artifact bytes).
fn oras_push_and_attach(
    oras: &Path,
    work: &Path,
    ca: &Path,
    host: &str,
) -> (String, String, Vec<u8>) {
    std::fs::create_dir_all(work).unwrap();
    let payload = images::random_bytes(10_000);
    std::fs::write(work.join("artifact.bin"), &payload).unwrap();
    std::fs::write(work.join("sig.json"), br#"{"signed":"compat"}"#).unwrap();
    let json_of = |args: &[&str]| -> serde_json::Value {
        let out = run(std::process::Command::new(oras)
            .current_dir(work)
            .arg(args[0])
            .arg("--ca-file")
            .arg(ca)
            .args(&args[1..]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let reference = format!("{host}/compat/artifact:v1");
    let pushed = json_of(&[
        "push",
        "--format",
        "json",
        "--artifact-type",
        ARTIFACT,
        &reference,
        "artifact.bin",
    ]);
    let attached = json_of(&[
        "attach",
        "--format",
        "json",
        "--artifact-type",
        SIGNATURE,
        &reference,
        "sig.json",
    ]);
    (
        pushed["digest"].as_str().unwrap().to_owned(),
        attached["digest"].as_str().unwrap().to_owned(),
        payload,
    )
}

const ARTIFACT: &str = "application/vnd.privreg.test.artifact";
const SIGNATURE: &str = "application/vnd.privreg.test.signature";

/// Referrers attached while docker-registry (no referrers API: oras falls back
/// to the `sha256-<hex>` tag) served the directory are listed by privreg's
/// referrers API afterwards.
#[tokio::test]
async fn privreg_lists_referrers_attached_through_the_reference_registry() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_, registry, pki)) = setup(dir.path()) else {
        return;
    };
    let Some(oras) = common::daemons::go_tool("oras", "PRIVREG_ORAS") else {
        return;
    };
    let data = dir.path().join("data");
    let client = https_client(&pki.ca);

    let mut reference = DockerRegistry::start(&registry, &data, &pki.server_cert, &pki.server_key);
    let (subject, referrer, _) =
        oras_push_and_attach(&oras, &dir.path().join("work"), &pki.ca, &reference.host());
    let fallback_tag = subject.replace(':', "-");
    let tags = view::get(&client, &reference.url(), "/v2/compat/artifact/tags/list").await;
    let tags: serde_json::Value = serde_json::from_slice(&tags.bytes).unwrap();
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![fallback_tag.as_str(), "v1"],
        "oras used the tag fallback"
    );
    let before = view::view(
        &client,
        &reference.url(),
        &[("compat/artifact", "v1"), ("compat/artifact", &referrer)],
    )
    .await;
    reference.stop();

    let args = pki.privreg_args();
    let reg = Privreg::start(&data, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let after = view::view(
        &client,
        &reg.url(),
        &[("compat/artifact", "v1"), ("compat/artifact", &referrer)],
    )
    .await;
    assert_eq!(after.sorted(), before.sorted());
    let r = view::get(
        &client,
        &reg.url(),
        &format!("/v2/compat/artifact/referrers/{subject}"),
    )
    .await;
    assert_eq!(r.status, 200);
    let index: serde_json::Value = serde_json::from_slice(&r.bytes).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    // What a user sees: oras discover asks the referrers API, gets 200, and so
    // never looks at the fallback tag.
    let out = run(std::process::Command::new(&oras)
        .args(["discover", "--format", "json", "--ca-file"])
        .arg(&pki.ca)
        .arg(format!("{}/compat/artifact:v1", reg.host())));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let discovered: Vec<&str> = found["referrers"]
        .as_array()
        .map(|a| a.iter().map(|d| d["digest"].as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(
        (listed, discovered),
        (vec![referrer.as_str()], vec![referrer.as_str()]),
        "referrers of {subject} (API answer {index}; oras discover {found})"
    );
}

/// privreg's own `_referrers` directory does not disturb docker-registry: the
/// artifact and its referrer stay pullable, tags and catalog stay the same.
#[tokio::test]
async fn reference_registry_serves_privreg_referrers_as_plain_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_, registry, pki)) = setup(dir.path()) else {
        return;
    };
    let Some(oras) = common::daemons::go_tool("oras", "PRIVREG_ORAS") else {
        return;
    };
    let data = dir.path().join("data");
    let client = https_client(&pki.ca);

    let args = pki.privreg_args();
    let mut reg = Privreg::start(&data, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let (subject, referrer, payload) =
        oras_push_and_attach(&oras, &dir.path().join("work"), &pki.ca, &reg.host());
    let refs = [
        ("compat/artifact", "v1"),
        ("compat/artifact", referrer.as_str()),
    ];
    let before = view::view(&client, &reg.url(), &refs).await;
    // privreg has the referrers API, so oras pushed no fallback tag.
    assert_eq!(
        before.tags["compat/artifact"]["tags"],
        serde_json::json!(["v1"])
    );
    assert_eq!(
        before.catalog["repositories"],
        serde_json::json!(["compat/artifact"])
    );
    assert!(
        data.join("docker/registry/v2/repositories/compat/artifact/_referrers")
            .is_dir()
    );
    reg.stop();

    let reference = DockerRegistry::start(&registry, &data, &pki.server_cert, &pki.server_key);
    let after = view::view(&client, &reference.url(), &refs).await;
    assert_eq!(after.sorted(), before.sorted());
    assert_eq!(
        after.manifests[&("compat/artifact".to_owned(), "v1".to_owned())]
            .digest
            .as_deref(),
        Some(subject.as_str())
    );
    let layer = serde_json::from_slice::<serde_json::Value>(
        &after.manifests[&("compat/artifact".to_owned(), "v1".to_owned())].bytes,
    )
    .unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(after.blobs[&("compat/artifact".to_owned(), layer)], payload);
}

/// The same both ways on one S3 bucket (SeaweedFS on loopback): privreg's S3
/// driver and Distribution's share the layout under a key prefix. privreg
/// writes one prefix and Distribution serves it; Distribution writes another
/// and privreg serves it; each time the other shows what the writer showed.
#[tokio::test]
async fn privreg_and_the_reference_registry_share_an_s3_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let Some((skopeo, registry, pki)) = setup(dir.path()) else {
        return;
    };
    let Some(s3) = common::daemons::SeaweedFs::start(dir.path(), "shared") else {
        return;
    };
    let client = https_client(&pki.ca);
    let privreg_on =
        |prefix: &str, data: &Path| s3.start_privreg(data, prefix, &pki.privreg_args());
    let reference_on = |prefix: &str, root: &Path| {
        let storage = s3.distribution_storage(prefix);
        DockerRegistry::start_with_storage(
            &registry,
            root,
            &storage,
            &pki.server_cert,
            &pki.server_key,
        )
    };

    // privreg writes, Distribution reads.
    let mut reg = privreg_on("from-privreg", &dir.path().join("privreg-1"));
    let server = (reg.url(), reg.host());
    let (content, before) = write_all(
        &skopeo,
        &client,
        &pki,
        (&server.0, &server.1),
        &dir.path().join("a"),
    )
    .await;
    reg.stop();
    let mut reference = reference_on("from-privreg", &dir.path().join("reference-1"));
    read_back(
        &skopeo,
        &client,
        &pki,
        (&reference.url(), &reference.host()),
        (&before, &content),
        &dir.path().join("a/from-reference"),
        "Distribution shows privreg's bucket as privreg did",
    )
    .await;
    assert!(
        !reference.log().contains("level=error"),
        "{}",
        reference.log()
    );
    reference.stop();

    // Distribution writes, privreg reads.
    let mut reference = reference_on("from-reference", &dir.path().join("reference-2"));
    let server = (reference.url(), reference.host());
    let (content, before) = write_all(
        &skopeo,
        &client,
        &pki,
        (&server.0, &server.1),
        &dir.path().join("b"),
    )
    .await;
    reference.stop();
    let reg = privreg_on("from-reference", &dir.path().join("privreg-2"));
    read_back(
        &skopeo,
        &client,
        &pki,
        (&reg.url(), &reg.host()),
        (&before, &content),
        &dir.path().join("b/from-privreg"),
        "privreg shows Distribution's bucket as Distribution did",
    )
    .await;
}
