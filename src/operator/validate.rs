//! Validation: a `PrivateRegistry` spec becomes a `Desired` registry with every
//! default filled in, or a `SpecError` that the operator reports without touching
//! anything that runs. Pure: no client, no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::ResourceExt;

use crate::api::{self, PrivateRegistry, ServiceType};
use crate::certs::{self, KeyAlgorithm};

pub const DEFAULT_PORT: u16 = 5000;
/// The port `privreg serve` listens on inside the pod.
pub const CONTAINER_PORT: u16 = 5000;
pub const METRICS_PORT: u16 = 5001;
pub const DEFAULT_STORAGE: &str = "20Gi";
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(2_160 * 3600);
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(720 * 3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the resource has no namespace")]
    NoNamespace,
    #[error("spec.hostname {0:?} is not a DNS name")]
    Hostname(String),
    #[error("spec.port {0} is outside 1-65535")]
    Port(i32),
    #[error("{field}: {source}")]
    Duration {
        field: &'static str,
        source: api::duration::DurationError,
    },
    #[error(
        "spec.tls.cert.renewBefore ({renew_before}s) must be shorter than spec.tls.cert.validity ({validity}s)"
    )]
    RenewBeforeTooLong { renew_before: u64, validity: u64 },
    #[error("spec.tls.cert.extraSANs: {0:?} is neither a DNS name nor an IP address")]
    San(String),
}

impl SpecError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        "InvalidSpec"
    }
}

/// A registry as it should be, defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub port: u16,
    pub service_type: ServiceType,
    pub ca_validity: Duration,
    pub key_algorithm: KeyAlgorithm,
    /// A user-supplied CA Secret, instead of a generated CA.
    pub ca_secret: Option<String>,
    pub cert_validity: Duration,
    pub renew_before: Duration,
    pub extra_sans: Vec<String>,
    pub storage_size: String,
    pub storage_class: Option<String>,
    pub retain_storage: bool,
    pub htpasswd_secret: Option<String>,
    pub anonymous_pull: bool,
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<Toleration>>,
    pub trust_enabled: bool,
    pub trust_runtimes: Vec<api::Runtime>,
    pub hosts_entry: bool,
}

impl Desired {
    /// Names of the objects this registry owns.
    pub fn ca_secret_name(&self) -> String {
        self.ca_secret
            .clone()
            .unwrap_or_else(|| format!("{}-ca", self.name))
    }
    pub fn tls_secret_name(&self) -> String {
        format!("{}-tls", self.name)
    }
    pub fn ca_configmap_name(&self) -> String {
        format!("{}-ca", self.name)
    }
    pub fn pvc_name(&self) -> String {
        format!("{}-data", self.name)
    }
    /// The Deployment and the Service carry the registry's own name.
    pub fn workload_name(&self) -> String {
        self.name.clone()
    }
    /// What clients type: `<hostname>:<port>`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.hostname, self.port)
    }

    /// Every name and address the server certificate must carry: the hostname,
    /// the Service's in-cluster names, its ClusterIP (nodes dial the IP through
    /// hosts.toml, and TLS then verifies the IP), and the user's extras.
    pub fn sans(&self, cluster_ip: Option<&str>) -> Vec<String> {
        let svc = self.workload_name();
        let ns = &self.namespace;
        let mut sans = vec![
            self.hostname.clone(),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
        ];
        sans.extend(
            cluster_ip
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
                .map(str::to_owned),
        );
        sans.extend(self.extra_sans.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        sans.retain(|s| seen.insert(s.clone()));
        sans
    }
}

fn duration(
    field: &'static str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, SpecError> {
    match value {
        None => Ok(default),
        Some(v) => api::duration::parse(v).map_err(|source| SpecError::Duration { field, source }),
    }
}

fn key_algorithm(a: Option<api::KeyAlgorithm>) -> KeyAlgorithm {
    match a {
        None | Some(api::KeyAlgorithm::EcdsaP256) => KeyAlgorithm::EcdsaP256,
        Some(api::KeyAlgorithm::EcdsaP384) => KeyAlgorithm::EcdsaP384,
        Some(api::KeyAlgorithm::Ed25519) => KeyAlgorithm::Ed25519,
        Some(api::KeyAlgorithm::Rsa2048) => KeyAlgorithm::Rsa2048,
        Some(api::KeyAlgorithm::Rsa4096) => KeyAlgorithm::Rsa4096,
    }
}

