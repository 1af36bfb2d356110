//! The `PrivateRegistry` custom resource (`privreg.dev/v1alpha1`): what a user asks
//! for in `spec`, what the operator reports in `status`. Every field carries a doc
//! comment, which becomes its description in the CRD (`kubectl explain`); patterns
//! and ranges become admission-time validation.

// Several `printcolumn(...)` entries repeat `type_ = "string"`; clippy reads the
// macro's attribute list as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

pub mod duration;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// RFC 1123 DNS name (lowercase labels of letters, digits and '-').
pub const HOSTNAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// A DNS name (optionally `*.` wildcard) or an IPv4/IPv6 address.
pub const SAN_PATTERN: &str = r"^((\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|[0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)$";
/// Go-style durations as Kubernetes users write them: `87600h`, `720h30m`, `90s`.
/// At most 7 digits a part and 16 characters in all. The CEL range rules repeat
/// this pattern as a guard, so a malformed value gets the pattern's error alone,
/// not a CEL conversion error as well.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,7}(h|m|s))+$";
pub const DURATION_MAX_LENGTH: u32 = 16;
/// Kubernetes resource quantities such as `20Gi`, `500M` (bounded digits).
pub const QUANTITY_PATTERN: &str = r"^([0-9]{1,9}(\.[0-9]{1,6})?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$";
/// A Kubernetes object name (DNS subdomain).
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Bounds of every lifetime in the spec, enforced at admission (CEL rules below)
/// and again by the operator's `validate`. Each floor keeps the operator from
/// re-issuing in a loop; each ceiling keeps date arithmetic far from overflow.
pub mod bounds {
    use std::time::Duration;
    const HOUR: u64 = 3600;
    pub const CA_VALIDITY_MIN: Duration = Duration::from_secs(24 * HOUR);
    pub const CA_VALIDITY_MAX: Duration = Duration::from_secs(876_000 * HOUR);
    pub const CERT_VALIDITY_MIN: Duration = Duration::from_secs(HOUR);
    pub const CERT_VALIDITY_MAX: Duration = Duration::from_secs(87_600 * HOUR);
    pub const RENEW_BEFORE_MIN: Duration = Duration::from_secs(10 * 60);
    pub const CA_RENEW_BEFORE_MIN: Duration = Duration::from_secs(HOUR);
    /// Storage: 1 MiB to 1 PiB.
    pub const STORAGE_MIN_BYTES: u128 = 1 << 20;
    pub const STORAGE_MAX_BYTES: u128 = 1 << 50;
    pub const MAX_EXTRA_SANS: usize = 64;
    pub const MAX_TOLERATIONS: usize = 32;
    pub const MAX_NODE_SELECTOR: usize = 32;
    pub const MAX_IMAGE_LENGTH: usize = 512;
    /// Registry pods of one PrivateRegistry (more than one needs object storage).
    pub const MAX_REPLICAS: i32 = 64;
    /// Presigned blob URLs live at most a week, as S3 allows.
    pub const MAX_S3_REDIRECT_SECONDS: i32 = 604_800;
}

/// An S3 endpoint: `https://` (or `http://`) and a DNS name or IP address, an
/// optional port, nothing else (no user, path, query or fragment).
pub const S3_ENDPOINT_PATTERN: &str = r"^https?://([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*|[0-9]{1,3}(\.[0-9]{1,3}){3}|\[[0-9a-fA-F:.]+\])(:[0-9]{1,5})?/?$";
/// An S3 bucket name as AWS allows it: 3-63 lowercase letters, digits, `.`, `-`.
pub const S3_BUCKET_PATTERN: &str = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$";
/// A key prefix: `/`-separated segments of letters, digits, `.`, `_`, `-`,
/// with no empty segment, `.` or `..` (checked again by the operator). A
/// segment starts with no dot, or with one dot and then no dot, or with two
/// dots and then anything: RE2 has no look-ahead to say "not `..`".
pub const S3_PREFIX_PATTERN: &str = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)(/([A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+))*/?$";
/// An S3 region (`us-east-1`, `eu-central-2`, `garage`).
pub const S3_REGION_PATTERN: &str = r"^[a-z0-9][a-z0-9-]{0,31}$";

/// A private, TLS-secured image registry in this namespace, trusted by every node.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[kube(
    group = "privreg.dev",
    version = "v1alpha1",
    kind = "PrivateRegistry",
    plural = "privateregistries",
    shortname = "preg",
    namespaced,
    status = "PrivateRegistryStatus",
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "host:port clients push to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(
        name = "Trusted",
        type_ = "integer",
        json_path = ".status.trustedNodes",
        description = "nodes that trust the registry CA"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "integer",
        json_path = ".status.desiredNodes",
        description = "nodes that should trust it (the trust DaemonSet's)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.replicas) || self.replicas == 1 || (has(self.storage) && has(self.storage.s3))").message("replicas above 1 need storage.s3: a volume has one writer"))]
