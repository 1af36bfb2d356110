//! The registry API in process: `privreg::registry::router` called with
//! `tower::ServiceExt::oneshot`, no socket. Every happy path of OCI Distribution
//! v1.1, and every bad input of the issue, each checked for its exact status, error
//! code and headers, and for what it left (or did not leave) on disk.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::oci::{
    DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, descriptor, image_manifest,
    index_manifest, random_bytes, sha512,
};
use common::{sha256, store};
use privreg::registry::auth::{AuthPolicy, Authenticator};
use privreg::registry::metrics::Metrics;
use privreg::registry::storage::Store;
use privreg::registry::{AppState, RegistryConfig, UploadLimits};

const MIB: u64 = 1 << 20;
const ZERO_UUID: &str = "00000000-0000-4000-8000-000000000000";

fn config() -> RegistryConfig {
    RegistryConfig {
        read_only: false,
        max_manifest_bytes: 4 * MIB,
        allow_sparse_manifests: false,
        uploads: UploadLimits {
            max_blob_bytes: None,
            ..UploadLimits::default()
        },
        ..RegistryConfig::default()
    }
}

/// A router over a fresh data directory `<tmp>/data`.
struct Reg {
    tmp: tempfile::TempDir,
    data: PathBuf,
    app: Router,
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn h(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    #[track_caller]
    fn header(&self, name: &str) -> &str {
        self.h(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first OCI error code of the body.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }

    #[track_caller]
    fn status(&self, want: u16) -> &Resp {
        assert_eq!(
            self.status,
            want,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// Asserts an error response: status, spec code, JSON content type.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> &Resp {
        self.status(status);
        assert_eq!(
            self.code(),
            code,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/json");
        self
    }
}

impl Reg {
    fn new() -> Reg {
        Reg::with(config(), None)
    }

    fn with(config: RegistryConfig, auth: Option<Authenticator>) -> Reg {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let app = app(&data, config, auth);
        Reg { tmp, data, app }
    }

    /// The same data directory behind a router with other settings.
    fn reopen(self, config: RegistryConfig, auth: Option<Authenticator>) -> Reg {
        let app = app(&self.data, config, auth);
        Reg { app, ..self }
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .expect("response body")
            .to_bytes()
            .to_vec();
        assert_eq!(
            parts
                .headers
                .get("docker-distribution-api-version")
                .map(|v| v.to_str().unwrap()),
            Some("registry/2.0"),
            "every response carries the API version"
        );
        Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(body.into()).unwrap()).await
    }

    async fn get(&self, uri: &str) -> Resp {
        self.call("GET", uri, &[], Body::empty()).await
    }

    async fn head(&self, uri: &str) -> Resp {
        self.call("HEAD", uri, &[], Body::empty()).await
    }

    /// Monolithic push; asserts 201 and returns the digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[("content-type", "application/octet-stream")],
                data.to_vec(),
            )
            .await;
        r.status(201);
        d
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            body.to_vec(),
        )
        .await
    }

    /// Pushes a random config and layer and an image manifest of `media_type`
    /// under `reference`; returns the manifest's digest and bytes.
    async fn push_image(&self, repo: &str, reference: &str, media_type: &str) -> (String, Vec<u8>) {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","n":"{}"}}"#,
            hex::encode(random_bytes(8))
        );
        let layer = random_bytes(300);
        self.push_blob(repo, config.as_bytes()).await;
        self.push_blob(repo, &layer).await;
        let m = image_manifest(media_type, config.as_bytes(), &[&layer], json!({}));
        self.put_manifest(repo, reference, media_type, &m)
            .await
            .status(201);
        (sha256(&m), m)
    }

    /// `POST` a session; returns its Location path.
    async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                Body::empty(),
            )
            .await;
        r.status(202);
        r.header("location").to_owned()
    }

    /// Every file under the test's temporary root (the data directory and beside it).
    fn files(&self) -> BTreeMap<String, Vec<u8>> {
        store::files(self.tmp.path())
    }

    /// Panics, naming the paths, if any file was added, removed or changed.
    #[track_caller]
    fn assert_unchanged(&self, before: &BTreeMap<String, Vec<u8>>, what: &str) {
        let after = self.files();
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        let changed: Vec<_> = after
            .iter()
            .filter(|(k, v)| before.get(*k).is_some_and(|b| b != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            added.is_empty() && removed.is_empty() && changed.is_empty(),
            "{what}: added {added:?}, removed {removed:?}, changed {changed:?}"
        );
    }

    fn has_blob_file(&self, digest: &str) -> bool {
        store::blob_path(&self.data, digest).exists()
    }

    fn upload_data(&self, location: &str) -> Vec<u8> {
        let rel = location
            .strip_prefix("/v2/")
            .unwrap()
            .replace("/blobs/uploads/", "/_uploads/");
        std::fs::read(
            store::v2(&self.data)
                .join("repositories")
                .join(rel)
                .join("data"),
        )
        .unwrap()
    }
}

fn app(data: &Path, config: RegistryConfig, auth: Option<Authenticator>) -> Router {
    let store = Store::new(data).expect("data directory");
    privreg::registry::router(AppState::new(store, auth, config, Arc::new(Metrics::new())))
}

/// `n` chunks of a body, as separate frames.
fn stream_body(parts: Vec<Vec<u8>>) -> Body {
    let frames: Vec<Result<Bytes, std::io::Error>> =
        parts.into_iter().map(|p| Ok(Bytes::from(p))).collect();
    Body::from_stream(futures_util::stream::iter(frames))
}

/// A body that sends `sent` and then fails, as when the client goes away.
fn broken_body(sent: Vec<u8>) -> Body {
    let frames: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from(sent)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    Body::from_stream(futures_util::stream::iter(frames))
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

// ---------------------------------------------------------------------------
// Happy paths
// ---------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_answers_json() {
    let reg = Reg::new();
    let r = reg.get("/v2/").await;
    r.status(200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.json(), json!({}));
    reg.get("/v2").await.status(200);
    reg.get("/v1/").await.error(404, "NOT_FOUND");
}

