//! Blob uploads: monolithic POST, sessions with chunked or streamed PATCH, the
//! closing PUT, status, cancel, and cross-repository mount.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Query, digest_header, header_str, header_value, run};
use crate::registry::AppState;
use crate::registry::digest::Digest;
use crate::registry::error::{RegistryError, Result, range_header};
use crate::registry::names::RepoName;
use crate::registry::storage::uploads::discard;

fn parse_digest(query: &Query) -> Result<Digest> {
    let raw = query.get("digest").ok_or_else(|| {
        RegistryError::DigestInvalid("the digest query parameter is required".into())
    })?;
    raw.parse()
        .map_err(|e: crate::registry::digest::DigestError| {
            RegistryError::DigestInvalid(e.to_string())
        })
}

/// 201 for a committed blob.
fn created(repo: &RepoName, digest: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (
                header::LOCATION,
                header_value(&format!("/v2/{repo}/blobs/{digest}")),
            ),
            (header::CONTENT_LENGTH, header_value("0")),
        ],
        [digest_header(digest)],
    )
        .into_response()
}

/// 202/204 describing an open session.
fn session(status: StatusCode, repo: &RepoName, id: &str, size: u64) -> Response {
    (
        status,
        [
            (
                header::LOCATION,
                header_value(&format!("/v2/{repo}/blobs/uploads/{id}")),
            ),
            (header::RANGE, range_header(size)),
            (header::CONTENT_LENGTH, header_value("0")),
        ],
        [("docker-upload-uuid", header_value(id))],
    )
        .into_response()
}

/// `POST /v2/<name>/blobs/uploads/`
pub async fn start(
    state: &Arc<AppState>,
    repo: &RepoName,
    query: &Query,
    req: Request,
) -> Result<Response> {
    if let Some(mounted) = try_mount(state, repo, query).await? {
        return Ok(created(repo, &mounted));
    }
    if query.get("digest").is_some() {
        // Monolithic upload: the whole blob in this request.
        let digest = parse_digest(query)?;
        let id = state.uploads.start(repo).await?;
        let body = req.into_body().into_data_stream();
        if let Err(e) = state.uploads.append(repo, &id, None, body).await {
            let _ = state.uploads.cancel(repo, &id).await;
            return Err(e.into());
        }
        state.uploads.finish(repo, &id, &digest).await?;
        return Ok(created(repo, &digest));
    }
    let id = state.uploads.start(repo).await?;
    Ok(session(StatusCode::ACCEPTED, repo, &id, 0))
}

/// Cross-repository mount (`?mount=<digest>&from=<repo>`). Without `from`, any
/// repository's copy will do (the spec's automatic content discovery). `None`
/// means: fall back to an ordinary upload session, as the spec asks.
async fn try_mount(
    state: &Arc<AppState>,
    repo: &RepoName,
    query: &Query,
) -> Result<Option<Digest>> {
    let Some(digest) = query.get("mount").and_then(|m| m.parse::<Digest>().ok()) else {
        return Ok(None);
    };
    let from = match query.get("from") {
        Some(f) => match RepoName::parse(f) {
            Some(f) => Some(f),
            None => return Ok(None),
        },
        None => None,
    };
    let (store, target, d) = (state.store.clone(), repo.clone(), digest.clone());
    let mounted = run(move || {
        store.pushing(|mark| {
            let present = match &from {
                Some(from) => store.stat_in_repo(from, &d)?.is_some(),
                None => store.blob_size(&d)?.is_some(),
            };
            if !present {
                return Ok(false);
            }
            mark(std::slice::from_ref(&d))?;
            store.link_blob(&target, &d)?;
            // Reused: date it now, so a collection's grace period covers it.
            store.touch_blob(&d);
            Ok(true)
        })
    })
    .await?;
    Ok(mounted.then_some(digest))
}

/// `Content-Range: <start>-<end>` of a chunk, checked against `Content-Length`;
/// `size` (the upload's current size) goes into the error.
pub fn chunk_start(headers: &HeaderMap, size: u64) -> Result<Option<u64>> {
    let Some(raw) = header_str(headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let raw = raw
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let raw = raw.split('/').next().unwrap_or(raw);
    let bad = || RegistryError::RangeInvalid { size };
    let (a, b) = raw.split_once('-').ok_or_else(bad)?;
    let (start, end): (u64, u64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    // `0-18446744073709551615` is u64::MAX + 1 bytes: checked, never wrapped.
    let span = end
        .checked_sub(start)
        .and_then(|d| d.checked_add(1))
        .ok_or_else(bad)?;
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        && len != span
    {
        return Err(bad());
    }
    Ok(Some(start))
}

/// The chunk's start; a refused chunk's body is drained first, so the client
/// reads the 416 rather than a broken pipe.
async fn checked_start(req: Request, current: u64) -> Result<(Option<u64>, Request)> {
    match chunk_start(req.headers(), current) {
        Ok(start) => Ok((start, req)),
        Err(e) => {
            discard(req.into_body().into_data_stream()).await;
            Err(e)
        }
    }
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: a chunk (with Content-Range) or a stream.
pub async fn patch(
    state: &Arc<AppState>,
    repo: &RepoName,
    id: &str,
    req: Request,
) -> Result<Response> {
    let current = state.uploads.size(repo, id).await?;
    let (start, req) = checked_start(req, current).await?;
    let body = req.into_body().into_data_stream();
    let size = state.uploads.append(repo, id, start, body).await?;
    Ok(session(StatusCode::ACCEPTED, repo, id, size))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: optional last chunk, then commit.
pub async fn put(
    state: &Arc<AppState>,
    repo: &RepoName,
    id: &str,
    query: &Query,
    req: Request,
) -> Result<Response> {
    let digest = parse_digest(query)?;
    let current = state.uploads.size(repo, id).await?;
    let (start, req) = checked_start(req, current).await?;
    let has_body = start.is_some()
        || header_str(req.headers(), header::CONTENT_LENGTH).is_none_or(|l| l.trim() != "0");
    if has_body {
        let body = req.into_body().into_data_stream();
        state.uploads.append(repo, id, start, body).await?;
    }
    state.uploads.finish(repo, id, &digest).await?;
    Ok(created(repo, &digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`
pub async fn status(state: &Arc<AppState>, repo: &RepoName, id: &str) -> Result<Response> {
    let size = state.uploads.size(repo, id).await?;
    Ok(session(StatusCode::NO_CONTENT, repo, id, size))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`
pub async fn cancel(state: &Arc<AppState>, repo: &RepoName, id: &str) -> Result<Response> {
    state.uploads.cancel(repo, id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(range: &str, len: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(range).unwrap());
        if let Some(l) = len {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_str(l).unwrap());
        }
        h
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(chunk_start(&HeaderMap::new(), 0).unwrap(), None);
        assert_eq!(
            chunk_start(&headers("0-9", Some("10")), 0).unwrap(),
            Some(0)
        );
        assert_eq!(
            chunk_start(&headers("bytes 10-19/*", None), 10).unwrap(),
            Some(10)
        );
        assert!(chunk_start(&headers("0-9", Some("5")), 0).is_err());
        assert!(chunk_start(&headers("9-0", None), 0).is_err());
        assert!(chunk_start(&headers("junk", None), 0).is_err());
        assert!(chunk_start(&headers("0-18446744073709551615", Some("0")), 0).is_err());
        assert!(chunk_start(&headers("0-18446744073709551615", None), 0).is_err());
    }
}
