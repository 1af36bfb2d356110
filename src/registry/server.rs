//! `privreg serve`: storage, auth and TLS from the command line, the registry on
//! one port, metrics on another, and a graceful stop on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum_server::Handle;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};

use super::auth::{AuthPolicy, Authenticator};
use super::connections::LimitAcceptor;
use super::metrics::Metrics;
use super::storage::Store;
use super::storage::gc::GcOptions;
use super::storage::s3::{S3Config, S3Driver};
use super::tls::{self, LocalPki, ReloadingResolver};
use super::{AppState, RegistryConfig, UploadLimits, router};
use crate::cli::ServeArgs;

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(&args)?;
    let auth = args
        .htpasswd
        .as_deref()
        .map(|p| {
            Authenticator::from_file(
                p,
                AuthPolicy {
                    anonymous_pull: args.anonymous_pull,
                    anonymous_catalog: args.anonymous_catalog,
                    failures_per_minute: args.auth_failures_per_minute,
                },
            )
        })
        .transpose()
        .context("loading the htpasswd file")?;
    let metrics = Arc::new(Metrics::new());
    let config = RegistryConfig {
        read_only: args.read_only,
        max_manifest_bytes: args.max_manifest_bytes,
        allow_sparse_manifests: args.allow_sparse_manifests,
        uploads: UploadLimits {
            max_blob_bytes: (args.max_blob_bytes > 0).then_some(args.max_blob_bytes),
            max_concurrent: args.max_concurrent_uploads as usize,
            max_sessions: args.max_upload_sessions as usize,
            body_timeout: Duration::from_secs(args.body_timeout_seconds),
            min_free: args.min_free_space,
        },
        redirect_blobs: (args.s3.s3_redirect_seconds > 0)
            .then(|| Duration::from_secs(args.s3.s3_redirect_seconds)),
    };
    let state = AppState::new(store, auth, config, metrics);
    if !args.read_only && args.gc_interval_seconds > 0 {
        collect_on_schedule(
            state.clone(),
            Duration::from_secs(args.gc_interval_seconds),
            GcOptions {
                dry_run: false,
                delete_untagged: args.gc_delete_untagged,
                grace: Duration::from_secs(args.gc_grace_seconds),
            },
        );
    }
    if !args.read_only {
        state.uploads.clone().purge_on_schedule(
            Duration::from_secs(args.upload_max_age_seconds),
            Duration::from_secs(args.upload_purge_interval_seconds),
        );
    }
    if let Some(auth) = &state.auth {
        auth.clone()
            .watch(Duration::from_secs(args.htpasswd_reload_seconds));
    }
    let app = router(state.clone());

    let handle: Handle<SocketAddr> = Handle::new();
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    tokio::spawn(shutdown_on_signal(handle.clone(), grace));

    if let Some(addr) = args.metrics_listen {
        let metrics_app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(super::router::readyz))
            .with_state(state.clone());
        let metrics_handle = handle.clone();
        tokio::spawn(async move {
            let served = axum_server::bind(addr)
                .handle(metrics_handle)
                .serve(metrics_app.into_make_service())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, %addr, "metrics listener failed");
            }
        });
        tracing::info!(%addr, "metrics on /metrics");
    }

    let auth_mode = match (&args.htpasswd, args.anonymous_pull) {
        (None, _) => "none",
        (Some(_), false) => "htpasswd",
        (Some(_), true) => "htpasswd, anonymous pull",
    };
    let header_timeout = Duration::from_secs(args.header_timeout_seconds);
    let limits = LimitAcceptor::new(
        args.max_connections as usize,
        Duration::from_secs(args.idle_timeout_seconds),
        state.metrics.clone(),
    );
    if args.insecure_http {
        tracing::warn!(addr = %args.listen, data = %args.data.display(), auth = auth_mode,
            "serving plain HTTP: clients must be told this registry is insecure");
        let mut server = axum_server::bind(args.listen)
            .acceptor(limits)
            .handle(handle)
            .first_request_timeout(header_timeout);
        configure_http(server.http_builder(), &args);
        server
            .serve(app.into_make_service_with_connect_info::<SocketAddr>())
            .await?;
        return Ok(());
    }

    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let pki = LocalPki::in_dir(&args.data.join("tls"));
            let sans = tls::local_sans(&args.sans);
            let created = pki.ensure(&sans).context("preparing the local CA")?;
            explain_local_ca(&pki, created, &args.listen, &sans);
            (pki.server_cert, pki.server_key)
        }
    };
    let resolver =
        Arc::new(ReloadingResolver::load(&cert, &key).context("loading the TLS certificate")?);
    resolver
        .clone()
        .watch(Duration::from_secs(args.tls_reload_seconds.max(1)));
    let rustls_config = RustlsConfig::from_config(Arc::new(tls::server_config(resolver)));
    tracing::info!(addr = %args.listen, data = %args.data.display(), cert = %cert.display(),
        auth = auth_mode, read_only = args.read_only, "privreg registry listening (HTTPS)");
    let acceptor = RustlsAcceptor::new(rustls_config)
        .handshake_timeout(header_timeout)
        .acceptor(limits);
    let mut server = axum_server::bind(args.listen)
        .acceptor(acceptor)
        .handle(handle)
        .first_request_timeout(header_timeout);
    configure_http(server.http_builder(), &args);
    server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Online garbage collection every `every` (the first one after `every`).
