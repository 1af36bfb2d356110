//! Helpers the benchmarks share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use privreg::certs::{KeyAlgorithm, generate_ca, issue_server_cert};

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something listens on `port`.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

/// A CA and a server certificate for 127.0.0.1 and localhost (ECDSA P-256,
/// a day) written into `root`: (CA, certificate chain, key) paths.
pub fn write_pki(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let day = Duration::from_secs(86_400);
    let ca = generate_ca("bench CA", day, KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = issue_server_cert(
        &ca,
        &["127.0.0.1".into(), "localhost".into()],
        day,
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let (ca_path, cert, key) = (
        root.join("ca.crt"),
        root.join("server.crt"),
        root.join("server.key"),
    );
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (ca_path, cert, key)
}
