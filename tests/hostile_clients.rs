//! `privreg serve` against clients that misbehave: slow headers, idle and
//! stalled connections, too many connections, password guessing, and a user
//! removed from the htpasswd Secret while the registry runs. Real process, real
//! TLS, loopback only.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Privreg;
use common::rawtls::{TlsConn, client_config};

/// Liveness bound for waits that must end; never a performance assertion.
const PATIENCE: Duration = Duration::from_secs(60);

fn connect(reg: &Privreg) -> TlsConn {
    TlsConn::connect(reg.addr(), client_config(&reg.ca(), &[])).expect("TLS connection")
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

fn get_status(reg: &Privreg, path: &str, auth: Option<&str>) -> (u16, Option<String>) {
    let mut conn = connect(reg);
    let headers: Vec<(&str, String)> = auth
        .map(|a| vec![("Authorization", a.to_owned())])
        .unwrap_or_default();
    let r = conn.request("GET", path, &headers, b"").expect("response");
    (r.status, r.header("retry-after").map(str::to_owned))
}

#[test]
fn slow_headers_are_cut_off_while_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Privreg::start(
        &tmp.path().join("data"),
        &[
            "--header-timeout-seconds",
            "2",
            "--idle-timeout-seconds",
            "30",
        ],
    );
    let started = Instant::now();
    let slow: Vec<_> = (0..16)
        .map(|i| {
            let mut conn = connect(&reg);
            std::thread::spawn(move || {
                // A request head that never ends: one header line every 200 ms.
                if conn.send_body(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").is_err() {
                    return Some(Instant::now());
                }
                let deadline = Instant::now() + PATIENCE;
                let mut n = 0;
                while Instant::now() < deadline {
                    n += 1;
                    if conn
                        .send_body(format!("X-Slow-{i}-{n}: y\r\n").as_bytes())
                        .is_err()
                        || conn.wait_closed(Duration::from_millis(200))
                    {
                        return Some(Instant::now());
                    }
                }
                None
            })
        })
        .collect();
    // Meanwhile ordinary clients are served.
    for _ in 0..20 {
        assert_eq!(get_status(&reg, "/v2/", None).0, 200);
    }
    let mut longest = Duration::ZERO;
    for t in slow {
        let closed = t
            .join()
            .unwrap()
            .expect("the server never closed a slow-header connection");
        longest = longest.max(closed - started);
    }
    println!(
        "16 slow-header connections closed by the server after at most {longest:?} (header timeout 2 s)"
    );
    assert_eq!(get_status(&reg, "/v2/", None).0, 200);
}

#[test]
fn idle_and_stalled_connections_are_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Privreg::start(
        &tmp.path().join("data"),
        &[
            "--idle-timeout-seconds",
            "2",
            "--header-timeout-seconds",
            "30",
        ],
    );
    // Idle after a request.
    let mut idle = connect(&reg);
    assert_eq!(idle.request("GET", "/v2/", &[], b"").unwrap().status, 200);
    assert!(idle.wait_closed(PATIENCE), "an idle connection stayed open");

    // A body that stops half-way: the connection goes, the chunk is rolled back.
    let mut conn = connect(&reg);
    let r = conn
        .request("POST", "/v2/stall/blobs/uploads/", &[], b"")
        .unwrap();
    assert_eq!(r.status, 202);
    let location = r.header("location").unwrap().to_owned();
    let mut stalled = connect(&reg);
    stalled
        .send_head("PATCH", &location, &[("Content-Length", "1000".into())])
        .unwrap();
    stalled.send_body(&[7u8; 100]).unwrap();
    assert!(
        stalled.wait_closed(PATIENCE),
        "a stalled body kept its connection"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = connect(&reg).request("GET", &location, &[], b"").unwrap();
        assert_eq!(r.status, 204);
        if r.header("range") == Some("0-0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled chunk was not rolled back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn connections_beyond_the_cap_are_refused_until_one_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Privreg::start(&tmp.path().join("data"), &["--max-connections", "4"]);
    let config = client_config(&reg.ca(), &[]);
    let mut held: Vec<TlsConn> = (0..4).map(|_| connect(&reg)).collect();
    for c in &mut held {
        assert_eq!(c.request("GET", "/v2/", &[], b"").unwrap().status, 200);
    }
    let refused = match TlsConn::connect(reg.addr(), config.clone()) {
        Err(_) => true,
        Ok(mut c) => c.request("GET", "/v2/", &[], b"").is_err(),
    };
    assert!(
        refused,
        "a fifth connection was served with --max-connections 4"
    );
    held.pop().unwrap().abort();
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(mut c) = TlsConn::connect(reg.addr(), config.clone())
            && c.request("GET", "/v2/", &[], b"")
                .is_ok_and(|r| r.status == 200)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let metrics_hint = reg.log();
    assert!(!metrics_hint.contains("panicked"), "{metrics_hint}");
}

/// The htpasswd file as the kubelet mounts a Secret: `htpasswd` -> `..data/htpasswd`,
/// `..data` -> a timestamped directory, swapped atomically on update.
fn write_secret_volume(dir: &Path, generation: u32, content: &str) {
    let target = format!("..{generation}");
    std::fs::create_dir_all(dir.join(&target)).unwrap();
    std::fs::write(dir.join(&target).join("htpasswd"), content).unwrap();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&target, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, dir.join("..data")).unwrap();
    if !dir.join("htpasswd").exists() {
        std::os::unix::fs::symlink("..data/htpasswd", dir.join("htpasswd")).unwrap();
    }
}

