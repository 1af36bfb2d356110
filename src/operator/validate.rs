//! Validation: a `PrivateRegistry` spec becomes a `Desired` registry with every
//! default filled in, or a `SpecError` that the operator reports without touching
//! anything that runs. Pure: no client, no clock.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::ResourceExt;

use super::policy::Policy;
use crate::api::{self, PrivateRegistry, ServiceType, bounds};
use crate::certs::{self, KeyAlgorithm};

pub const DEFAULT_PORT: u16 = 5000;
/// The port `privreg serve` listens on inside the pod.
pub const CONTAINER_PORT: u16 = 5000;
pub const METRICS_PORT: u16 = 5001;
pub const DEFAULT_STORAGE: &str = "20Gi";
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(87_600 * 3600);
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(2_160 * 3600);
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(720 * 3600);
pub const DEFAULT_CA_RENEW_BEFORE: Duration = Duration::from_secs(8760 * 3600);

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
    #[error(
        "spec.tls.ca.renewBefore ({renew_before}s) must be shorter than two thirds of spec.tls.ca.validity ({validity}s)"
    )]
    CaRenewBeforeTooLong { renew_before: u64, validity: u64 },
    #[error("spec.tls.cert.extraSANs: {0:?} is neither a DNS name nor an IP address")]
    San(String),
    #[error("{field} ({value}s) must be between {min}s and {max}s")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("spec.storage.s3.{field} {value:?} {rule}")]
    S3 {
        field: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("spec.storage.{0} is for the volume; with spec.storage.s3 the registry has no volume")]
    VolumeFieldWithS3(&'static str),
    #[error("spec.replicas {0} needs spec.storage.s3: a volume has one writer")]
    ReplicasNeedBucket(i32),
    #[error("spec.storage.size {0:?} must be a quantity between 1Mi and 1Pi")]
    StorageSize(String),
    #[error("spec.registry.minFreeSpace {0:?} must be a percentage (5%) or a byte quantity (10Gi)")]
    MinFreeSpace(String),
    #[error("{field} {value} is outside {min}-{max}")]
    Count {
        field: &'static str,
        value: i32,
        min: i32,
        max: i32,
    },
    #[error("{field} has {count} entries; at most {max} are allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field} {value:?} is not a valid name")]
    Name { field: &'static str, value: String },
    #[error(
        "spec.image {0:?} is not allowed by the cluster admin (operator flag --allowed-images, Helm value allowedImages)"
    )]
    ImageNotAllowed(String),
    #[error(
        "spec.hostname {0:?} is not allowed by the cluster admin for this namespace (operator flag --allowed-hostnames, Helm value allowedHostnames); nodes trust a registry's CA for its host name, so the name must be the admin's to give"
    )]
    HostnameNotAllowed(String),
}

impl SpecError {
    /// The condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecError::ImageNotAllowed(_) => "ImageNotAllowed",
            SpecError::HostnameNotAllowed(_) => "HostnameNotAllowed",
            _ => "InvalidSpec",
        }
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
    /// Rotate a generated CA this long before its end.
    pub ca_renew_before: Duration,
    pub key_algorithm: KeyAlgorithm,
    /// Constrain a generated CA to this registry's names.
    pub ca_name_constraints: bool,
    /// A user-supplied CA Secret, instead of a generated CA.
    pub ca_secret: Option<String>,
    pub cert_validity: Duration,
    pub renew_before: Duration,
    pub extra_sans: Vec<String>,
    pub storage: Storage,
    /// Registry pods; above 1 only with a bucket.
    pub replicas: i32,
    pub htpasswd_secret: Option<String>,
    pub anonymous_pull: bool,
    pub image: String,
    pub resources: Option<ResourceRequirements>,
    pub node_selector: Option<BTreeMap<String, String>>,
    pub tolerations: Option<Vec<Toleration>>,
    pub server: ServerSettings,
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

/// Where a registry keeps its images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// One PersistentVolumeClaim, one writer.
    Volume {
        size: String,
        class: Option<String>,
        retain: bool,
    },
    /// An S3 bucket the registry's pods share.
    Bucket(Bucket),
}

