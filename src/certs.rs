//! CA and server certificates (rcgen). One module for every role that mints or
//! checks certificates: `serve`'s local CA today, the operator's CA per registry next.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, SanType, SerialNumber,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a key pair failed")]
    GenerateKey(#[source] rcgen::Error),
    #[error("building the certificate failed")]
    Sign(#[source] rcgen::Error),
    #[error("subject alternative name {0:?} is neither a DNS name nor an IP address")]
    InvalidSan(String),
    #[error("the CA certificate or key could not be read")]
    LoadCa(#[source] rcgen::Error),
    #[error("the PEM data holds no certificate")]
    NoCertificate,
    #[error("the certificate could not be parsed")]
    Parse,
    #[error("generating an RSA key failed: {0}")]
    GenerateRsa(String),
    #[error("a validity of {0:?} is out of range")]
    Validity(Duration),
    #[error("the CA expires at {0}; it cannot sign a certificate that would outlive it")]
    CaExpiring(OffsetDateTime),
}

/// Key algorithms for generated keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa4096,
}

impl KeyAlgorithm {
    fn generate(self) -> Result<KeyPair, CertError> {
        let alg = match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
            KeyAlgorithm::Rsa2048 => return rsa_key(2048),
            KeyAlgorithm::Rsa4096 => return rsa_key(4096),
        };
        KeyPair::generate_for(alg).map_err(CertError::GenerateKey)
    }
}

/// ring signs with RSA keys but cannot make them; the RustCrypto `rsa` crate
/// generates the key, ring (through rcgen) signs with it.
fn rsa_key(bits: usize) -> Result<KeyPair, CertError> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
        .map_err(|e| CertError::GenerateRsa(e.to_string()))?;
    let pem = key
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| CertError::GenerateRsa(e.to_string()))?;
    KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
        .map_err(CertError::GenerateKey)
}

/// A certificate and its private key, both PEM. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Starts a little before now, so a clock a few minutes behind still accepts it.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// The shortest life a server certificate is issued with when the CA's end caps it:
/// anything shorter would be renewed again at once.
pub const MIN_CAPPED_LIFETIME: Duration = Duration::from_secs(3600);

/// `now + valid_for`, or an error where that is not a date (never a panic: the
/// duration comes from a user's spec).
pub fn expiry(now: OffsetDateTime, valid_for: Duration) -> Result<OffsetDateTime, CertError> {
    time::Duration::try_from(valid_for)
        .ok()
        .and_then(|d| now.checked_add(d))
        // X.509 GeneralizedTime ends at year 9999.
        .filter(|t| t.year() <= 9999)
        .ok_or(CertError::Validity(valid_for))
}

/// Sets the validity window `[now - 5 min, not_after]` and a random serial.
fn validity(params: &mut CertificateParams, now: OffsetDateTime, not_after: OffsetDateTime) {
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
}

/// A self-signed CA that may sign server certificates (and no further CAs).
pub fn generate_ca(
    common_name: &str,
    valid_for: Duration,
    algorithm: KeyAlgorithm,
) -> Result<CertAndKey, CertError> {
    generate_constrained_ca(common_name, valid_for, algorithm, None)
}

/// A CA as [`generate_ca`]; with `permitted` names (DNS names and IP addresses) it
/// carries X.509 name constraints and can vouch for nothing else: a DNS name
/// permits itself and its subdomains, an IP address only itself.
pub fn generate_constrained_ca(
    common_name: &str,
    valid_for: Duration,
    algorithm: KeyAlgorithm,
    permitted: Option<&[String]>,
) -> Result<CertAndKey, CertError> {
    let now = OffsetDateTime::now_utc();
    let not_after = expiry(now, valid_for)?;
    let key = algorithm.generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "privreg");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(names) = permitted {
        let permitted_subtrees = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    let bits = if ip.is_ipv4() { 32 } else { 128 };
                    Ok(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
                        ip, bits,
                    )))
                }
                Err(_) if is_dns_name(n) && !n.starts_with("*.") => {
                    Ok(GeneralSubtree::DnsName(n.clone()))
                }
                Err(_) => Err(CertError::InvalidSan(n.clone())),
            })
            .collect::<Result<_, _>>()?;
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees,
            excluded_subtrees: Vec::new(),
        });
    }
    validity(&mut params, now, not_after);
    let cert = params.self_signed(&key).map_err(CertError::Sign)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A TLS server certificate for `sans` (DNS names and IP addresses), signed by `ca`.
