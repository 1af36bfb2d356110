//! Running `privreg serve`: health and readiness, Prometheus metrics on their own
//! port, graceful shutdown on SIGTERM, and plain HTTP only when asked for.

mod common;

use std::time::{Duration, Instant};

use common::oci::{get_bytes, push_monolithic, random_bytes};
use common::{Privreg, free_port, https_client, sha256, store};

async fn scrape(port: u16) -> (String, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, r.text().await.unwrap())
}

/// The value of the sample `name` (with its labels, exactly as exposed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn health_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mport = free_port();
    let mut reg = Privreg::start(&data, &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    let client = https_client(&reg.ca());
    let plain = reqwest::Client::new();
    let main = reg.url();
    let metrics = format!("http://127.0.0.1:{mport}");

    for (c, base) in [(&client, &main), (&plain, &metrics)] {
        let r = c.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
        let r = c.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ready");
    }
    // The metrics port serves no registry API.
    assert_eq!(
        plain
            .get(format!("{metrics}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Storage gone: not ready (but alive); back: ready again.
    let repos = store::v2(&data).join("repositories");
    let moved = store::v2(&data).join("repositories.away");
    std::fs::rename(&repos, &moved).unwrap();
    for (c, base) in [(&client, &main), (&plain, &metrics)] {
        assert_eq!(
            c.get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            503
        );
        assert_eq!(
            c.get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    std::fs::rename(&moved, &repos).unwrap();
    assert_eq!(
        client
            .get(format!("{main}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    reg.stop();
}

#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mport = free_port();
    let mut reg = Privreg::start(&data, &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    let client = https_client(&reg.ca());
    let base = reg.url();

    let (content_type, before) = scrape(mport).await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(before.ends_with("# EOF\n"), "{before}");
    assert_eq!(
        sample(&before, "privreg_http_received_bytes_total"),
        Some(0.0)
    );
    assert_eq!(sample(&before, "privreg_http_sent_bytes_total"), Some(0.0));

    for _ in 0..3 {
        let r = client.get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), 2);
    }
    let blob = random_bytes(12_345);
    let digest = push_monolithic(&client, &base, "m/r", blob.clone())
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, body) = get_bytes(&client, &format!("{base}/v2/m/r/blobs/{digest}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, blob);
    }
    let (status, missing_body) =
        get_bytes(&client, &format!("{base}/v2/m/r/blobs/{}", sha256(b"none"))).await;
    assert_eq!(status, 404);
    let r = client
        .head(format!("{base}/v2/m/r/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let (_, text) = scrape(mport).await;
    let count = |labels: &str| sample(&text, &format!("privreg_http_requests_total{{{labels}}}"));
    assert_eq!(
        count(r#"endpoint="base",method="GET",status="200""#),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(r#"endpoint="upload_start",method="POST",status="201""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(r#"endpoint="blob",method="GET",status="200""#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        count(r#"endpoint="blob",method="GET",status="404""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        count(r#"endpoint="blob",method="HEAD",status="200""#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "privreg_http_received_bytes_total"),
        Some(12_345.0),
        "only the blob had a request body"
    );
    let sent = 3 * 2 + 2 * 12_345 + missing_body.len();
    assert_eq!(
        sample(&text, "privreg_http_sent_bytes_total"),
        Some(sent as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "privreg_blob_upload_duration_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"privreg_http_request_duration_seconds_count{endpoint="base"}"#
        ),
        Some(3.0),
        "{text}"
    );
    // Health probes on the main port are counted under their own label, never as a repository.
    client.get(format!("{base}/healthz")).send().await.unwrap();
    let (_, text) = scrape(mport).await;
    assert_eq!(
        sample(
            &text,
            r#"privreg_http_requests_total{endpoint="healthz",method="GET",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("m/r"), "labels never carry repository names");
    reg.stop();
}

/// The state letter and, once the process has exited, its wait status, from
/// `/proc/<pid>/stat`. `None` when the process is gone entirely.
fn proc_state(pid: u32) -> Option<(char, Option<i32>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 52 (exit_code) is the 50th after the name.
    let exit = fields.get(49).and_then(|f| f.parse().ok());
    Some((state, exit))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_inflight_upload_finish() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = Privreg::start(&data, &[]);
    let client = https_client(&reg.ca());
    let base = reg.url();
    let blob = random_bytes(8 << 20);
    let digest = sha256(&blob);

    // A slow upload: 32 pieces of 256 KiB with pauses, streamed as the request body.
    // The feeder holds back after four pieces until the test says go, so the
    // request is certainly still running when SIGTERM arrives.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let pieces: Vec<Vec<u8>> = blob.chunks(256 * 1024).map(|c| c.to_vec()).collect();
    let feeder = tokio::spawn(async move {
        let mut go = Some(go_rx);
        for (i, p) in pieces.into_iter().enumerate() {
            if i == 4
                && let Some(go) = go.take()
            {
                let _ = go.await;
            }
            if tx.send(Ok(p)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let upload = tokio::spawn({
        let (client, url) = (
            client.clone(),
            format!("{base}/v2/slow/blobs/uploads/?digest={digest}"),
        );
        async move { client.post(url).body(body).send().await }
    });

    // Wait until the server is inside the request (its session exists), then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(30);
    while store::upload_dirs(&data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the upload never started: {}",
            reg.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = reg.pid().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // New connections are refused once shutdown has begun.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&reg.addr(), Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !upload.is_finished(),
        "the upload is held back, still running"
    );
    go_tx.send(()).unwrap();

    let response = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the in-flight upload hung")
        .unwrap()
        .expect("the in-flight upload was cut off by the shutdown");
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["docker-content-digest"], digest.as_str());
    feeder.await.unwrap();

    // Then the server exits, cleanly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        match proc_state(pid) {
            None => break None,
            Some(('Z', exit)) => break exit,
            Some(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit after its last request"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("wait status after SIGTERM: {exit:?}");
    if let Some(code) = exit {
        assert_eq!(code, 0, "exit status after SIGTERM: {}", reg.log());
    }
    assert!(reg.log().contains("shutting down"), "{}", reg.log());
    reg.stop();

    // The blob it accepted is there after a restart.
    reg.restart();
    let client = https_client(&reg.ca());
    let (status, body) = get_bytes(&client, &format!("{base}/v2/slow/blobs/{digest}")).await;
    assert_eq!(status, 200);
    assert_eq!(sha256(&body), digest);
    assert!(store::upload_dirs(&data).is_empty());
    reg.stop();
}

#[tokio::test]
async fn plain_http_only_with_the_flag() {
    let dir = tempfile::tempdir().unwrap();

    let data = dir.path().join("plain");
    let mut reg = Privreg::start(&data, &["--insecure-http"]);
    let http = reqwest::Client::new();
    let base = format!("http://{}", reg.host());
    let r = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let blob = random_bytes(1000);
    let digest = push_monolithic(&http, &base, "p", blob.clone())
        .await
        .unwrap();
    assert_eq!(
        get_bytes(&http, &format!("{base}/v2/p/blobs/{digest}")).await,
        (200, blob)
    );
    assert!(!data.join("tls").exists(), "no CA is made for plain HTTP");
    // TLS to a plain-HTTP server fails at the handshake.
    let tls = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert!(
        tls.get(format!("https://{}/v2/", reg.host()))
            .send()
            .await
            .is_err()
    );
    reg.stop();

    // Without the flag, plain HTTP gets no answer.
    let data = dir.path().join("tls");
    let mut reg = Privreg::start(&data, &[]);
    let r = http.get(format!("http://{}/v2/", reg.host())).send().await;
    assert!(r.is_err(), "plain HTTP to the TLS port must fail: {r:?}");
    let r = https_client(&reg.ca())
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    reg.stop();
}
