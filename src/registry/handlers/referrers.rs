//! The referrers API: manifests whose `subject` is a given digest, as an OCI index.

use std::sync::Arc;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{Query, run};
use crate::registry::AppState;
use crate::registry::digest::Digest;
use crate::registry::error::Result;
use crate::registry::manifest::{self, OCI_INDEX};
use crate::registry::names::RepoName;

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
    let mut referrers = run(move || {
        let digests = store.referrers(&r, &s)?;
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