#[tokio::test]
async fn monolithic_post_with_digest() {
    let reg = Reg::new();
    let data = random_bytes(5000);
    let d = sha256(&data);
    let r = reg
        .call(
            "POST",
            &format!("/v2/a/b/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    r.status(201);
    assert_eq!(r.header("location"), format!("/v2/a/b/blobs/{d}"));
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(
        std::fs::read(store::blob_path(&reg.data, &d)).unwrap(),
        data
    );
    assert!(
        store::upload_dirs(&reg.data).is_empty(),
        "the session is gone"
    );
    let r = reg.head(&format!("/v2/a/b/blobs/{d}")).await;
    r.status(200);
    assert_eq!(r.header("content-length"), "5000");
    assert_eq!(r.header("docker-content-digest"), d);
    assert!(r.body.is_empty());
    let r = reg.get(&format!("/v2/a/b/blobs/{d}")).await;
    r.status(200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-type"), "application/octet-stream");
    // Pushed to a/b only: another repository cannot read it.
    reg.get(&format!("/v2/a/c/blobs/{d}"))
        .await
        .error(404, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn post_then_put() {
    let reg = Reg::new();
    let r = reg
        .call("POST", "/v2/r/blobs/uploads/", &[], Body::empty())
        .await;
    r.status(202);
    let location = r.header("location").to_owned();
    let id = location
        .strip_prefix("/v2/r/blobs/uploads/")
        .expect("session under the repo");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    assert_eq!(r.header("docker-upload-uuid"), id);
    assert_eq!(r.header("range"), "0-0");
    assert!(
        store::v2(&reg.data)
            .join("repositories/r/_uploads")
            .join(id)
            .join("data")
            .is_file()
    );

    let data = random_bytes(3000);
    let d = sha256(&data);
    let r = reg
        .call("PUT", &format!("{location}?digest={d}"), &[], data.clone())
        .await;
    r.status(201);
    assert_eq!(r.header("location"), format!("/v2/r/blobs/{d}"));
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
    assert!(store::upload_dirs(&reg.data).is_empty());
    // The id is spent.
    reg.get(&location).await.error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_patch_with_content_range() {
    let reg = Reg::new();
    let data = random_bytes(10_000);
    let d = sha256(&data);
    let location = reg.start_upload("r").await;

    let r = reg
        .call(
            "PATCH",
            &location,
            &[
                ("content-range", "0-5999"),
                ("content-length", "6000"),
                ("content-type", "application/octet-stream"),
            ],
            data[..6000].to_vec(),
        )
        .await;
    r.status(202);
    assert_eq!(r.header("range"), "0-5999");
    assert_eq!(r.header("location"), location);
    assert_eq!(r.header("content-length"), "0");

    let r = reg
        .call(
            "PATCH",
            &location,
            &[("content-range", "6000-9999"), ("content-length", "4000")],
            data[6000..].to_vec(),
        )
        .await;
    r.status(202);
    assert_eq!(r.header("range"), "0-9999");
    assert_eq!(reg.upload_data(&location), data);

    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-9999");
    assert_eq!(r.header("location"), location);

    let r = reg
        .call(
            "PUT",
            &format!("{location}?digest={d}"),
            &[("content-length", "0")],
            Body::empty(),
        )
        .await;
    r.status(201);
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let reg = Reg::new();
    let data = random_bytes(9000);
    let d = sha256(&data);
    let location = reg.start_upload("r").await;
    // One PATCH streamed in several frames, no Content-Range, no Content-Length.
    let parts = vec![
        data[..1000].to_vec(),
        data[1000..2500].to_vec(),
        data[2500..6000].to_vec(),
    ];
    let r = reg.call("PATCH", &location, &[], stream_body(parts)).await;
    r.status(202);
    assert_eq!(r.header("range"), "0-5999");
    // A second streamed PATCH appends.
    let r = reg
        .call("PATCH", &location, &[], data[6000..8000].to_vec())
        .await;
    r.status(202);
    assert_eq!(r.header("range"), "0-7999");
    // The closing PUT carries the last bytes.
    let r = reg
        .call(
            "PUT",
            &format!("{location}?digest={d}"),
            &[],
            data[8000..].to_vec(),
        )
        .await;
    r.status(201);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
}

#[tokio::test]
async fn upload_status_and_cancel() {
    let reg = Reg::new();
    let location = reg.start_upload("r").await;
    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-0");
    reg.call("PATCH", &location, &[], vec![7u8; 123])
        .await
        .status(202);
    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-122");
    assert_eq!(
        r.header("docker-upload-uuid"),
        location.rsplit('/').next().unwrap()
    );

    let r = reg.call("DELETE", &location, &[], Body::empty()).await;
    r.status(204);
    assert!(
        store::upload_dirs(&reg.data).is_empty(),
        "cancel deletes what was received"
    );
    reg.get(&location).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.call("PATCH", &location, &[], vec![1u8; 3])
        .await
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.call("DELETE", &location, &[], Body::empty())
        .await
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    let d = sha256(&[7u8; 123]);
    reg.call("PUT", &format!("{location}?digest={d}"), &[], Body::empty())
        .await
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    assert!(!reg.has_blob_file(&d));
    assert!(
        store::upload_dirs(&reg.data).is_empty(),
        "no request recreated the session"
    );
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = Reg::new();
    let data = random_bytes(2048);
    let d = reg.push_blob("src/repo", &data).await;

    let r = reg
        .call(
            "POST",
            &format!("/v2/dst/blobs/uploads/?mount={d}&from=src/repo"),
            &[],
            Body::empty(),
        )
        .await;
    r.status(201);
    assert_eq!(r.header("location"), format!("/v2/dst/blobs/{d}"));
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(reg.get(&format!("/v2/dst/blobs/{d}")).await.body, data);
    assert!(
        store::upload_dirs(&reg.data).is_empty(),
        "a mount opens no session"
    );
    assert_eq!(
        store::blob_files(&reg.data).len(),
        1,
        "the content is shared, not copied"
    );

    // The blob is absent: the registry falls back to an upload session.
    let other = random_bytes(100);
    let od = sha256(&other);
    let r = reg
        .call(
            "POST",
            &format!("/v2/dst/blobs/uploads/?mount={od}&from=src/repo"),
            &[],
            Body::empty(),
        )
        .await;
    r.status(202);
    let location = r.header("location").to_owned();
    assert!(location.starts_with("/v2/dst/blobs/uploads/"), "{location}");
    assert_eq!(r.header("range"), "0-0");
    reg.call(
        "PUT",
        &format!("{location}?digest={od}"),
        &[],
        other.clone(),
    )
    .await
    .status(201);
    assert_eq!(reg.get(&format!("/v2/dst/blobs/{od}")).await.body, other);

    // `from` a repository that does not hold the blob: no mount, a session instead.
    let r = reg
        .call(
            "POST",
            &format!("/v2/third/blobs/uploads/?mount={d}&from=nowhere"),
            &[],
            Body::empty(),
        )
        .await;
    r.status(202);
    reg.get(&format!("/v2/third/blobs/{d}"))
        .await
        .error(404, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn concurrent_pushes_of_the_same_blob() {
    let reg = Arc::new(Reg::new());
    let data = random_bytes(200_000);
    let d = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (reg, data) = (reg.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                reg.push_blob(&format!("r{i}"), &data).await
            } else {
                let location = reg.start_upload(&format!("r{i}")).await;
                for (n, part) in data.chunks(50_000).enumerate() {
                    let range = format!("{}-{}", n * 50_000, n * 50_000 + part.len() - 1);
                    reg.call(
                        "PATCH",
                        &location,
                        &[("content-range", &range)],
                        part.to_vec(),
                    )
                    .await
                    .status(202);
                }
                let d = sha256(&data);
                reg.call("PUT", &format!("{location}?digest={d}"), &[], Body::empty())
                    .await
                    .status(201);
                d
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), d);
    }
    for i in 0..8 {
        assert_eq!(reg.get(&format!("/v2/r{i}/blobs/{d}")).await.body, data);
    }
    assert_eq!(store::assert_consistent(&reg.data), 1);
    assert!(store::upload_dirs(&reg.data).is_empty());
}

#[tokio::test]
async fn blob_range_requests() {
    let reg = Reg::new();
    let data: Vec<u8> = (0..100u8).collect();
    let d = reg.push_blob("r", &data).await;
    let url = format!("/v2/r/blobs/{d}");
    let ranged = |range: &'static str| {
        let url = url.clone();
        let reg = &reg;
        async move {
            reg.call("GET", &url, &[("range", range)], Body::empty())
                .await
        }
    };

    let r = ranged("bytes=10-19").await;
    r.status(206);
    assert_eq!(r.header("content-range"), "bytes 10-19/100");
    assert_eq!(r.header("content-length"), "10");
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(r.body, data[10..20]);

    let r = ranged("bytes=90-").await;
    r.status(206);
    assert_eq!(r.header("content-range"), "bytes 90-99/100");
    assert_eq!(r.body, data[90..]);

    let r = ranged("bytes=-5").await;
    r.status(206);
    assert_eq!(r.header("content-range"), "bytes 95-99/100");
    assert_eq!(r.body, data[95..]);

    let r = ranged("bytes=100-").await;
    r.status(416);
    assert_eq!(r.header("content-range"), "bytes */100");

    let r = reg.head(&url).await;
    r.status(200);
    assert_eq!(r.header("accept-ranges"), "bytes");
    assert_eq!(r.header("content-length"), "100");
}

#[tokio::test]
async fn blob_delete() {
    let reg = Reg::new();
    let d = reg.push_blob("r", b"delete me").await;
    let r = reg
        .call("DELETE", &format!("/v2/r/blobs/{d}"), &[], Body::empty())
        .await;
    r.status(202);
    reg.get(&format!("/v2/r/blobs/{d}"))
        .await
        .error(404, "BLOB_UNKNOWN");
    reg.head(&format!("/v2/r/blobs/{d}")).await.status(404);
    reg.call("DELETE", &format!("/v2/r/blobs/{d}"), &[], Body::empty())
        .await
        .error(404, "BLOB_UNKNOWN");
}

/// PUT by tag, then GET/HEAD by tag and by digest, with the right headers.
async fn check_manifest_round_trip(
    reg: &Reg,
    repo: &str,
    tag: &str,
    media_type: &str,
    body: &[u8],
) {
    let d = sha256(body);
    let r = reg.put_manifest(repo, tag, media_type, body).await;
    r.status(201);
    assert_eq!(r.header("location"), format!("/v2/{repo}/manifests/{d}"));
    assert_eq!(r.header("docker-content-digest"), d);
    for reference in [tag, d.as_str()] {
        let url = format!("/v2/{repo}/manifests/{reference}");
        let r = reg.get(&url).await;
        r.status(200);
        assert_eq!(r.header("content-type"), media_type, "{url}");
        assert_eq!(r.header("docker-content-digest"), d);
        assert_eq!(r.header("content-length"), body.len().to_string());
        assert_eq!(r.body, body, "{url}: byte for byte");
        let r = reg.head(&url).await;
        r.status(200);
        assert_eq!(r.header("content-type"), media_type);
        assert_eq!(r.header("docker-content-digest"), d);
        assert_eq!(r.header("content-length"), body.len().to_string());
        assert!(r.body.is_empty());
    }
    assert_eq!(
        std::fs::read(store::blob_path(&reg.data, &d)).unwrap(),
        body,
        "stored in the blob store, as Distribution does"
    );
}

#[tokio::test]
async fn manifests_of_every_kind() {
    let reg = Reg::new();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let l1 = random_bytes(1000);
    let l2 = random_bytes(2000);
    reg.push_blob("r", cfg).await;
    reg.push_blob("r", &l1).await;
    reg.push_blob("r", &l2).await;

    let oci = image_manifest(OCI_MANIFEST, cfg, &[&l1, &l2], json!({}));
    check_manifest_round_trip(&reg, "r", "oci", OCI_MANIFEST, &oci).await;
    let oci2 = image_manifest(
        OCI_MANIFEST,
        cfg,
        &[&l2],
        json!({"annotations": {"k": "v"}}),
    );
    reg.put_manifest("r", "oci2", OCI_MANIFEST, &oci2)
        .await
        .status(201);
    let index = index_manifest(
        OCI_INDEX,
        &[(OCI_MANIFEST, &oci), (OCI_MANIFEST, &oci2)],
        json!({}),
    );
    check_manifest_round_trip(&reg, "r", "index", OCI_INDEX, &index).await;

    let docker = image_manifest(DOCKER_MANIFEST, cfg, &[&l1], json!({}));
    check_manifest_round_trip(&reg, "r", "docker", DOCKER_MANIFEST, &docker).await;
    let list = index_manifest(
        DOCKER_MANIFEST_LIST,
        &[(DOCKER_MANIFEST, &docker)],
        json!({}),
    );
    check_manifest_round_trip(&reg, "r", "list", DOCKER_MANIFEST_LIST, &list).await;

    // Pushed by digest: no tag appears.
    let oci3 = image_manifest(
        OCI_MANIFEST,
        cfg,
        &[&l1],
        json!({"annotations": {"n": "3"}}),
    );
    let d3 = sha256(&oci3);
    let r = reg.put_manifest("r", &d3, OCI_MANIFEST, &oci3).await;
    r.status(201);
    assert_eq!(r.header("docker-content-digest"), d3);
    reg.get(&format!("/v2/r/manifests/{d3}")).await.status(200);
    let tags = reg.get("/v2/r/tags/list").await.json();
    assert_eq!(
        tags,
        json!({"name": "r", "tags": ["docker", "index", "list", "oci", "oci2"]})
    );

    // A manifest pushed by a sha512 digest is stored and served under it.
    let oci4 = image_manifest(
        OCI_MANIFEST,
        cfg,
        &[&l2],
        json!({"annotations": {"n": "4"}}),
    );
    let d4 = sha512(&oci4);
    let r = reg.put_manifest("r", &d4, OCI_MANIFEST, &oci4).await;
    r.status(201);
    assert_eq!(r.header("docker-content-digest"), d4);
    let r = reg.get(&format!("/v2/r/manifests/{d4}")).await;
    r.status(200);
    assert_eq!(r.body, oci4);

    // Re-tagging moves the tag.
    reg.put_manifest("r", "oci", OCI_MANIFEST, &oci2)
        .await
        .status(201);
    assert_eq!(reg.get("/v2/r/manifests/oci").await.body, oci2);
    assert_eq!(
        reg.get(&format!("/v2/r/manifests/{}", sha256(&oci)))
            .await
            .body,
        oci
    );
    assert_eq!(
        store::assert_consistent(&reg.data),
        10,
        "3 blobs and 7 manifests"
    );
}

#[tokio::test]
async fn accept_negotiation() {
    let reg = Reg::new();
    let (d, m) = reg.push_image("r", "img", OCI_MANIFEST).await;
    let get = |accept: &'static str| {
        let reg = &reg;
        async move {
            reg.call(
                "GET",
                "/v2/r/manifests/img",
                &[("accept", accept)],
                Body::empty(),
            )
            .await
        }
    };

    let r = get(DOCKER_MANIFEST).await;
    r.error(404, "MANIFEST_UNKNOWN");
    let both = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json;q=0.9";
    let r = get(both).await;
    r.status(200);
    assert_eq!(r.header("content-type"), OCI_MANIFEST);
    assert_eq!(r.body, m);
    get("*/*").await.status(200);
    get(OCI_MANIFEST).await.status(200);
    get(OCI_INDEX).await.error(404, "MANIFEST_UNKNOWN");
    // Several Accept headers count together.
    let r = reg
        .call(
            "GET",
            &format!("/v2/r/manifests/{d}"),
            &[("accept", DOCKER_MANIFEST), ("accept", OCI_MANIFEST)],
            Body::empty(),
        )
        .await;
    r.status(200);
    assert_eq!(r.header("docker-content-digest"), d);
    reg.get("/v2/r/manifests/img").await.status(200);

    let index = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &m)], json!({}));
    reg.put_manifest("r", "idx", OCI_INDEX, &index)
        .await
        .status(201);
    reg.call(
        "GET",
        "/v2/r/manifests/idx",
        &[("accept", OCI_MANIFEST)],
        Body::empty(),
    )
    .await
    .error(404, "MANIFEST_UNKNOWN");
    let r = reg
        .call(
            "GET",
            "/v2/r/manifests/idx",
            &[("accept", &format!("{OCI_MANIFEST}, {OCI_INDEX}"))],
            Body::empty(),
        )
        .await;
    r.status(200);
    assert_eq!(r.header("content-type"), OCI_INDEX);
}

#[tokio::test]
async fn tags_list_paginates_with_link() {
    let reg = Reg::new();
    let (_, m) = reg.push_image("r", "v1", OCI_MANIFEST).await;
    for tag in ["v3", "latest", "v2", "a-tag"] {
        reg.put_manifest("r", tag, OCI_MANIFEST, &m)
            .await
            .status(201);
    }
    let r = reg.get("/v2/r/tags/list").await;
    r.status(200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.json(),
        json!({"name": "r", "tags": ["a-tag", "latest", "v1", "v2", "v3"]})
    );
    assert_eq!(r.h("link"), None);

    let r = reg.get("/v2/r/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], json!(["a-tag", "latest"]));
    assert_eq!(
        r.header("link"),
        r#"</v2/r/tags/list?n=2&last=latest>; rel="next""#
    );
    let next = r
        .header("link")
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    let r = reg.get(&next).await;
    assert_eq!(r.json()["tags"], json!(["v1", "v2"]));
    assert_eq!(
        r.header("link"),
        r#"</v2/r/tags/list?n=2&last=v2>; rel="next""#
    );
    let r = reg.get("/v2/r/tags/list?n=2&last=v2").await;
    assert_eq!(r.json()["tags"], json!(["v3"]));
    assert_eq!(r.h("link"), None);
    let r = reg.get("/v2/r/tags/list?last=v1").await;
    assert_eq!(r.json()["tags"], json!(["v2", "v3"]));
    let r = reg.get("/v2/r/tags/list?n=5").await;
    assert_eq!(r.json()["tags"].as_array().unwrap().len(), 5);
    assert_eq!(r.h("link"), None, "exactly n left: no next page");

    reg.get("/v2/nothing/tags/list")
        .await
        .error(404, "NAME_UNKNOWN");
    reg.get("/v2/r/tags/list?n=x").await.status(400);
}

#[tokio::test]
async fn catalog_paginates_with_link() {
    let reg = Reg::new();
    for repo in ["e", "b/c", "a", "d"] {
        reg.push_image(repo, "t", OCI_MANIFEST).await;
    }
    // A repository with a blob and no manifest is no repository yet.
    reg.push_blob("only/blob", b"x").await;
    let r = reg.get("/v2/_catalog").await;
    r.status(200);
    assert_eq!(r.json(), json!({"repositories": ["a", "b/c", "d", "e"]}));
    let r = reg.get("/v2/_catalog?n=2").await;
    assert_eq!(r.json()["repositories"], json!(["a", "b/c"]));
    assert_eq!(
        r.header("link"),
        r#"</v2/_catalog?n=2&last=b%2Fc>; rel="next""#
    );
    let next = r
        .header("link")
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    let r = reg.get(&next).await;
    assert_eq!(r.json()["repositories"], json!(["d", "e"]));
    assert_eq!(r.h("link"), None);
}

/// Reads never write: not for unknown repositories, and not for a repository
/// another registry wrote (no referrers index: the query scans instead).
#[tokio::test]
async fn reads_never_write() {
    let reg = Reg::new();
    let (subject, subject_bytes) = reg.push_image("r", "app", OCI_MANIFEST).await;
    let empty = b"{}";
    reg.push_blob("r", empty).await;
    let sig = image_manifest(
        OCI_MANIFEST,
        empty,
        &[],
        json!({"artifactType": "application/vnd.example.sig",
               "subject": descriptor(OCI_MANIFEST, &subject_bytes)}),
    );
    let sig_digest = sha256(&sig);
    reg.put_manifest("r", &sig_digest, OCI_MANIFEST, &sig)
        .await
        .status(201);
    // As registry:2 would have left it: no index at all.
    let repo_dir = reg.data.join("docker/registry/v2/repositories/r");
    std::fs::remove_dir_all(repo_dir.join("_referrers")).unwrap();

    let before = store::paths(reg.tmp.path());
    let before_files = reg.files();
    let r = reg.get(&format!("/v2/r/referrers/{subject}")).await;
    r.status(200);
    assert_eq!(r.json()["manifests"][0]["digest"], sig_digest.as_str());
    for uri in [
        format!("/v2/nobody/referrers/{subject}"),
        format!("/v2/a/b/c/referrers/{subject}"),
        "/v2/nobody/tags/list".to_owned(),
        "/v2/nobody/manifests/latest".to_owned(),
        format!("/v2/nobody/blobs/{subject}"),
        "/v2/_catalog".to_owned(),
        format!("/v2/nobody/blobs/uploads/{ZERO_UUID}"),
    ] {
        let r = reg.get(&uri).await;
        assert!(r.status == 200 || r.status == 404, "{uri}: {}", r.status);
        reg.head(&uri).await;
    }
    assert_eq!(
        reg.get(&format!("/v2/nobody/referrers/{subject}"))
            .await
            .json()["manifests"],
        json!([])
    );
    assert_eq!(store::paths(reg.tmp.path()), before, "reads created paths");
    reg.assert_unchanged(&before_files, "reads");

    // The index of such a repository is built on privreg's first write there.
    reg.put_manifest("r", "again", OCI_MANIFEST, &subject_bytes)
        .await
        .status(201);
    assert!(repo_dir.join("_referrers/indexed").is_file());
    assert!(
        repo_dir
            .join("_referrers/sha256")
            .join(subject.strip_prefix("sha256:").unwrap())
            .is_dir()
    );
    let r = reg.get(&format!("/v2/r/referrers/{subject}")).await;
    assert_eq!(r.json()["manifests"][0]["digest"], sig_digest.as_str());
}

#[tokio::test]
async fn referrers_and_oci_subject() {
    let reg = Reg::new();
    let (subject, subject_bytes) = reg.push_image("r", "app", OCI_MANIFEST).await;
    let empty = b"{}";
    reg.push_blob("r", empty).await;
    let sbom_layer = random_bytes(64);
    let sig_layer = random_bytes(32);
    reg.push_blob("r", &sbom_layer).await;
    reg.push_blob("r", &sig_layer).await;
    let subject_desc = descriptor(OCI_MANIFEST, &subject_bytes);

    let sbom = image_manifest(
        OCI_MANIFEST,
        empty,
        &[&sbom_layer],
        json!({"artifactType": "application/vnd.example.sbom", "subject": subject_desc,
               "annotations": {"org.example.kind": "sbom"}}),
    );
    let r = reg
        .put_manifest("r", &sha256(&sbom), OCI_MANIFEST, &sbom)
        .await;
    r.status(201);
    assert_eq!(r.header("oci-subject"), subject);
    let sig = image_manifest(
        OCI_MANIFEST,
        empty,
        &[&sig_layer],
        json!({"artifactType": "application/vnd.example.sig", "subject": subject_desc}),
    );
    reg.put_manifest("r", &sha256(&sig), OCI_MANIFEST, &sig)
        .await
        .status(201);
    // A manifest without a subject carries no OCI-Subject.
    let r = reg
        .put_manifest("r", "plain", OCI_MANIFEST, &subject_bytes)
        .await;
    r.status(201);
    assert_eq!(r.h("oci-subject"), None);

    let r = reg.get(&format!("/v2/r/referrers/{subject}")).await;
    r.status(200);
    assert_eq!(r.header("content-type"), OCI_INDEX);
    assert_eq!(r.h("oci-filters-applied"), None);
    let mut want = vec![
        json!({"mediaType": OCI_MANIFEST, "digest": sha256(&sbom), "size": sbom.len(),
               "artifactType": "application/vnd.example.sbom",
               "annotations": {"org.example.kind": "sbom"}}),
        json!({"mediaType": OCI_MANIFEST, "digest": sha256(&sig), "size": sig.len(),
               "artifactType": "application/vnd.example.sig"}),
    ];
    want.sort_by_key(|v| v["digest"].as_str().unwrap().to_owned());
    assert_eq!(
        r.json(),
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": want})
    );

    let r = reg
        .get(&format!(
            "/v2/r/referrers/{subject}?artifactType=application/vnd.example.sig"
        ))
        .await;
    r.status(200);
    assert_eq!(r.header("oci-filters-applied"), "artifactType");
    let manifests = r.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], json!(sha256(&sig)));

    // Unknown subject: an empty index, not an error.
    let none = sha256(b"no such manifest");
    let r = reg.get(&format!("/v2/r/referrers/{none}")).await;
    r.status(200);
    assert_eq!(r.json()["manifests"], json!([]));

    // A referrer may arrive before its subject.
    let orphan_subject = json!({"mediaType": OCI_MANIFEST, "digest": none, "size": 3});
    let early = image_manifest(
        OCI_MANIFEST,
        empty,
        &[&sig_layer],
        json!({"artifactType": "x/y", "subject": orphan_subject}),
    );
    let r = reg
        .put_manifest("r", &sha256(&early), OCI_MANIFEST, &early)
        .await;
    r.status(201);
    assert_eq!(r.header("oci-subject"), none);
    assert_eq!(
        reg.get(&format!("/v2/r/referrers/{none}")).await.json()["manifests"][0]["digest"],
        json!(sha256(&early))
    );

    // Deleting a referrer removes it from the list.
    reg.call(
        "DELETE",
        &format!("/v2/r/manifests/{}", sha256(&sbom)),
        &[],
        Body::empty(),
    )
    .await
    .status(202);
    let r = reg.get(&format!("/v2/r/referrers/{subject}")).await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(r.json()["manifests"][0]["digest"], json!(sha256(&sig)));
}

