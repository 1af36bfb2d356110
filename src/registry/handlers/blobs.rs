//! Blob reads (with `Range`) and deletes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use super::{digest_header, header_str, header_value, run};
use crate::registry::AppState;
use crate::registry::digest::Digest;
use crate::registry::error::{RegistryError, Result};
use crate::registry::names::RepoName;

const READ_CHUNK: usize = 256 * 1024;

/// A `Range` header this blob cannot satisfy.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A single byte range `bytes=a-b`, `bytes=a-` or `bytes=-n`, resolved against
/// `size`. `Ok(None)` means no (or an ignorable) Range header.
pub fn parse_range(
    header: Option<&str>,
    size: u64,
) -> std::result::Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are optional; serve the whole blob.
        return Ok(None);
    }
    let number = |s: &str| s.parse::<u64>().map_err(|_| Unsatisfiable);
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n = number(n)?;
            if n == 0 || size == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size - 1)
        }
        (a, "") => (number(a)?, size.saturating_sub(1)),
        (a, b) => (number(a)?, number(b)?.min(size.saturating_sub(1))),
    };
    if start > end || start >= size {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

/// Where a blob GET is answered from.
enum Found<R> {
    /// Its size, the requested range, and a reader (none for HEAD or a bad range).
    Here(
        u64,
        std::result::Result<Option<(u64, u64)>, Unsatisfiable>,
        Option<R>,
    ),
    /// A URL the client fetches the blob from itself.
    Elsewhere(String),
}

pub async fn get(
    state: &Arc<AppState>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response> {
    let (store, r, d) = (state.store.clone(), repo.clone(), digest.clone());
    let range_header = header_str(headers, header::RANGE).map(str::to_owned);
    let redirect = state.redirect_blobs.filter(|_| !head);
    let found = run(move || {
        let Some(size) = store.stat_in_repo(&r, &d)? else {
            return Ok(None);
        };
        // The client reads from the storage itself (with its Range, if any).
        if let Some(valid) = redirect
            && let Some(url) = store.blob_url(&d, valid)?
        {
            return Ok(Some(Found::Elsewhere(url)));
        }
        let range = parse_range(range_header.as_deref(), size);
        let reader = match (&range, head) {
            (Ok(range), false) => {
                let start = range.map_or(0, |(a, _)| a);
                Some(store.open_blob(&d, start)?)
            }
            _ => None,
        };
        Ok(Some(Found::Here(size, range, reader)))
    })
    .await?;
    let found = found.ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
    let (size, range, reader) = match found {
        Found::Here(size, range, reader) => (size, range, reader),
        Found::Elsewhere(url) => {
            let (name, value) = digest_header(digest);
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header(header::LOCATION, header_value(&url))
                .header(name, value)
                .body(Body::empty())
                .expect("valid response parts"));
        }
    };
    let range = range.map_err(|Unsatisfiable| RegistryError::BlobRangeInvalid { size })?;
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, header_value(&format!("\"{digest}\"")));
    let (name, value) = digest_header(digest);
    response = response.header(name, value);
    if range.is_some() {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    let body = match reader {
        None => Body::empty(),
        Some(reader) => {
            Body::from_stream(ReaderStream::with_capacity(reader.take(len), READ_CHUNK))
        }
    };
    Ok(response.body(body).expect("valid response parts"))
}

pub async fn delete(state: &Arc<AppState>, repo: &RepoName, digest: &Digest) -> Result<Response> {
    let (store, r, d) = (state.store.clone(), repo.clone(), digest.clone());
    if run(move || store.unlink_blob(&r, &d)).await? {
        Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
    } else {
        Err(RegistryError::BlobUnknown(digest.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::{Unsatisfiable, parse_range};

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Ok(Some((0, 4))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=x-2"), 10), Err(Unsatisfiable));
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
    }
}
