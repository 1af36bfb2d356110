//! Node trust on a real control plane (etcd, kube-apiserver,
//! kube-controller-manager with its DaemonSet controller), the operator under
//! the RBAC of deploy/02-rbac.yaml. No kubelet runs here, so the test plays it
//! for the trust DaemonSet's pod: `privreg trust` runs exactly as the pod says,
//! on a temp node root, and the pod is reported Ready when the agent is.
//!
//! The story: the operator makes the DaemonSet with the settings the issue asks
//! for; a registry's `trustedNodes`/`desiredNodes`/`TrustDistributed` follow the
//! agent; the node gets the registry's files and /etc/hosts line; a CA rotation
//! publishes both CAs, waits for the node, switches the server certificate,
//! then drops the old CA after the overlap; deleting the registry removes the
//! node's files; the chart's pre-delete hook (`privreg trust-uninstall`, under
//! its own Role) has every agent remove what privreg wrote; deleting the
//! operator's Deployment removes the DaemonSet and the bundle. (Refusing a conflicting or disallowed host name is
//! proven on the real control plane by tests/tenancy.rs.)

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use privreg::api::PrivateRegistry;
use privreg::operator::daemonset::{BUNDLE_HASH_ANNOTATION, DAEMONSET_NAME, UNINSTALL_MODE};

use common::cluster::{ControlPlane, eventually};
use common::kubelet::ensure_node;
use common::operator::{Operator, apply_docs, condition, install, secret_text, verifies};
use common::trust_pod::{OPERATOR_NS, daemonset_hash, node_root, run_trust_pod, wait_for_bundle};

const NS: &str = "team-a";
const TIMEOUT: Duration = Duration::from_secs(90);

async fn registry_status(api: &Api<PrivateRegistry>, name: &str) -> PrivateRegistry {
    api.get(name).await.unwrap()
}

/// The trust fields of the status: (trusted, desired, TrustDistributed status, reason).
fn trust(pr: &PrivateRegistry) -> (Option<i32>, Option<i32>, Option<(String, String)>) {
    let s = pr.status.as_ref();
    (
        s.and_then(|s| s.trusted_nodes),
        s.and_then(|s| s.desired_nodes),
        condition(pr, "TrustDistributed"),
    )
}

