//! Plays the volume provisioner, kubelet and kube-proxy for one PrivateRegistry's
//! Deployment (no kubelet runs in the test control plane):
//!
//! - [`provide_volume`]: a PersistentVolume, pre-bound to the registry's claim,
//!   that kube-controller-manager binds;
//! - [`run_registry_pod`]: the ReplicaSet's pod is bound to a node, its volumes are
//!   set up in a temp dir (Secret and ConfigMap volumes written from the
//!   object, honouring `items`; the claim as a plain directory), `privreg serve` runs with the
//!   container's own args and env, those paths mapped, and the pod is reported
//!   Running and Ready once the server answers its readiness probe path.
//!
//! The registry port is served where the caller says: `127.0.0.1:<free port>`,
//! or the Service's own `<ClusterIP>:<port>` ([`service_address`]), which is where
//! kube-proxy would send a client of the Service. Other container ports (metrics)
//! go to free loopback ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use super::cluster::eventually;
use super::daemons::stop_child;
use super::free_port;
use super::kubelet::{bind, ensure_node, report_ready};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Plays the volume provisioner: a PersistentVolume for claim `<name>-data` in
/// `namespace`, pre-bound to it (`claimRef`), as large as the claim asks and of
/// its storage class, which kcm's PV controller binds.
pub async fn provide_volume(admin: &Client, namespace: &str, name: &str) {
    let claim = format!("{name}-data");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), namespace);
    let pvc = eventually(&format!("claim {namespace}/{claim}"), TIMEOUT, || async {
        pvcs.get_opt(&claim).await.ok()?
    })
    .await;
    let spec = pvc.spec.unwrap_or_default();
    let size = spec
        .resources
        .and_then(|r| r.requests)
        .and_then(|mut r| r.remove("storage"))
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".to_owned());
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pv-{namespace}-{name}")},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "storageClassName": spec.storage_class_name.unwrap_or_default(),
            "hostPath": {"path": format!("/tmp/privreg-pv-{namespace}-{name}")},
            "claimRef": {"namespace": namespace, "name": claim},
            "persistentVolumeReclaimPolicy": "Retain"
        }
    }))
    .unwrap();
    pvs.create(&PostParams::default(), &pv).await.unwrap();
}

/// The Service `<name>`'s `<ClusterIP>:<port>` (its first port).
pub async fn service_address(admin: &Client, namespace: &str, name: &str) -> SocketAddr {
    let svcs: Api<Service> = Api::namespaced(admin.clone(), namespace);
    eventually(
        &format!("Service {namespace}/{name} with a ClusterIP"),
        TIMEOUT,
        || async {
            let spec = svcs.get_opt(name).await.ok()??.spec?;
            let ip = spec.cluster_ip?.parse().ok()?;
            let port = u16::try_from(spec.ports?.first()?.port).ok()?;
            Some(SocketAddr::new(ip, port))
        },
    )
    .await
}

/// A registry pod's `privreg serve`, stopped (SIGTERM, bounded) on drop.
pub struct RegistryPod {
    /// Where the registry port is served.
    pub addr: SocketAddr,
    pub pod_name: String,
    /// The process's command line, paths mapped.
    pub args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl RegistryPod {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The kubelet's part when the pod goes: stop the container.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c, Duration::from_secs(10));
        }
    }
}