/// `spec.storage.s3`, checked: every field reaches `privreg serve` as a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Empty, or `/`-separated segments (the driver keeps them whole: `a`
    /// and `ab` never share a key).
    pub prefix: String,
    pub region: String,
    pub path_style: bool,
    pub credentials_secret: String,
    pub ca_config_map: Option<String>,
    pub redirect_seconds: u32,
}

/// The Secret keys of S3 credentials (as an ObjectBucketClaim's Secret has them).
pub const S3_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const S3_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// `privreg serve` settings from `spec.registry` and `spec.auth`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// None: online collection off.
    pub gc_interval: Option<Duration>,
    pub gc_grace: Duration,
    pub gc_delete_untagged: bool,
    /// As `privreg serve --min-free-space` takes it.
    pub min_free_space: String,
    pub upload_max_age: Duration,
    pub max_concurrent_uploads: Option<u32>,
    pub max_connections: Option<u32>,
    pub allow_sparse_manifests: bool,
    pub anonymous_catalog: bool,
}

fn count(
    field: &'static str,
    value: Option<i32>,
    (min, max): (i32, i32),
) -> Result<Option<u32>, SpecError> {
    match value {
        None => Ok(None),
        Some(v) if (min..=max).contains(&v) => Ok(u32::try_from(v).ok()),
        Some(v) => Err(SpecError::Count {
            field,
            value: v,
            min,
            max,
        }),
    }
}

fn server_settings(spec: &api::PrivateRegistrySpec) -> Result<ServerSettings, SpecError> {
    const HOUR: Duration = Duration::from_secs(3600);
    let r = &spec.registry;
    let gc = &r.garbage_collection;
    let gc_interval = duration(
        "spec.registry.garbageCollection.interval",
        &gc.interval,
        24 * HOUR,
        (HOUR, 8760 * HOUR),
    )?;
    let gc_grace = duration(
        "spec.registry.garbageCollection.gracePeriod",
        &gc.grace_period,
        HOUR,
        (Duration::from_secs(600), 720 * HOUR),
    )?;
    let min_free_space = match &r.min_free_space {
        None => "5%".to_owned(),
        Some(v) => {
            v.parse::<crate::registry::storage::space::MinFree>()
                .map_err(|_| SpecError::MinFreeSpace(v.clone()))?;
            v.clone()
        }
    };
    Ok(ServerSettings {
        gc_interval: gc.enabled.then_some(gc_interval),
        gc_grace,
        gc_delete_untagged: gc.delete_untagged,
        min_free_space,
        upload_max_age: duration(
            "spec.registry.uploadMaxAge",
            &r.upload_max_age,
            24 * HOUR,
            (HOUR, 8760 * HOUR),
        )?,
        max_concurrent_uploads: count(
            "spec.registry.maxConcurrentUploads",
            r.max_concurrent_uploads,
            (1, 10_000),
        )?,
        max_connections: count(
            "spec.registry.maxConnections",
            r.max_connections,
            (16, 100_000),
        )?,
        allow_sparse_manifests: r.allow_sparse_manifests,
        anonymous_catalog: spec
            .auth
            .as_ref()
            .is_some_and(|a| a.anonymous_pull && a.anonymous_catalog),
    })
}

/// A duration field, defaulted, then held to its bounds.
fn duration(
    field: &'static str,
    value: &Option<String>,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Result<Duration, SpecError> {
    let d = match value {
        None => default,
        Some(v) => {
            api::duration::parse(v).map_err(|source| SpecError::Duration { field, source })?
        }
    };
    if d < min || d > max {
        return Err(SpecError::OutOfRange {
            field,
            value: d.as_secs(),
            min: min.as_secs(),
            max: max.as_secs(),
        });
    }
    Ok(d)
}

/// Bytes of a Kubernetes quantity as the CRD pattern admits it (`20Gi`, `1.5T`,
/// `500M`); `None` for anything else or on overflow.
pub fn quantity_bytes(q: &str) -> Option<u128> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty()
        || whole.len() > 18
        || fraction.len() > 9
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = 10u128.pow(u32::try_from(fraction.len()).ok()?);
    let digits: u128 = format!("{whole}{fraction}").parse().ok()?;
    digits.checked_mul(multiplier).map(|v| v / scale)
}