fn collect_on_schedule(state: Arc<AppState>, every: Duration, opts: GcOptions) {
    super::periodic::blocking_every(every, false, "garbage collection", move || {
        let started = std::time::Instant::now();
        match state.store.collect_garbage(&opts) {
            Ok(report) => {
                let m = &state.metrics;
                m.gc_runs.inc();
                m.gc_blobs_deleted.inc_by(report.blobs_deleted.len() as u64);
                m.gc_bytes_freed.inc_by(report.bytes_freed);
                tracing::info!(
                    blobs_deleted = report.blobs_deleted.len(),
                    manifests_deleted = report.manifests_deleted.len(),
                    bytes_freed = report.bytes_freed,
                    blobs_kept = report.blobs_kept,
                    blobs_spared = report.blobs_spared,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "garbage collection done"
                );
            }
            // Every replica on a bucket schedules collections; one at a time runs.
            Err(e) if e.is_busy() => {
                tracing::info!(reason = %e, "garbage collection skipped")
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    });
}

/// The data directory, or the S3 bucket when `--s3-bucket` is given.
fn open_store(args: &ServeArgs) -> anyhow::Result<Store> {
    let s3 = &args.s3;
    let Some(bucket) = &s3.s3_bucket else {
        return Store::new(&args.data).context("opening the data directory");
    };
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    let secret = |path: &std::path::Path, what: &str| -> anyhow::Result<String> {
        let bytes = read(path, what)?;
        Ok(String::from_utf8(bytes)
            .with_context(|| format!("the {what} {} is not text", path.display()))?
            .trim()
            .to_owned())
    };
    let (access_key_id, secret_access_key) = match (&s3.s3_access_key_file, &s3.s3_secret_key_file)
    {
        (Some(id), Some(key)) => (
            Some(secret(id, "S3 access key file")?),
            Some(secret(key, "S3 secret key file")?),
        ),
        _ => (None, None),
    };
    let config = S3Config {
        endpoint: s3.s3_endpoint.clone(),
        bucket: bucket.clone(),
        region: s3.s3_region.clone(),
        prefix: s3.s3_prefix.clone(),
        path_style: s3.s3_path_style,
        access_key_id,
        secret_access_key,
        session_token: None,
        ca_pem: s3
            .s3_ca_file
            .as_deref()
            .map(|p| read(p, "S3 CA file"))
            .transpose()?,
        allow_http: s3.s3_allow_http,
    };
    let driver = S3Driver::new(&config).context("configuring the S3 storage")?;
    Ok(Store::in_bucket(driver))
}

/// HTTP-level limits: header read time (HTTP/1), streams per connection (HTTP/2).
fn configure_http(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    args: &ServeArgs,
) {
    builder
        .http1()
        .header_read_timeout(Duration::from_secs(args.header_timeout_seconds));
    builder
        .http2()
        .max_concurrent_streams(args.max_streams_per_connection);
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.uploads.space().measure();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Tells the user how to trust the generated CA: the manual recipe, done for them.
fn explain_local_ca(pki: &LocalPki, created: bool, listen: &SocketAddr, sans: &[String]) {
    let ca = pki.ca_cert.display();
    let port = listen.port();
    let host = sans
        .iter()
        .find(|s| s.as_str() != "localhost")
        .map(String::as_str)
        .unwrap_or("localhost");
    let verb = if created { "created" } else { "using" };
    tracing::info!(
        ca = %ca,
        names = ?sans,
        "{verb} a local CA for this registry. To trust it (host {host}:{port}):\n  \
         docker:     mkdir -p /etc/docker/certs.d/{host}:{port} && cp {ca} /etc/docker/certs.d/{host}:{port}/ca.crt\n  \
         podman/skopeo/cri-o: mkdir -p /etc/containers/certs.d/{host}:{port} && cp {ca} /etc/containers/certs.d/{host}:{port}/ca.crt\n  \
         containerd: mkdir -p /etc/containerd/certs.d/{host}:{port} && cp {ca} /etc/containerd/certs.d/{host}:{port}/ca.crt\n  \
         curl:       curl --cacert {ca} https://{host}:{port}/v2/"
    );
}

async fn shutdown_on_signal(handle: Handle<SocketAddr>, grace: Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM");
            let _ = ctrl_c.await;
            handle.graceful_shutdown(Some(grace));
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down; letting requests finish"
    );
    handle.graceful_shutdown(Some(grace));
}