#[tokio::test]
async fn manifest_delete_by_digest_removes_its_tags() {
    let reg = Reg::new();
    let (d, m) = reg.push_image("r", "v1", OCI_MANIFEST).await;
    reg.put_manifest("r", "v2", OCI_MANIFEST, &m)
        .await
        .status(201);
    let (_, other) = reg.push_image("r", "other", OCI_MANIFEST).await;
    let r = reg
        .call(
            "DELETE",
            &format!("/v2/r/manifests/{d}"),
            &[],
            Body::empty(),
        )
        .await;
    r.status(202);
    for reference in ["v1", "v2", d.as_str()] {
        reg.get(&format!("/v2/r/manifests/{reference}"))
            .await
            .error(404, "MANIFEST_UNKNOWN");
        reg.head(&format!("/v2/r/manifests/{reference}"))
            .await
            .status(404);
    }
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["other"])
    );
    assert_eq!(reg.get("/v2/r/manifests/other").await.body, other);
    reg.call(
        "DELETE",
        &format!("/v2/r/manifests/{d}"),
        &[],
        Body::empty(),
    )
    .await
    .error(404, "MANIFEST_UNKNOWN");
    store::assert_consistent(&reg.data);
}

#[tokio::test]
async fn manifest_delete_by_tag_keeps_the_manifest() {
    let reg = Reg::new();
    let (d, m) = reg.push_image("r", "v1", OCI_MANIFEST).await;
    reg.put_manifest("r", "v2", OCI_MANIFEST, &m)
        .await
        .status(201);
    reg.call("DELETE", "/v2/r/manifests/v1", &[], Body::empty())
        .await
        .status(202);
    reg.get("/v2/r/manifests/v1")
        .await
        .error(404, "MANIFEST_UNKNOWN");
    assert_eq!(reg.get(&format!("/v2/r/manifests/{d}")).await.body, m);
    assert_eq!(reg.get("/v2/r/manifests/v2").await.body, m);
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["v2"])
    );
    reg.call("DELETE", "/v2/r/manifests/v1", &[], Body::empty())
        .await
        .error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let reg = Reg::new();
    let ns = "ns=registry.test%3A5000";
    let data = random_bytes(500);
    let d = sha256(&data);
    let r = reg
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?{ns}&digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    r.status(201);
    let (md, m) = reg.push_image("r", "t", OCI_MANIFEST).await;
    assert_eq!(reg.get(&format!("/v2/r/manifests/t?{ns}")).await.body, m);
    reg.head(&format!("/v2/r/manifests/{md}?{ns}"))
        .await
        .status(200);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}?{ns}")).await.body, data);
    reg.get(&format!("/v2/r/tags/list?{ns}")).await.status(200);
    reg.get(&format!("/v2/?{ns}")).await.status(200);
    let r = reg
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?{ns}"),
            &[],
            Body::empty(),
        )
        .await;
    r.status(202);
    let location = r.header("location").to_owned();
    reg.call("PATCH", &format!("{location}?{ns}"), &[], b"abc".to_vec())
        .await
        .status(202);
    reg.call(
        "PUT",
        &format!("{location}?{ns}&digest={}", sha256(b"abc")),
        &[],
        Body::empty(),
    )
    .await
    .status(201);
    reg.put_manifest("r", &format!("t2?{ns}"), OCI_MANIFEST, &m)
        .await
        .status(201);
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["t", "t2"])
    );
}