pub struct PrivateRegistrySpec {
    /// The name clients type in image references (`<hostname>:<port>/repo:tag`).
    /// Defaults to `<name>.<namespace>.svc`. Always included in the server
    /// certificate, with the Service's in-cluster names and ClusterIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HOSTNAME_PATTERN), length(max = 253))]
    pub hostname: Option<String>,

    /// The port the registry Service listens on. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Where images are stored.
    #[serde(default)]
    pub storage: StorageSpec,

    /// Registry pods behind the Service, 1 to 64. Default 1. More than one
    /// needs `storage.s3`: a volume has one writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: Option<i32>,

    /// The registry's certificate authority and server certificate.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Who may push and pull. Without it the registry is open to every pod and node
    /// that can reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,

    /// How nodes come to trust the registry's CA.
    #[serde(default)]
    pub trust: TrustSpec,

    /// The registry's Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// How the registry server cleans up, protects its volume and bounds its
    /// clients.
    #[serde(default)]
    pub registry: RegistrySettings,

    /// The container image that runs `privreg serve`. Defaults to the operator's own
    /// image; any other must be allowed by the cluster admin (`allowedImages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// CPU and memory requests and limits of the registry container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Node labels the registry pod must match (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the registry pod tolerates (at most 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,
}

impl PrivateRegistrySpec {
    /// The tenant's Secrets this spec names (each used only with its owner's
    /// consent label): htpasswd, a brought CA, S3 credentials.
    pub fn referenced_secrets(&self) -> impl Iterator<Item = &str> {
        let htpasswd = self.auth.as_ref().map(|a| &a.htpasswd_secret_ref);
        let ca = self.tls.ca.secret_ref.as_ref();
        let s3 = self.storage.s3.as_ref().map(|s| &s.credentials_secret_ref);
        [htpasswd, ca, s3]
            .into_iter()
            .flatten()
            .map(|r| r.name.as_str())
    }
}

/// Storage of the registry: one PersistentVolumeClaim, or an S3 bucket.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.s3) || (!has(self.size) && !has(self.storageClassName))").message("size and storageClassName are for the volume; with s3 there is none"))]
pub struct StorageSpec {
    /// Requested size of the volume, as a Kubernetes quantity, 1Mi to 1Pi. Default `20Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 20))]
    #[x_kube(validation = Rule::new("!isQuantity(self) || (quantity(self).compareTo(quantity('1Mi')) >= 0 && quantity(self).compareTo(quantity('1Pi')) <= 0)").message("must be between 1Mi and 1Pi"))]
    pub size: Option<String>,

    /// StorageClass of the volume; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(max = 253))]
    pub storage_class_name: Option<String>,

    /// Keep the volume (and every image in it) when the PrivateRegistry is deleted.
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_on_delete: Option<bool>,

    /// Keep images in an S3-compatible bucket instead of a volume: no
    /// PersistentVolumeClaim, and `replicas` may be above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StorageSpec>,
}

