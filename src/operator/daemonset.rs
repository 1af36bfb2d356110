//! The trust DaemonSet: `privreg trust` on every node, in the operator's own
//! namespace. Pure builder; the trust task applies it with the hash of the bundle
//! it just published.
//!
//! How a node's trust reaches the operator without giving the agent any API
//! rights: the bundle's SHA-256 is a pod template annotation, passed to the agent
//! through the downward API. The agent is Ready only when the mounted bundle has
//! that hash and the node's files match it. A Ready agent pod whose annotation
//! names a bundle that lists a registry's current CA is therefore a node that
//! trusts that registry; the operator counts those pods (see `trust_status`).
//! A new bundle rolls the pods (all at once: an agent that stops leaves the
//! node's files as they are, so no node loses trust meanwhile).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HostPathVolumeSource, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::objects::probe;
use crate::labels;
use crate::trust::render::Preset;

pub const DAEMONSET_NAME: &str = "privreg-trust";
/// The pod template annotation carrying the bundle's SHA-256 (lowercase hex).
pub const BUNDLE_HASH_ANNOTATION: &str = "privreg.dev/bundle-sha256";
/// Where the node's `/` parts are mounted in the agent's container.
pub const HOST_ROOT: &str = "/host";
pub const BUNDLE_MOUNT: &str = "/etc/privreg/bundle";
/// The agent's record of what it wrote, on the node (survives pod restarts).
pub const STATE_DIR: &str = "var/lib/privreg-trust";
pub const HEALTH_PORT: u16 = 8081;

/// What the cluster admin chose for the trust DaemonSet (operator flags / Helm).
#[derive(Debug, Clone, PartialEq)]
pub struct TrustDaemonSetConfig {
    pub namespace: String,
    pub image: String,
    pub preset: Preset,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonSetConfigError {
    #[error("--trust-tolerations is not a JSON list of tolerations: {0}")]
    Tolerations(#[source] serde_json::Error),
    #[error("--trust-node-selector: {0:?} is not key=value")]
    NodeSelector(String),
}

impl TrustDaemonSetConfig {
    pub fn new(
        namespace: &str,
        image: &str,
        preset: Preset,
        node_selector: &[String],
        tolerations_json: &str,
    ) -> Result<Self, DaemonSetConfigError> {
        let tolerations: Vec<Toleration> =
            serde_json::from_str(tolerations_json).map_err(DaemonSetConfigError::Tolerations)?;
        let mut selector = BTreeMap::new();
        for pair in node_selector
            .iter()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some((k, v)) if !k.is_empty() => {
                    selector.insert(k.to_owned(), v.to_owned());
                }
                _ => return Err(DaemonSetConfigError::NodeSelector(pair.to_owned())),
            }
        }
        Ok(TrustDaemonSetConfig {
            namespace: namespace.to_owned(),
            image: image.to_owned(),
            preset,
            node_selector: selector,
            tolerations,
        })
    }
}

/// The labels that select the agent's pods.
pub fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), "privreg".to_owned()),
        (labels::COMPONENT.to_owned(), "trust".to_owned()),
    ])
}

/// `app.kubernetes.io/name=privreg,app.kubernetes.io/component=trust`.
pub fn selector_string() -> String {
    labels::selector(&selector_labels())
}

fn all_labels() -> BTreeMap<String, String> {
    let mut l = selector_labels();
    l.insert(
        labels::MANAGED_BY.to_owned(),
        crate::FIELD_MANAGER.to_owned(),
    );
    l.insert(labels::PART_OF.to_owned(), "privreg".to_owned());
    l
}

/// One hostPath the agent writes (or reads), as volume and mount.
struct HostMount {
    volume: &'static str,
    /// Relative to the node's `/`.
    path: String,
    type_: &'static str,
    read_only: bool,
}

/// Exactly the node paths the chosen preset needs, no `/`: the containerd
/// config's directory read-only (the agent checks `config_path`, following
/// `imports` inside it), and read-write the three certs.d roots, `/etc/hosts`
/// (edited in place: it is often a bind-mount target) and the agent's state.
fn host_mounts(preset: Preset) -> Vec<HostMount> {
    let layout = preset.layout();
    let text = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let config_dir = layout
        .containerd_config
        .parent()
        .map(text)
        .unwrap_or_default();
    vec![
        HostMount {
            volume: "containerd-config",
            path: config_dir,
            type_: "DirectoryOrCreate",
            read_only: true,
        },
        HostMount {
            volume: "containerd-certs",
            path: text(&layout.containerd_certs_d),
            type_: "DirectoryOrCreate",
            read_only: false,
        },
        HostMount {
            volume: "docker-certs",
            path: text(&layout.docker_certs_d),
            type_: "DirectoryOrCreate",
            read_only: false,
        },
        HostMount {
            volume: "containers-certs",
            path: text(&layout.containers_certs_d),
            type_: "DirectoryOrCreate",
            read_only: false,
        },
        HostMount {
            volume: "etc-hosts",
            path: text(&layout.etc_hosts),
            type_: "File",
            read_only: false,
        },
        HostMount {
            volume: "state",
            path: STATE_DIR.to_owned(),
            type_: "DirectoryOrCreate",
            read_only: false,
        },
    ]
}

