//! A test CA and a server certificate for 127.0.0.1 / localhost / ::1, minted with
//! privreg's own `certs` module, for servers that both privreg and other
//! registries (docker-registry) serve with the same trust.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use privreg::certs::{self, KeyAlgorithm};

pub struct TestPki {
    /// `ca.crt` of the CA.
    pub ca: PathBuf,
    /// A directory holding only `ca.crt` (for `--cert-dir` style flags).
    pub cert_dir: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestPki {
    /// Writes `dir/ca.crt`, `dir/server.crt`, `dir/server.key`, `dir/certs/ca.crt`.
    pub fn create(dir: &Path, sans: &[&str]) -> TestPki {
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let day = Duration::from_secs(86_400);
        let ca = certs::generate_ca("privreg test CA", day, KeyAlgorithm::EcdsaP256).unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let leaf = certs::issue_server_cert(&ca, &sans, day, KeyAlgorithm::EcdsaP256).unwrap();
        let pki = TestPki {
            ca: dir.join("ca.crt"),
            cert_dir: dir.join("certs"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&pki.ca, &ca.cert_pem).unwrap();
        std::fs::write(pki.cert_dir.join("ca.crt"), &ca.cert_pem).unwrap();
        std::fs::write(&pki.server_cert, &leaf.cert_pem).unwrap();
        std::fs::write(&pki.server_key, &leaf.key_pem).unwrap();
        pki
    }

    /// The loopback names every local server is reached by.
    pub fn loopback(dir: &Path) -> TestPki {
        Self::create(dir, &["127.0.0.1", "localhost", "::1"])
    }

    /// `privreg serve` arguments that use this certificate.
    pub fn privreg_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.server_cert.display().to_string(),
            "--tls-key".into(),
            self.server_key.display().to_string(),
        ]
    }
}
