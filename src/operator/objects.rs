//! Pure builders of every object a PrivateRegistry owns. Each returns the full
//! desired object for server-side apply (or create, for the CA Secret).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar,
    HTTPGetAction, KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::rotation::{self, CaState};
use super::validate::{
    Bucket, CONTAINER_PORT, Desired, METRICS_PORT, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, Storage,
};
use crate::api::ServiceType;
use crate::certs::CertAndKey;
use crate::labels;

pub const TLS_MOUNT: &str = "/etc/privreg/tls";
pub const AUTH_MOUNT: &str = "/etc/privreg/auth";
/// The key of the htpasswd Secret that is mounted (and the only one).
pub const HTPASSWD_KEY: &str = "htpasswd";
pub const DATA_MOUNT: &str = "/var/lib/privreg";
pub const S3_CREDENTIALS_MOUNT: &str = "/etc/privreg/s3";
/// The files the two credential keys become (only these are mounted).
pub const S3_ACCESS_KEY_FILE: &str = "access-key-id";
pub const S3_SECRET_KEY_FILE: &str = "secret-access-key";
pub const S3_CA_MOUNT: &str = "/etc/privreg/s3-ca";
/// The key of the S3 CA ConfigMap that is mounted (and the only one).
pub const S3_CA_KEY: &str = "ca.crt";
/// The unprivileged user the registry runs as (distroless "nonroot").
pub const RUN_AS: i64 = 65532;

/// The registry pods' label selector, as a query string.
/// Every registry pod of every PrivateRegistry (the operator's pod watch and
/// storage check), by the labels all of them carry.
pub fn all_registry_pods_selector() -> String {
    format!("{}=privreg,{}=registry", labels::NAME, labels::COMPONENT)
}

pub fn selector(d: &Desired) -> String {
    labels::selector(&selector_labels(d))
}

fn selector_labels(d: &Desired) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "privreg".to_owned()),
        (labels::INSTANCE.to_owned(), d.name.clone()),
        (labels::COMPONENT.to_owned(), "registry".to_owned()),
    ])
}

fn all_labels(d: &Desired) -> BTreeMap<String, String> {
    let mut l = selector_labels(d);
    l.insert(
        labels::MANAGED_BY.to_owned(),
        crate::FIELD_MANAGER.to_owned(),
    );
    l.insert(labels::PART_OF.to_owned(), "privreg".to_owned());
    l
}

fn meta(d: &Desired, name: String, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(d.namespace.clone()),
        labels: Some(all_labels(d)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

fn pem_data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Records on a generated CA's Secret the names its X.509 name constraints permit.
pub const NAME_CONSTRAINTS_ANNOTATION: &str = "privreg.dev/name-constraints";
/// The label by which a Secret's owner consents to its use by a PrivateRegistry:
/// `htpasswd` or `ca`.
pub const SECRET_USE_LABEL: &str = "privreg.dev/use";

/// The generated CA's Secret: the signing CA, and during a rotation the next
/// or the previous one (see `rotation`).
pub fn ca_secret(d: &Desired, state: &CaState, owner: &OwnerReference) -> Secret {
    let mut metadata = meta(d, d.ca_secret_name(), Some(owner));
    let mut annotations = BTreeMap::new();
    if let Some(names) = &state.constraints {
        annotations.insert(NAME_CONSTRAINTS_ANNOTATION.to_owned(), names.join(","));
    }
    if let Some(handled) = &state.handled {
        annotations.insert(rotation::HANDLED_ANNOTATION.to_owned(), handled.clone());
    }
    if let Some(until) = state.previous_until.filter(|_| state.previous.is_some()) {
        annotations.insert(
            rotation::PREVIOUS_UNTIL_ANNOTATION.to_owned(),
            super::status::rfc3339(until),
        );
    }
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let mut pairs = vec![
        ("tls.crt", state.current.cert_pem.as_str()),
        ("tls.key", state.current.key_pem.as_str()),
        ("ca.crt", state.current.cert_pem.as_str()),
    ];
    if let Some(next) = &state.next {
        pairs.push(("next.crt", &next.cert_pem));
        pairs.push(("next.key", &next.key_pem));
    }
    if let Some(previous) = &state.previous {
        pairs.push(("previous.crt", previous));
    }
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(pem_data(&pairs)),
        ..Default::default()
    }
}

/// Records on the TLS Secret the policy its certificate was issued under.
pub const POLICY_ANNOTATION: &str = "privreg.dev/issuance-policy";

/// The server certificate with its key, and the CA that signed it.
pub fn tls_secret(
    d: &Desired,
    leaf: &CertAndKey,
    ca_pem: &str,
    policy: &str,
    owner: &OwnerReference,
) -> Secret {
    let mut metadata = meta(d, d.tls_secret_name(), Some(owner));
    metadata.annotations = Some(BTreeMap::from([(
        POLICY_ANNOTATION.to_owned(),
        policy.to_owned(),
    )]));
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(pem_data(&[
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
            ("ca.crt", ca_pem),
        ])),
        ..Default::default()
    }
}

