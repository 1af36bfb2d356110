//! Manifests by tag or digest: validated on PUT, negotiated on GET.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use super::{Query, digest_header, header_str, header_value, run};
use crate::registry::AppState;
use crate::registry::digest::{Algorithm, Digest};
use crate::registry::error::{RegistryError, Result};
use crate::registry::manifest;
use crate::registry::names::{RepoName, Tag};
use crate::registry::routes::Reference;
use crate::registry::storage::{StorageError, Store};

/// Finds the digest a reference names in `repo`, and the manifest's bytes.
async fn load(
    state: &Arc<AppState>,
    repo: &RepoName,
    reference: &Reference,
) -> Result<(Digest, bytes::Bytes)> {
    let (store, r, reference_owned) = (state.store.clone(), repo.clone(), reference.clone());
    let found = run(move || {
        let digest = match &reference_owned {
            Reference::Tag(t) => store.tag_link(&r, t)?,
            Reference::Digest(d) => Some(d.clone()),
        };
        match digest {
            Some(d) => Ok(store.manifest_in_repo(&r, &d)?.map(|bytes| (d, bytes))),
            None => Ok(None),
        }
    })
    .await?;
    found.ok_or_else(|| RegistryError::ManifestUnknown(reference.to_string()))
}

/// The media type to serve a stored manifest with.
pub fn stored_media_type(bytes: &[u8]) -> String {
    manifest::parse(None, bytes)
        .map(|m| m.media_type)
        .unwrap_or_else(|_| {
            #[derive(serde::Deserialize)]
            struct Declared {
                #[serde(rename = "mediaType")]
                media_type: Option<String>,
            }
            serde_json::from_slice::<Declared>(bytes)
                .ok()
                .and_then(|d| d.media_type)
                .unwrap_or_else(|| "application/json".to_owned())
        })
}

pub async fn get(
    state: &Arc<AppState>,
    repo: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let (digest, bytes) = load(state, repo, reference).await?;
    let media_type = stored_media_type(&bytes);
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !manifest::accepts(&accept, &media_type) {
        return Err(RegistryError::ManifestUnknown(format!(
            "{reference} is a {media_type}, which the Accept header does not admit"
        )));
    }
    let len = bytes.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, header_value(&media_type)),
            (header::CONTENT_LENGTH, header_value(&len.to_string())),
            (header::ETAG, header_value(&format!("\"{digest}\""))),
        ],
        [digest_header(&digest)],
        body,
    )
        .into_response())
}

/// Tags one manifest PUT may set with `?tag=` parameters.
const MAX_TAG_PARAMS: usize = 64;

/// The tags a PUT sets: the reference when it is a tag, and every `?tag=`
/// parameter (the distribution-spec's way to tag a push by digest).
fn tags_to_set(reference: &Reference, query: &Query) -> Result<Vec<Tag>> {
    let mut tags: Vec<Tag> = match reference {
        Reference::Tag(t) => vec![t.clone()],
        Reference::Digest(_) => Vec::new(),
    };
    for raw in query.get_all("tag") {
        let tag = Tag::parse(raw).ok_or(RegistryError::TagInvalid)?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
        if tags.len() > MAX_TAG_PARAMS {
            return Err(RegistryError::SizeInvalid(format!(
                "at most {MAX_TAG_PARAMS} tags per manifest PUT"
            )));
        }
    }
    Ok(tags)
}

pub async fn put(
    state: &Arc<AppState>,
    repo: &RepoName,
    reference: &Reference,
    query: &Query,
    req: Request,
) -> Result<Response> {
    let tags = tags_to_set(reference, query)?;
    let limit = state.max_manifest_bytes;
    if header_str(req.headers(), header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok())
        .is_some_and(|l| l > limit)
    {
        return Err(RegistryError::TooLarge("manifest"));
    }
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let body = Limited::new(
        req.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .collect()
    .await
    .map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            RegistryError::TooLarge("manifest")
        } else {
            RegistryError::ManifestRejected(format!("reading the body failed: {e}"))
        }
    })?
    .to_bytes();
    let algorithm = match reference {
        Reference::Digest(d) => d.algorithm(),
        Reference::Tag(_) => Algorithm::Sha256,
    };
    let digest = Digest::of(algorithm, &body);
    if let Reference::Digest(expected) = reference
        && *expected != digest
    {
        return Err(RegistryError::DigestInvalid(format!(
            "manifest content has digest {digest}, not {expected}"
        )));
    }
    let parsed = manifest::parse(content_type.as_deref(), &body)?;
    let check = !state.allow_sparse_manifests;
    let (store, r, d, t) = (
        state.store.clone(),
        repo.clone(),
        digest.clone(),
        tags.clone(),
    );
    let (blobs, children, subject) = (
        parsed.blobs.clone(),
        parsed.children.clone(),
        parsed.subject.clone(),
    );
    // The check and the write run as one push step, so a garbage collection
    // cannot delete a reference between them.
    let missing = run(move || {
        store.pushing(|mark| {
            if check && let Some(m) = missing_reference(&store, &r, &blobs, &children)? {
                return Ok(Some(m));
            }
            let referenced: Vec<Digest> =
                blobs.iter().chain(&children).chain([&d]).cloned().collect();
            mark(&referenced)?;
            store.put_manifest(&r, &d, &body, &t, subject.as_ref())?;
            Ok(None)
        })
    })
    .await?;
    if let Some(d) = missing {
        return Err(RegistryError::ManifestBlobUnknown(d));
    }

    let mut response = (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(&format!("/v2/{repo}/manifests/{digest}")),
            ),
            (header::CONTENT_LENGTH, header_value("0")),
        ],
        [digest_header(&digest)],
    )
        .into_response();
    if let Some(subject) = &parsed.subject {
        response
            .headers_mut()
            .insert("oci-subject", header_value(&subject.to_string()));
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &tags {
            response
                .headers_mut()
                .append("oci-tag", header_value(tag.as_str()));
        }
    }
    Ok(response)
}

/// The first blob or child manifest a manifest names that the repository lacks.
fn missing_reference(
    store: &Store,
    repo: &RepoName,
    blobs: &[Digest],
    children: &[Digest],
) -> std::result::Result<Option<Digest>, StorageError> {
    for d in blobs {
        if store.stat_in_repo(repo, d)?.is_none() {
            return Ok(Some(d.clone()));
        }
    }
    for d in children {
        if !store.has_manifest(repo, d)? {
            return Ok(Some(d.clone()));
        }
    }
    Ok(None)
}

pub async fn delete(
    state: &Arc<AppState>,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Response> {
    let (store, r) = (state.store.clone(), repo.clone());
    let deleted = match reference {
        Reference::Tag(t) => {
            let t = t.clone();
            run(move || store.delete_tag(&r, &t)).await?
        }
        Reference::Digest(d) => {
            let d = d.clone();
            run(move || {
                if !store.has_manifest(&r, &d)? {
                    return Ok(false);
                }
                // The referrers index entry goes with the manifest.
                let subject = manifest::parse(None, &store.read_blob(&d)?)
                    .ok()
                    .and_then(|m| m.subject);
                store.delete_manifest(&r, &d, subject.as_ref())
            })
            .await?
        }
    };
    if deleted {
        Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
    } else {
        Err(RegistryError::ManifestUnknown(reference.to_string()))
    }
}
