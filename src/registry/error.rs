//! The registry's errors, each with its OCI error code and HTTP status, turned into
//! the spec's JSON body in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::digest::Digest;
use super::manifest::ManifestError;
use super::storage::StorageError;
use super::storage::uploads::UploadError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(Digest),
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    #[error("requested range not satisfiable; the upload holds {size} bytes")]
    RangeInvalid { size: u64 },
    #[error("requested blob range not satisfiable")]
    BlobRangeInvalid { size: u64 },
    #[error("provided digest did not match uploaded content or is invalid: {0}")]
    DigestInvalid(String),
    #[error("manifest references a blob or manifest unknown to the repository: {0}")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(#[from] ManifestError),
    #[error("manifest invalid: {0}")]
    ManifestRejected(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("invalid repository name")]
    NameInvalid,
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("invalid tag")]
    TagInvalid,
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0} exceeds the configured limit")]
    TooLarge(&'static str),
    #[error("authentication required")]
    Unauthorized,
    #[error("{what}; retry after {} s", retry_after.as_secs().max(1))]
    TooManyRequests {
        what: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("the operation is unsupported: {0}")]
    Unsupported(&'static str),
    #[error("no such endpoint")]
    NotFound,
    #[error(
        "the registry's storage is full: uploads are refused until space is freed (delete images; garbage collection reclaims their blobs)"
    )]
    StorageFull,
    #[error("storage failure")]
    Storage(StorageError),
}

impl From<UploadError> for RegistryError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Unknown => RegistryError::BlobUploadUnknown,
            UploadError::OutOfOrder { size } => RegistryError::RangeInvalid { size },
            UploadError::TooLarge => RegistryError::TooLarge("blob"),
            e @ UploadError::DigestMismatch { .. } => RegistryError::DigestInvalid(e.to_string()),
            UploadError::Busy(what) => RegistryError::TooManyRequests {
                what,
                retry_after: std::time::Duration::from_secs(1),
            },
            UploadError::Full => RegistryError::StorageFull,
            e @ (UploadError::Body(_)
            | UploadError::BodyStalled(_)
            | UploadError::Short
            | UploadError::Conflicting) => RegistryError::BlobUploadInvalid(e.to_string()),
            UploadError::Storage(e) => e.into(),
        }
    }
}

impl From<StorageError> for RegistryError {
    /// A full disk is the client's to know about (and nothing was kept), as
    /// is a push held too long by a collection (retry); any other failure is
    /// the operator's.
    fn from(e: StorageError) -> Self {
        if e.is_full() {
            RegistryError::StorageFull
        } else if e.is_busy() {
            RegistryError::TooManyRequests {
                what: "pushes are held while a garbage collection runs",
                retry_after: std::time::Duration::from_secs(10),
            }
        } else {
            RegistryError::Storage(e)
        }
    }
}

impl RegistryError {
    /// The spec's error code and the HTTP status that goes with it.
    pub fn code(&self) -> (&'static str, StatusCode) {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => ("BLOB_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", StatusCode::NOT_FOUND),
            BlobUploadInvalid(_) => ("BLOB_UPLOAD_INVALID", StatusCode::BAD_REQUEST),
            RangeInvalid { .. } => ("BLOB_UPLOAD_INVALID", StatusCode::RANGE_NOT_SATISFIABLE),
            BlobRangeInvalid { .. } => ("BLOB_UNKNOWN", StatusCode::RANGE_NOT_SATISFIABLE),
            DigestInvalid(_) => ("DIGEST_INVALID", StatusCode::BAD_REQUEST),
            ManifestBlobUnknown(_) => ("MANIFEST_BLOB_UNKNOWN", StatusCode::BAD_REQUEST),
            ManifestInvalid(_) | ManifestRejected(_) => {
                ("MANIFEST_INVALID", StatusCode::BAD_REQUEST)
            }
            ManifestUnknown(_) => ("MANIFEST_UNKNOWN", StatusCode::NOT_FOUND),
            NameInvalid => ("NAME_INVALID", StatusCode::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", StatusCode::NOT_FOUND),
            TagInvalid => ("TAG_INVALID", StatusCode::BAD_REQUEST),
            SizeInvalid(_) => ("SIZE_INVALID", StatusCode::BAD_REQUEST),
            TooLarge(_) => ("SIZE_INVALID", StatusCode::PAYLOAD_TOO_LARGE),
            Unauthorized => ("UNAUTHORIZED", StatusCode::UNAUTHORIZED),
            TooManyRequests { .. } => ("TOOMANYREQUESTS", StatusCode::TOO_MANY_REQUESTS),
            Unsupported(_) => ("UNSUPPORTED", StatusCode::METHOD_NOT_ALLOWED),
            NotFound => ("NOT_FOUND", StatusCode::NOT_FOUND),
            // 403 DENIED, not 507: clients retry 5xx with backoff, but a full
            // registry stays full until someone frees space; DENIED stops the
            // push at once and clients print the message.
            StorageFull => ("DENIED", StatusCode::FORBIDDEN),
            Storage(_) => ("UNKNOWN", StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        let storage_failure = match &self {
            RegistryError::Storage(e) => {
                // The client gets no internals; the operator gets the whole chain.
                tracing::error!(error = %e, source = ?std::error::Error::source(e), "storage failure");
                Some(crate::registry::router::StorageFailure(e.category()))
            }
            _ => None,
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": null }]
        });
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(f) = storage_failure {
            response.extensions_mut().insert(f);
        }
        let headers = response.headers_mut();
        match self {
            RegistryError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"privreg\", charset=\"UTF-8\""),
                );
            }
            RegistryError::TooManyRequests { retry_after, .. } => {
                // Whole seconds, rounded up: never tell a client to come back early.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            RegistryError::RangeInvalid { size } => {
                headers.insert(header::RANGE, range_header(size));
            }
            RegistryError::BlobRangeInvalid { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

/// The `Range` header of an upload holding `size` bytes (`0-0` when empty, as
/// Distribution and clients expect).
pub fn range_header(size: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))).expect("ascii digits")
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
