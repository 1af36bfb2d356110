//! TLS for the registry: a certificate resolver that swaps in a rotated certificate
//! without a restart (new handshakes get the new one; open connections keep theirs),
//! and the local CA that `privreg serve` makes when it is given no certificate.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{self, CertAndKey, KeyAlgorithm};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {} failed", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {} failed", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no usable PEM private key", .0.display())]
    NoKey(PathBuf),
    #[error("the private key does not fit the certificate or is of an unsupported kind")]
    KeyMismatch(#[source] rustls::Error),
    #[error("making the local CA or server certificate failed")]
    Generate(#[source] certs::CertError),
}

/// Builds the rustls key from PEM bytes, checking that key and certificate match.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificate(cert_path.to_owned()))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey(key_path.to_owned()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::KeyMismatch)
}

/// Serves the current certificate; `reload_if_changed` swaps in a new one.
#[derive(Debug)]
pub struct ReloadingResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The PEM bytes behind `current`, to notice a change.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingResolver {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let (cert, key) = read_pair(cert_path, key_path)?;
        let ck = certified_key(&cert, &key, cert_path, key_path)?;
        Ok(ReloadingResolver {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(ck),
            loaded: std::sync::Mutex::new((cert, key)),
        })
    }

    /// Re-reads the files; swaps in the new pair if it changed and is valid. A broken
    /// pair (a Secret caught mid-update) keeps the old certificate serving.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let (cert, key) = read_pair(&self.cert_path, &self.key_path)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let ck = certified_key(&cert, &key, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(ck));
        *loaded = (cert, key);
        Ok(true)
    }

    /// Polls the files every `every` until the process ends.
    pub fn watch(self: Arc<Self>, every: Duration) {
        super::periodic::blocking_every(every, false, "TLS reload", move || {
            match self.reload_if_changed() {
                Ok(true) => {
                    let info = std::fs::read_to_string(&self.cert_path)
                        .ok()
                        .and_then(|pem| certs::inspect(&pem).ok());
                    tracing::info!(
                        cert = %self.cert_path.display(),
                        not_after = ?info.as_ref().map(|i| i.not_after),
                        sha256 = ?info.map(|i| i.sha256_fingerprint),
                        "TLS certificate reloaded"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    error = %e, source = ?std::error::Error::source(&e),
                    "TLS certificate not reloaded; the previous one stays in use"
                ),
            }
        });
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

/// A rustls server config (TLS 1.2 and 1.3, h2 and http/1.1) over the resolver.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .expect("ring supports TLS 1.2 and 1.3")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Where the generated local PKI lives, under `<data>/tls`.
#[derive(Debug, Clone)]
pub struct LocalPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

const LOCAL_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const LOCAL_SERVER_VALIDITY: Duration = Duration::from_secs(397 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

impl LocalPki {
    pub fn in_dir(dir: &Path) -> LocalPki {
        LocalPki {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }

    /// Makes the CA once, and a server certificate for `sans` whenever the present
    /// one is missing, lacks a wanted name, or nears its end. Returns whether the CA
    /// was created now.
    pub fn ensure(&self, sans: &[String]) -> Result<bool, TlsError> {
        let dir = self.ca_cert.parent().expect("files live in a directory");
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let existing_ca = match (read_text(&self.ca_cert), read_text(&self.ca_key)) {
            (Some(cert_pem), Some(key_pem)) => Some(CertAndKey { cert_pem, key_pem }),
            _ => None,
        };
        let created = existing_ca.is_none();
        let ca = match existing_ca {
            Some(ca) => ca,
            None => {
                let ca = certs::generate_ca(
                    "privreg local CA",
                    LOCAL_CA_VALIDITY,
                    KeyAlgorithm::EcdsaP256,
                )
                .map_err(TlsError::Generate)?;
                write_private(&self.ca_key, ca.key_pem.as_bytes())?;
                write_public(&self.ca_cert, ca.cert_pem.as_bytes())?;
                ca
            }
        };
        let current = read_text(&self.server_cert).and_then(|pem| certs::inspect(&pem).ok());
        let fresh = current.is_some_and(|info| {
            let renew_at = info.not_after - RENEW_BEFORE;
            !created
                && read_text(&self.server_key).is_some()
                && time::OffsetDateTime::now_utc() < renew_at
                && sans.iter().all(|s| info.sans.contains(s))
        });
        if !fresh {
            let leaf =
                certs::issue_server_cert(&ca, sans, LOCAL_SERVER_VALIDITY, KeyAlgorithm::EcdsaP256)
                    .map_err(TlsError::Generate)?;
            write_private(&self.server_key, leaf.key_pem.as_bytes())?;
            write_public(&self.server_cert, leaf.cert_pem.as_bytes())?;
        }
        Ok(created)
    }
}

/// The names a locally generated certificate covers: loopback, this host, extras.
pub fn local_sans(extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = gethostname::gethostname().into_string()
        && certs::is_dns_name(&host)
    {
        sans.push(host);
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

fn read_text(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn write_with_mode(path: &Path, content: &[u8], mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content)
        .and_then(|_| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Private keys: owner read/write only.
fn write_private(path: &Path, content: &[u8]) -> Result<(), TlsError> {
    write_with_mode(path, content, 0o600)
}

fn write_public(path: &Path, content: &[u8]) -> Result<(), TlsError> {
    write_with_mode(path, content, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn install_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn local_pki_is_made_once_and_keys_are_private() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = LocalPki::in_dir(&dir.path().join("tls"));
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        assert!(pki.ensure(&sans).unwrap());
        let ca_before = std::fs::read(&pki.ca_cert).unwrap();
        let leaf_before = std::fs::read(&pki.server_cert).unwrap();
        for key in [&pki.ca_key, &pki.server_key] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        // Same names: nothing changes.
        assert!(!pki.ensure(&sans).unwrap());
        assert_eq!(std::fs::read(&pki.server_cert).unwrap(), leaf_before);
        // A new name: same CA, new leaf that carries it.
        let more = vec!["localhost".to_owned(), "registry.test".to_owned()];
        assert!(!pki.ensure(&more).unwrap());
        assert_eq!(std::fs::read(&pki.ca_cert).unwrap(), ca_before);
        let info = certs::inspect(&std::fs::read_to_string(&pki.server_cert).unwrap()).unwrap();
        assert!(info.sans.contains(&"registry.test".to_owned()));
    }

    #[test]
    fn resolver_swaps_only_valid_pairs() {
        install_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = LocalPki::in_dir(dir.path());
        pki.ensure(&["localhost".to_owned()]).unwrap();
        let resolver = ReloadingResolver::load(&pki.server_cert, &pki.server_key).unwrap();
        assert!(!resolver.reload_if_changed().unwrap());
        let first = resolver.current.load_full();

        // A half-written rotation (new cert, old key) is refused; the old pair serves on.
        let ca = CertAndKey {
            cert_pem: std::fs::read_to_string(&pki.ca_cert).unwrap(),
            key_pem: std::fs::read_to_string(&pki.ca_key).unwrap(),
        };
        let next = certs::issue_server_cert(
            &ca,
            &["localhost".to_owned()],
            LOCAL_SERVER_VALIDITY,
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        std::fs::write(&pki.server_cert, &next.cert_pem).unwrap();
        assert!(matches!(
            resolver.reload_if_changed(),
            Err(TlsError::KeyMismatch(_))
        ));
        assert!(Arc::ptr_eq(&first, &resolver.current.load_full()));

        std::fs::write(&pki.server_key, &next.key_pem).unwrap();
        assert!(resolver.reload_if_changed().unwrap());
        assert!(!Arc::ptr_eq(&first, &resolver.current.load_full()));
    }
}