/// The CA certificate alone (public), for users and pods that must trust it.
pub fn ca_configmap(d: &Desired, ca_pem: &str, owner: &OwnerReference) -> ConfigMap {
    ConfigMap {
        metadata: meta(d, d.ca_configmap_name(), Some(owner)),
        data: Some(BTreeMap::from([("ca.crt".to_owned(), ca_pem.to_owned())])),
        ..Default::default()
    }
}

/// The registry's volume, if it has one. Owned (so deleted with the registry)
/// only when the user chose `retainOnDelete: false`.
pub fn pvc(d: &Desired, owner: &OwnerReference) -> Option<PersistentVolumeClaim> {
    let Storage::Volume {
        size,
        class,
        retain,
    } = &d.storage
    else {
        return None;
    };
    let owner = (!retain).then_some(owner);
    let mut metadata = meta(d, d.pvc_name(), owner);
    if *retain {
        // An empty list, so an apply after `retainOnDelete: false -> true` drops the owner.
        metadata.owner_references = Some(Vec::new());
    }
    Some(PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// With several registry pods, a node drain evicts one at a time: the others
/// keep serving. `maxUnavailable: 1` stays right whatever the replica count
/// becomes, so the budget is never in the way of a later scale-down.
pub fn pod_disruption_budget(d: &Desired, owner: &OwnerReference) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(d, d.workload_name(), Some(owner)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(d)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(d: &Desired, owner: &OwnerReference) -> Service {
    let type_ = match d.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    Service {
        metadata: meta(d, d.workload_name(), Some(owner)),
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector_labels(d)),
            ports: Some(vec![ServicePort {
                name: Some("registry".to_owned()),
                port: i32::from(d.port),
                target_port: Some(IntOrString::String("registry".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The arguments of `privreg serve` in the registry container. A test parses them
/// with the real CLI.
pub fn serve_args(d: &Desired) -> Vec<String> {
    let mut args = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{CONTAINER_PORT}"),
    ];
    match &d.storage {
        Storage::Volume { .. } => args.extend(["--data".to_owned(), DATA_MOUNT.to_owned()]),
        Storage::Bucket(b) => args.extend(bucket_args(b)),
    }
    args.extend([
        "--tls-cert".to_owned(),
        format!("{TLS_MOUNT}/tls.crt"),
        "--tls-key".to_owned(),
        format!("{TLS_MOUNT}/tls.key"),
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ]);
    if d.htpasswd_secret.is_some() {
        args.extend([
            "--htpasswd".to_owned(),
            format!("{AUTH_MOUNT}/{HTPASSWD_KEY}"),
        ]);
        if d.anonymous_pull {
            args.push("--anonymous-pull".to_owned());
        }
        if d.server.anonymous_catalog {
            args.push("--anonymous-catalog".to_owned());
        }
    }
    let s = &d.server;
    let gc_interval = s.gc_interval.map(|i| i.as_secs()).unwrap_or(0);
    args.extend([
        format!("--gc-interval-seconds={gc_interval}"),
        format!("--gc-grace-seconds={}", s.gc_grace.as_secs()),
        format!("--min-free-space={}", s.min_free_space),
        format!("--upload-max-age-seconds={}", s.upload_max_age.as_secs()),
    ]);
    if s.gc_delete_untagged {
        args.push("--gc-delete-untagged".to_owned());
    }
    if let Some(n) = s.max_concurrent_uploads {
        args.push(format!("--max-concurrent-uploads={n}"));
    }
    if let Some(n) = s.max_connections {
        args.push(format!("--max-connections={n}"));
    }
    if s.allow_sparse_manifests {
        args.push("--allow-sparse-manifests".to_owned());
    }
    args
}

/// `privreg serve`'s S3 flags. Values go in the `--flag=value` form, so none
/// can be read as another flag whatever it holds (validation already bounds
/// their shapes).
fn bucket_args(b: &Bucket) -> Vec<String> {
    let mut args = vec![
        format!("--s3-bucket={}", b.bucket),
        format!("--s3-region={}", b.region),
        format!("--s3-access-key-file={S3_CREDENTIALS_MOUNT}/{S3_ACCESS_KEY_FILE}"),
        format!("--s3-secret-key-file={S3_CREDENTIALS_MOUNT}/{S3_SECRET_KEY_FILE}"),
    ];
    if let Some(endpoint) = &b.endpoint {
        args.push(format!("--s3-endpoint={endpoint}"));
        if endpoint.starts_with("http://") {
            args.push("--s3-allow-http".to_owned());
        }
    }
    if !b.prefix.is_empty() {
        args.push(format!("--s3-prefix={}", b.prefix));
    }
    if b.path_style {
        args.push("--s3-path-style".to_owned());
    }
    if b.ca_config_map.is_some() {
        args.push(format!("--s3-ca-file={S3_CA_MOUNT}/{S3_CA_KEY}"));
    }
    if b.redirect_seconds > 0 {
        args.push(format!("--s3-redirect-seconds={}", b.redirect_seconds));
    }
    args
}

/// An HTTP(S) GET probe of `path` on the named container `port`.
pub(super) fn probe(path: &str, scheme: &str, port: &str, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            scheme: Some(scheme.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Pod template annotation: the SHA-256 of the names the server certificate
/// must carry. When they change (a new ClusterIP, another hostname) the pod is
/// replaced, and the new one starts with the new certificate at once instead
/// of serving the old one until the kubelet refreshes the Secret volume (up to
/// a minute plus its cache TTL). Renewals keep the names and need no restart:
/// the registry reloads the refreshed files.
pub const CERTIFICATE_NAMES_ANNOTATION: &str = "privreg.dev/certificate-names";

/// A read-only mount of `volume` at `path`.
fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Only the listed keys of a Secret, as the listed files, readable by the
/// registry's group alone.
fn secret_keys(secret: &str, keys: &[(&str, &str)]) -> SecretVolumeSource {
    SecretVolumeSource {
        secret_name: Some(secret.to_owned()),
        default_mode: Some(0o440),
        items: Some(
            keys.iter()
                .map(|(key, path)| KeyToPath {
                    key: (*key).to_owned(),
                    path: (*path).to_owned(),
                    mode: None,
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// The volumes and mounts of the registry's storage: its claim, or the
/// bucket's credentials (two keys only) and CA.
fn storage_volumes(d: &Desired) -> (Vec<Volume>, Vec<VolumeMount>) {
    match &d.storage {
        Storage::Volume { .. } => (
            vec![Volume {
                name: "data".to_owned(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: d.pvc_name(),
                    read_only: Some(false),
                }),
                ..Default::default()
            }],
            vec![VolumeMount {
                name: "data".to_owned(),
                mount_path: DATA_MOUNT.to_owned(),
                ..Default::default()
            }],
        ),
        Storage::Bucket(b) => {
            let mut volumes = vec![Volume {
                name: "s3-credentials".to_owned(),
                secret: Some(secret_keys(
                    &b.credentials_secret,
                    &[
                        (S3_ACCESS_KEY_ID, S3_ACCESS_KEY_FILE),
                        (S3_SECRET_ACCESS_KEY, S3_SECRET_KEY_FILE),
                    ],
                )),
                ..Default::default()
            }];
            let mut mounts = vec![read_only_mount("s3-credentials", S3_CREDENTIALS_MOUNT)];
            if let Some(ca) = &b.ca_config_map {
                volumes.push(Volume {
                    name: "s3-ca".to_owned(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: ca.clone(),
                        items: Some(vec![KeyToPath {
                            key: S3_CA_KEY.to_owned(),
                            path: S3_CA_KEY.to_owned(),
                            mode: None,
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(read_only_mount("s3-ca", S3_CA_MOUNT));
            }
            (volumes, mounts)
        }
    }
}

pub fn deployment(d: &Desired, owner: &OwnerReference, sans: &[String]) -> Deployment {
    let (storage_volumes, storage_mounts) = storage_volumes(d);
    let mut volumes = vec![Volume {
        name: "tls".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(d.tls_secret_name()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }];
    volumes.extend(storage_volumes);
    // The Secret is mounted as a directory (no subPath), so kubelet swaps in a
    // renewed certificate and `privreg serve` reloads it without a restart.
    let mut mounts = vec![read_only_mount("tls", TLS_MOUNT)];
    mounts.extend(storage_mounts);
    if let Some(secret) = &d.htpasswd_secret {
        volumes.push(Volume {
            name: "auth".to_owned(),
            // Only the key the registry reads, whatever else the Secret holds.
            secret: Some(secret_keys(secret, &[(HTPASSWD_KEY, HTPASSWD_KEY)])),
            ..Default::default()
        });
        mounts.push(read_only_mount("auth", AUTH_MOUNT));
    }
    let container = Container {
        name: "registry".to_owned(),
        image: Some(d.image.clone()),
        // A crash's last log line (privreg's own error) becomes the
        // container's termination message, which the operator reports.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        args: Some(serve_args(d)),
        env: Some(vec![EnvVar {
            name: "PRIVREG_LOG_FORMAT".to_owned(),
            value: Some("json".to_owned()),
            ..Default::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("registry".to_owned()),
                container_port: i32::from(CONTAINER_PORT),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("metrics".to_owned()),
                container_port: i32::from(METRICS_PORT),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", "HTTPS", "registry", 10)),
        liveness_probe: Some(probe("/healthz", "HTTPS", "registry", 10)),
        resources: d.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Deployment {
        metadata: meta(d, d.workload_name(), Some(owner)),
        spec: Some(DeploymentSpec {
            replicas: Some(d.replicas),
            strategy: Some(strategy(d)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(d)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(all_labels(d)),
                    annotations: Some(BTreeMap::from([(
                        CERTIFICATE_NAMES_ANNOTATION.to_owned(),
                        names_hash(sans),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: d.node_selector.clone(),
                    tolerations: d.tolerations.clone(),
                    topology_spread_constraints: spread(d),
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A volume has one writer: the old pod stops before the new one starts. On
/// a bucket, new pods start (one at a time) before old ones stop, so an update
/// never takes the registry down, and one that cannot start (a bad image, a
/// missing CA ConfigMap) leaves the running pods serving.
fn strategy(d: &Desired) -> DeploymentStrategy {
    match d.storage {
        Storage::Volume { .. } => DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            ..Default::default()
        },
        Storage::Bucket(_) => DeploymentStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        },
    }
}

/// Several pods spread over nodes and zones, so losing one takes one pod.
/// Preferred, not required (`ScheduleAnyway`): on a one-node cluster every
/// replica still runs.
fn spread(d: &Desired) -> Option<Vec<TopologySpreadConstraint>> {
    (d.replicas > 1).then(|| {
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
            .into_iter()
            .map(|key| TopologySpreadConstraint {
                max_skew: 1,
                topology_key: key.to_owned(),
                when_unsatisfiable: "ScheduleAnyway".to_owned(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(d)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    })
}

/// Hex SHA-256 of the sorted names, one per line.
fn names_hash(sans: &[String]) -> String {
    use sha2::{Digest, Sha256};
    let mut names: Vec<&str> = sans.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut h = Sha256::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(b"\n");
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::operator::validate::{
        tests::{own_image, registry},
        validate,
    };
    use clap::Parser;

    pub(crate) fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "privreg.dev/v1alpha1".into(),
            kind: "PrivateRegistry".into(),
            name: "reg".into(),
            uid: "u-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    pub(crate) fn desired(spec: &str) -> Desired {
        let yaml = format!(
            "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: reg, namespace: tools}}\nspec: {spec}\n"
        );
        validate(&registry(&yaml), &own_image("ghcr.io/example/privreg:1")).unwrap()
    }

    /// The container arguments the operator renders parse with the real CLI.
    #[test]
    fn container_args_parse_with_the_real_cli() {
        for spec in [
            "{}",
            "{auth: {htpasswdSecretRef: {name: users}, anonymousPull: true}}",
            BUCKET,
        ] {
            let d = desired(spec);
            let dep = deployment(&d, &owner(), &[]);
            let c = &dep.spec.unwrap().template.spec.unwrap().containers[0];
            let mut args = c.args.clone().unwrap();
            // Each env var must be one the CLI declares; feed it as its flag so its
            // value is parsed too.
            let command = <crate::cli::Cli as clap::CommandFactory>::command();
            let serve = command.find_subcommand("serve").unwrap();
            for env in c.env.clone().unwrap() {
                let arg = command
                    .get_arguments()
                    .chain(serve.get_arguments())
                    .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(env.name.as_str()))
                    .unwrap_or_else(|| panic!("{} is no CLI env var", env.name));
                args.push(format!("--{}", arg.get_long().unwrap()));
                args.push(env.value.unwrap());
            }
            let cli =
                crate::cli::Cli::try_parse_from(std::iter::once("privreg".to_owned()).chain(args))
                    .unwrap_or_else(|e| panic!("{spec}: {e}"));
            let crate::cli::Command::Serve(serve) = cli.command else {
                panic!("not serve")
            };
            assert_eq!(
                serve.tls_cert.unwrap().to_str(),
                Some("/etc/privreg/tls/tls.crt")
            );
            assert_eq!(serve.htpasswd.is_some(), d.htpasswd_secret.is_some());
            assert_eq!(serve.anonymous_pull, d.anonymous_pull);
            if let Storage::Bucket(b) = &d.storage {
                let s3 = &serve.s3;
                assert_eq!(s3.s3_bucket.as_deref(), Some(b.bucket.as_str()));
                assert_eq!(s3.s3_endpoint, b.endpoint);
                assert_eq!(s3.s3_prefix, b.prefix);
                assert_eq!(s3.s3_region, b.region);
                assert!(s3.s3_path_style && s3.s3_allow_http);
                assert_eq!(s3.s3_redirect_seconds, 300);
                assert_eq!(
                    s3.s3_ca_file.as_deref().and_then(|p| p.to_str()),
                    Some("/etc/privreg/s3-ca/ca.crt")
                );
                assert_eq!(
                    s3.s3_secret_key_file.as_deref().and_then(|p| p.to_str()),
                    Some("/etc/privreg/s3/secret-access-key")
                );
            }
            assert_eq!(cli.log_format, crate::telemetry::LogFormat::Json);
        }
    }

    const BUCKET: &str = "{replicas: 3, storage: {s3: {endpoint: 'http://s3.storage:8333', bucket: images, prefix: team-a, pathStyle: true, credentialsSecretRef: {name: s3-keys}, caConfigMapRef: {name: s3-ca}, redirectSeconds: 300}}}";

    #[test]
    fn a_bucket_registry_rolls_spreads_and_mounts_two_keys_only() {
        let d = desired(BUCKET);
        assert!(pvc(&d, &owner()).is_none(), "no volume claim");
        let spec = deployment(&d, &owner(), &[]).spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let strategy = spec.strategy.unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let rolling = strategy.rolling_update.unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        let pod = spec.template.spec.unwrap();
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert!(
            spread
                .iter()
                .all(|c| c.when_unsatisfiable == "ScheduleAnyway")
        );
        let volumes = pod.volumes.unwrap();
        assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()));
        let credentials = volumes
            .iter()
            .find(|v| v.name == "s3-credentials")
            .and_then(|v| v.secret.clone())
            .unwrap();
        assert_eq!(credentials.secret_name.as_deref(), Some("s3-keys"));
        let keys: Vec<_> = credentials
            .items
            .unwrap()
            .into_iter()
            .map(|i| (i.key, i.path))
            .collect();
        assert_eq!(
            keys,
            [
                ("AWS_ACCESS_KEY_ID".into(), "access-key-id".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "secret-access-key".into())
            ]
        );
        let ca = volumes
            .iter()
            .find(|v| v.name == "s3-ca")
            .and_then(|v| v.config_map.clone())
            .unwrap();
        assert_eq!(ca.name, "s3-ca");
        assert_eq!(ca.items.unwrap().len(), 1);
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().all(|m| m.mount_path != DATA_MOUNT));
        assert!(
            mounts
                .iter()
                .filter(|m| m.name.starts_with("s3"))
                .all(|m| m.read_only == Some(true))
        );
        let budget = pod_disruption_budget(&d, &owner()).spec.unwrap();
        assert_eq!(budget.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            budget.selector.unwrap().match_labels,
            Some(selector_labels(&d))
        );
    }

    #[test]
    fn only_the_htpasswd_key_is_mounted() {
        let d = desired("{auth: {htpasswdSecretRef: {name: users}}}");
        let pod = deployment(&d, &owner(), &[])
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let auth = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "auth")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(auth.secret_name.as_deref(), Some("users"));
        let items = auth.items.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("htpasswd", "htpasswd")
        );
    }

    #[test]
    fn deployment_is_hardened_and_recreates() {
        let d = desired("{}");
        let dep = deployment(&d, &owner(), &[]);
        let spec = dep.spec.unwrap();
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        let pod = spec.template.spec.unwrap();
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(dep.metadata.owner_references.unwrap()[0].uid, "u-1");
    }

    #[test]
    fn pvc_owner_follows_retention() {
        let kept = pvc(&desired("{}"), &owner()).unwrap();
        assert_eq!(kept.metadata.owner_references, Some(vec![]));
        let dropped = pvc(
            &desired("{storage: {retainOnDelete: false, size: 1Gi}}"),
            &owner(),
        )
        .unwrap();
        assert_eq!(dropped.metadata.owner_references.unwrap().len(), 1);
        let size = &dropped.spec.unwrap().resources.unwrap().requests.unwrap()["storage"];
        assert_eq!(size.0, "1Gi");
    }

    #[test]
    fn service_targets_the_registry_port() {
        let s = service(&desired("{port: 443}"), &owner());
        let port = &s.spec.unwrap().ports.unwrap()[0];
        assert_eq!(port.port, 443);
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("registry".into()))
        );
    }

    #[test]
    fn public_objects_hold_no_private_key() {
        let ca = crate::certs::generate_ca(
            "ca",
            std::time::Duration::from_secs(3600),
            crate::certs::KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let cm = ca_configmap(&desired("{}"), &ca.cert_pem, &owner());
        assert!(!serde_json::to_string(&cm).unwrap().contains("PRIVATE KEY"));
    }

    #[test]
    fn the_pod_is_replaced_when_the_certificate_names_change_only() {
        let d = desired("{}");
        let names = |dep: &Deployment| {
            dep.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CERTIFICATE_NAMES_ANNOTATION]
                .clone()
        };
        let sans = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = names(&deployment(
            &d,
            &owner(),
            &sans(&["reg.ns.svc", "10.96.0.7"]),
        ));
        let same = names(&deployment(
            &d,
            &owner(),
            &sans(&["10.96.0.7", "reg.ns.svc"]),
        ));
        let new_ip = names(&deployment(
            &d,
            &owner(),
            &sans(&["reg.ns.svc", "10.96.0.8"]),
        ));
        assert_eq!(a, same, "order does not matter");
        assert_ne!(a, new_ip, "a new ClusterIP replaces the pod");
        assert_eq!(a.len(), 64);
    }
}
