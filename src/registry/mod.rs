//! The registry role: the OCI Distribution API over HTTPS.
//!
//! `routes` parses paths, `handlers` answer them over `storage`, `error` maps every
//! failure to the spec's JSON once, `server` wires TLS, metrics and shutdown.

pub mod auth;
pub mod connections;
pub mod digest;
pub mod error;
pub mod gc;
pub mod handlers;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod periodic;
pub mod router;
pub mod routes;
pub mod server;
pub mod storage;
pub mod tls;

use std::sync::Arc;

pub use router::router;
pub use server::serve;

use auth::Authenticator;
use metrics::Metrics;
use storage::Store;
pub use storage::uploads::UploadLimits;
use storage::uploads::Uploads;

/// Everything a request handler needs.
pub struct AppState {
    pub store: Store,
    pub uploads: Arc<Uploads>,
    pub auth: Option<Arc<Authenticator>>,
    pub read_only: bool,
    pub max_manifest_bytes: u64,
    pub allow_sparse_manifests: bool,
    /// See `RegistryConfig::redirect_blobs`.
    pub redirect_blobs: Option<std::time::Duration>,
    pub metrics: Arc<Metrics>,
}

/// Registry settings that are not about listening or TLS.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub read_only: bool,
    pub max_manifest_bytes: u64,
    /// Accept manifests and indexes whose blobs or children were never pushed.
    pub allow_sparse_manifests: bool,
    pub uploads: UploadLimits,
    /// Answer blob GETs with a redirect to a presigned storage URL valid this
    /// long, where the storage has one (S3); `None` streams every blob.
    pub redirect_blobs: Option<std::time::Duration>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            read_only: false,
            max_manifest_bytes: 4 << 20,
            allow_sparse_manifests: false,
            uploads: UploadLimits::default(),
            redirect_blobs: None,
        }
    }
}

impl AppState {
    pub fn new(
        store: Store,
        auth: Option<Authenticator>,
        config: RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<AppState> {
        Arc::new(AppState {
            uploads: Arc::new(Uploads::new(store.clone(), config.uploads, metrics.clone())),
            store,
            auth: auth.map(Arc::new),
            read_only: config.read_only,
            max_manifest_bytes: config.max_manifest_bytes,
            allow_sparse_manifests: config.allow_sparse_manifests,
            redirect_blobs: config.redirect_blobs,
            metrics,
        })
    }
}