/// The pod template annotation's value while the operator uninstalls node
/// trust (instead of a bundle hash).
pub const UNINSTALL_MODE: &str = "uninstall";

/// The trust DaemonSet for the bundle whose SHA-256 is `bundle_sha256`.
pub fn daemonset(config: &TrustDaemonSetConfig, bundle_sha256: &str) -> DaemonSet {
    build(config, bundle_sha256, false)
}

/// The trust DaemonSet while node trust is uninstalled: every agent removes
/// what it wrote, restores what it backed up, and is Ready once nothing is left.
pub fn uninstalling(config: &TrustDaemonSetConfig) -> DaemonSet {
    build(config, UNINSTALL_MODE, true)
}

fn build(config: &TrustDaemonSetConfig, bundle_sha256: &str, uninstall: bool) -> DaemonSet {
    let mounts = host_mounts(config.preset);
    let mut volumes: Vec<Volume> = mounts
        .iter()
        .map(|m| Volume {
            name: m.volume.to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: format!("/{}", m.path),
                type_: Some(m.type_.to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    let mut volume_mounts: Vec<VolumeMount> = mounts
        .iter()
        .map(|m| VolumeMount {
            name: m.volume.to_owned(),
            mount_path: format!("{HOST_ROOT}/{}", m.path),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    // A directory (no subPath), so the kubelet's `..data` swap reaches the agent.
    volumes.push(Volume {
        name: "bundle".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: super::trust_bundle::BUNDLE_NAME.to_owned(),
            default_mode: Some(0o444),
            // Uninstalling needs no bundle: never wait for one.
            optional: uninstall.then_some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    volume_mounts.push(VolumeMount {
        name: "bundle".to_owned(),
        mount_path: BUNDLE_MOUNT.to_owned(),
        read_only: Some(true),
        ..Default::default()
    });

    let mut args = vec![
        "trust".to_owned(),
        "--preset".to_owned(),
        config.preset.to_string(),
        "--node-root".to_owned(),
        HOST_ROOT.to_owned(),
        "--bundle".to_owned(),
        format!("{BUNDLE_MOUNT}/{}", super::trust_bundle::BUNDLE_KEY),
        "--state-dir".to_owned(),
        format!("{HOST_ROOT}/{STATE_DIR}"),
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{HEALTH_PORT}"),
    ];
    let mut env = vec![EnvVar {
        name: "PRIVREG_LOG_FORMAT".to_owned(),
        value: Some("json".to_owned()),
        ..Default::default()
    }];
    if uninstall {
        args.extend(["--uninstall".to_owned(), "--stay".to_owned()]);
    } else {
        env.push(EnvVar {
            name: "PRIVREG_TRUST_EXPECTED_BUNDLE".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{BUNDLE_HASH_ANNOTATION}']"),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: "trust".to_owned(),
        image: Some(config.image.clone()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("health".to_owned()),
            container_port: i32::from(HEALTH_PORT),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", "HTTP", "health", 5)),
        liveness_probe: Some(probe("/healthz", "HTTP", "health", 5)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("16Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("64Mi".to_owned()),
            )])),
            ..Default::default()
        }),
        volume_mounts: Some(volume_mounts),
        // uid 0 because the trust directories and /etc/hosts are root's (0755,
        // 0644): the owner's permission bits are all writing them needs, so
        // every capability is dropped (no DAC_OVERRIDE, no CHOWN, no privileged).
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    DaemonSet {
        metadata: ObjectMeta {
            name: Some(DAEMONSET_NAME.to_owned()),
            namespace: Some(config.namespace.clone()),
            labels: Some(all_labels()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..Default::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::String("100%".to_owned())),
                    max_surge: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(all_labels()),
                    annotations: Some(BTreeMap::from([(
                        BUNDLE_HASH_ANNOTATION.to_owned(),
                        bundle_sha256.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // No API access at all: everything comes from the mounts.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    node_selector: (!config.node_selector.is_empty())
                        .then(|| config.node_selector.clone()),
                    tolerations: (!config.tolerations.is_empty())
                        .then(|| config.tolerations.clone()),
                    termination_grace_period_seconds: Some(10),
                    security_context: Some(PodSecurityContext {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(preset: Preset) -> TrustDaemonSetConfig {
        TrustDaemonSetConfig::new(
            "privreg-system",
            "ghcr.io/privreg/privreg:1",
            preset,
            &["kubernetes.io/os=linux".to_owned()],
            r#"[{"operator":"Exists"}]"#,
        )
        .unwrap()
    }

    #[test]
    fn mounts_exactly_the_trust_paths_never_the_root() {
        let ds = daemonset(&config(Preset::Containerd), "abc");
        let pod = ds.spec.unwrap().template.spec.unwrap();
        let paths: Vec<(String, String, bool)> = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| v.host_path.as_ref())
            .zip(pod.containers[0].volume_mounts.as_ref().unwrap())
            .map(|(h, m)| {
                (
                    h.path.clone(),
                    m.mount_path.clone(),
                    m.read_only == Some(true),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [
                (
                    "/etc/containerd".into(),
                    "/host/etc/containerd".into(),
                    true
                ),
                (
                    "/etc/containerd/certs.d".into(),
                    "/host/etc/containerd/certs.d".into(),
                    false
                ),
                (
                    "/etc/docker/certs.d".into(),
                    "/host/etc/docker/certs.d".into(),
                    false
                ),
                (
                    "/etc/containers/certs.d".into(),
                    "/host/etc/containers/certs.d".into(),
                    false
                ),
                ("/etc/hosts".into(), "/host/etc/hosts".into(), false),
                (
                    "/var/lib/privreg-trust".into(),
                    "/host/var/lib/privreg-trust".into(),
                    false
                ),
            ]
        );
        let k3s = daemonset(&config(Preset::K3s), "abc");
        let vols = k3s.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        assert!(
            vols.iter()
                .any(|v| v.host_path.as_ref().map(|h| h.path.as_str())
                    == Some("/var/lib/rancher/k3s/agent/etc/containerd/certs.d"))
        );
        assert!(
            !vols
                .iter()
                .any(|v| v.host_path.as_ref().map(|h| h.path.as_str()) == Some("/"))
        );
    }

    #[test]
    fn runs_without_api_access_privilege_or_capabilities() {
        let ds = daemonset(&config(Preset::Containerd), "0123");
        let spec = ds.spec.unwrap();
        let template = spec.template;
        assert_eq!(
            template.metadata.unwrap().annotations.unwrap()[BUNDLE_HASH_ANNOTATION],
            "0123"
        );
        let pod = template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.host_network, None);
        assert_eq!(pod.host_pid, None);
        assert_eq!(
            pod.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        assert_eq!(pod.node_selector.unwrap()["kubernetes.io/os"], "linux");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
        let env = c.env.as_ref().unwrap();
        let expected = env
            .iter()
            .find(|e| e.name == "PRIVREG_TRUST_EXPECTED_BUNDLE")
            .unwrap();
        assert_eq!(
            expected
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.annotations['privreg.dev/bundle-sha256']"
        );
        assert_eq!(c.args.as_ref().unwrap()[0], "trust");
        assert_eq!(
            spec.update_strategy
                .unwrap()
                .rolling_update
                .unwrap()
                .max_unavailable,
            Some(IntOrString::String("100%".into()))
        );
    }

    #[test]
    fn bad_admin_settings_are_refused() {
        assert!(matches!(
            TrustDaemonSetConfig::new("n", "i", Preset::Containerd, &[], "{"),
            Err(DaemonSetConfigError::Tolerations(_))
        ));
        assert!(matches!(
            TrustDaemonSetConfig::new("n", "i", Preset::Containerd, &["novalue".into()], "[]"),
            Err(DaemonSetConfigError::NodeSelector(_))
        ));
    }

    /// The agent command line a DaemonSet runs, as the real CLI parses it.
    fn agent_cli(ds: DaemonSet) -> crate::cli::TrustArgs {
        use clap::Parser as _;
        let args = ds.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("privreg".to_owned()).chain(args))
                .unwrap();
        let crate::cli::Command::Trust(t) = cli.command else {
            panic!("not trust")
        };
        t
    }

    /// The agent accepts the DaemonSet's arguments as they are.
    #[test]
    fn the_agent_parses_the_daemonsets_arguments() {
        let t = agent_cli(uninstalling(&config(Preset::Rke2)));
        assert!(t.uninstall && t.stay);
        let t = agent_cli(daemonset(&config(Preset::Rke2), "0123"));
        assert_eq!(t.preset, Preset::Rke2);
        assert_eq!(
            t.state_dir,
            std::path::Path::new("/host/var/lib/privreg-trust")
        );
    }
}