#[tokio::test]
async fn sha512_blobs() {
    let reg = Reg::new();
    let data = random_bytes(4000);
    let d = sha512(&data);
    let r = reg
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={d}"),
            &[],
            data.clone(),
        )
        .await;
    r.status(201);
    assert_eq!(r.header("docker-content-digest"), d);
    let path = store::blob_path(&reg.data, &d);
    assert!(
        path.to_string_lossy().contains("/blobs/sha512/"),
        "{}",
        path.display()
    );
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let r = reg.head(&format!("/v2/r/blobs/{d}")).await;
    r.status(200);
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);

    // A session closed with a sha512 digest.
    let more = random_bytes(7000);
    let md = sha512(&more);
    let location = reg.start_upload("r").await;
    reg.call(
        "PATCH",
        &location,
        &[("content-range", "0-3499")],
        more[..3500].to_vec(),
    )
    .await
    .status(202);
    reg.call(
        "PUT",
        &format!("{location}?digest={md}"),
        &[],
        more[3500..].to_vec(),
    )
    .await
    .status(201);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{md}")).await.body, more);

    // And a wrong one.
    let location = reg.start_upload("r").await;
    reg.call(
        "PUT",
        &format!("{location}?digest={}", sha512(b"other")),
        &[],
        b"this".to_vec(),
    )
    .await
    .error(400, "DIGEST_INVALID");
    assert!(!reg.has_blob_file(&sha512(b"other")));
    assert!(!reg.has_blob_file(&sha512(b"this")));
    assert_eq!(store::assert_consistent(&reg.data), 2);
}

// ---------------------------------------------------------------------------
// Bad input: the spec's error, and nothing changes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn digest_mismatch_on_put_stores_nothing_and_ends_the_session() {
    let reg = Reg::new();
    reg.push_image("r", "t", OCI_MANIFEST).await;
    let before = reg.files();
    let catalog = reg.get("/v2/_catalog").await.body;

    let data = random_bytes(1000);
    let wrong = sha256(b"something else");
    let location = reg.start_upload("r").await;
    reg.call("PATCH", &location, &[], data.clone())
        .await
        .status(202);
    let r = reg
        .call(
            "PUT",
            &format!("{location}?digest={wrong}"),
            &[],
            Body::empty(),
        )
        .await;
    r.error(400, "DIGEST_INVALID");
    assert!(!reg.has_blob_file(&wrong));
    assert!(!reg.has_blob_file(&sha256(&data)));
    reg.head(&format!("/v2/r/blobs/{wrong}")).await.status(404);
    reg.head(&format!("/v2/r/blobs/{}", sha256(&data)))
        .await
        .status(404);
    reg.get(&location).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    assert!(
        store::upload_dirs(&reg.data).is_empty(),
        "the session's data is gone"
    );
    reg.assert_unchanged(&before, "storage");

    // The same for a monolithic POST, and for a PUT carrying the body.
    let r = reg
        .call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={wrong}"),
            &[],
            data.clone(),
        )
        .await;
    r.error(400, "DIGEST_INVALID");
    let location = reg.start_upload("r").await;
    reg.call(
        "PUT",
        &format!("{location}?digest={wrong}"),
        &[],
        data.clone(),
    )
    .await
    .error(400, "DIGEST_INVALID");
    assert!(store::upload_dirs(&reg.data).is_empty());
    reg.assert_unchanged(&before, "storage");

    // A brand-new repository whose only push failed is still unknown.
    reg.call(
        "POST",
        &format!("/v2/fresh/blobs/uploads/?digest={wrong}"),
        &[],
        data.clone(),
    )
    .await
    .error(400, "DIGEST_INVALID");
    reg.assert_unchanged(&before, "storage");
    reg.get("/v2/fresh/tags/list")
        .await
        .error(404, "NAME_UNKNOWN");
    assert_eq!(reg.get("/v2/_catalog").await.body, catalog);
}

#[tokio::test]
async fn malformed_digests_are_digest_invalid() {
    let reg = Reg::new();
    let (_, m) = reg.push_image("r", "t", OCI_MANIFEST).await;
    let location = reg.start_upload("r").await;
    reg.call("PATCH", &location, &[], b"abc".to_vec())
        .await
        .status(202);
    let before = reg.files();
    let bad = [
        "sha256",
        "sha256:",
        "sha256:abc",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855aa",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        ":e3b0",
    ];
    for d in bad {
        reg.call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={d}"),
            &[],
            b"abc".to_vec(),
        )
        .await
        .error(400, "DIGEST_INVALID");
        reg.call("PUT", &format!("{location}?digest={d}"), &[], Body::empty())
            .await
            .error(400, "DIGEST_INVALID");
        if !d.contains('%') && d.contains(':') {
            reg.get(&format!("/v2/r/blobs/{d}"))
                .await
                .error(400, "DIGEST_INVALID");
            reg.call("DELETE", &format!("/v2/r/blobs/{d}"), &[], Body::empty())
                .await
                .error(400, "DIGEST_INVALID");
            reg.get(&format!("/v2/r/referrers/{d}"))
                .await
                .error(400, "DIGEST_INVALID");
        }
    }
    reg.call("PUT", &location, &[], Body::empty())
        .await
        .error(400, "DIGEST_INVALID");
    // A manifest whose digest reference does not match its content.
    let wrong = sha256(b"not this manifest");
    reg.put_manifest("r", &wrong, OCI_MANIFEST, &m)
        .await
        .error(400, "DIGEST_INVALID");
    reg.put_manifest("r", "sha256:zz", OCI_MANIFEST, &m)
        .await
        .error(400, "DIGEST_INVALID");
    reg.assert_unchanged(&before, "storage");
    // The session survived the bad closes.
    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-2");
    reg.call(
        "PUT",
        &format!("{location}?digest={}", sha256(b"abc")),
        &[],
        Body::empty(),
    )
    .await
    .status(201);
}