async fn wait_trust(
    api: &Api<PrivateRegistry>,
    name: &str,
    want: (Option<i32>, Option<i32>, &str, &str),
) -> PrivateRegistry {
    eventually(
        &format!("{name} trust status {want:?}"),
        TIMEOUT,
        || async {
            let pr = registry_status(api, name).await;
            let (t, d, c) = trust(&pr);
            let (s, r) = c?;
            ((t, d, s.as_str(), r.as_str()) == want).then_some(pr)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_trusts_every_registry_and_the_status_says_so() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(cp) = ControlPlane::start().await else {
        return;
    };
    let admin: Client = cp.client().await;
    install(&admin, &[NS]).await;
    let (_, op_kubeconfig) = cp
        .client_for_service_account(OPERATOR_NS, "privreg-operator")
        .await;
    // The operator's Deployment (as deploy/03-operator.yaml names it; no pod
    // of it runs: the operator runs as a process here). It owns the DaemonSet
    // and the bundle.
    let owner = Api::<Deployment>::namespaced(admin.clone(), OPERATOR_NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "privreg-operator", "namespace": OPERATOR_NS},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "privreg-operator"}},
                    "template": {
                        "metadata": {"labels": {"app": "privreg-operator"}},
                        "spec": {"containers": [{"name": "operator", "image": "privreg:test"}]}
                    }
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // A short overlap, so the whole CA rotation fits in the test.
    let operator = Operator::start_with(
        &op_kubeconfig,
        "operator-trust",
        &[
            "--ca-overlap-seconds",
            "5",
            "--owner-deployment",
            "privreg-operator",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    ensure_node(&admin, "node-1").await;

    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
        "metadata": {"name": "reg", "namespace": NS},
        "spec": {"trust": {"hostsEntry": true}}
    }))
    .unwrap();
    registries
        .create(&PostParams::default(), &pr)
        .await
        .unwrap();

    // The bundle lists the registry, and the DaemonSet expects that bundle.
    let (json, hash) = wait_for_bundle(&admin, "the bundle lists team-a/reg", |json| {
        json.contains("\"team-a/reg\"")
    })
    .await;
    assert!(!json.contains("PRIVATE KEY"));

    // --- The DaemonSet, as the issue specifies it -------------------------------
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let ds = dss.get(DAEMONSET_NAME).await.unwrap();
    let template = ds.spec.as_ref().unwrap().template.clone();
    assert_eq!(
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[BUNDLE_HASH_ANNOTATION],
        hash
    );
    // Owned by the operator's Deployment, as is the bundle.
    let owned_by_operator = |refs: Option<&Vec<OwnerReference>>| {
        refs.is_some_and(|r| {
            r.iter()
                .any(|o| o.kind == "Deployment" && Some(&o.uid) == owner.metadata.uid.as_ref())
        })
    };
    assert!(owned_by_operator(ds.metadata.owner_references.as_ref()));
    let bundle_cm = Api::<ConfigMap>::namespaced(admin.clone(), OPERATOR_NS)
        .get("privreg-trust-bundle")
        .await
        .unwrap();
    assert!(owned_by_operator(
        bundle_cm.metadata.owner_references.as_ref()
    ));
    let pod = template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.host_network, None);
    let host_paths: Vec<String> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.host_path.as_ref().map(|h| h.path.clone()))
        .collect();
    assert_eq!(
        host_paths,
        [
            "/etc/containerd",
            "/etc/containerd/certs.d",
            "/etc/docker/certs.d",
            "/etc/containers/certs.d",
            "/etc/hosts",
            "/var/lib/privreg-trust"
        ]
    );
    let container = &pod.containers[0];
    // The operator's own image (the harness runs it with --image privreg:test).
    assert_eq!(container.image.as_deref(), Some("privreg:test"));
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].operator.as_deref(),
        Some("Exists")
    );
    assert!(container.readiness_probe.is_some());

    // Before any agent is Ready: no node trusts the registry.
    eventually("the DaemonSet counts node-1", TIMEOUT, || async {
        let ds = dss.get(DAEMONSET_NAME).await.ok()?;
        (ds.status?.desired_number_scheduled == 1).then_some(())
    })
    .await;
    wait_trust(
        &registries,
        "reg",
        (Some(0), Some(1), "False", "Distributing"),
    )
    .await;

    // --- The agent on node-1, as the pod says --------------------------------
    let root = node_root(dir.path());
    let node = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    assert_eq!(node.expected, hash);
    let pr = wait_trust(
        &registries,
        "reg",
        (Some(1), Some(1), "True", "AllNodesTrust"),
    )
    .await;
    let status = pr.status.clone().unwrap();
    let ip = status.cluster_ip.clone().expect("a ClusterIP");
    let endpoint = status.endpoint.clone().unwrap();
    assert_eq!(endpoint, "reg.team-a.svc:5000");
    // The node's files: the CA the registry's ConfigMap publishes.
    let ca = Api::<ConfigMap>::namespaced(admin.clone(), NS)
        .get("reg-ca")
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("ca.crt")
        .unwrap();
    let certs_d = root.join("etc/containerd/certs.d");
    assert_eq!(
        std::fs::read_to_string(certs_d.join(&endpoint).join("ca.crt")).unwrap(),
        ca
    );
    let hosts_toml = std::fs::read_to_string(certs_d.join(&endpoint).join("hosts.toml")).unwrap();
    assert!(
        hosts_toml.contains(&format!("[host.\"https://{ip}:5000\"]")),
        "{hosts_toml}"
    );
    assert!(certs_d.join(format!("{ip}:5000")).join("ca.crt").is_file());
    let etc_hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap();
    assert!(
        etc_hosts.starts_with("127.0.0.1 localhost\n"),
        "{etc_hosts}"
    );
    assert!(
        etc_hosts.contains(&format!("{ip} reg.team-a.svc")),
        "{etc_hosts}"
    );

    // --- CA rotation with overlap, on request ---------------------------------
    let old_ca = ca.clone();
    let ca_configmap = || async {
        Api::<ConfigMap>::namespaced(admin.clone(), NS)
            .get("reg-ca")
            .await
            .ok()?
            .data?
            .remove("ca.crt")
    };
    let signing_ca = || async {
        let s = Api::<Secret>::namespaced(admin.clone(), NS)
            .get("reg-tls")
            .await
            .ok()?;
        Some(secret_text(&s, "ca.crt"))
    };
    registries
        .patch(
            "reg",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"privreg.dev/rotate-ca": "2026-12-03"}}
            })),
        )
        .await
        .unwrap();
    // 1. Both CAs are published; the old one still signs.
    let both = eventually("the CA ConfigMap carries both CAs", TIMEOUT, || async {
        let pem = ca_configmap().await?;
        (pem.matches("BEGIN CERTIFICATE").count() == 2 && pem.starts_with(old_ca.trim_end()))
            .then_some(pem)
    })
    .await;
    // 2. The node's agent still runs the old pod, on a bundle without the new
    // CA: the operator waits (longer than its 10 s poll) and does not switch.
    wait_trust(
        &registries,
        "reg",
        (Some(0), Some(1), "False", "Distributing"),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        signing_ca().await.unwrap(),
        old_ca,
        "switched before the nodes trusted the new CA"
    );
    // The DaemonSet rolled: the next pod's agent writes both CAs and is Ready.
    drop(node);
    let node = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    let on_node = std::fs::read_to_string(certs_d.join(&endpoint).join("ca.crt")).unwrap();
    assert_eq!(on_node.matches("BEGIN CERTIFICATE").count(), 2, "{on_node}");
    // 3. Every node trusts both: the new CA signs the server certificate.
    let new_ca = eventually(
        "the server certificate comes from the new CA",
        TIMEOUT,
        || async {
            let signing = signing_ca().await?;
            (signing != old_ca && both.contains(signing.trim_end())).then_some(signing)
        },
    )
    .await;
    let tls = Api::<Secret>::namespaced(admin.clone(), NS)
        .get("reg-tls")
        .await
        .unwrap();
    assert!(verifies(
        &new_ca,
        &secret_text(&tls, "tls.crt"),
        "reg.team-a.svc"
    ));
    // 4. After the overlap the old CA is dropped, and the nodes follow.
    eventually("the old CA is dropped", TIMEOUT, || async {
        (ca_configmap().await?.trim_end() == new_ca.trim_end()).then_some(())
    })
    .await;
    let old_body: String = old_ca.lines().filter(|l| !l.starts_with("-----")).collect();
    wait_for_bundle(
        &admin,
        "the bundle and the DaemonSet drop the old CA",
        |json| !json.replace("\\n", "").contains(&old_body),
    )
    .await;
    drop(node);
    let mut node = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    wait_trust(
        &registries,
        "reg",
        (Some(1), Some(1), "True", "AllNodesTrust"),
    )
    .await;
    assert_eq!(
        std::fs::read_to_string(certs_d.join(&endpoint).join("ca.crt"))
            .unwrap()
            .trim_end(),
        new_ca.trim_end()
    );

    // --- Deleting the registry removes its trust from the node ---------------
    registries
        .delete("reg", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_bundle(&admin, "the bundle drops team-a/reg", |json| {
        !json.contains("\"team-a/reg\"")
    })
    .await;
    // The kubelet refreshes the mounted ConfigMap; the running agent follows it.
    node.refresh_volume(&admin).await;
    node.agent
        .wait_for("the registry's files are gone", TIMEOUT, |_| {
            !certs_d.join(&endpoint).exists()
                && !certs_d.join(format!("{ip}:5000")).exists()
                && std::fs::read_to_string(root.join("etc/hosts")).unwrap()
                    == "127.0.0.1 localhost\n"
        });
    // The new bundle rolled the DaemonSet: the next pod (on the new hash) is Ready too.
    let old_pod = node.pod_name.clone();
    drop(node);
    let next = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    assert_ne!(next.pod_name, old_pod);

    // --- The chart's pre-delete hook: node trust uninstalled everywhere -------
    let pr2: PrivateRegistry = serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
        "metadata": {"name": "reg2", "namespace": NS},
        "spec": {"trust": {"hostsEntry": true}}
    }))
    .unwrap();
    registries
        .create(&PostParams::default(), &pr2)
        .await
        .unwrap();
    wait_for_bundle(&admin, "the bundle lists team-a/reg2", |json| {
        json.contains("\"team-a/reg2\"")
    })
    .await;
    drop(next);
    let node = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    wait_trust(
        &registries,
        "reg2",
        (Some(1), Some(1), "True", "AllNodesTrust"),
    )
    .await;
    let endpoint2 = certs_d.join("reg2.team-a.svc:5000");
    assert!(endpoint2.join("ca.crt").is_file());
    assert!(
        std::fs::read_to_string(root.join("etc/hosts"))
            .unwrap()
            .contains("reg2.team-a.svc")
    );
    // `privreg trust-uninstall` under exactly the hook's Role (the chart's).
    apply_docs(
        &admin,
        vec![
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "privreg-trust-uninstall", "namespace": OPERATOR_NS},
                "rules": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["privreg-uninstall"], "verbs": ["get", "patch", "delete"]}
                ]
            }),
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "privreg-trust-uninstall", "namespace": OPERATOR_NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "privreg-trust-uninstall"},
                "subjects": [{"kind": "ServiceAccount", "name": "privreg-trust-uninstall", "namespace": OPERATOR_NS}]
            }),
        ],
    )
    .await;
    let (_, hook_kubeconfig) = cp
        .client_for_service_account(OPERATOR_NS, "privreg-trust-uninstall")
        .await;
    let hook_log = dir.path().join("trust-uninstall.log");
    let mut hook = std::process::Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args([
            "trust-uninstall",
            "--namespace",
            OPERATOR_NS,
            "--timeout-seconds",
            "120",
        ])
        .env("KUBECONFIG", &hook_kubeconfig)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&hook_log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("trust-uninstall.err")).unwrap())
        .spawn()
        .unwrap();
    // The operator switches the DaemonSet; the next pods uninstall and stay Ready.
    eventually("the DaemonSet uninstalls", TIMEOUT, || async {
        (daemonset_hash(&admin).await? == UNINSTALL_MODE).then_some(())
    })
    .await;
    drop(node);
    let node = run_trust_pod(&admin, "node-1", &root, dir.path()).await;
    let status = eventually("privreg trust-uninstall finishes", TIMEOUT, || {
        let status = hook.try_wait().unwrap();
        async move { status }
    })
    .await;
    let said = std::fs::read_to_string(&hook_log).unwrap();
    assert!(
        status.success(),
        "{status}: {said}{}",
        std::fs::read_to_string(dir.path().join("trust-uninstall.err")).unwrap()
    );
    assert!(said.contains("node trust removed: 1 of 1 nodes"), "{said}");
    assert!(!endpoint2.exists());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert!(!root.join("var/lib/privreg-trust/state.json").exists());
    drop(node);

    let log = operator.log();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    assert!(log.contains("trust bundle published"), "{log}");

    // --- Uninstalling the operator removes the DaemonSet and the bundle -----
    drop(operator);
    Api::<Deployment>::namespaced(admin.clone(), OPERATOR_NS)
        .delete("privreg-operator", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "the garbage collector removes the DaemonSet and the bundle",
        TIMEOUT,
        || async {
            let ds = dss.get_opt(DAEMONSET_NAME).await.ok()?;
            let cm = Api::<ConfigMap>::namespaced(admin.clone(), OPERATOR_NS)
                .get_opt("privreg-trust-bundle")
                .await
                .ok()?;
            (ds.is_none() && cm.is_none()).then_some(())
        },
    )
    .await;
}