impl Drop for RegistryPod {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the current pod of Deployment `namespace/name` on `node` (see the module
/// docs), serving the registry port on `listen`, with its files under `dir`.
/// The readiness check verifies the server certificate against the registry's
/// CA ConfigMap (`<name>-ca`) for the IP of `listen`, so that address must be
/// one of the certificate's SANs (the ClusterIP always is).
pub async fn run_registry_pod(
    admin: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    listen: SocketAddr,
    dir: &Path,
) -> RegistryPod {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
    let deployment = eventually(
        &format!("Deployment {namespace}/{name}"),
        TIMEOUT,
        || async { deployments.get_opt(name).await.ok()? },
    )
    .await;
    let spec = deployment.spec.unwrap();
    let pod_spec = spec.template.spec.unwrap();
    let container = &pod_spec.containers[0];
    let volumes = pod_spec.volumes.clone().unwrap_or_default();

    // The volumes, as the kubelet would set them up.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
    for mount in container.volume_mounts.clone().unwrap_or_default() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("no volume for mount {mount:?}"));
        let local = dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&local).unwrap();
        if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap();
            let data = secrets
                .get(&secret_name)
                .await
                .unwrap_or_else(|e| panic!("Secret {namespace}/{secret_name}: {e}"))
                .data
                .unwrap_or_default();
            let files: Vec<(String, String)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone()))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in files {
                std::fs::write(local.join(path), &data[&key].0).unwrap();
            }
        } else if let Some(source) = &volume.config_map {
            let data = Api::<ConfigMap>::namespaced(admin.clone(), namespace)
                .get(&source.name)
                .await
                .unwrap_or_else(|e| panic!("ConfigMap {namespace}/{}: {e}", source.name))
                .data
                .unwrap_or_default();
            for item in source.items.clone().unwrap_or_default() {
                std::fs::write(local.join(&item.path), &data[&item.key]).unwrap();
            }
        } else if volume.persistent_volume_claim.is_none() {
            panic!("unexpected volume {volume:?}");
        }
        mounts.insert(mount.mount_path.clone(), local);
    }

    // Container ports: the registry port on `listen`, any other on a free
    // loopback port.
    let mut ports: BTreeMap<String, String> = BTreeMap::new();
    for p in container.ports.clone().unwrap_or_default() {
        let to = if p.name.as_deref() == Some("registry") {
            listen.to_string()
        } else {
            format!("127.0.0.1:{}", free_port())
        };
        ports.insert(format!("0.0.0.0:{}", p.container_port), to);
    }
    assert!(
        ports.values().any(|v| *v == listen.to_string()),
        "the container has no port named `registry`: {:?}",
        container.ports
    );
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            if let Some(to) = ports.get(&a) {
                return to.clone();
            }
            // The claim is a directory on the test machine's disk: the
            // free-space threshold is the harness's, not a share of that disk.
            if a.starts_with("--min-free-space=") {
                return "--min-free-space=64Mi".to_owned();
            }
            // A path as its own argument or as `--flag=<path>`.
            let (flag, value) = match a.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (format!("{flag}="), value),
                _ => (String::new(), a.as_str()),
            };
            for (mount, local) in &mounts {
                if let Some(rest) = value.strip_prefix(mount.as_str()) {
                    return format!("{flag}{}{rest}", local.display());
                }
            }
            a
        })
        .collect();
    let log = dir.join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args(&args)
        .envs(
            container
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default())),
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn privreg serve");
    let mut pod = RegistryPod {
        addr: listen,
        pod_name: String::new(),
        args,
        log,
        child: Some(child),
    };

    // Readiness: the probe's path answers 200 over TLS the registry's CA vouches for.
    let client = registry_client(admin, namespace, name).await;
    let url = format!("https://{listen}/readyz");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => break,
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("{e:?}"),
        };
        if let Some(Ok(Some(status))) = pod.child.as_mut().map(|c| c.try_wait()) {
            panic!(
                "privreg serve {:?} exited ({status}):\n{}",
                pod.args,
                pod.log()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{url} not ready within {TIMEOUT:?} ({last}); privreg serve {:?}:\n{}",
                pod.args,
                pod.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The pod, bound to the node and reported Running and Ready.
    ensure_node(admin, node).await;
    let selector = spec
        .selector
        .match_labels
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    // With several replicas, each call runs a pod no earlier call took (one
    // not yet bound to a node), else the one there is.
    let found = eventually(
        &format!("the pod of Deployment {namespace}/{name}"),
        TIMEOUT,
        || async {
            let live: Vec<Pod> = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let unbound = live
                .iter()
                .position(|p| p.spec.as_ref().is_none_or(|s| s.node_name.is_none()));
            let mut live = live;
            match unbound {
                Some(i) => Some(live.swap_remove(i)),
                None => live.pop(),
            }
        },
    )
    .await;
    pod.pod_name = found.name_any();
    bind(admin, &found, node).await;
    report_ready(admin, &found, Some("10.244.0.10")).await;
    pod
}

/// An HTTPS client that trusts registry `namespace/name`'s CA (from its CA
/// ConfigMap, once the operator has made it) and nothing else.
pub async fn registry_client(admin: &Client, namespace: &str, name: &str) -> reqwest::Client {
    let ca_pem = eventually(
        &format!("ConfigMap {namespace}/{name}-ca"),
        TIMEOUT,
        || async {
            Api::<ConfigMap>::namespaced(admin.clone(), namespace)
                .get_opt(&format!("{name}-ca"))
                .await
                .ok()??
                .data?
                .remove("ca.crt")
        },
    )
    .await;
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}