/// An S3-compatible bucket (AWS S3, Ceph RGW, SeaweedFS, Garage, R2, MinIO),
/// in CNCF Distribution's layout under `prefix`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3StorageSpec {
    /// `https://host[:port]` of the S3 server; AWS S3 when unset. `http://` sends
    /// the requests (signed, never the secret key itself) in clear text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = S3_ENDPOINT_PATTERN), length(max = 300))]
    pub endpoint: Option<String>,

    /// The bucket. It must exist.
    #[schemars(regex(pattern = S3_BUCKET_PATTERN), length(min = 3, max = 63))]
    pub bucket: String,

    /// Key prefix of this registry in the bucket (`team-a/registry`). Several
    /// registries may share a bucket under different prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = S3_PREFIX_PATTERN), length(max = 256))]
    pub prefix: Option<String>,

    /// Region of the bucket. Default `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = S3_REGION_PATTERN), length(max = 32))]
    pub region: Option<String>,

    /// Address the bucket in the path (`https://host/bucket/key`) rather than
    /// the host name; most servers other than AWS need it. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path_style: bool,

    /// Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (the keys an ObjectBucketClaim's Secret has). It must carry the label
    /// `privreg.dev/use: s3-credentials`, its owner's consent to this use;
    /// only those two keys are mounted into the registry pods.
    pub credentials_secret_ref: SecretReference,

    /// ConfigMap in this namespace whose key `ca.crt` holds the CA of an
    /// endpoint with a private CA (public certificates only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ConfigMapReference>,

    /// Answer blob downloads with a redirect to a presigned URL valid this many
    /// seconds (1 to 604800), so clients fetch layers from the S3 server
    /// directly; they must reach and trust it. Default 0: the registry streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub redirect_seconds: Option<i32>,
}

/// A ConfigMap in the PrivateRegistry's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ConfigMapReference {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Free space to keep: a percentage (`5%`) or a byte quantity (`10Gi`).
pub const MIN_FREE_PATTERN: &str = r"^((100|[0-9]{1,2})%|[0-9]{1,15}(Ki|Mi|Gi|Ti|K|M|G|T)?)$";

/// Settings of `privreg serve` a cluster user may tune. Defaults are the
/// server's own.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySettings {
    /// Online garbage collection of blobs no manifest references.
    #[serde(default)]
    pub garbage_collection: GarbageCollectionSpec,

    /// Below this much free space on the volume, uploads are refused at once
    /// (403 DENIED, "storage is full") while pulls, deletes and garbage
    /// collection go on; the metrics `privreg_storage_free_bytes` and
    /// `privreg_uploads_refused_storage_full_total` show it. A percentage
    /// (`5%`) or bytes (`10Gi`). Default `5%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = MIN_FREE_PATTERN), length(max = 20))]
    pub min_free_space: Option<String>,

    /// Upload sessions untouched this long are deleted, `1h` to `8760h`. Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub upload_max_age: Option<String>,

    /// Requests receiving an upload body at once (1 to 10000); more get 429.
    /// Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_uploads: Option<i32>,

    /// Client connections open at once (16 to 100000). Default 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 100000))]
    pub max_connections: Option<i32>,

    /// Accept manifests and indexes naming blobs or child manifests that were
    /// never pushed (an index copied with one platform only). Default false:
    /// every tag's content is complete.
    #[serde(default)]
    pub allow_sparse_manifests: bool,
}

/// Online garbage collection.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollectionSpec {
    /// Collect while serving. Default true; without it deleted images keep
    /// their space until `privreg gc` runs offline.
    #[serde(default = "yes")]
    pub enabled: bool,

    /// Time between collections, `1h` to `8760h`. Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub interval: Option<String>,

    /// Unreferenced blobs younger than this are kept (a push uploads its blobs
    /// before its manifest), `10m` to `720h`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    pub grace_period: Option<String>,

    /// Also delete manifests no tag reaches (children of tagged indexes and
    /// referrers of kept manifests stay). Default false: images pushed by
    /// digest only are kept.
    #[serde(default)]
    pub delete_untagged: bool,
}

impl Default for GarbageCollectionSpec {
    fn default() -> Self {
        GarbageCollectionSpec {
            enabled: true,
            interval: None,
            grace_period: None,
            delete_untagged: false,
        }
    }
}

/// Certificates of the registry.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// The certificate authority that signs the server certificate and that nodes trust.
    #[serde(default)]
    pub ca: CaSpec,
    /// The server certificate.
    #[serde(default)]
    pub cert: CertSpec,
}

