//! OCI content for the tests: random blobs, manifests of every kind, and pushes
//! and pulls over HTTPS with reqwest.

use serde_json::{Value, json};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// sha512 digest string of `data`.
pub fn sha512(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// A descriptor of `data` with `media_type`.
pub fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": super::sha256(data), "size": data.len() })
}

/// An image manifest (OCI or Docker schema 2, by `media_type`) over `config` and
/// `layers`; `extra` fields (subject, artifactType, annotations) are merged in.
pub fn image_manifest(media_type: &str, config: &[u8], layers: &[&[u8]], extra: Value) -> Vec<u8> {
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_CONFIG, OCI_LAYER)
    };
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": layers.iter().map(|l| descriptor(layer_type, l)).collect::<Vec<_>>(),
    });
    merge(&mut m, extra);
    serde_json::to_vec(&m).unwrap()
}

/// An index (OCI or Docker manifest list, by `media_type`) over `(type, bytes)` children.
pub fn index_manifest(media_type: &str, children: &[(&str, &[u8])], extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().enumerate().map(|(i, (t, b))| {
            let mut d = descriptor(t, b);
            let arch = ["amd64", "arm64", "s390x"][i % 3];
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        }).collect::<Vec<_>>(),
    });
    merge(&mut m, extra);
    serde_json::to_vec(&m).unwrap()
}

fn merge(m: &mut Value, extra: Value) {
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
}

/// The path part of a `Location` header (absolute URL or path).
pub fn location_path(location: &str) -> String {
    match location.find("/v2/") {
        Some(i) => location[i..].to_owned(),
        None => panic!("Location {location:?} has no /v2/ path"),
    }
}

/// Opens an upload session with `POST`; returns the path of its Location.
pub async fn start_upload(client: &reqwest::Client, base: &str, repo: &str) -> String {
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "POST an upload to {repo}");
    location_path(r.headers()["location"].to_str().unwrap())
}

/// Pushes a blob in one `POST ?digest=`; returns its digest.
pub async fn push_monolithic(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: Vec<u8>,
) -> Result<String, String> {
    let digest = super::sha256(&data);
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .map_err(|e| format!("POST: {e}"))?;
    if r.status() != 201 {
        return Err(format!("POST answered {}", r.status()));
    }
    expect_header(&r, "docker-content-digest", &digest)?;
    Ok(digest)
}

/// Pushes a blob as `POST`, `PATCH`es of `chunk` bytes with `Content-Range`, and a
/// closing `PUT ?digest=`; returns its digest.
pub async fn push_chunked(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    data: &[u8],
    chunk: usize,
) -> Result<String, String> {
    let digest = super::sha256(data);
    let r = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| format!("POST: {e}"))?;
    if r.status() != 202 {
        return Err(format!("POST answered {}", r.status()));
    }
    let mut location = location_of(&r)?;
    let mut offset = 0;
    for part in data.chunks(chunk) {
        let end = offset + part.len() - 1;
        let r = client
            .patch(format!("{base}{location}"))
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{offset}-{end}"))
            .body(part.to_vec())
            .send()
            .await
            .map_err(|e| format!("PATCH: {e}"))?;
        if r.status() != 202 {
            return Err(format!("PATCH answered {}", r.status()));
        }
        expect_header(&r, "range", &format!("0-{end}"))?;
        location = location_of(&r)?;
        offset = end + 1;
    }
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = client
        .put(format!("{base}{location}{sep}digest={digest}"))
        .header("content-length", "0")
        .send()
        .await
        .map_err(|e| format!("PUT: {e}"))?;
    if r.status() != 201 {
        return Err(format!("PUT answered {}", r.status()));
    }
    expect_header(&r, "docker-content-digest", &digest)?;
    Ok(digest)
}

/// Pushes a manifest under `reference`; returns its digest.
pub async fn push_manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: Vec<u8>,
) -> Result<String, String> {
    let digest = super::sha256(&body);
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PUT manifest: {e}"))?;
    if r.status() != 201 {
        return Err(format!("PUT manifest answered {}", r.status()));
    }
    expect_header(&r, "docker-content-digest", &digest)?;
    Ok(digest)
}

/// GETs a URL; returns status and body.
pub async fn get_bytes(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

fn location_of(r: &reqwest::Response) -> Result<String, String> {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(location_path)
        .ok_or_else(|| "no Location".to_owned())
}

fn expect_header(r: &reqwest::Response, name: &str, want: &str) -> Result<(), String> {
    let got = r.headers().get(name).and_then(|v| v.to_str().ok());
    if got == Some(want) {
        Ok(())
    } else {
        Err(format!("{name} is {got:?}, expected {want:?}"))
    }
}