#[tokio::test]
async fn repository_names_that_are_invalid_or_escape() {
    let reg = Reg::new();
    // Somewhere outside the data directory an escape would land.
    std::fs::create_dir_all(reg.tmp.path().join("outside")).unwrap();
    let before_paths = store::paths(reg.tmp.path());
    let data = b"escape attempt".to_vec();
    let d = sha256(&data);
    let manifest = image_manifest(OCI_MANIFEST, b"{}", &[], json!({}));
    let long = "a".repeat(256);
    let names = [
        "..",
        "../outside",
        "../../../../outside",
        "%2e%2e",
        "%2e%2e/%2e%2e/outside",
        "a/%2e%2e/b",
        "a/../b",
        "a/./b",
        "./a",
        ".",
        "Upper",
        "a/Upper/b",
        "/abs",
        "/tmp/abs",
        "a//b",
        "a%2fb",
        "a%20b",
        "-a",
        "a_-b",
        long.as_str(),
    ];
    for n in names {
        let requests: Vec<(&str, String, Vec<u8>)> = vec![
            ("POST", format!("/v2/{n}/blobs/uploads/"), vec![]),
            (
                "POST",
                format!("/v2/{n}/blobs/uploads/?digest={d}"),
                data.clone(),
            ),
            (
                "POST",
                format!("/v2/r/blobs/uploads/?mount={d}&from={n}"),
                vec![],
            ),
            (
                "PATCH",
                format!("/v2/{n}/blobs/uploads/{ZERO_UUID}"),
                data.clone(),
            ),
            (
                "PUT",
                format!("/v2/{n}/blobs/uploads/{ZERO_UUID}?digest={d}"),
                data.clone(),
            ),
            ("PUT", format!("/v2/{n}/manifests/latest"), manifest.clone()),
            ("GET", format!("/v2/{n}/manifests/latest"), vec![]),
            ("DELETE", format!("/v2/{n}/manifests/{d}"), vec![]),
            ("GET", format!("/v2/{n}/blobs/{d}"), vec![]),
            ("DELETE", format!("/v2/{n}/blobs/{d}"), vec![]),
            ("GET", format!("/v2/{n}/tags/list"), vec![]),
            ("GET", format!("/v2/{n}/referrers/{d}"), vec![]),
        ];
        for (method, uri, body) in requests {
            let r = reg
                .call(method, &uri, &[("content-type", OCI_MANIFEST)], body)
                .await;
            if uri.contains("mount=") {
                // An invalid `from` is no mount source: an ordinary session opens in `r`.
                r.status(202);
                assert!(r.header("location").starts_with("/v2/r/blobs/uploads/"));
                reg.call("DELETE", r.header("location"), &[], Body::empty())
                    .await
                    .status(204);
                continue;
            }
            r.error(400, "NAME_INVALID");
        }
    }
    let after = store::paths(reg.tmp.path());
    let new: Vec<_> = after
        .difference(&before_paths)
        .filter(|p| !p.starts_with("data/docker/registry/v2/repositories/r"))
        .collect();
    assert!(new.is_empty(), "created by invalid names: {new:?}");
    assert!(store::files(&reg.tmp.path().join("outside")).is_empty());
    assert!(!reg.has_blob_file(&d));

    // The longest valid name works (the boundary is 255, not less).
    let longest = "a".repeat(255);
    reg.push_blob(&longest, b"ok").await;
    reg.get(&format!("/v2/{longest}/blobs/{}", sha256(b"ok")))
        .await
        .status(200);
}

#[tokio::test]
async fn invalid_tags_on_put() {
    let reg = Reg::new();
    let (_, m) = reg.push_image("r", "ok", OCI_MANIFEST).await;
    let before = reg.files();
    let long = "t".repeat(129);
    for tag in [
        ".hidden",
        "-dash",
        long.as_str(),
        "a%2Fb",
        "t%20x",
        "%2e%2e",
    ] {
        reg.put_manifest("r", tag, OCI_MANIFEST, &m)
            .await
            .error(400, "TAG_INVALID");
        reg.get(&format!("/v2/r/manifests/{tag}"))
            .await
            .error(404, "MANIFEST_UNKNOWN");
    }
    reg.assert_unchanged(&before, "storage");
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["ok"])
    );
    // 128 characters is still a tag.
    reg.put_manifest("r", &"t".repeat(128), OCI_MANIFEST, &m)
        .await
        .status(201);
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let reg = Reg::new();
    let cfg = br#"{"os":"linux"}"#;
    let layer = random_bytes(100);
    reg.push_blob("r", cfg).await;
    reg.push_blob("r", &layer).await;
    let elsewhere = random_bytes(50);
    reg.push_blob("other", &elsewhere).await;
    let good = image_manifest(OCI_MANIFEST, cfg, &[&layer], json!({}));
    reg.put_manifest("r", "good", OCI_MANIFEST, &good)
        .await
        .status(201);
    let before = reg.files();

    let missing_layer = random_bytes(10);
    let good_too = image_manifest(
        OCI_MANIFEST,
        cfg,
        &[&layer],
        json!({"annotations": {"a": "b"}}),
    );
    let unknown_type = String::from_utf8(good_too.clone())
        .unwrap()
        .replace(OCI_MANIFEST, "application/x-unknown")
        .into_bytes();
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "not JSON",
            OCI_MANIFEST,
            b"this is not json".to_vec(),
            "MANIFEST_INVALID",
        ),
        ("empty body", OCI_MANIFEST, vec![], "MANIFEST_INVALID"),
        (
            "schema 1",
            OCI_MANIFEST,
            br#"{"schemaVersion":1,"name":"r","tag":"x"}"#.to_vec(),
            "MANIFEST_INVALID",
        ),
        (
            "unknown media type",
            "application/x-unknown",
            unknown_type,
            "MANIFEST_INVALID",
        ),
        (
            "header says index, body says manifest",
            OCI_INDEX,
            good_too.clone(),
            "MANIFEST_INVALID",
        ),
        (
            "image manifest without config",
            OCI_MANIFEST,
            serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
            )
            .unwrap(),
            "MANIFEST_INVALID",
        ),
        (
            "layer missing",
            OCI_MANIFEST,
            image_manifest(OCI_MANIFEST, cfg, &[&layer, &missing_layer], json!({})),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "config missing",
            OCI_MANIFEST,
            image_manifest(OCI_MANIFEST, b"{\"missing\":1}", &[&layer], json!({})),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "layer only in another repository",
            OCI_MANIFEST,
            image_manifest(OCI_MANIFEST, cfg, &[&elsewhere], json!({})),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "docker manifest with a missing layer",
            DOCKER_MANIFEST,
            image_manifest(DOCKER_MANIFEST, cfg, &[&missing_layer], json!({})),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "index with a missing child",
            OCI_INDEX,
            index_manifest(
                OCI_INDEX,
                &[
                    (OCI_MANIFEST, &good),
                    (
                        OCI_MANIFEST,
                        &image_manifest(OCI_MANIFEST, cfg, &[], json!({})),
                    ),
                ],
                json!({}),
            ),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "manifest list with a missing child",
            DOCKER_MANIFEST_LIST,
            index_manifest(
                DOCKER_MANIFEST_LIST,
                &[(DOCKER_MANIFEST, b"{\"nope\":1}")],
                json!({}),
            ),
            "MANIFEST_BLOB_UNKNOWN",
        ),
        (
            "index naming a blob that is not a manifest",
            OCI_INDEX,
            index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &layer)], json!({})),
            "MANIFEST_BLOB_UNKNOWN",
        ),
    ];
    for (what, media_type, body, code) in cases {
        let d = sha256(&body);
        let r = reg.put_manifest("r", "bad", media_type, &body).await;
        assert_eq!(
            r.status,
            400,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.code(), code, "{what}");
        reg.put_manifest("r", &d, media_type, &body)
            .await
            .error(400, code);
        reg.get(&format!("/v2/r/manifests/{d}"))
            .await
            .error(404, "MANIFEST_UNKNOWN");
        reg.get("/v2/r/manifests/bad")
            .await
            .error(404, "MANIFEST_UNKNOWN");
        reg.assert_unchanged(&before, &format!("{what} changed storage"));
    }
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["good"])
    );
}

#[tokio::test]
async fn oversized_manifests_are_413() {
    let limit = 1024;
    let reg = Reg::with(
        RegistryConfig {
            max_manifest_bytes: limit,
            ..config()
        },
        None,
    );
    let cfg = b"{}";
    reg.push_blob("r", cfg).await;
    let sized = |len: usize| {
        let base = image_manifest(OCI_MANIFEST, cfg, &[], json!({"annotations": {"pad": ""}}));
        let pad = "x".repeat(len - base.len());
        let m = image_manifest(OCI_MANIFEST, cfg, &[], json!({"annotations": {"pad": pad}}));
        assert_eq!(m.len(), len);
        m
    };
    let before = reg.files();
    let big = sized(limit as usize + 1);
    let r = reg
        .call(
            "PUT",
            "/v2/r/manifests/big",
            &[
                ("content-type", OCI_MANIFEST),
                ("content-length", &big.len().to_string()),
            ],
            big.clone(),
        )
        .await;
    r.error(413, "SIZE_INVALID");
    // Without a Content-Length the body is cut off at the limit just the same.
    let huge = sized(10 * limit as usize);
    let chunks: Vec<Vec<u8>> = huge.chunks(100).map(|c| c.to_vec()).collect();
    let r = reg
        .call(
            "PUT",
            "/v2/r/manifests/big",
            &[("content-type", OCI_MANIFEST)],
            stream_body(chunks),
        )
        .await;
    r.error(413, "SIZE_INVALID");
    reg.put_manifest("r", &sha256(&big), OCI_MANIFEST, &big)
        .await
        .error(413, "SIZE_INVALID");
    reg.assert_unchanged(&before, "storage");
    reg.get("/v2/r/manifests/big")
        .await
        .error(404, "MANIFEST_UNKNOWN");
    // Exactly at the limit is fine.
    let edge = sized(limit as usize);
    reg.put_manifest("r", "edge", OCI_MANIFEST, &edge)
        .await
        .status(201);
}