/// The registry's CA: generated by the operator (and rotated by it, with an
/// overlap during which nodes trust both the old and the new CA), or brought by
/// the user.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || !self.renewBefore.matches('^([0-9]{1,7}(h|m|s))+$') || (has(self.validity) && !self.validity.matches('^([0-9]{1,7}(h|m|s))+$')) || duration(self.renewBefore).getSeconds() * 3 < (has(self.validity) ? duration(self.validity).getSeconds() : 315360000) * 2").message("renewBefore must be shorter than two thirds of validity (default validity 87600h)"))]
pub struct CaSpec {
    /// Lifetime of a generated CA, `24h` to `876000h`; default `87600h` (ten years).
    /// Server certificates never outlive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,7}(h|m|s))+$') || (duration(self) >= duration('24h') && duration(self) <= duration('876000h'))").message("must be between 24h and 876000h"))]
    pub validity: Option<String>,

    /// Rotate a generated CA this long before it expires: at least `1h`, less
    /// than two thirds of the validity. Default `8760h` (a year), or a third of
    /// the validity when that is shorter. A rotation can also be asked for at
    /// any time with the annotation `privreg.dev/rotate-ca: <any new value>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,7}(h|m|s))+$') || duration(self) >= duration('1h')").message("must be at least 1h"))]
    pub renew_before: Option<String>,

    /// Key algorithm of a generated CA and of server certificates. Default ECDSA-P256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<KeyAlgorithm>,

    /// Use this Secret's `tls.crt` and `tls.key` (a CA certificate and its key) instead
    /// of generating a CA. The Secret must be in the PrivateRegistry's namespace and
    /// carry the label `privreg.dev/use: ca`, its owner's consent to this use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,

    /// Give a generated CA X.509 name constraints for exactly the names this
    /// registry's certificates carry (hostname, Service names, ClusterIP, extra
    /// SANs), so that a CA copied into a system-wide trust store cannot vouch for
    /// any other site. Fixed when the CA is made. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub name_constraints: bool,
}

/// Key algorithms for generated keys.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    #[serde(rename = "ECDSA-P256")]
    EcdsaP256,
    #[serde(rename = "ECDSA-P384")]
    EcdsaP384,
    #[serde(rename = "Ed25519")]
    Ed25519,
    #[serde(rename = "RSA-2048")]
    Rsa2048,
    #[serde(rename = "RSA-4096")]
    Rsa4096,
}

/// The server certificate, signed by the CA.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.renewBefore) || !self.renewBefore.matches('^([0-9]{1,7}(h|m|s))+$') || (has(self.validity) && !self.validity.matches('^([0-9]{1,7}(h|m|s))+$')) || duration(self.renewBefore).getSeconds() * 3 < (has(self.validity) ? duration(self.validity).getSeconds() : 7776000) * 2").message("renewBefore must be shorter than two thirds of validity (default validity 2160h)"))]
pub struct CertSpec {
    /// Lifetime of the server certificate, `1h` to `87600h`; default `2160h` (90 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,7}(h|m|s))+$') || (duration(self) >= duration('1h') && duration(self) <= duration('87600h'))").message("must be between 1h and 87600h"))]
    pub validity: Option<String>,

    /// Renew the server certificate this long before it expires: at least `10m`,
    /// less than two thirds of the validity. Default `720h`, or a third of the
    /// validity when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 16))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]{1,7}(h|m|s))+$') || duration(self) >= duration('10m')").message("must be at least 10m"))]
    pub renew_before: Option<String>,

    /// More DNS names or IP addresses for the server certificate (a NodePort's node
    /// address, an ingress name). At most 64.
    #[serde(default, rename = "extraSANs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(regex(pattern = SAN_PATTERN), length(max = 253)))]
    pub extra_sans: Vec<String>,
}

/// A Secret in the PrivateRegistry's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// HTTP Basic authentication.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret with an `htpasswd` key holding bcrypt entries (`htpasswd -B`). It must
    /// carry the label `privreg.dev/use: htpasswd`, its owner's consent to this use;
    /// only that key is mounted into the registry pod.
    pub htpasswd_secret_ref: SecretReference,
    /// Let clients pull without logging in; pushing still needs a login.
    #[serde(default)]
    pub anonymous_pull: bool,
    /// With `anonymousPull`: let clients list every repository (`/v2/_catalog`)
    /// without logging in too. Default false.
    #[serde(default)]
    pub anonymous_catalog: bool,
}