fn at_most(field: &'static str, count: usize, max: usize) -> Result<(), SpecError> {
    if count > max {
        return Err(SpecError::TooMany { field, count, max });
    }
    Ok(())
}

fn storage(spec: &api::StorageSpec) -> Result<Storage, SpecError> {
    let Some(s3) = &spec.s3 else {
        let size = spec
            .size
            .clone()
            .unwrap_or_else(|| DEFAULT_STORAGE.to_owned());
        if !quantity_bytes(&size)
            .is_some_and(|b| (bounds::STORAGE_MIN_BYTES..=bounds::STORAGE_MAX_BYTES).contains(&b))
        {
            return Err(SpecError::StorageSize(size));
        }
        let class = spec
            .storage_class_name
            .as_deref()
            .map(|c| object_name("spec.storage.storageClassName", c))
            .transpose()?;
        return Ok(Storage::Volume {
            size,
            class,
            retain: spec.retain_on_delete.unwrap_or(true),
        });
    };
    if spec.size.is_some() {
        return Err(SpecError::VolumeFieldWithS3("size"));
    }
    if spec.storage_class_name.is_some() {
        return Err(SpecError::VolumeFieldWithS3("storageClassName"));
    }
    bucket(s3).map(Storage::Bucket)
}

fn s3_error(field: &'static str, value: &str, rule: &'static str) -> SpecError {
    SpecError::S3 {
        field,
        value: value.to_owned(),
        rule,
    }
}

/// Every field of `spec.storage.s3` becomes an argument of `privreg serve` in
/// the tenant's pods: each is held to a shape that cannot carry anything else
/// (another flag, a path outside the prefix, a user or query in the URL).
fn bucket(s3: &api::S3StorageSpec) -> Result<Bucket, SpecError> {
    let endpoint = s3.endpoint.as_deref().map(s3_endpoint).transpose()?;
    let name = &s3.bucket;
    let bucket_ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..");
    if !bucket_ok {
        return Err(s3_error(
            "bucket",
            name,
            "is not a bucket name (3-63 lowercase letters, digits, '.', '-')",
        ));
    }
    let prefix = s3.prefix.as_deref().map(s3_prefix).transpose()?;
    let region = s3
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_S3_REGION.to_owned());
    let region_ok = (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-');
    if !region_ok {
        return Err(s3_error(
            "region",
            &region,
            "is not a region (lowercase letters, digits, '-')",
        ));
    }
    let redirect_seconds = count(
        "spec.storage.s3.redirectSeconds",
        s3.redirect_seconds,
        (0, bounds::MAX_S3_REDIRECT_SECONDS),
    )?
    .unwrap_or(0);
    Ok(Bucket {
        endpoint,
        bucket: name.clone(),
        prefix: prefix.unwrap_or_default(),
        region,
        path_style: s3.path_style,
        credentials_secret: object_name(
            "spec.storage.s3.credentialsSecretRef.name",
            &s3.credentials_secret_ref.name,
        )?,
        ca_config_map: s3
            .ca_config_map_ref
            .as_ref()
            .map(|r| object_name("spec.storage.s3.caConfigMapRef.name", &r.name))
            .transpose()?,
        redirect_seconds,
    })
}

