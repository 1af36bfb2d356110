//! The HTTP surface: one fallback that parses the path (see `routes`), checks
//! access, and calls a handler; a layer that counts, times and stamps responses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;

use super::AppState;
use super::auth::{Access, Denied};
use super::error::{RegistryError, Result};
use super::handlers::{self, Query};
use super::metrics::{EndpointLabels, RequestLabels, StorageLabels};
use super::routes::{self, Endpoint, RouteError};

/// Marks a response that failed in storage, so the metrics layer can count it.
#[derive(Clone, Copy, Debug)]
pub struct StorageFailure(pub &'static str);

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(dispatch)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Ready when the storage answers.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.reachable()).await {
        Ok(true) => (StatusCode::OK, "ready").into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable").into_response(),
    }
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let unread_body_on_error = req.version() <= Version::HTTP_11 && has_body(req.headers());
    match route(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            let mut response = e.into_response();
            if unread_body_on_error {
                // The request body may be unread (an early 401, a refused chunk), so
                // this HTTP/1 connection cannot carry another request. Say so, or a
                // client may reuse it and see EOF on its next upload.
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

async fn route(state: &Arc<AppState>, req: Request) -> Result<Response> {
    let endpoint = routes::parse(req.uri().path()).map_err(|e| match e {
        RouteError::NotFound => RegistryError::NotFound,
        RouteError::InvalidName => RegistryError::NameInvalid,
        // A tag that breaks the grammar cannot be pushed; reading one finds nothing.
        RouteError::InvalidTag if req.method() == Method::PUT => RegistryError::TagInvalid,
        RouteError::InvalidTag => RegistryError::ManifestUnknown("no such tag".into()),
        RouteError::InvalidDigest => {
            RegistryError::DigestInvalid("malformed digest in path".into())
        }
        RouteError::InvalidUploadId => RegistryError::BlobUploadUnknown,
    })?;
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    if let Some(auth) = &state.auth {
        let access = match (&endpoint, read) {
            (Endpoint::Catalog, _) => Access::Catalog,
            (_, true) => Access::Pull,
            (_, false) => Access::Push,
        };
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        auth.check(req.headers(), access, peer)
            .await
            .map_err(|denied| match denied {
                Denied::Unauthorized => {
                    if req.headers().contains_key(header::AUTHORIZATION) {
                        state.metrics.auth_failures.inc();
                    }
                    RegistryError::Unauthorized
                }
                Denied::TooManyAttempts { retry_after } => {
                    state.metrics.auth_limited.inc();
                    RegistryError::TooManyRequests {
                        what: "too many failed logins for this user or address",
                        retry_after,
                    }
                }
            })?;
    }
    if !read && state.read_only {
        return Err(RegistryError::Unsupported("the registry is read-only"));
    }
    let query = Query::parse(req.uri().query());
    let head = method == Method::HEAD;
    use Endpoint as E;
    match (method, endpoint) {
        (Method::GET | Method::HEAD, E::Base) => Ok(handlers::base()),
        (Method::GET, E::Catalog) => handlers::listing::catalog(state, &query).await,
        (Method::GET, E::Tags(repo)) => handlers::listing::tags(state, &repo, &query).await,
        (Method::GET | Method::HEAD, E::Manifest(repo, r)) => {
            handlers::manifests::get(state, &repo, &r, req.headers(), head).await
        }
        (Method::PUT, E::Manifest(repo, r)) => {
            handlers::manifests::put(state, &repo, &r, &query, req).await
        }
        (Method::DELETE, E::Manifest(repo, r)) => {
            handlers::manifests::delete(state, &repo, &r).await
        }
        (Method::GET | Method::HEAD, E::Blob(repo, d)) => {
            handlers::blobs::get(state, &repo, &d, req.headers(), head).await
        }
        (Method::DELETE, E::Blob(repo, d)) => handlers::blobs::delete(state, &repo, &d).await,
        (Method::POST, E::UploadStart(repo)) => {
            handlers::uploads::start(state, &repo, &query, req).await
        }
        (Method::PATCH, E::Upload(repo, id)) => {
            handlers::uploads::patch(state, &repo, &id, req).await
        }
        (Method::PUT, E::Upload(repo, id)) => {
            handlers::uploads::put(state, &repo, &id, &query, req).await
        }
        (Method::GET, E::Upload(repo, id)) => handlers::uploads::status(state, &repo, &id).await,
        (Method::DELETE, E::Upload(repo, id)) => handlers::uploads::cancel(state, &repo, &id).await,
        (Method::GET, E::Referrers(repo, d)) => {
            handlers::referrers::list(state, &repo, &d, &query).await
        }
        _ => Err(RegistryError::Unsupported(
            "method not allowed on this endpoint",
        )),
    }
}

/// Counts and times every request, counts body bytes both ways, and adds the
/// `Docker-Distribution-API-Version` header clients look for.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint =
        routes::parse(req.uri().path())
            .map(|e| e.kind())
            .unwrap_or(match req.uri().path() {
                "/healthz" => "healthz",
                "/readyz" => "readyz",
                _ => "other",
            });
    let method = method_label(req.method());
    let metrics = state.metrics.clone();
    let received = metrics.bytes_received.clone();
    let req = req.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                received.inc_by(data.len() as u64);
            }
            frame
        }))
    });
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    let status = response.status().as_u16();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            endpoint,
            method,
            status,
        })
        .inc();
    metrics
        .request_seconds
        .get_or_create(&EndpointLabels { endpoint })
        .observe(started.elapsed().as_secs_f64());
    if let Some(StorageFailure(operation)) = response.extensions().get::<StorageFailure>().copied()
    {
        metrics
            .storage_errors
            .get_or_create(&StorageLabels { operation })
            .inc();
    }
    tracing::debug!(
        endpoint,
        method,
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    let sent = metrics.bytes_sent.clone();
    response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                sent.inc_by(data.len() as u64);
            }
            frame
        }))
    })
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