#[test]
fn removed_users_lose_access_and_guessing_is_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    let alice = bcrypt::hash("alice-pw", 6).unwrap();
    let bob = bcrypt::hash("bob-pw", 6).unwrap();
    write_secret_volume(&secret, 1, &format!("alice:{alice}\nbob:{bob}\n"));
    let htpasswd = secret.join("htpasswd").display().to_string();
    let reg = Privreg::start(
        &tmp.path().join("data"),
        &[
            "--htpasswd",
            &htpasswd,
            "--htpasswd-reload-seconds",
            "1",
            "--auth-failures-per-minute",
            "10",
        ],
    );
    let (alice_auth, bob_auth) = (basic("alice", "alice-pw"), basic("bob", "bob-pw"));
    assert_eq!(get_status(&reg, "/v2/", Some(&alice_auth)).0, 200);
    assert_eq!(get_status(&reg, "/v2/", Some(&bob_auth)).0, 200);

    // bob is removed from the Secret: his next requests are refused, without a restart.
    write_secret_volume(&secret, 2, &format!("alice:{alice}\n"));
    let deadline = Instant::now() + PATIENCE;
    while get_status(&reg, "/v2/", Some(&bob_auth)).0 != 401 {
        assert!(Instant::now() < deadline, "bob kept access after removal");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get_status(&reg, "/v2/", Some(&alice_auth)).0, 200);
    assert!(reg.log().contains("htpasswd file reloaded"));

    // 32 connections guess alice's password: after the budget, 429 with
    // Retry-After and no bcrypt; alice (logged in) and /healthz carry on.
    let reg = Arc::new(reg);
    let guessers: Vec<_> = (0..32)
        .map(|i| {
            let reg = reg.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for j in 0..5 {
                    let (status, retry) = get_status(
                        &reg,
                        "/v2/",
                        Some(&basic("alice", &format!("guess-{i}-{j}"))),
                    );
                    if status == 429 {
                        let secs: u64 = retry.expect("429 carries Retry-After").parse().unwrap();
                        assert!((1..=60).contains(&secs), "Retry-After {secs}");
                    }
                    statuses.push(status);
                }
                statuses
            })
        })
        .collect();
    for _ in 0..10 {
        assert_eq!(get_status(&reg, "/v2/", Some(&alice_auth)).0, 200);
        assert_eq!(get_status(&reg, "/healthz", None).0, 200);
    }
    let statuses: Vec<u16> = guessers
        .into_iter()
        .flat_map(|g| g.join().unwrap())
        .collect();
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    println!("160 guesses: {unauthorized} checked (401), {limited} refused unchecked (429)");
    assert_eq!(unauthorized + limited, 160, "{statuses:?}");
    assert!(
        unauthorized <= 11,
        "more guesses were checked than the budget allows: {unauthorized}"
    );
    // An unknown user is refused the same way (and costs the address its budget too).
    assert_eq!(
        get_status(&reg, "/v2/", Some(&basic("mallory", "x"))).0,
        429
    );
}