#[tokio::test]
async fn wrong_or_out_of_order_content_range_is_416() {
    let reg = Reg::new();
    let data = random_bytes(30);
    let location = reg.start_upload("r").await;

    // The first chunk must start at 0.
    let r = reg
        .call(
            "PATCH",
            &location,
            &[("content-range", "5-9")],
            data[5..10].to_vec(),
        )
        .await;
    r.error(416, "BLOB_UPLOAD_INVALID");
    assert_eq!(r.header("range"), "0-0");
    assert_eq!(reg.upload_data(&location), b"");

    reg.call(
        "PATCH",
        &location,
        &[("content-range", "0-9")],
        data[..10].to_vec(),
    )
    .await
    .status(202);
    let bad: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("20-29", None, data[20..30].to_vec()),        // a gap
        ("0-9", None, data[..10].to_vec()),            // a repeat
        ("5-14", None, data[5..15].to_vec()),          // an overlap
        ("10-19", Some("5"), data[10..15].to_vec()),   // length disagrees with the range
        ("19-10", None, data[10..20].to_vec()),        // backwards
        ("junk", None, data[10..20].to_vec()),         // not a range
        ("bytes=ten-19", None, data[10..20].to_vec()), // not numbers
    ];
    for (range, len, body) in bad {
        let mut headers = vec![("content-range", range)];
        if let Some(l) = len {
            headers.push(("content-length", l));
        }
        let r = reg.call("PATCH", &location, &headers, body.clone()).await;
        r.error(416, "BLOB_UPLOAD_INVALID");
        assert_eq!(r.header("range"), "0-9", "{range}");
        assert_eq!(
            reg.upload_data(&location),
            data[..10],
            "{range} changed the upload"
        );
    }
    // A closing PUT with a wrong range is refused the same way and does not commit.
    let d = sha256(&data);
    let r = reg
        .call(
            "PUT",
            &format!("{location}?digest={d}"),
            &[("content-range", "15-29")],
            data[15..].to_vec(),
        )
        .await;
    r.error(416, "BLOB_UPLOAD_INVALID");
    assert_eq!(r.header("range"), "0-9");
    assert!(!reg.has_blob_file(&d));

    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-9");
    reg.call(
        "PATCH",
        &location,
        &[("content-range", "10-19")],
        data[10..20].to_vec(),
    )
    .await
    .status(202);
    reg.call(
        "PUT",
        &format!("{location}?digest={d}"),
        &[("content-range", "20-29")],
        data[20..].to_vec(),
    )
    .await
    .status(201);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
}

#[tokio::test]
async fn unknown_or_tampered_upload_ids() {
    let reg = Reg::new();
    let (_, _) = reg.push_image("a", "t", OCI_MANIFEST).await;
    let location = reg.start_upload("a").await;
    let id = location.rsplit('/').next().unwrap().to_owned();
    reg.call("PATCH", &location, &[], b"12345".to_vec())
        .await
        .status(202);
    let before = reg.files();
    let d = sha256(b"12345");

    let random = uuid::Uuid::new_v4().to_string();
    let upper = id.to_uppercase();
    let targets = [
        format!("/v2/a/blobs/uploads/{random}"),
        "/v2/a/blobs/uploads/not-a-uuid".to_owned(),
        "/v2/a/blobs/uploads/..%2f..%2f_layers".to_owned(),
        format!("/v2/a/blobs/uploads/{id}x"),
        format!("/v2/a/blobs/uploads/{upper}"),
        format!("/v2/b/blobs/uploads/{id}"), // an id from another repository
        format!("/v2/a/b/blobs/uploads/{id}"),
    ];
    for t in &targets {
        reg.get(t).await.error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.call("PATCH", t, &[], b"67890".to_vec())
            .await
            .error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.call("PATCH", t, &[("content-range", "5-9")], b"67890".to_vec())
            .await
            .error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.call("PUT", &format!("{t}?digest={d}"), &[], Body::empty())
            .await
            .error(404, "BLOB_UPLOAD_UNKNOWN");
        reg.call("DELETE", t, &[], Body::empty())
            .await
            .error(404, "BLOB_UPLOAD_UNKNOWN");
    }
    reg.assert_unchanged(&before, "no request touched a session");
    assert!(!reg.has_blob_file(&d));
    reg.get(&format!("/v2/b/blobs/{d}"))
        .await
        .error(404, "BLOB_UNKNOWN");

    // The real session is intact and finishes in its own repository.
    let r = reg.get(&location).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-4");
    reg.call("PUT", &format!("{location}?digest={d}"), &[], Body::empty())
        .await
        .status(201);
    // A finished id is unknown from then on.
    reg.call("PATCH", &location, &[], b"more".to_vec())
        .await
        .error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.call("PUT", &format!("{location}?digest={d}"), &[], Body::empty())
        .await
        .error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn client_gone_mid_body_rolls_back() {
    let reg = Reg::new();
    let data = random_bytes(300_000);
    let location = reg.start_upload("r").await;
    reg.call(
        "PATCH",
        &location,
        &[("content-range", "0-999")],
        data[..1000].to_vec(),
    )
    .await
    .status(202);

    // A chunk that breaks off after 200 kB.
    let r = reg
        .call(
            "PATCH",
            &location,
            &[],
            broken_body(data[1000..201_000].to_vec()),
        )
        .await;
    r.error(400, "BLOB_UPLOAD_INVALID");
    let r = reg.get(&location).await;
    assert_eq!(r.header("range"), "0-999");
    assert_eq!(
        reg.upload_data(&location),
        data[..1000],
        "rolled back to the last good byte"
    );

    // A closing PUT whose body breaks off commits nothing.
    let d = sha256(&data);
    reg.call(
        "PUT",
        &format!("{location}?digest={d}"),
        &[],
        broken_body(data[1000..].to_vec()),
    )
    .await
    .error(400, "BLOB_UPLOAD_INVALID");
    assert!(!reg.has_blob_file(&d));

    // A monolithic push that breaks off leaves neither blob nor session.
    let before_sessions = store::upload_dirs(&reg.data);
    reg.call(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={d}"),
        &[],
        broken_body(data[..5000].to_vec()),
    )
    .await
    .error(400, "BLOB_UPLOAD_INVALID");
    assert!(!reg.has_blob_file(&d));
    assert_eq!(store::upload_dirs(&reg.data), before_sessions);
    reg.head(&format!("/v2/r/blobs/{d}")).await.status(404);

    // The session finishes intact.
    reg.call(
        "PUT",
        &format!("{location}?digest={d}"),
        &[],
        data[1000..].to_vec(),
    )
    .await
    .status(201);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
}

#[tokio::test]
async fn blob_size_limit_is_413() {
    let reg = Reg::with(
        RegistryConfig {
            uploads: UploadLimits {
                max_blob_bytes: Some(100),
                ..UploadLimits::default()
            },
            ..config()
        },
        None,
    );
    let data = random_bytes(101);
    let d = sha256(&data);
    reg.call(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={d}"),
        &[],
        data.clone(),
    )
    .await
    .error(413, "SIZE_INVALID");
    assert!(!reg.has_blob_file(&d));
    assert!(store::upload_dirs(&reg.data).is_empty());

    let location = reg.start_upload("r").await;
    reg.call("PATCH", &location, &[], data[..60].to_vec())
        .await
        .status(202);
    reg.call("PATCH", &location, &[], data[60..].to_vec())
        .await
        .error(413, "SIZE_INVALID");
    let r = reg.get(&location).await;
    assert_eq!(
        r.header("range"),
        "0-59",
        "the refused chunk was rolled back"
    );
    assert_eq!(reg.upload_data(&location), data[..60]);
    reg.call(
        "PUT",
        &format!("{location}?digest={d}"),
        &[],
        data[60..].to_vec(),
    )
    .await
    .error(413, "SIZE_INVALID");
    assert!(!reg.has_blob_file(&d));
    // Exactly the limit is accepted.
    let exact = &data[..100];
    reg.call(
        "PUT",
        &format!("{location}?digest={}", sha256(exact)),
        &[],
        data[60..100].to_vec(),
    )
    .await
    .status(201);
    assert_eq!(
        reg.get(&format!("/v2/r/blobs/{}", sha256(exact)))
            .await
            .body,
        exact
    );
}

#[tokio::test]
async fn read_only_mode_serves_reads_and_refuses_writes() {
    let reg = Reg::new();
    let (d, m) = reg.push_image("r", "t", OCI_MANIFEST).await;
    let blob = reg.push_blob("r", b"payload").await;
    // A referrer of the image, whose index the read-only registry must not write.
    let subject = reg.get(&format!("/v2/r/manifests/{d}")).await.body;
    let sig = image_manifest(
        OCI_MANIFEST,
        b"payload",
        &[],
        json!({"artifactType": "application/vnd.example.sig",
               "subject": descriptor(OCI_MANIFEST, &subject)}),
    );
    reg.put_manifest("r", &sha256(&sig), OCI_MANIFEST, &sig)
        .await
        .status(201);
    let location = reg.start_upload("r").await;
    let reg = reg.reopen(
        RegistryConfig {
            read_only: true,
            ..config()
        },
        None,
    );
    let before = reg.files();

    assert_eq!(reg.get("/v2/r/manifests/t").await.body, m);
    reg.head(&format!("/v2/r/manifests/{d}")).await.status(200);
    assert_eq!(
        reg.get(&format!("/v2/r/blobs/{blob}")).await.body,
        b"payload"
    );
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["t"])
    );
    assert_eq!(
        reg.get("/v2/_catalog").await.json()["repositories"],
        json!(["r"])
    );
    for query in ["", "?artifactType=application/vnd.example.sig"] {
        let r = reg.get(&format!("/v2/r/referrers/{d}{query}")).await;
        r.status(200);
        let listed = r.json()["manifests"].clone();
        assert_eq!(listed.as_array().unwrap().len(), 1, "{query}: {listed}");
        assert_eq!(listed[0]["digest"], json!(sha256(&sig)));
    }
    let r = reg
        .get(&format!("/v2/r/referrers/{d}?artifactType=other/type"))
        .await;
    assert_eq!(r.json()["manifests"], json!([]));
    reg.get("/v2/").await.status(200);

    let writes: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", "/v2/r/blobs/uploads/".into(), vec![]),
        (
            "POST",
            format!("/v2/r/blobs/uploads/?digest={}", sha256(b"new")),
            b"new".to_vec(),
        ),
        (
            "POST",
            format!("/v2/s/blobs/uploads/?mount={blob}&from=r"),
            vec![],
        ),
        ("PATCH", location.clone(), b"x".to_vec()),
        ("PUT", format!("{location}?digest={}", sha256(b"")), vec![]),
        ("DELETE", location.clone(), vec![]),
        ("PUT", "/v2/r/manifests/t2".into(), m.clone()),
        ("DELETE", "/v2/r/manifests/t".into(), vec![]),
        ("DELETE", format!("/v2/r/manifests/{d}"), vec![]),
        ("DELETE", format!("/v2/r/blobs/{blob}"), vec![]),
    ];
    for (method, uri, body) in writes {
        let r = reg
            .call(method, &uri, &[("content-type", OCI_MANIFEST)], body)
            .await;
        assert_eq!(r.status, 405, "{method} {uri}");
        assert_eq!(r.code(), "UNSUPPORTED", "{method} {uri}");
    }
    reg.assert_unchanged(&before, "storage");
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

