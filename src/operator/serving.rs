//! What the registry's Service actually serves. `Ready` means clients can use
//! the registry at every endpoint in the status, and that is only true once the
//! server presents the current certificate through the Service: a pod can be
//! available while kube-proxy does not route to it yet, and after the
//! certificate changed (new ClusterIP, renewal) the kubelet takes up to a
//! minute to refresh the mounted Secret. The operator asks the Service itself:
//! a TLS handshake with the ClusterIP and the registry's host name, and the
//! certificate presented compared byte for byte with the one in the TLS Secret
//! (which covers every endpoint by construction).
//!
//! The probe reads a certificate and closes the connection: no request is
//! sent, so no credentials are needed and nothing is logged as an access.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;

/// How long one probe may take (connect and handshake).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// The Service presents the current server certificate.
    Current,
    /// It presents another certificate (an older one, until the pod sees the
    /// refreshed Secret).
    Stale,
    /// No TLS server answered through the Service (the reason, for the status).
    Unreachable(String),
}

/// Connects to `ip:port`, offers `server_name` (SNI, when it is a DNS name),
/// and compares the certificate presented with `expected_leaf_pem`.
pub async fn probe(ip: IpAddr, port: u16, server_name: &str, expected_leaf_pem: &str) -> Serving {
    let Ok(expected) = CertificateDer::from_pem_slice(expected_leaf_pem.as_bytes()) else {
        return Serving::Unreachable("the TLS Secret holds no certificate".to_owned());
    };
    match tokio::time::timeout(PROBE_TIMEOUT, presented(ip, port, server_name)).await {
        Err(_) => Serving::Unreachable(format!(
            "no TLS handshake with {} within {PROBE_TIMEOUT:?}",
            SocketAddr::new(ip, port)
        )),
        Ok(Err(e)) => Serving::Unreachable(format!("{}: {e}", SocketAddr::new(ip, port))),
        Ok(Ok(cert)) if cert == expected.as_ref() => Serving::Current,
        Ok(Ok(_)) => Serving::Stale,
    }
}

/// The end-entity certificate the server at `ip:port` presents.
async fn presented(ip: IpAddr, port: u16, server_name: &str) -> std::io::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(RecordingVerifier {
        presented: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned())
        .unwrap_or_else(|_| ServerName::IpAddress(ip.into()));
    let tcp = tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let cert = recorder
        .presented
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?
        .take();
    cert.ok_or_else(|| std::io::Error::other("the server presented no certificate"))
}

/// Records the certificate presented and accepts it: the caller compares it
/// with the expected one exactly, which is stricter than any chain check.
/// Handshake signatures are still verified, so the server holds its key.
#[derive(Debug)]
struct RecordingVerifier {
    presented: Mutex<Option<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.presented.lock() {
            *slot = Some(end_entity.as_ref().to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real TLS server on loopback presenting `leaf`.
    async fn serve(leaf: &crate::certs::CertAndKey) -> SocketAddr {
        let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn tells_the_current_certificate_from_another_and_from_nothing() {
        use crate::certs::{KeyAlgorithm, generate_ca, issue_server_cert};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let hour = std::time::Duration::from_secs(3600);
        let ca = generate_ca("ca", 100 * hour, KeyAlgorithm::EcdsaP256).unwrap();
        let sans = vec!["registry.internal".to_owned(), "127.0.0.1".to_owned()];
        let served = issue_server_cert(&ca, &sans, 10 * hour, KeyAlgorithm::EcdsaP256).unwrap();
        let other = issue_server_cert(&ca, &sans, 10 * hour, KeyAlgorithm::EcdsaP256).unwrap();
        let addr = serve(&served).await;
        let ip = addr.ip();
        assert_eq!(
            probe(ip, addr.port(), "registry.internal", &served.cert_pem).await,
            Serving::Current
        );
        assert_eq!(
            probe(ip, addr.port(), "registry.internal", &other.cert_pem).await,
            Serving::Stale
        );
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        assert!(matches!(
            probe(ip, port, "registry.internal", &served.cert_pem).await,
            Serving::Unreachable(_)
        ));
    }
}