/// Trust distribution to nodes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustSpec {
    /// Install the CA on every node. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Container runtimes to configure on each node. Default all three.
    #[serde(default = "all_runtimes")]
    #[schemars(length(max = 3))]
    pub runtimes: Vec<Runtime>,
    /// Add a marked `<ClusterIP> <hostname>` line to each node's /etc/hosts, so the
    /// node can resolve the registry's hostname. Default false.
    #[serde(default)]
    pub hosts_entry: bool,
}

fn yes() -> bool {
    true
}

fn all_runtimes() -> Vec<Runtime> {
    vec![Runtime::Containerd, Runtime::Docker, Runtime::CriO]
}

impl Default for TrustSpec {
    fn default() -> Self {
        TrustSpec {
            enabled: true,
            runtimes: all_runtimes(),
            hosts_entry: false,
        }
    }
}

/// Container runtimes whose trust directories the node agent writes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Runtime {
    #[serde(rename = "containerd")]
    Containerd,
    #[serde(rename = "docker")]
    Docker,
    #[serde(rename = "cri-o")]
    CriO,
}

/// The registry's Service.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type. Default ClusterIP.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
}

/// Kubernetes Service types the registry can use.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateRegistryStatus {
    /// `Ready`, `CertificateReady`, `StorageReady`, `Available`, `TrustDistributed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // A map keyed by type, so the reconcile and the trust task each own their
    // conditions under server-side apply.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// `host:port` clients push to and pull from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The registry Service's ClusterIP (nodes dial it; it is in the certificate).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// SHA-256 fingerprint of the CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// When the current server certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_not_after: Option<String>,
    /// Nodes whose trust files match the current bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_nodes: Option<i32>,
    /// Nodes that should trust the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_nodes: Option<i32>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CustomResourceDefinitions privreg installs.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![PrivateRegistry::crd()]
}

/// The CRDs as one YAML stream, as `privreg crds` prints them and `crds/` holds them.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::from("# Generated by `privreg crds` from src/api; do not edit.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_resource_parses_with_defaults() {
        let r: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1",
            "kind": "PrivateRegistry",
            "metadata": {"name": "reg", "namespace": "tools"},
            "spec": {}
        }))
        .unwrap();
        assert!(r.spec.trust.enabled);
        assert_eq!(r.spec.trust.runtimes.len(), 3);
        assert_eq!(r.spec.port, None);
    }

    #[test]
    fn every_secret_a_spec_names_is_listed_for_the_consent_watch() {
        let r: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1",
            "kind": "PrivateRegistry",
            "metadata": {"name": "reg", "namespace": "tools"},
            "spec": {
                "auth": {"htpasswdSecretRef": {"name": "users"}},
                "tls": {"ca": {"secretRef": {"name": "my-ca"}}},
                "storage": {"s3": {"bucket": "images", "credentialsSecretRef": {"name": "keys"}}}
            }
        }))
        .unwrap();
        let names: Vec<&str> = r.spec.referenced_secrets().collect();
        assert_eq!(names, ["users", "my-ca", "keys"]);
    }

    #[test]
    fn crd_has_names_columns_status_and_validation() {
        let crd = serde_json::to_value(&crds()[0]).unwrap();
        assert_eq!(crd["metadata"]["name"], "privateregistries.privreg.dev");
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "preg");
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<_> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(columns, ["Endpoint", "Ready", "Trusted", "Nodes", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["port"]["maximum"].as_f64(), Some(65535.0));
        assert!(spec["hostname"]["pattern"].is_string());
        assert!(
            spec["tls"]["properties"]["cert"]["properties"]["renewBefore"]["pattern"].is_string()
        );
    }

    /// Every property in the schema has a description, so `kubectl explain` documents it.
    #[test]
    fn every_field_is_described() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let here = format!("{path}.{name}");
                    if prop.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    walk(&here, prop, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        let crd = serde_json::to_value(&crds()[0]).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", &root["properties"]["spec"], &mut missing);
        walk("", &root["properties"]["status"], &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }
}