/// `scheme://host[:port]`, normalised without a trailing `/`: a DNS name or an
/// IP address, no user, path, query or fragment.
fn s3_endpoint(value: &str) -> Result<String, SpecError> {
    let bad = || {
        s3_error(
            "endpoint",
            value,
            "must be https:// (or http://) and a host name or IP address, with an optional port and nothing else",
        )
    };
    if value.len() > 300 {
        return Err(bad());
    }
    let trimmed = value.strip_suffix('/').unwrap_or(value);
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`, and has colons inside.
        Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
        _ => (rest, None),
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(bad());
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            host.parse::<std::net::Ipv4Addr>().is_ok()
                || (certs::is_dns_name(host) && !host.starts_with("*."))
        }
    };
    if !host_ok {
        return Err(bad());
    }
    Ok(trimmed.to_owned())
}

/// Segments of letters, digits, `.`, `_`, `-` (none empty, `.` or `..`),
/// returned without a trailing `/`.
fn s3_prefix(value: &str) -> Result<String, SpecError> {
    let body = value.strip_suffix('/').unwrap_or(value);
    let ok = value.len() <= 256
        && !body.is_empty()
        && body.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if !ok {
        return Err(s3_error(
            "prefix",
            value,
            "must be '/'-separated segments of letters, digits, '.', '_', '-' (no empty, '.' or '..' segment)",
        ));
    }
    Ok(body.to_owned())
}

/// A Kubernetes object name (DNS subdomain), as a referenced Secret must have.
fn object_name(field: &'static str, value: &str) -> Result<String, SpecError> {
    if !certs::is_dns_name(value) || value.starts_with("*.") || value.len() > 253 {
        return Err(SpecError::Name {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value.to_owned())
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

/// Checks a spec against its bounds and the admin's policy. Admission enforces the
/// same bounds; they are checked again here because the operator must not trust
/// that the CRD it finds carries them (an older CRD, a direct etcd write).
pub fn validate(pr: &PrivateRegistry, policy: &Policy) -> Result<Desired, SpecError> {
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
    if !policy.hostname_allowed(&hostname, &namespace) {
        return Err(SpecError::HostnameNotAllowed(hostname));
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
        (bounds::CA_VALIDITY_MIN, bounds::CA_VALIDITY_MAX),
    )?;
    let ca_renew_before = duration(
        "spec.tls.ca.renewBefore",
        &spec.tls.ca.renew_before,
        DEFAULT_CA_RENEW_BEFORE.min(ca_validity / 3),
        (bounds::CA_RENEW_BEFORE_MIN, bounds::CA_VALIDITY_MAX),
    )?;
    if ca_renew_before.as_secs().saturating_mul(3) >= ca_validity.as_secs().saturating_mul(2) {
        return Err(SpecError::CaRenewBeforeTooLong {
            renew_before: ca_renew_before.as_secs(),
            validity: ca_validity.as_secs(),
        });
    }
    let cert_validity = duration(
        "spec.tls.cert.validity",
        &spec.tls.cert.validity,
        DEFAULT_CERT_VALIDITY,
        (bounds::CERT_VALIDITY_MIN, bounds::CERT_VALIDITY_MAX),
    )?;
    let renew_before = duration(
        "spec.tls.cert.renewBefore",
        &spec.tls.cert.renew_before,
        DEFAULT_RENEW_BEFORE.min(cert_validity / 3),
        (bounds::RENEW_BEFORE_MIN, bounds::CERT_VALIDITY_MAX),
    )?;
    // Below two thirds, so a certificate serves at least a third of its life
    // between renewals: never a re-issue loop.
    if renew_before.as_secs().saturating_mul(3) >= cert_validity.as_secs().saturating_mul(2) {
        return Err(SpecError::RenewBeforeTooLong {
            renew_before: renew_before.as_secs(),
            validity: cert_validity.as_secs(),
        });
    }
    at_most(
        "spec.tls.cert.extraSANs",
        spec.tls.cert.extra_sans.len(),
        bounds::MAX_EXTRA_SANS,
    )?;
    for san in &spec.tls.cert.extra_sans {
        if san.parse::<std::net::IpAddr>().is_err() && !certs::is_dns_name(san) {
            return Err(SpecError::San(san.clone()));
        }
    }
    let storage = storage(&spec.storage)?;
    let replicas = spec.replicas.unwrap_or(1);
    count("spec.replicas", Some(replicas), (1, bounds::MAX_REPLICAS))?;
    if replicas > 1 && matches!(storage, Storage::Volume { .. }) {
        return Err(SpecError::ReplicasNeedBucket(replicas));
    }
    let ca_secret = spec
        .tls
        .ca
        .secret_ref
        .as_ref()
        .map(|r| object_name("spec.tls.ca.secretRef.name", &r.name))
        .transpose()?;
    let htpasswd_secret = spec
        .auth
        .as_ref()
        .map(|a| {
            object_name(
                "spec.auth.htpasswdSecretRef.name",
                &a.htpasswd_secret_ref.name,
            )
        })
        .transpose()?;
    at_most(
        "spec.tolerations",
        spec.tolerations.as_ref().map_or(0, Vec::len),
        bounds::MAX_TOLERATIONS,
    )?;
    at_most(
        "spec.nodeSelector",
        spec.node_selector.as_ref().map_or(0, BTreeMap::len),
        bounds::MAX_NODE_SELECTOR,
    )?;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| policy.default_image().to_owned());
    if image.len() > bounds::MAX_IMAGE_LENGTH || !policy.image_allowed(&image) {
        return Err(SpecError::ImageNotAllowed(image));
    }
    Ok(Desired {
        name,
        namespace,
        hostname,
        port,
        service_type: spec.service.type_.unwrap_or(ServiceType::ClusterIP),
        ca_validity,
        ca_renew_before,
        key_algorithm: key_algorithm(spec.tls.ca.key_algorithm),
        ca_name_constraints: spec.tls.ca.name_constraints,
        ca_secret,
        cert_validity,
        renew_before,
        extra_sans: spec.tls.cert.extra_sans.clone(),
        storage,
        replicas,
        htpasswd_secret,
        anonymous_pull: spec.auth.as_ref().is_some_and(|a| a.anonymous_pull),
        server: server_settings(spec)?,
        image,
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

    /// The default policy (only the operator's own image, names of the own
    /// namespace), plus `*.internal` for tests that name a registry so.
    pub(crate) fn own_image(image: &str) -> Policy {
        let mut hostnames: Vec<String> = crate::operator::policy::DEFAULT_ALLOWED_HOSTNAMES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        hostnames.push("*.internal".to_owned());
        Policy::with_hostnames(image, &[], &hostnames, "cluster.local").unwrap()
    }

    const MINIMAL: &str = "
apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {name: reg, namespace: tools, uid: u-1, generation: 1}
spec: {}
";

    #[test]
    fn defaults() {
        let d = validate(&registry(MINIMAL), &own_image("img:1")).unwrap();
        assert_eq!(d.hostname, "reg.tools.svc");
        assert_eq!(d.endpoint(), "reg.tools.svc:5000");
        assert_eq!(
            d.storage,
            Storage::Volume {
                size: "20Gi".into(),
                class: None,
                retain: true
            }
        );
        assert_eq!(d.replicas, 1);
        assert_eq!(d.image, "img:1");
        assert_eq!(d.cert_validity, DEFAULT_CERT_VALIDITY);
        assert_eq!(d.ca_secret_name(), "reg-ca");
    }

    #[test]
    fn registry_settings_are_bounded_and_reach_serve() {
        let d = validate(&registry(MINIMAL), &own_image("img:1")).unwrap();
        assert_eq!(d.server.gc_interval, Some(Duration::from_secs(86_400)));
        assert_eq!(d.server.gc_grace, Duration::from_secs(3600));
        assert_eq!(d.server.min_free_space, "5%");
        let with = |settings: &str| {
            let r = registry(&format!(
                "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: reg, namespace: tools}}\nspec:\n  registry: {settings}\n"
            ));
            validate(&r, &own_image("img"))
        };
        let d = with(
            "{garbageCollection: {enabled: false}, minFreeSpace: 10Gi, maxConnections: 64, allowSparseManifests: true}",
        )
        .unwrap();
        assert_eq!(d.server.gc_interval, None);
        let args = crate::operator::objects::serve_args(&d);
        for want in [
            "--gc-interval-seconds=0",
            "--min-free-space=10Gi",
            "--max-connections=64",
            "--allow-sparse-manifests",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        for bad in [
            "{minFreeSpace: 101%}",
            "{minFreeSpace: lots}",
            "{maxConnections: 1}",
            "{maxConcurrentUploads: 0}",
            "{uploadMaxAge: 1m}",
            "{garbageCollection: {interval: 1m}}",
            "{garbageCollection: {gracePeriod: 1s}}",
        ] {
            assert!(with(bad).is_err(), "{bad} accepted");
        }
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
        let d = validate(&r, &own_image("img")).unwrap();
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
            validate(&registry(&yaml), &own_image("img")).unwrap_err()
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

    #[test]
    fn every_lifetime_and_size_is_bounded() {
        let bad = |spec: &str| {
            let yaml = format!("{}spec: {spec}\n", MINIMAL.replace("spec: {}\n", ""));
            validate(&registry(&yaml), &own_image("img")).unwrap_err()
        };
        // The overflow that once panicked the operator: parsed, then refused.
        assert!(matches!(
            bad("{tls: {ca: {validity: 5000000000000h}}}"),
            SpecError::OutOfRange { .. }
        ));
        assert!(matches!(
            bad("{tls: {ca: {validity: 1h}}}"),
            SpecError::OutOfRange { .. }
        ));
        assert!(matches!(
            bad("{tls: {cert: {validity: 2s, renewBefore: 1s}}}"),
            SpecError::OutOfRange { .. }
        ));
        // 2/3 of the validity is the most renewBefore may be.
        assert!(matches!(
            bad("{tls: {cert: {validity: 3h, renewBefore: 2h}}}"),
            SpecError::RenewBeforeTooLong { .. }
        ));
        assert!(matches!(
            bad("{tls: {ca: {validity: 24h, renewBefore: 20h}}}"),
            SpecError::CaRenewBeforeTooLong { .. }
        ));
        assert!(matches!(
            bad("{tls: {ca: {renewBefore: 30m}}}"),
            SpecError::OutOfRange { .. }
        ));
        assert!(matches!(
            bad("{storage: {size: 2Pi}}"),
            SpecError::StorageSize(_)
        ));
        assert!(matches!(
            bad("{storage: {size: 1k}}"),
            SpecError::StorageSize(_)
        ));
        assert!(matches!(
            bad("{storage: {storageClassName: '../x'}}"),
            SpecError::Name { .. }
        ));
        assert!(matches!(
            bad("{auth: {htpasswdSecretRef: {name: 'a/b'}}}"),
            SpecError::Name { .. }
        ));
        let many: Vec<String> = (0..65).map(|i| format!("h{i}.example")).collect();
        assert!(matches!(
            bad(&format!("{{tls: {{cert: {{extraSANs: {many:?}}}}}}}")),
            SpecError::TooMany { .. }
        ));
        // A short validity gets a renewBefore of a third of it by default.
        let yaml = format!(
            "{}spec: {{tls: {{cert: {{validity: 3h}}}}}}\n",
            MINIMAL.replace("spec: {}\n", "")
        );
        let d = validate(&registry(&yaml), &own_image("img")).unwrap();
        assert_eq!(d.renew_before, Duration::from_secs(3600));
    }

    #[test]
    fn only_allowed_hostnames_are_claimed() {
        let yaml = |host: &str| {
            format!(
                "{}spec: {{hostname: {host}}}\n",
                MINIMAL.replace("spec: {}\n", "")
            )
        };
        let strict = Policy::new("img", &[]).unwrap();
        let e = validate(&registry(&yaml("registry.k8s.io")), &strict).unwrap_err();
        assert_eq!(e.reason(), "HostnameNotAllowed");
        // Another namespace's name is not this one's to claim.
        let e = validate(&registry(&yaml("reg.team-a.svc")), &strict).unwrap_err();
        assert_eq!(e.reason(), "HostnameNotAllowed");
        assert!(validate(&registry(&yaml("mirror.tools.svc")), &strict).is_ok());
    }

    #[test]
    fn only_allowed_images_run() {
        let yaml = format!(
            "{}spec: {{image: 'evil.example/reader:1'}}\n",
            MINIMAL.replace("spec: {}\n", "")
        );
        let e = validate(&registry(&yaml), &own_image("img")).unwrap_err();
        assert_eq!(e.reason(), "ImageNotAllowed");
        let admin = Policy::new("img", &["evil.example/*".into()]).unwrap();
        assert_eq!(
            validate(&registry(&yaml), &admin).unwrap().image,
            "evil.example/reader:1"
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("7"), Some(7));
        for bad in [
            "",
            "Gi",
            "1.2.3Gi",
            "1Ei",
            "-1Gi",
            "1 Gi",
            "99999999999999999999999Pi",
        ] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    fn with_spec(spec: &str) -> Result<Desired, SpecError> {
        let yaml = format!("{}spec: {spec}\n", MINIMAL.replace("spec: {}\n", ""));
        validate(&registry(&yaml), &own_image("img"))
    }

    fn with_s3(fields: &str) -> Result<Desired, SpecError> {
        let credentials = if fields.contains("credentialsSecretRef") {
            ""
        } else {
            "credentialsSecretRef: {name: s3}, "
        };
        with_spec(&format!(
            "{{replicas: 2, storage: {{s3: {{bucket: images, {credentials}{fields}}}}}}}"
        ))
    }

    #[test]
    fn a_bucket_is_checked_and_defaulted() {
        let d = with_s3("endpoint: 'https://s3.internal:8333/', prefix: team-a/reg/").unwrap();
        assert_eq!(d.replicas, 2);
        let Storage::Bucket(b) = d.storage else {
            panic!("a bucket")
        };
        assert_eq!(b.endpoint.as_deref(), Some("https://s3.internal:8333"));
        assert_eq!(b.prefix, "team-a/reg");
        assert_eq!(b.region, "us-east-1");
        assert_eq!(b.credentials_secret, "s3");
        assert_eq!(b.redirect_seconds, 0);
        for endpoint in [
            "http://10.0.0.7:9000",
            "https://[fd00::7]:443",
            "https://[::1]",
        ] {
            assert!(
                with_s3(&format!("endpoint: '{endpoint}'")).is_ok(),
                "{endpoint}"
            );
        }
    }

    /// Every S3 field reaches `privreg serve` as a flag in the tenant's pod:
    /// each must keep its shape, whatever the admission schema let through.
    #[test]
    fn hostile_bucket_fields_are_refused() {
        for fields in [
            "endpoint: 'https://user:pw@s3.internal'",
            "endpoint: 'https://s3.internal/other-bucket'",
            "endpoint: 'https://s3.internal?x=1'",
            "endpoint: 'https://s3.internal#x'",
            "endpoint: 'file:///etc/passwd'",
            "endpoint: 's3.internal'",
            "endpoint: 'https://s3.internal:0'",
            "endpoint: 'https://s3.internal:70000'",
            "endpoint: 'https://*.internal'",
            "endpoint: 'https:// --s3-bucket=x'",
            "endpoint: 'https://[not:an:ip'",
            "prefix: '../team-b'",
            "prefix: 'team-a/../../team-b'",
            "prefix: '/abs'",
            "prefix: 'a//b'",
            "prefix: '.'",
            "prefix: 'a b'",
            "prefix: '--s3-bucket=x'",
            "region: 'us east'",
            "region: '-x'",
            "region: 'US-EAST-1'",
            "redirectSeconds: -1",
            "redirectSeconds: 604801",
            "credentialsSecretRef: {name: 'Bad_Name'}",
            "caConfigMapRef: {name: '../x'}",
        ] {
            let e = with_s3(fields).expect_err(fields);
            assert_eq!(e.reason(), "InvalidSpec", "{fields}: {e}");
        }
        for bucket in [
            "ab",
            "Images",
            "-images",
            "images-",
            "a..b",
            "im_ages",
            &"a".repeat(64),
        ] {
            let spec = format!(
                "{{storage: {{s3: {{bucket: '{bucket}', credentialsSecretRef: {{name: s3}}}}}}}}"
            );
            assert!(with_spec(&spec).is_err(), "{bucket}");
        }
    }

    #[test]
    fn replicas_need_a_bucket_and_volume_fields_need_a_volume() {
        assert_eq!(
            with_spec("{replicas: 2}").unwrap_err(),
            SpecError::ReplicasNeedBucket(2)
        );
        assert!(with_spec("{replicas: 0}").is_err());
        assert!(with_s3("").is_ok());
        assert!(
            with_spec(
                "{replicas: 65, storage: {s3: {bucket: images, credentialsSecretRef: {name: s3}}}}"
            )
            .is_err()
        );
        assert_eq!(
            with_spec(
                "{storage: {size: 1Gi, s3: {bucket: images, credentialsSecretRef: {name: s3}}}}"
            )
            .unwrap_err(),
            SpecError::VolumeFieldWithS3("size")
        );
    }
}