/// Checks a spec (admission validated most of it; this catches what a schema
/// cannot, and anything applied before the CRD carried validation).
pub fn validate(pr: &PrivateRegistry, default_image: &str) -> Result<Desired, SpecError> {
    let spec = &pr.spec;
    let name = pr.name_any();
    let namespace = pr.namespace().ok_or(SpecError::NoNamespace)?;
    let hostname = spec
        .hostname
        .clone()
        .unwrap_or_else(|| format!("{name}.{namespace}.svc"));
    if !certs::is_dns_name(&hostname) || hostname.starts_with("*.") {
        return Err(SpecError::Hostname(hostname));
    }
    let port = match spec.port {
        None => DEFAULT_PORT,
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(SpecError::Port(p))?,
    };
    let ca_validity = duration(
        "spec.tls.ca.validity",
        &spec.tls.ca.validity,
        DEFAULT_CA_VALIDITY,
    )?;
    let cert_validity = duration(
        "spec.tls.cert.validity",
        &spec.tls.cert.validity,
        DEFAULT_CERT_VALIDITY,
    )?;
    let renew_before = duration(
        "spec.tls.cert.renewBefore",
        &spec.tls.cert.renew_before,
        DEFAULT_RENEW_BEFORE,
    )?;
    if renew_before >= cert_validity {
        return Err(SpecError::RenewBeforeTooLong {
            renew_before: renew_before.as_secs(),
            validity: cert_validity.as_secs(),
        });
    }
    for san in &spec.tls.cert.extra_sans {
        if san.parse::<std::net::IpAddr>().is_err() && !certs::is_dns_name(san) {
            return Err(SpecError::San(san.clone()));
        }
    }
    Ok(Desired {
        name,
        namespace,
        hostname,
        port,
        service_type: spec.service.type_.unwrap_or(ServiceType::ClusterIP),
        ca_validity,
        key_algorithm: key_algorithm(spec.tls.ca.key_algorithm),
        ca_secret: spec.tls.ca.secret_ref.as_ref().map(|r| r.name.clone()),
        cert_validity,
        renew_before,
        extra_sans: spec.tls.cert.extra_sans.clone(),
        storage_size: spec
            .storage
            .size
            .clone()
            .unwrap_or_else(|| DEFAULT_STORAGE.to_owned()),
        storage_class: spec.storage.storage_class_name.clone(),
        retain_storage: spec.storage.retain_on_delete.unwrap_or(true),
        htpasswd_secret: spec
            .auth
            .as_ref()
            .map(|a| a.htpasswd_secret_ref.name.clone()),
        anonymous_pull: spec.auth.as_ref().is_some_and(|a| a.anonymous_pull),
        image: spec
            .image
            .clone()
            .unwrap_or_else(|| default_image.to_owned()),
        resources: spec.resources.clone(),
        node_selector: spec.node_selector.clone(),
        tolerations: spec.tolerations.clone(),
        trust_enabled: spec.trust.enabled,
        trust_runtimes: spec.trust.runtimes.clone(),
        hosts_entry: spec.trust.hosts_entry,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn registry(yaml: &str) -> PrivateRegistry {
        serde_norway::from_str(yaml).unwrap()
    }

    const MINIMAL: &str = "
apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {name: reg, namespace: tools, uid: u-1, generation: 1}
spec: {}
";

    #[test]
    fn defaults() {
        let d = validate(&registry(MINIMAL), "img:1").unwrap();
        assert_eq!(d.hostname, "reg.tools.svc");
        assert_eq!(d.endpoint(), "reg.tools.svc:5000");
        assert_eq!(d.storage_size, "20Gi");
        assert!(d.retain_storage);
        assert_eq!(d.image, "img:1");
        assert_eq!(d.cert_validity, DEFAULT_CERT_VALIDITY);
        assert_eq!(d.ca_secret_name(), "reg-ca");
    }

    #[test]
    fn sans_cover_names_ip_and_extras_once() {
        let r = registry(
            "
apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {name: reg, namespace: tools}
spec:
  hostname: registry.internal
  tls: {cert: {extraSANs: [registry.internal, 192.168.1.10]}}
",
        );
        let d = validate(&r, "img").unwrap();
        assert_eq!(
            d.sans(Some("10.96.0.15")),
            [
                "registry.internal",
                "reg.tools.svc",
                "reg.tools.svc.cluster.local",
                "reg.tools",
                "10.96.0.15",
                "192.168.1.10"
            ]
        );
        assert!(!d.sans(Some("None")).contains(&"None".to_owned()));
    }

    #[test]
    fn invalid_specs_are_explained() {
        let bad = |spec: &str| {
            let yaml = format!("{}spec: {spec}\n", MINIMAL.replace("spec: {}\n", ""));
            validate(&registry(&yaml), "img").unwrap_err()
        };
        assert!(matches!(
            bad("{hostname: Not_A_Host}"),
            SpecError::Hostname(_)
        ));
        assert_eq!(bad("{port: 70000}"), SpecError::Port(70000));
        assert!(matches!(
            bad("{tls: {cert: {validity: 10d}}}"),
            SpecError::Duration { .. }
        ));
        assert!(matches!(
            bad("{tls: {cert: {validity: 24h, renewBefore: 48h}}}"),
            SpecError::RenewBeforeTooLong { .. }
        ));
        assert!(matches!(
            bad("{tls: {cert: {extraSANs: ['bad name']}}}"),
            SpecError::San(_)
        ));
    }
}
