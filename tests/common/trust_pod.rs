//! Plays kubelet for the operator's trust DaemonSet on one node: the pod the
//! DaemonSet controller made for that node is bound to it, `privreg trust` runs
//! exactly as the pod says (its args, its env with the downward API resolved,
//! its hostPath mounts mapped under a temp node root, its ConfigMap volume kept
//! the way the kubelet keeps one), and the pod is reported Ready when the
//! agent's `/readyz` says so (the DaemonSet's readiness probe).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use privreg::operator::daemonset::{BUNDLE_HASH_ANNOTATION, DAEMONSET_NAME, HOST_ROOT};
use privreg::operator::trust_bundle::{BUNDLE_KEY, BUNDLE_NAME};

use super::cluster::eventually;
use super::kubelet::{bind, report_ready};
use super::node::{BundleVolume, TrustAgent};

pub const OPERATOR_NS: &str = "privreg-system";
const TIMEOUT: Duration = Duration::from_secs(90);

/// The bundle the operator publishes now, and its SHA-256 (as the agent hashes it).
pub async fn published_bundle(admin: &Client) -> Option<(String, String)> {
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let json = cms
        .get_opt(BUNDLE_NAME)
        .await
        .ok()??
        .data?
        .remove(BUNDLE_KEY)?;
    let hash = privreg::operator::trust_status::bundle_hash(&json);
    Some((json, hash))
}

/// Waits (bounded) until the published bundle satisfies `wanted` and the
/// DaemonSet's pods are made for it; returns the bundle and its hash.
pub async fn wait_for_bundle(
    admin: &Client,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> (String, String) {
    eventually(what, TIMEOUT, || async {
        let (json, hash) = published_bundle(admin).await?;
        (wanted(&json) && daemonset_hash(admin).await? == hash).then_some((json, hash))
    })
    .await
}

/// The hash the DaemonSet's pod template carries.
pub async fn daemonset_hash(admin: &Client) -> Option<String> {
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), OPERATOR_NS);
    dss.get_opt(DAEMONSET_NAME)
        .await
        .ok()??
        .spec?
        .template
        .metadata?
        .annotations?
        .remove(BUNDLE_HASH_ANNOTATION)
}

/// One node's agent, as the DaemonSet runs it.
pub struct TrustPod {
    pub agent: TrustAgent,
    pub pod_name: String,
    pub volume: BundleVolume,
    pub expected: String,
}

impl TrustPod {
    /// The kubelet refreshes the ConfigMap volume: the bundle as published now.
    pub async fn refresh_volume(&mut self, admin: &Client) -> String {
        let (json, hash) = published_bundle(admin).await.expect("a published bundle");
        self.volume.publish(json.as_bytes());
        hash
    }
}

/// Runs the DaemonSet's current pod for `node` (see the module docs), with the
/// node's `/` at `node_root`; pods of older templates are deleted as the
/// DaemonSet controller asks (a kubelet would confirm their end).
pub async fn run_trust_pod(admin: &Client, node: &str, node_root: &Path, dir: &Path) -> TrustPod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let selector = privreg::operator::daemonset::selector_string();
    let (want, pod) = eventually(
        "the DaemonSet's pod for the node, of the current template",
        TIMEOUT,
        || async {
            // The template as it is now (the operator may roll it meanwhile).
            let want = daemonset_hash(admin).await?;
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let mut current = None;
            for p in list.items {
                let hash = p
                    .annotations()
                    .get(BUNDLE_HASH_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                if p.metadata.deletion_timestamp.is_some() {
                    // The kubelet's part of a deletion: confirm it.
                    let _ = pods
                        .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                } else if hash == want {
                    current = Some(p);
                }
            }
            Some((want, current?))
        },
    )
    .await;
    let pod_name = pod.name_any();
    let spec = pod.spec.clone().unwrap();
    bind(admin, &pod, node).await;

    // The volumes, as the kubelet would set them up.
    let container = &spec.containers[0];
    let volumes = spec.volumes.clone().unwrap();
    let mut bundle_mount: Option<String> = None;
    for mount in container.volume_mounts.as_ref().unwrap() {
        let volume = volumes.iter().find(|v| v.name == mount.name).unwrap();
        if let Some(host) = &volume.host_path {
            // Every node path appears under the host root at its own path.
            assert_eq!(
                mount.mount_path,
                format!("{HOST_ROOT}{}", host.path),
                "{mount:?}"
            );
            let on_node = node_root.join(host.path.trim_start_matches('/'));
            match host.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&on_node).unwrap(),
                Some("File") => assert!(on_node.is_file(), "{} must exist", on_node.display()),
                other => panic!("unexpected hostPath type {other:?}"),
            }
        } else if let Some(cm) = &volume.config_map {
            assert_eq!(cm.name, BUNDLE_NAME);
            bundle_mount = Some(mount.mount_path.clone());
        } else {
            panic!("unexpected volume {volume:?}");
        }
    }
    let bundle_mount = bundle_mount.expect("the bundle is mounted");
    let mut volume = BundleVolume::new(&dir.join(format!("bundle-{pod_name}")));
    let (json, _) = published_bundle(admin).await.expect("a published bundle");
    volume.publish(json.as_bytes());

    // The container's args with every in-pod path mapped; the agent helper
    // picks its own health port.
    let map = |a: &str| -> String {
        if let Some(rest) = a.strip_prefix(bundle_mount.as_str()) {
            return format!("{}{rest}", volume.dir.display());
        }
        if let Some(rest) = a.strip_prefix(HOST_ROOT) {
            return format!("{}{rest}", node_root.display());
        }
        a.to_owned()
    };
    let mut args = Vec::new();
    let mut given = container.args.clone().unwrap().into_iter();
    assert_eq!(given.next().as_deref(), Some("trust"));
    while let Some(a) = given.next() {
        if a == "--metrics-listen" {
            given.next();
            continue;
        }
        args.push(map(&a));
    }
    // The env, with the downward API's annotation resolved.
    let env: Vec<(String, String)> = container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = match (e.value, e.value_from) {
                (Some(v), _) => v,
                (None, Some(from)) => {
                    let path = from.field_ref.expect("a fieldRef").field_path;
                    let key = path
                        .strip_prefix("metadata.annotations['")
                        .and_then(|k| k.strip_suffix("']"))
                        .expect("an annotation");
                    pod.annotations().get(key).cloned().unwrap_or_default()
                }
                (None, None) => String::new(),
            };
            (e.name, value)
        })
        .filter(|(k, _)| k != "PRIVREG_LOG_FORMAT")
        .collect();
    let mut agent =
        TrustAgent::start_with_env(&args, &env, &dir.join(format!("agent-{pod_name}.log")));
    agent.wait_ready(TIMEOUT);
    // The readiness probe passed: report it, as the kubelet would.
    report_ready(admin, &pod, None).await;
    TrustPod {
        agent,
        pod_name,
        volume,
        expected: want,
    }
}

/// A temp node root with what a containerd node has: a config whose CRI plugin
/// reads certs.d, and an `/etc/hosts`.
pub fn node_root(dir: &Path) -> PathBuf {
    let root = dir.join("node");
    std::fs::create_dir_all(root.join("etc/containerd")).unwrap();
    std::fs::write(
        root.join("etc/containerd/config.toml"),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    root
}
