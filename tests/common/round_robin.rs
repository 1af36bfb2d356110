//! An HTTPS reverse proxy that sends each request to the next of several
//! backends in turn (request by request, not connection by connection), so a
//! client's every step of a push, each PATCH of a chunked upload included,
//! lands on another replica than the one before. Stopped on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::Response;
use futures_util::TryStreamExt;

struct Backends {
    urls: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
}

pub struct RoundRobin {
    pub addr: SocketAddr,
    /// Requests sent to each backend so far.
    counts: Arc<Vec<AtomicUsize>>,
    handle: axum_server::Handle<SocketAddr>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Headers of one hop that a proxy must not pass on.
fn hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::HOST,
        header::UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

impl RoundRobin {
    /// Serves TLS with `cert`/`key` on a loopback port; trusts `ca` for the
    /// backends (`https://127.0.0.1:<port>` each).
    pub fn start(backends: Vec<String>, cert: &Path, key: &Path, ca: &Path) -> RoundRobin {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(ca)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let state = Arc::new(Backends {
            urls: backends,
            next: AtomicUsize::new(0),
            client,
        });
        let counted = counts.clone();
        let app = Router::new()
            .fallback(move |s: State<Arc<Backends>>, r: Request| forward(s, r, counted.clone()))
            .with_state(state);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let (cert, key): (PathBuf, PathBuf) = (cert.to_owned(), key.to_owned());
        let served = handle.clone();
        runtime.spawn(async move {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .unwrap();
            axum_server::from_tcp_rustls(listener, tls)
                .unwrap()
                .handle(served)
                .serve(app.into_make_service())
                .await
                .unwrap();
        });
        RoundRobin {
            addr,
            counts,
            handle,
            runtime: Some(runtime),
        }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Requests each backend received.
    pub fn counts(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

async fn forward(
    State(backends): State<Arc<Backends>>,
    request: Request,
    counts: Arc<Vec<AtomicUsize>>,
) -> Response {
    let i = backends.next.fetch_add(1, Ordering::Relaxed) % backends.urls.len();
    counts[i].fetch_add(1, Ordering::Relaxed);
    let target = format!(
        "{}{}",
        backends.urls[i],
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let (parts, body) = request.into_parts();
    let mut out = backends.client.request(parts.method, target);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            out = out.header(name, value);
        }
    }
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let answer = match out.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(format!("proxy: {e}")))
                .unwrap();
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(
            answer.bytes_stream().map_err(std::io::Error::other),
        ))
        .unwrap()
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.handle.shutdown();
        // Without waiting: a test may drop the proxy inside its own runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