/// It never outlives the CA: its end is capped at the CA's notAfter, and a CA with
/// less than [`MIN_CAPPED_LIFETIME`] left signs nothing.
pub fn issue_server_cert(
    ca: &CertAndKey,
    sans: &[String],
    valid_for: Duration,
    algorithm: KeyAlgorithm,
) -> Result<CertAndKey, CertError> {
    let now = OffsetDateTime::now_utc();
    let ca_end = inspect(&ca.cert_pem)?.not_after;
    let not_after = expiry(now, valid_for)?.min(ca_end);
    if not_after - now < MIN_CAPPED_LIFETIME {
        return Err(CertError::CaExpiring(ca_end));
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(CertError::LoadCa)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(CertError::LoadCa)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans.iter().map(|s| san_of(s)).collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first().map(String::as_str).unwrap_or("privreg"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, not_after);
    let key = algorithm.generate()?;
    let cert = params.signed_by(&key, &issuer).map_err(CertError::Sign)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san_of(s: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = s.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_dns_name(s) {
        return Err(CertError::InvalidSan(s.to_owned()));
    }
    s.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| CertError::InvalidSan(s.to_owned()))
}

/// The name-constraint subtree that covers a SAN: a wildcard `*.a.b` needs `a.b`.
pub fn constraint_for(san: &str) -> String {
    san.strip_prefix("*.").unwrap_or(san).to_owned()
}

/// Whether name constraints permitting `permitted` (as [`generate_constrained_ca`]
/// writes them) allow a certificate for `san`.
pub fn permits(permitted: &[String], san: &str) -> bool {
    if let Ok(ip) = san.parse::<std::net::IpAddr>() {
        return permitted
            .iter()
            .any(|p| p.parse::<std::net::IpAddr>() == Ok(ip));
    }
    let name = constraint_for(san);
    permitted.iter().any(|p| {
        p.parse::<std::net::IpAddr>().is_err() && (name == *p || name.ends_with(&format!(".{p}")))
    })
}

/// RFC 1123 host names, optionally with a leading `*.` wildcard label.
pub fn is_dns_name(s: &str) -> bool {
    let name = s.strip_prefix("*.").unwrap_or(s);
    !name.is_empty()
        && s.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// What privreg needs to know about an existing certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_after: OffsetDateTime,
    /// When it was issued (privreg backdates notBefore by a few minutes for
    /// clock skew; this is notBefore plus that).
    pub issued_at: OffsetDateTime,
    /// DNS names as written, IP addresses in their canonical text form.
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate, lowercase hex with colons.
    pub sha256_fingerprint: String,
}

/// A DER certificate as PEM: one `CERTIFICATE` block, base64 in lines of 64.
pub fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Reads the first certificate of a PEM bundle.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, CertError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest as _;
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .ok_or(CertError::NoCertificate)?
        .map_err(|_| CertError::Parse)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| CertError::Parse)?;
    let not_after = cert.validity().not_after.to_datetime();
    let issued_at = cert.validity().not_before.to_datetime() + BACKDATE;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .map(std::net::IpAddr::from)
                            .ok(),
                        _ => None,
                    };
                    sans.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    let fingerprint = sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok(CertInfo {
        not_after,
        issued_at,
        sans,
        sha256_fingerprint: fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn server_cert_carries_every_san_and_chains_to_the_ca() {
        let ca = generate_ca("test CA", 365 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
        let sans = vec![
            "registry.internal".to_owned(),
            "10.0.0.7".to_owned(),
            "::1".to_owned(),
        ];
        let leaf = issue_server_cert(&ca, &sans, 30 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
        let info = inspect(&leaf.cert_pem).unwrap();
        assert_eq!(info.sans, sans);
        let left = info.not_after - OffsetDateTime::now_utc();
        assert!(left > time::Duration::days(29) && left <= time::Duration::days(30));

        // Verify the chain with rustls' own verifier, as a client would.
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            provider,
        )
        .build()
        .unwrap();
        let end = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        for name in ["registry.internal", "10.0.0.7", "::1"] {
            verifier
                .verify_server_cert(
                    &end,
                    &[],
                    &ServerName::try_from(name).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(
            verifier
                .verify_server_cert(
                    &end,
                    &[],
                    &ServerName::try_from("other.example").unwrap(),
                    &[],
                    UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn rsa_keys_sign_certificates() {
        let ca = generate_ca("rsa ca", DAY, KeyAlgorithm::Rsa2048).unwrap();
        let leaf =
            issue_server_cert(&ca, &["reg.test".to_owned()], DAY, KeyAlgorithm::Rsa2048).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().sans, ["reg.test"]);
        assert!(leaf.key_pem.contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn bad_sans_are_refused() {
        let ca = generate_ca("ca", DAY, KeyAlgorithm::Ed25519).unwrap();
        let r = issue_server_cert(&ca, &["bad name!".to_owned()], DAY, KeyAlgorithm::Ed25519);
        assert!(matches!(r, Err(CertError::InvalidSan(_))));
    }

    #[test]
    fn a_leaf_never_outlives_its_ca() {
        let ca = generate_ca("short ca", 2 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
        let ca_end = inspect(&ca.cert_pem).unwrap().not_after;
        let leaf =
            issue_server_cert(&ca, &["r.test".into()], 90 * DAY, KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(inspect(&leaf.cert_pem).unwrap().not_after, ca_end);
        // Absurd lifetimes are errors, not panics.
        assert!(matches!(
            generate_ca("ca", Duration::from_secs(u64::MAX), KeyAlgorithm::EcdsaP256),
            Err(CertError::Validity(_))
        ));
        assert!(matches!(
            generate_ca(
                "ca",
                Duration::from_secs(5_000_000_000_000 * 3600),
                KeyAlgorithm::EcdsaP256
            ),
            Err(CertError::Validity(_))
        ));
    }

    #[test]
    fn name_constraints_limit_what_the_ca_vouches_for() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
        let permitted = vec!["reg.tools.svc".to_owned(), "10.96.0.7".to_owned()];
        let ca =
            generate_constrained_ca("ca", DAY, KeyAlgorithm::EcdsaP256, Some(&permitted)).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let verify = |sans: &[&str], name: &str| {
            let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
            let leaf = issue_server_cert(&ca, &sans, DAY / 2, KeyAlgorithm::EcdsaP256).unwrap();
            let end = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
            verifier
                .verify_server_cert(
                    &end,
                    &[],
                    &ServerName::try_from(name).unwrap().to_owned(),
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        };
        assert!(verify(&["reg.tools.svc", "10.96.0.7"], "reg.tools.svc"));
        assert!(verify(&["reg.tools.svc", "10.96.0.7"], "10.96.0.7"));
        // A leaf the key could still sign for another site is refused by clients.
        assert!(!verify(&["registry.k8s.io"], "registry.k8s.io"));
        assert!(!verify(&["10.96.0.8"], "10.96.0.8"));
        // The operator's own check agrees with the verifier.
        assert!(permits(&permitted, "reg.tools.svc"));
        assert!(permits(&permitted, "a.reg.tools.svc"));
        assert!(permits(&permitted, "*.reg.tools.svc"));
        assert!(permits(&permitted, "10.96.0.7"));
        assert!(!permits(&permitted, "xreg.tools.svc"));
        assert!(!permits(&permitted, "10.96.0.8"));
        assert!(!permits(&permitted, "registry.k8s.io"));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let ca = generate_ca("ca", DAY, KeyAlgorithm::EcdsaP256).unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));
    }
}
