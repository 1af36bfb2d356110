//! TLS of `privreg serve`: the generated local CA, its reuse, certificate rotation
//! without a restart, and plain HTTP only on request.

mod common;

use common::{Privreg, https_client};

#[tokio::test]
async fn local_ca_is_made_once_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut reg = Privreg::start(&data, &[]);
    let client = https_client(&reg.ca());
    let r = client
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    // The log tells the user where the CA is and how to trust it.
    assert!(reg.log().contains("ca.crt"), "{}", reg.log());

    let ca_before = std::fs::read(reg.ca()).unwrap();
    reg.restart();
    assert_eq!(
        std::fs::read(reg.ca()).unwrap(),
        ca_before,
        "CA reused across restarts"
    );
    let r = client
        .get(format!("{}/v2/", reg.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A client that does not trust the CA is refused at the handshake.
    let stranger = reqwest::Client::builder().build().unwrap();
    assert!(
        stranger
            .get(format!("{}/v2/", reg.url()))
            .send()
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// Certificate rotation without a restart, and the protocol versions.
// ---------------------------------------------------------------------------

use std::path::Path;
use std::time::{Duration, Instant};

use common::rawtls::{TlsConn, client_config};
use privreg::certs::{self, CertAndKey, KeyAlgorithm};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const DAY: Duration = Duration::from_secs(86_400);

fn der_of(cert_pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn leaf(ca: &CertAndKey, days: u32) -> CertAndKey {
    let sans = ["127.0.0.1".to_owned(), "localhost".to_owned()];
    certs::issue_server_cert(ca, &sans, days * DAY, KeyAlgorithm::EcdsaP256).unwrap()
}

/// Replaces a file the way a careful writer does: temp file, then rename.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The certificate a fresh connection is served.
fn served(reg: &Privreg, ca: &Path) -> Vec<u8> {
    TlsConn::connect(reg.addr(), client_config(ca, &[]))
        .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()))
        .peer_leaf()
}

/// Polls (bounded) until fresh connections are served `want`.
fn wait_until_served(reg: &Privreg, ca: &Path, want: &[u8], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while served(reg, ca) != want {
        assert!(
            Instant::now() < deadline,
            "{what}: never served\n{}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls (bounded) until the server has logged `n` refused reloads.
fn wait_for_refused_reloads(reg: &Privreg, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reg.log().matches("TLS certificate not reloaded").count() < n {
        assert!(
            Instant::now() < deadline,
            "no refused reload logged\n{}",
            reg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn certificate_rotates_without_restart_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::generate_ca("rotation test CA", 30 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let ca_path = dir.path().join("ca.crt");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let first = leaf(&ca, 10);
    std::fs::write(&cert_path, &first.cert_pem).unwrap();
    std::fs::write(&key_path, &first.key_pem).unwrap();

    let data = dir.path().join("data");
    let (cert_arg, key_arg) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    let mut reg = Privreg::start(
        &data,
        &[
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &key_arg,
            "--tls-reload-seconds",
            "1",
        ],
    );
    assert!(
        !data.join("tls").exists(),
        "no local CA when a certificate is given"
    );

    // A keep-alive connection made before the rotation.
    let mut old = TlsConn::connect(reg.addr(), client_config(&ca_path, &[])).unwrap();
    assert_eq!(old.peer_leaf(), der_of(&first.cert_pem));
    let r = old.request("GET", "/v2/", &[], b"").unwrap();
    assert_eq!(r.status, 200);

    // The Secret rotates: a new leaf with another serial and notAfter.
    let second = leaf(&ca, 20);
    let (a, b) = (
        certs::inspect(&first.cert_pem).unwrap(),
        certs::inspect(&second.cert_pem).unwrap(),
    );
    assert_ne!(a.not_after, b.not_after);
    assert_ne!(a.sha256_fingerprint, b.sha256_fingerprint);
    let serial = |pem: &str| {
        let der = der_of(pem);
        x509_parser::parse_x509_certificate(&der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&first.cert_pem), serial(&second.cert_pem));
    replace(&key_path, &second.key_pem);
    replace(&cert_path, &second.cert_pem);
    wait_until_served(
        &reg,
        &ca_path,
        &der_of(&second.cert_pem),
        "the rotated certificate",
    );
    assert!(
        reg.log().contains("TLS certificate reloaded"),
        "{}",
        reg.log()
    );
    assert!(
        reg.log().contains(&b.sha256_fingerprint),
        "the log names the new fingerprint"
    );

    // The connection from before the rotation still works, on its old certificate.
    for _ in 0..3 {
        let r = old.request("GET", "/v2/", &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
    assert_eq!(old.peer_leaf(), der_of(&first.cert_pem));

    // A broken rotation (certificate without its key) keeps the current one serving.
    let refused = reg.log().matches("TLS certificate not reloaded").count();
    let third = leaf(&ca, 30);
    replace(&cert_path, &third.cert_pem);
    wait_for_refused_reloads(&reg, refused + 1);
    assert_eq!(served(&reg, &ca_path), der_of(&second.cert_pem));
    // So does a file that is no certificate at all.
    replace(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let refused = reg.log().matches("TLS certificate not reloaded").count();
    wait_for_refused_reloads(&reg, refused + 1);
    assert_eq!(served(&reg, &ca_path), der_of(&second.cert_pem));
    let r = old.request("GET", "/v2/", &[], b"").unwrap();
    assert_eq!(
        r.status, 200,
        "the old connection survived the broken rotations too"
    );

    // Completing the rotation takes effect.
    replace(&cert_path, &third.cert_pem);
    replace(&key_path, &third.key_pem);
    wait_until_served(
        &reg,
        &ca_path,
        &der_of(&third.cert_pem),
        "the repaired rotation",
    );
    reg.stop();
}

#[test]
fn tls_1_2_and_1_3_are_both_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Privreg::start(&dir.path().join("data"), &[]);
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut conn = TlsConn::connect(reg.addr(), client_config(&reg.ca(), &[version])).unwrap();
        assert_eq!(conn.protocol_version(), Some(want));
        let r = conn.request("GET", "/v2/", &[], b"").unwrap();
        assert_eq!(r.status, 200);
    }
    reg.stop();
}