fn htpasswd(anonymous_pull: bool) -> Authenticator {
    htpasswd_with(AuthPolicy {
        anonymous_pull,
        // These tests send many wrong passwords on purpose; the limit has its own test.
        failures_per_minute: 0,
        ..AuthPolicy::default()
    })
}

fn htpasswd_with(policy: AuthPolicy) -> Authenticator {
    let alice = bcrypt::hash("alice-pw", 4).unwrap();
    let bob = bcrypt::hash("bob-pw", 4).unwrap();
    Authenticator::from_htpasswd(&format!("# test users\nalice:{alice}\nbob:{bob}\n"), policy)
        .unwrap()
}

#[track_caller]
fn assert_unauthorized(r: &Resp) {
    if r.body.is_empty() {
        // HEAD: the status and the challenge, no body.
        r.status(401);
    } else {
        r.error(401, "UNAUTHORIZED");
    }
    let challenge = r.header("www-authenticate");
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
}

#[tokio::test]
async fn htpasswd_basic_auth() {
    let reg = Reg::with(config(), Some(htpasswd(false)));
    let alice = basic("alice", "alice-pw");
    let auth = [("authorization", alice.as_str())];
    reg.call("GET", "/v2/", &auth, Body::empty())
        .await
        .status(200);
    let data = random_bytes(100);
    let d = sha256(&data);
    reg.call(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={d}"),
        &auth,
        data.clone(),
    )
    .await
    .status(201);
    let r = reg
        .call("GET", &format!("/v2/r/blobs/{d}"), &auth, Body::empty())
        .await;
    r.status(200);
    assert_eq!(r.body, data);
    // bob is a user too.
    let bob = basic("bob", "bob-pw");
    reg.call(
        "HEAD",
        &format!("/v2/r/blobs/{d}"),
        &[("authorization", &bob)],
        Body::empty(),
    )
    .await
    .status(200);

    let before = reg.files();
    let wrong_password = basic("alice", "nope");
    let unknown_user = basic("mallory", "alice-pw");
    let empty_password = basic("alice", "");
    let bad_headers: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("authorization", &wrong_password)],
        vec![("authorization", &unknown_user)],
        vec![("authorization", &empty_password)],
        vec![("authorization", "Basic !!!not-base64!!!")],
        vec![("authorization", "Bearer some-token")],
    ];
    let other = random_bytes(10);
    for headers in &bad_headers {
        assert_unauthorized(&reg.call("GET", "/v2/", headers, Body::empty()).await);
        assert_unauthorized(
            &reg.call("GET", &format!("/v2/r/blobs/{d}"), headers, Body::empty())
                .await,
        );
        assert_unauthorized(
            &reg.call("GET", "/v2/_catalog", headers, Body::empty())
                .await,
        );
        let r = reg
            .call(
                "POST",
                &format!("/v2/r/blobs/uploads/?digest={}", sha256(&other)),
                headers,
                other.clone(),
            )
            .await;
        assert_unauthorized(&r);
        assert_unauthorized(
            &reg.call(
                "DELETE",
                &format!("/v2/r/blobs/{d}"),
                headers,
                Body::empty(),
            )
            .await,
        );
    }
    reg.assert_unchanged(&before, "refused requests changed nothing");
    // /healthz and /readyz need no login.
    reg.get("/healthz").await.status(200);
    reg.get("/readyz").await.status(200);
}

#[tokio::test]
async fn anonymous_catalog_is_a_separate_permission() {
    let reg = Reg::with(
        config(),
        Some(htpasswd_with(AuthPolicy {
            anonymous_pull: true,
            anonymous_catalog: true,
            ..AuthPolicy::default()
        })),
    );
    let r = reg.get("/v2/_catalog").await;
    r.status(200);
    assert_eq!(r.json(), json!({"repositories": []}));
}

#[tokio::test]
async fn failed_logins_are_limited_with_retry_after() {
    let reg = Reg::with(
        config(),
        Some(htpasswd_with(AuthPolicy {
            failures_per_minute: 5,
            ..AuthPolicy::default()
        })),
    );
    let alice = basic("alice", "alice-pw");
    // Logged in before the attack: keeps working through it.
    reg.call("GET", "/v2/", &[("authorization", &alice)], Body::empty())
        .await
        .status(200);
    let guess = basic("alice", "guess");
    for _ in 0..5 {
        assert_unauthorized(
            &reg.call("GET", "/v2/", &[("authorization", &guess)], Body::empty())
                .await,
        );
    }
    let r = reg
        .call("GET", "/v2/", &[("authorization", &guess)], Body::empty())
        .await;
    r.error(429, "TOOMANYREQUESTS");
    let retry: u64 = r.header("retry-after").parse().unwrap();
    assert!((1..=12).contains(&retry), "retry-after {retry}");
    reg.call("GET", "/v2/", &[("authorization", &alice)], Body::empty())
        .await
        .status(200);
    // Another user is not affected (no address here: in-process requests have none).
    let bob = basic("bob", "bob-pw");
    reg.call("GET", "/v2/", &[("authorization", &bob)], Body::empty())
        .await
        .status(200);
}

#[tokio::test]
async fn anonymous_pull_with_authenticated_push() {
    let reg = Reg::with(config(), Some(htpasswd(true)));
    let alice = basic("alice", "alice-pw");
    let auth = [("authorization", alice.as_str())];
    let data = random_bytes(64);
    let d = sha256(&data);
    reg.call(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={d}"),
        &auth,
        data.clone(),
    )
    .await
    .status(201);
    let m = image_manifest(OCI_MANIFEST, &data, &[], json!({}));
    reg.call(
        "PUT",
        "/v2/r/manifests/t",
        &[auth[0], ("content-type", OCI_MANIFEST)],
        m.clone(),
    )
    .await
    .status(201);

    // Anonymous reads.
    reg.get("/v2/").await.status(200);
    assert_eq!(reg.get("/v2/r/manifests/t").await.body, m);
    reg.head("/v2/r/manifests/t").await.status(200);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, data);
    reg.head(&format!("/v2/r/blobs/{d}")).await.status(200);
    reg.get("/v2/r/tags/list").await.status(200);
    // The catalog names every repository: it needs a login unless allowed.
    assert_unauthorized(&reg.get("/v2/_catalog").await);
    reg.call("GET", "/v2/_catalog", &auth, Body::empty())
        .await
        .status(200);

    // Anonymous writes are refused and change nothing.
    let before = reg.files();
    assert_unauthorized(
        &reg.call("POST", "/v2/r/blobs/uploads/", &[], Body::empty())
            .await,
    );
    assert_unauthorized(
        &reg.call(
            "POST",
            &format!("/v2/r/blobs/uploads/?digest={}", sha256(b"z")),
            &[],
            b"z".to_vec(),
        )
        .await,
    );
    assert_unauthorized(
        &reg.call(
            "PUT",
            "/v2/r/manifests/t2",
            &[("content-type", OCI_MANIFEST)],
            m.clone(),
        )
        .await,
    );
    assert_unauthorized(
        &reg.call("DELETE", "/v2/r/manifests/t", &[], Body::empty())
            .await,
    );
    assert_unauthorized(
        &reg.call("DELETE", &format!("/v2/r/blobs/{d}"), &[], Body::empty())
            .await,
    );
    reg.assert_unchanged(&before, "storage");

    // Wrong credentials are never treated as anonymous, even for reads.
    let wrong = basic("alice", "wrong");
    for headers in [
        vec![("authorization", wrong.as_str())],
        vec![("authorization", "Basic !!!not-base64!!!")],
        vec![("authorization", "Basic bm9jb2xvbg==")], // "nocolon"
    ] {
        assert_unauthorized(
            &reg.call("GET", "/v2/r/manifests/t", &headers, Body::empty())
                .await,
        );
        assert_unauthorized(
            &reg.call("HEAD", &format!("/v2/r/blobs/{d}"), &headers, Body::empty())
                .await,
        );
        assert_unauthorized(&reg.call("GET", "/v2/", &headers, Body::empty()).await);
    }
    // Right credentials can still do everything.
    reg.call("DELETE", "/v2/r/manifests/t", &auth, Body::empty())
        .await
        .status(202);
}

// ---------------------------------------------------------------------------
// The same escape attempts over a real socket, where no client normalises the path
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaping_names_over_a_real_socket() {
    use common::rawtls::{TlsConn, client_config};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = common::Privreg::start(&data, &[]);
    let before = store::paths(dir.path());
    let d = sha256(b"x");
    let (addr, ca) = (reg.addr(), reg.ca());
    let answers = tokio::task::spawn_blocking(move || {
        let config = client_config(&ca, &[]);
        let mut out = Vec::new();
        for path in [
            format!("/v2/../../../outside/blobs/uploads/?digest={d}"),
            format!("/v2/%2e%2e/%2e%2e/outside/blobs/uploads/?digest={d}"),
            "/v2//tmp/outside/blobs/uploads/".to_owned(),
            "/v2/a/./b/blobs/uploads/".to_owned(),
            "/v2/UP/blobs/uploads/".to_owned(),
        ] {
            // The server closes the connection after an early error: one each.
            let mut conn = TlsConn::connect(addr, config.clone()).unwrap();
            let r = conn.request("POST", &path, &[], b"x").unwrap();
            out.push((
                path,
                r.status,
                String::from_utf8_lossy(&r.body).into_owned(),
            ));
        }
        out
    })
    .await
    .unwrap();
    for (path, status, body) in answers {
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"NAME_INVALID\""), "{path}: {body}");
    }
    let mut after = store::paths(dir.path());
    // The server's own log file sits beside the data directory.
    after.retain(|p| !p.ends_with(".log"));
    let mut before = before;
    before.retain(|p| !p.ends_with(".log"));
    assert_eq!(after, before, "an invalid name created something");
    reg.stop();
}

