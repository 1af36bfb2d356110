//! The referrers API: manifests whose `subject` is a given digest, as an OCI index.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{Query, run};
use crate::registry::AppState;
use crate::registry::digest::Digest;
use crate::registry::error::Result;
use crate::registry::manifest::{self, OCI_INDEX, ParsedManifest};
use crate::registry::names::RepoName;
use crate::registry::storage::{FsStore, StorageError};

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerDescriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::HashMap<String, String>>,
}

pub async fn list(
    state: &Arc<AppState>,
    repo: &RepoName,
    subject: &Digest,
    query: &Query,
) -> Result<Response> {
    let (store, r, s) = (state.store.clone(), repo.clone(), subject.clone());
    let read_only = state.read_only;
    let mut referrers = run(move || {
        let digests = if store.referrers_indexed(&r)? {
            store.referrers(&r, &s)?
        } else {
            // Manifests written before privreg served this directory (registry:2
            // keeps no referrers index): scan every revision once and keep the
            // index, unless read-only, where nothing is written.
            let found = subjects_of_revisions(&store, &r)?;
            if !read_only {
                for (subject, d) in &found {
                    store.index_referrer(&r, subject, d)?;
                }
                store.mark_referrers_indexed(&r)?;
            }
            found
                .into_iter()
                .filter(|(subject, _)| *subject == s)
                .map(|(_, d)| d)
                .collect()
        };
        let mut out = Vec::new();
        for d in digests {
            let bytes = store.read_blob(&d)?;
            // Only manifests that parsed on upload were indexed; skip any that no longer do.
            if let Ok(m) = manifest::parse(None, &bytes) {
                out.push(ReferrerDescriptor {
                    media_type: m.media_type,
                    digest: d,
                    size: bytes.len() as u64,
                    artifact_type: m.artifact_type,
                    annotations: m.annotations,
                });
            }
        }
        Ok(out)
    })
    .await?;
    let filter = query.get("artifactType");
    if let Some(wanted) = filter {
        referrers.retain(|r| r.artifact_type.as_deref() == Some(wanted));
    }
    referrers.sort_by(|a, b| a.digest.cmp(&b.digest));
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": referrers,
    });
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OCI_INDEX)],
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    if filter.is_some() {
        response.headers_mut().insert(
            "oci-filters-applied",
            header::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

/// (subject, manifest) for every manifest of `repo` that has a subject.
fn subjects_of_revisions(
    store: &FsStore,
    repo: &RepoName,
) -> Result<Vec<(Digest, Digest)>, StorageError> {
    let mut found = Vec::new();
    for d in store.manifest_revisions(repo)? {
        if !store.has_manifest(repo, &d)? {
            continue;
        }
        let Ok(bytes) = store.read_blob(&d) else {
            continue;
        };
        if let Ok(ParsedManifest {
            subject: Some(subject),
            ..
        }) = manifest::parse(None, &bytes)
        {
            found.push((subject, d));
        }
    }
    Ok(found)
}
