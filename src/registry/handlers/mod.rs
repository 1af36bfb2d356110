//! Thin request handlers: read the request, call storage, shape the response.

pub mod blobs;
pub mod listing;
pub mod manifests;
pub mod referrers;
pub mod uploads;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::digest::Digest;

/// Query parameters. Unknown ones (containerd's `ns=`) are ignored.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Query {
        Query(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter (`?tag=a&tag=b`), in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET /v2/`: the API is here (authentication was checked by the router).
pub fn base() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response()
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    // Every value we build is ASCII: paths of validated names, digests, numbers.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn digest_header(d: &Digest) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("docker-content-digest"),
        header_value(&d.to_string()),
    )
}

pub(crate) fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Runs a blocking store call off the async threads.
pub(crate) use super::storage::uploads::blocking as run;