// ---------------------------------------------------------------------------
// Uploads: slow and stalled bodies, limits, abandoned sessions
// ---------------------------------------------------------------------------

/// A body whose frames the test sends one by one; it ends when the sender drops.
fn held_body() -> (tokio::sync::mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, Body::from_stream(stream))
}

fn limits(max_concurrent: usize, max_sessions: usize, body_timeout_secs: u64) -> RegistryConfig {
    RegistryConfig {
        uploads: UploadLimits {
            max_concurrent,
            max_sessions,
            body_timeout: std::time::Duration::from_secs(body_timeout_secs),
            ..UploadLimits::default()
        },
        ..config()
    }
}

/// Trickling bodies hold no blocking thread: with the blocking pool smaller
/// than the number of uploads in progress, pushes and pulls still go through.
#[test]
fn slow_uploads_leave_the_blocking_pool_free() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let reg = Reg::with(limits(64, 1000, 300), None);
        let mut senders = Vec::new();
        let mut pending = Vec::new();
        for _ in 0..16 {
            let location = reg.start_upload("slow").await;
            let (tx, body) = held_body();
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            senders.push(tx);
            let app = reg.app.clone();
            pending.push(tokio::spawn(async move {
                let req = Request::builder()
                    .method("PATCH")
                    .uri(location)
                    .body(body)
                    .unwrap();
                app.oneshot(req).await.unwrap().status().as_u16()
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // A hang here is the failure; the bound only keeps the test from hanging.
        let served = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            let (digest, manifest) = reg.push_image("fast", "v1", OCI_MANIFEST).await;
            let r = reg.get(&format!("/v2/fast/manifests/{digest}")).await;
            r.status(200);
            assert_eq!(r.body, manifest);
        })
        .await;
        assert!(
            served.is_ok(),
            "a push waited behind 16 trickling uploads (blocking pool exhausted)"
        );
        drop(senders);
        for p in pending {
            assert_eq!(p.await.unwrap(), 202, "a slow body that ends is accepted");
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_limits_answer_429_and_stalled_bodies_roll_back() {
    let reg = Reg::with(limits(1, 3, 1), None);
    // One body in progress takes the only slot.
    let first = reg.start_upload("r").await;
    let (tx, body) = held_body();
    tx.send(Bytes::from_static(b"abc")).await.unwrap();
    let app = reg.app.clone();
    let uri = first.clone();
    let stalled = tokio::spawn(async move {
        let req = Request::builder()
            .method("PATCH")
            .uri(uri)
            .body(body)
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = reg.start_upload("r").await;
    let r = reg.call("PATCH", &second, &[], b"zzz".to_vec()).await;
    r.error(429, "TOOMANYREQUESTS");
    assert_eq!(r.header("retry-after"), "1");
    // Sessions are capped too (three open: two here, and one more).
    reg.start_upload("r").await;
    reg.call("POST", "/v2/r/blobs/uploads/", &[], Body::empty())
        .await
        .error(429, "TOOMANYREQUESTS");

    // The held body sends nothing more: after the body timeout the request
    // fails and the session is back where it was, holding nothing.
    let (status, body) = stalled.await.unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("BLOB_UPLOAD_INVALID"));
    drop(tx);
    let r = reg.get(&first).await;
    r.status(204);
    assert_eq!(r.header("range"), "0-0");
    assert!(reg.upload_data(&first).is_empty());
    // With the slot free again, the refused session takes its chunk.
    reg.call("PATCH", &second, &[], b"zzz".to_vec())
        .await
        .status(202);
}

#[tokio::test]
async fn abandoned_uploads_are_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = Store::new(&data).unwrap();
    let state = AppState::new(store, None, config(), Arc::new(Metrics::new()));
    let reg = Reg {
        app: privreg::registry::router(state.clone()),
        data,
        tmp,
    };
    let old = reg.start_upload("r").await;
    reg.call("PATCH", &old, &[], b"partial".to_vec())
        .await
        .status(202);
    let fresh = reg.start_upload("r").await;
    // A session of a repository that holds nothing else, left by a restart.
    let orphan = reg.start_upload("only/uploads").await;
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(25 * 3600);
    for location in [&old, &orphan] {
        let rel = location
            .strip_prefix("/v2/")
            .unwrap()
            .replace("/blobs/uploads/", "/_uploads/");
        let session = store::v2(&reg.data).join("repositories").join(rel);
        std::fs::File::options()
            .write(true)
            .open(session.join("data"))
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
    }
    assert_eq!(state.uploads.open_sessions(), 3);
    let purged = state
        .uploads
        .purge(std::time::Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(state.uploads.open_sessions(), 1);
    reg.get(&old).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.get(&orphan).await.error(404, "BLOB_UPLOAD_UNKNOWN");
    reg.get(&fresh).await.status(204);
    let left: Vec<String> = store::paths(reg.tmp.path())
        .into_iter()
        .filter(|p| p.contains("_uploads/"))
        .collect();
    assert!(
        left.iter()
            .all(|p| p.contains(fresh.rsplit('/').next().unwrap())),
        "{left:?}"
    );
    assert!(
        state
            .metrics
            .encode()
            .contains("privreg_uploads_purged_total 2")
    );
}

// ---------------------------------------------------------------------------
// Newer parts of the spec: tag parameters, sparse manifests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn put_by_digest_with_tag_parameters() {
    let reg = Reg::new();
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#;
    reg.push_blob("r", config_blob).await;
    let m = image_manifest(OCI_MANIFEST, config_blob, &[], json!({}));
    // sha512: the spec's case for tag parameters (a tag PUT would hash with sha256).
    let d = sha512(&m);
    let r = reg
        .call(
            "PUT",
            &format!("/v2/r/manifests/{d}?tag=one&tag=two&tag=one"),
            &[("content-type", OCI_MANIFEST)],
            m.clone(),
        )
        .await;
    r.status(201);
    let tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["one", "two"]);
    assert_eq!(r.header("docker-content-digest"), d);
    for t in ["one", "two"] {
        let got = reg.get(&format!("/v2/r/manifests/{t}")).await;
        got.status(200);
        assert_eq!(got.body, m);
        assert_eq!(got.header("docker-content-digest"), d);
    }
    assert_eq!(
        reg.get("/v2/r/tags/list").await.json()["tags"],
        json!(["one", "two"])
    );

    // A bad tag refuses the whole request, and nothing is stored.
    let before = reg.files();
    let other = image_manifest(
        OCI_MANIFEST,
        config_blob,
        &[],
        json!({"annotations": {"a": "b"}}),
    );
    reg.call(
        "PUT",
        &format!("/v2/r/manifests/{}?tag=ok&tag=-bad", sha256(&other)),
        &[("content-type", OCI_MANIFEST)],
        other.clone(),
    )
    .await
    .error(400, "TAG_INVALID");
    let many: String = (0..65).map(|i| format!("tag=t{i}&")).collect();
    reg.call(
        "PUT",
        &format!("/v2/r/manifests/{}?{many}", sha256(&other)),
        &[("content-type", OCI_MANIFEST)],
        other,
    )
    .await
    .error(400, "SIZE_INVALID");
    reg.assert_unchanged(&before, "refused tag parameters");
}

#[tokio::test]
async fn sparse_manifests_only_when_allowed() {
    let layer_never_pushed = random_bytes(100);
    let config_blob = br#"{"architecture":"arm64","os":"linux"}"#;
    let m = image_manifest(OCI_MANIFEST, config_blob, &[&layer_never_pushed], json!({}));
    let index = index_manifest(OCI_INDEX, &[(OCI_MANIFEST, &m)], json!({}));

    let reg = Reg::new();
    reg.push_blob("r", config_blob).await;
    reg.put_manifest("r", "img", OCI_MANIFEST, &m)
        .await
        .error(400, "MANIFEST_BLOB_UNKNOWN");
    reg.put_manifest("r", "idx", OCI_INDEX, &index)
        .await
        .error(400, "MANIFEST_BLOB_UNKNOWN");

    let reg = reg.reopen(
        RegistryConfig {
            allow_sparse_manifests: true,
            ..config()
        },
        None,
    );
    // An index whose child was never pushed (a one-platform copy).
    reg.put_manifest("r", "idx", OCI_INDEX, &index)
        .await
        .status(201);
    assert_eq!(reg.get("/v2/r/manifests/idx").await.body, index);
    reg.get(&format!("/v2/r/manifests/{}", sha256(&m)))
        .await
        .error(404, "MANIFEST_UNKNOWN");
    // An image whose layer was never pushed.
    reg.put_manifest("r", "img", OCI_MANIFEST, &m)
        .await
        .status(201);
    reg.get(&format!("/v2/r/blobs/{}", sha256(&layer_never_pushed)))
        .await
        .error(404, "BLOB_UNKNOWN");
}

/// Empty frames (HTTP/2 DATA frames of length 0, an empty PATCH) are fine.
#[tokio::test]
async fn empty_body_frames_are_accepted() {
    let reg = Reg::new();
    let location = reg.start_upload("r").await;
    reg.call("PATCH", &location, &[], stream_body(vec![vec![], vec![]]))
        .await
        .status(202);
    reg.call(
        "PATCH",
        &location,
        &[],
        stream_body(vec![vec![], b"abc".to_vec(), vec![]]),
    )
    .await
    .status(202);
    let d = sha256(b"abc");
    let sep = if location.contains('?') { '&' } else { '?' };
    reg.call(
        "PUT",
        &format!("{location}{sep}digest={d}"),
        &[],
        Body::empty(),
    )
    .await
    .status(201);
    assert_eq!(reg.get(&format!("/v2/r/blobs/{d}")).await.body, b"abc");
    let empty = sha256(b"");
    reg.call(
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={empty}"),
        &[],
        stream_body(vec![vec![]]),
    )
    .await
    .status(201);
}
