//! What a registry shows over the Distribution API, for comparing two servers
//! (or one server before and after) field by field: manifests (bytes,
//! Content-Type, Docker-Content-Digest), blobs, tag lists and the catalog.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::Value;

/// Every manifest type a client may ask for.
pub const ACCEPT_ALL: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub status: u16,
    pub content_type: Option<String>,
    pub digest: Option<String>,
    pub bytes: Vec<u8>,
}

/// `GET <base>/v2/<repo>/manifests/<reference>` with every manifest type accepted.
pub async fn manifest(
    client: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
) -> Fetched {
    let r = client
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("Accept", ACCEPT_ALL)
        .send()
        .await
        .unwrap();
    fetched(r).await
}

/// `GET <base><path>` (path starts with `/v2/`).
pub async fn get(client: &reqwest::Client, base: &str, path: &str) -> Fetched {
    fetched(client.get(format!("{base}{path}")).send().await.unwrap()).await
}

async fn fetched(r: reqwest::Response) -> Fetched {
    let header = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (status, content_type, digest) = (
        r.status().as_u16(),
        header("content-type"),
        header("docker-content-digest"),
    );
    Fetched {
        status,
        content_type,
        digest,
        bytes: r.bytes().await.unwrap().to_vec(),
    }
}

/// A registry's answers about `refs` (`(repo, tag or digest)`), every blob those
/// manifests name (recursively through indexes), each repository's tag list and
/// the catalog.
#[derive(Debug, PartialEq, Eq)]
pub struct View {
    pub manifests: BTreeMap<(String, String), Fetched>,
    pub blobs: BTreeMap<(String, String), Vec<u8>>,
    pub tags: BTreeMap<String, Value>,
    pub catalog: Value,
}

impl View {
    /// The same view with tag lists and the catalog sorted: Distribution 2.8.2
    /// lists tags in directory order, privreg in lexical order.
    pub fn sorted(&self) -> View {
        let sort = |v: &Value, key: &str| {
            let mut v = v.clone();
            if let Some(a) = v[key].as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
            v
        };
        View {
            manifests: self.manifests.clone(),
            blobs: self.blobs.clone(),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), sort(v, "tags")))
                .collect(),
            catalog: sort(&self.catalog, "repositories"),
        }
    }

    /// Whether every tag list and the catalog are in lexical order.
    pub fn is_lexical(&self) -> bool {
        *self == self.sorted()
    }
}

pub async fn view(client: &reqwest::Client, base: &str, refs: &[(&str, &str)]) -> View {
    let mut manifests = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    let mut todo: Vec<(String, String)> = refs
        .iter()
        .map(|(r, t)| (r.to_string(), t.to_string()))
        .collect();
    while let Some((repo, reference)) = todo.pop() {
        if manifests.contains_key(&(repo.clone(), reference.clone())) {
            continue;
        }
        let m = manifest(client, base, &repo, &reference).await;
        assert_eq!(
            m.status,
            200,
            "{base}: manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&m.bytes)
        );
        let doc: Value = serde_json::from_slice(&m.bytes).unwrap();
        for child in doc["manifests"].as_array().into_iter().flatten() {
            todo.push((repo.clone(), child["digest"].as_str().unwrap().to_owned()));
        }
        let mut wanted: Vec<String> = doc["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect();
        if let Some(c) = doc["config"]["digest"].as_str() {
            wanted.push(c.to_owned());
        }
        for d in wanted {
            let b = get(client, base, &format!("/v2/{repo}/blobs/{d}")).await;
            assert_eq!(b.status, 200, "{base}: blob {repo}@{d}");
            assert_eq!(
                super::sha256(&b.bytes),
                d,
                "{base}: blob {repo}@{d} content"
            );
            blobs.insert((repo.clone(), d), b.bytes);
        }
        manifests.insert((repo, reference), m);
    }
    let mut tags = BTreeMap::new();
    for (repo, _) in refs {
        let t = get(client, base, &format!("/v2/{repo}/tags/list")).await;
        assert_eq!(t.status, 200, "{base}: tags of {repo}");
        tags.insert(repo.to_string(), serde_json::from_slice(&t.bytes).unwrap());
    }
    let c = get(client, base, "/v2/_catalog").await;
    assert_eq!(c.status, 200, "{base}: catalog");
    View {
        manifests,
        blobs,
        tags,
        catalog: serde_json::from_slice(&c.bytes).unwrap(),
    }
}
