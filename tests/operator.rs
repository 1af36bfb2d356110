//! `privreg operator` against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager), running under exactly the RBAC of deploy/02-rbac.yaml
//! (a ServiceAccount token, not system:masters). No kubelet runs here, so the test
//! plays kubelet and provisioner: it binds a volume, starts `privreg serve` with
//! the Deployment's own arguments and mounted Secret, and marks the pod Ready.
//! One control plane for the whole story (starting one costs ~10 s).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use privreg::api::PrivateRegistry;

use common::cluster::ControlPlane;
use common::cluster::eventually;
use common::kubelet::{bind, ensure_node, report_ready};
use common::operator::{Operator, TIMEOUT, condition, install, secret_text, verifies};
use common::{free_port, https_client};

const NS: &str = "apps";
/// The story names its registry `registry.test`: the admin allows `*.test`.
/// Test host names; and no serving check: this control plane's ClusterIPs
/// (10.96.0.0/16) lead nowhere on the host, and the registry this test runs
/// listens on a loopback port (tests/recipe.rs and tests/realnode.rs check
/// that Ready waits for the Service to present the certificate).
const ALLOW_TEST_NAMES: &[&str] = &[
    "--allowed-hostnames",
    "*.test,*.{namespace}.svc",
    "--check-serving=false",
];

/// Resource versions of everything a registry owns.
async fn child_versions(client: &Client, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    for s in [format!("{name}-ca"), format!("{name}-tls")] {
        out.insert(
            format!("secret/{s}"),
            secrets.get(&s).await.unwrap().resource_version().unwrap(),
        );
    }
    let cm: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    out.insert(
        "cm".into(),
        cm.get(&format!("{name}-ca"))
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    let pvc: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    out.insert(
        "pvc".into(),
        pvc.get(&format!("{name}-data"))
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
    );
    let dep: Api<Deployment> = Api::namespaced(client.clone(), NS);
    out.insert(
        "deployment".into(),
        dep.get(name).await.unwrap().resource_version().unwrap(),
    );
    let svc: Api<Service> = Api::namespaced(client.clone(), NS);
    out.insert(
        "service".into(),
        svc.get(name).await.unwrap().resource_version().unwrap(),
    );
    out
}

/// Plays the volume provisioner: a PersistentVolume that kcm binds to the claim.
async fn provide_volume(admin: &Client, name: &str) {
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("pv-{name}")},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": format!("/tmp/privreg-pv-{name}")},
            "claimRef": {"namespace": NS, "name": format!("{name}-data")},
            "persistentVolumeReclaimPolicy": "Retain"
        }
    }))
    .unwrap();
    pvs.create(&PostParams::default(), &pv).await.unwrap();
}

/// Plays kubelet for the registry pod: a Node, the pod bound to it, `privreg serve`
/// started with the container's args over the mounted Secret and volume, and the
/// pod reported Ready once the server answers.
struct Kubelet {
    serve: Option<Child>,
    pub port: u16,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn run_registry_pod(admin: &Client, name: &str, dir: &Path) -> Kubelet {
    let dep: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let deployment = dep.get(name).await.unwrap();
    let pod_spec = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod_spec.containers[0];
    // The Secret volume, as kubelet would project it.
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let tls_volume = pod_spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .unwrap();
    let secret = secrets
        .get(
            tls_volume
                .secret
                .as_ref()
                .unwrap()
                .secret_name
                .as_deref()
                .unwrap(),
        )
        .await
        .unwrap();
    for (k, v) in secret.data.unwrap() {
        std::fs::write(tls_dir.join(k), v.0).unwrap();
    }
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let mounts: BTreeMap<String, PathBuf> = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| {
            let local = if m.name == "tls" {
                tls_dir.clone()
            } else {
                data_dir.clone()
            };
            (m.mount_path.clone(), local)
        })
        .collect();
    let port = free_port();
    let metrics = free_port();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            if a == "0.0.0.0:5000" {
                return format!("127.0.0.1:{port}");
            }
            if a == "0.0.0.0:5001" {
                return format!("127.0.0.1:{metrics}");
            }
            // The claim is a directory on the test machine's disk: the
            // free-space threshold is the harness's, not a share of that disk.
            if a.starts_with("--min-free-space=") {
                return "--min-free-space=64Mi".to_owned();
            }
            for (mount, local) in &mounts {
                if let Some(rest) = a.strip_prefix(mount.as_str()) {
                    return format!("{}{rest}", local.display());
                }
            }
            a
        })
        .collect();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let serve = Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args(&args)
        .envs(
            container
                .env
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.name, e.value.unwrap_or_default())),
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let kubelet = Kubelet {
        serve: Some(serve),
        port,
    };
    // Readiness as the probe sees it: the registry answers.
    let ca = tls_dir.join("ca.crt");
    let client = https_client(&ca);
    eventually("registry pod answers", TIMEOUT, || {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("https://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    // Report the pod Running and Ready on a node, as kubelet would.
    ensure_node(admin, "node-1").await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let pod = eventually(
        "registry pod created by the ReplicaSet",
        TIMEOUT,
        || async {
            pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
        },
    )
    .await;
    bind(admin, &pod, "node-1").await;
    report_ready(admin, &pod, Some("10.244.0.10")).await;
    kubelet
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_registries_against_a_real_apiserver() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    let admin = cp.client().await;
    install(&admin, &[NS]).await;
    let (_op_client, op_kubeconfig) = cp
        .client_for_service_account("privreg-system", "privreg-operator")
        .await;
    let work = tempfile::tempdir().unwrap();
    let mut operator = Operator::start_with(&op_kubeconfig, "operator-0", ALLOW_TEST_NAMES);
    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);

    // --- admission refuses nonsense before the operator sees it ---------------
    let bad: PrivateRegistry = serde_norway::from_str(&format!(
        "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: bad, namespace: {NS}}}\nspec: {{port: 70000}}\n"
    ))
    .unwrap();
    let refused = registries.create(&PostParams::default(), &bad).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 422),
        "{refused:?}"
    );

    // --- create: every object appears with the right content -------------------
    let pr: PrivateRegistry = serde_norway::from_str(&format!(
        "apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {{name: reg, namespace: {NS}}}
spec:
  hostname: registry.test
  storage: {{size: 1Gi}}
  tls: {{cert: {{extraSANs: ['127.0.0.1']}}}}
"
    ))
    .unwrap();
    registries
        .create(&PostParams::default(), &pr)
        .await
        .unwrap();
    let pr = eventually("certificate issued", TIMEOUT, || async {
        let pr = registries.get("reg").await.ok()?;
        (condition(&pr, "CertificateReady")?.0 == "True").then_some(pr)
    })
    .await;
    let status = pr.status.clone().unwrap();
    assert_eq!(status.endpoint.as_deref(), Some("registry.test:5000"));
    assert_eq!(status.observed_generation, pr.metadata.generation);
    let svc: Service = Api::namespaced(admin.clone(), NS).get("reg").await.unwrap();
    let cluster_ip = svc.spec.unwrap().cluster_ip.unwrap();
    assert_eq!(status.cluster_ip.as_deref(), Some(cluster_ip.as_str()));
    let ca_secret = secrets.get("reg-ca").await.unwrap();
    let tls = secrets.get("reg-tls").await.unwrap();
    let ca_pem = secret_text(&ca_secret, "tls.crt");
    let leaf_pem = secret_text(&tls, "tls.crt");
    for name in [
        "registry.test",
        "reg.apps.svc",
        "reg.apps.svc.cluster.local",
        cluster_ip.as_str(),
        "127.0.0.1",
    ] {
        assert!(
            verifies(&ca_pem, &leaf_pem, name),
            "the leaf must verify for {name}"
        );
    }
    assert!(!verifies(&ca_pem, &leaf_pem, "other.test"));
    let cm: ConfigMap = Api::namespaced(admin.clone(), NS)
        .get("reg-ca")
        .await
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap()["ca.crt"], ca_pem);
    assert_eq!(
        status.ca_fingerprint,
        Some(privreg::certs::inspect(&ca_pem).unwrap().sha256_fingerprint)
    );
    let pvc: PersistentVolumeClaim = Api::namespaced(admin.clone(), NS)
        .get("reg-data")
        .await
        .unwrap();
    assert!(
        pvc.owner_references().is_empty(),
        "the volume outlives the registry by default"
    );
    let dep: Deployment = Api::namespaced(admin.clone(), NS).get("reg").await.unwrap();
    assert_eq!(dep.owner_references()[0].uid, pr.uid().unwrap());
    for o in [
        ca_secret.owner_references(),
        tls.owner_references(),
        cm.owner_references(),
    ] {
        assert_eq!(o[0].name, "reg");
    }
    // --- a registry pod's problem reaches the status through the pod watch ----
    // (the operator's periodic look is minutes apart; this must take seconds).
    // A pod with the registry's labels, in the state a kubelet reports for an
    // image it cannot pull.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let failing: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "reg-failing", "labels": {
            "app.kubernetes.io/name": "privreg",
            "app.kubernetes.io/instance": "reg",
            "app.kubernetes.io/component": "registry"}},
        "spec": {"containers": [{"name": "registry", "image": "privreg:test"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &failing).await.unwrap();
    pods.patch_status(
        "reg-failing",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"containerStatuses": [{
            "name": "registry", "image": "privreg:test", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"privreg:test\""}}}]}})),
    )
    .await
    .unwrap();
    let watched = std::time::Instant::now();
    eventually(
        "the pod's problem in the status",
        Duration::from_secs(60),
        || async {
            let pr = registries.get("reg").await.ok()?;
            let available = pr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Available")?;
            (available.reason == "RegistryPodFailing"
                && available.message.contains("ImagePullBackOff"))
            .then_some(())
        },
    )
    .await;
    eprintln!("pod problem reached the status in {:?}", watched.elapsed());
    pods.delete("reg-failing", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    // No private key anywhere public.
    let public =
        serde_json::to_string(&(registries.get("reg").await.unwrap(), cm.clone())).unwrap();
    assert!(!public.contains("PRIVATE KEY"));
    // Events tell the user what happened.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), NS);
    let reasons = eventually("events recorded", TIMEOUT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
        (reasons.contains(&"CAGenerated".to_owned())
            && reasons.contains(&"CertificateIssued".to_owned()))
        .then_some(list)
    })
    .await;
    assert!(
        !serde_json::to_string(&reasons)
            .unwrap()
            .contains("PRIVATE KEY")
    );
    // The trust bundle names the registry by hostname and by ClusterIP.
    let bundles: Api<ConfigMap> = Api::namespaced(admin.clone(), "privreg-system");
    let bundle = eventually("trust bundle lists the registry", TIMEOUT, || async {
        let cm = bundles.get_opt("privreg-trust-bundle").await.ok()??;
        let text = cm.data?.get("bundle.json")?.clone();
        text.contains("apps/reg").then_some(text)
    })
    .await;
    assert!(
        bundle.contains(&format!("{cluster_ip}:5000")) && bundle.contains("registry.test:5000")
    );

    // --- a second reconcile writes nothing --------------------------------------
    let before = child_versions(&admin, "reg").await;
    let count = operator.reconciles().await.unwrap();
    let annotate = serde_json::json!({"metadata": {"annotations": {"test/nudge": "1"}}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .unwrap();
    let pr_version = registries.get("reg").await.unwrap().resource_version();
    eventually("another reconcile", TIMEOUT, || async {
        (operator.reconciles().await? > count).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        child_versions(&admin, "reg").await,
        before,
        "a settled reconcile changes nothing"
    );
    assert_eq!(
        registries.get("reg").await.unwrap().resource_version(),
        pr_version,
        "status not rewritten"
    );

    // --- the test plays provisioner and kubelet: Ready, and a real push ----------
    provide_volume(&admin, "reg").await;
    let pod_dir = work.path().join("pod");
    let mut kubelet = run_registry_pod(&admin, "reg", &pod_dir).await;
    // kcm binds the volume on its own schedule; bounded, generously.
    let ready = eventually("Ready=True", Duration::from_secs(180), || async {
        let pr = registries.get("reg").await.ok()?;
        if condition(&pr, "Ready")?.0 != "True" {
            eprintln!(
                "waiting for Ready: {:?}",
                pr.status.as_ref().map(|s| &s.conditions)
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            return None;
        }
        Some(pr)
    })
    .await;
    assert_eq!(condition(&ready, "StorageReady").unwrap().0, "True");
    assert_eq!(condition(&ready, "Available").unwrap().0, "True");
    // A client that trusts only the CA ConfigMap's certificate.
    let ca_file = work.path().join("ca-from-configmap.crt");
    std::fs::write(&ca_file, &cm.data.as_ref().unwrap()["ca.crt"]).unwrap();
    let client = https_client(&ca_file);
    let r = client
        .get(format!("https://127.0.0.1:{}/v2/", kubelet.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    if let Some(skopeo) = common::skopeo::Skopeo::find(&work.path().join("skopeo")) {
        let image = common::images::random_image(common::images::host_arch(), 2);
        let layout = work.path().join("layout");
        common::images::write_layout(&layout, &[("v1", &image.manifest)], image.blobs());
        let cert_dir = work.path().join("certs");
        std::fs::create_dir_all(&cert_dir).unwrap();
        std::fs::copy(&ca_file, cert_dir.join("ca.crt")).unwrap();
        skopeo.copy(
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://127.0.0.1:{}/team/app:v1", kubelet.port),
            false,
            &cert_dir,
        );
        let raw = skopeo.raw_manifest(
            &format!("127.0.0.1:{}/team/app:v1", kubelet.port),
            &cert_dir,
        );
        assert_eq!(raw, image.manifest.bytes);
    }

    // --- a new name: a new leaf from the same CA --------------------------------
    let ca_version = secrets.get("reg-ca").await.unwrap().resource_version();
    let rename = serde_json::json!({"spec": {"hostname": "registry2.test", "tls": {"cert": {"extraSANs": ["127.0.0.1", "10.1.2.3"]}}}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&rename))
        .await
        .unwrap();
    let renamed = eventually("leaf re-issued for the new names", TIMEOUT, || async {
        let t = secrets.get("reg-tls").await.ok()?;
        let pem = secret_text(&t, "tls.crt");
        (verifies(&ca_pem, &pem, "registry2.test") && verifies(&ca_pem, &pem, "10.1.2.3"))
            .then_some(pem)
    })
    .await;
    assert!(!verifies(&ca_pem, &renamed, "registry.test"));
    assert_eq!(
        secrets.get("reg-ca").await.unwrap().resource_version(),
        ca_version,
        "same CA"
    );
    // New names replace the registry pod (its template carries a hash of the
    // certificate's names, so the new pod starts with the new certificate):
    // the test plays kubelet for the swap, confirming the old pod's end.
    drop(kubelet);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    let old_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=reg"))
        .await
        .unwrap();
    let old_names: Vec<String> = old_pods.items.iter().map(|p| p.name_any()).collect();
    eventually("the registry pod is replaced", TIMEOUT, || async {
        for name in &old_names {
            let _ = pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
        }
        let now = pods
            .list(&ListParams::default().labels("app.kubernetes.io/instance=reg"))
            .await
            .ok()?;
        now.items
            .iter()
            .any(|p| !old_names.contains(&p.name_any()))
            .then_some(())
    })
    .await;
    kubelet = run_registry_pod(&admin, "reg", &work.path().join("pod-renamed")).await;

    // --- renewal happens on schedule -------------------------------------------
    // The shortest lifetimes admission allows (validity 3h, renewBefore 1h) would
    // make the test wait 2 h; instead the test, as admin, plants a certificate
    // from the registry's own CA, with the same names and policy, that is due
    // for renewal in 20 s. Nothing but the operator's scheduled requeue renews it.
    let short =
        serde_json::json!({"spec": {"tls": {"cert": {"validity": "3h", "renewBefore": "1h"}}}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&short))
        .await
        .unwrap();
    let issued = eventually("leaf issued with the 3h validity", TIMEOUT, || async {
        let tls = secrets.get("reg-tls").await.ok()?;
        let pem = secret_text(&tls, "tls.crt");
        let left = privreg::certs::inspect(&pem).ok()?.not_after - time::OffsetDateTime::now_utc();
        (left < time::Duration::hours(3) + time::Duration::minutes(1)).then_some(tls)
    })
    .await;
    let ca_secret = secrets.get("reg-ca").await.unwrap();
    let ca = privreg::certs::CertAndKey {
        cert_pem: secret_text(&ca_secret, "tls.crt"),
        key_pem: secret_text(&ca_secret, "tls.key"),
    };
    let sans = privreg::certs::inspect(&secret_text(&issued, "tls.crt"))
        .unwrap()
        .sans;
    let planted = privreg::certs::issue_server_cert(
        &ca,
        &sans,
        Duration::from_secs(3600 + 20),
        privreg::certs::KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let plant = serde_json::json!({"data": {
        "tls.crt": base64_encode(&planted.cert_pem),
        "tls.key": base64_encode(&planted.key_pem),
    }});
    secrets
        .patch("reg-tls", &PatchParams::default(), &Patch::Merge(&plant))
        .await
        .unwrap();
    let first = planted.cert_pem.clone();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        secret_text(&secrets.get("reg-tls").await.unwrap(), "tls.crt"),
        first,
        "a certificate not yet due is kept"
    );
    let renewed = eventually("scheduled renewal", Duration::from_secs(45), || async {
        let pem = secret_text(&secrets.get("reg-tls").await.ok()?, "tls.crt");
        (pem != first).then_some(pem)
    })
    .await;
    assert!(verifies(&ca_pem, &renewed, "registry2.test"));
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&"CertificateRenewed".to_owned()),
        "{reasons:?}"
    );
    let relax = serde_json::json!({"spec": {"tls": {"cert": {"validity": "2160h", "renewBefore": "720h"}}}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&relax))
        .await
        .unwrap();

    // --- a deleted TLS Secret comes back ----------------------------------------
    secrets
        .delete("reg-tls", &DeleteParams::default())
        .await
        .unwrap();
    eventually("TLS Secret restored", TIMEOUT, || async {
        let t = secrets.get_opt("reg-tls").await.ok()??;
        verifies(&ca_pem, &secret_text(&t, "tls.crt"), "registry2.test").then_some(())
    })
    .await;

    // --- a spec the operator refuses is reported and changes nothing that runs ---
    // (admission refuses most bad specs itself; an image the admin did not allow
    // is the operator's to refuse, since the allow-list is the operator's flag)
    let settled = eventually("settled after the restore", TIMEOUT, || async {
        let a = child_versions(&admin, "reg").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        (child_versions(&admin, "reg").await == a).then_some(a)
    })
    .await;
    let admission = registries
        .patch(
            "reg",
            &PatchParams::default(),
            &Patch::Merge(
                &serde_json::json!({"spec": {"tls": {"cert": {"validity": "1h", "renewBefore": "2h"}}}}),
            ),
        )
        .await;
    assert!(
        matches!(admission, Err(kube::Error::Api(ref e)) if e.code == 422),
        "{admission:?}"
    );
    let invalid = serde_json::json!({"spec": {"image": "evil.example/reader:1"}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&invalid))
        .await
        .unwrap();
    let refused = eventually("ImageNotAllowed reported", TIMEOUT, || async {
        let pr = registries.get("reg").await.ok()?;
        (condition(&pr, "Ready")? == ("False".into(), "ImageNotAllowed".into())).then_some(pr)
    })
    .await;
    assert_eq!(
        refused.status.as_ref().unwrap().observed_generation,
        refused.metadata.generation
    );
    assert_eq!(
        child_versions(&admin, "reg").await,
        settled,
        "an invalid spec changes nothing"
    );
    let back = serde_json::json!({"spec": {"image": null}});
    registries
        .patch("reg", &PatchParams::default(), &Patch::Merge(&back))
        .await
        .unwrap();
    eventually("Ready again", TIMEOUT, || async {
        (condition(&registries.get("reg").await.ok()?, "Ready")?.0 == "True").then_some(())
    })
    .await;

    // --- restarts: the operator (killed mid-flight) and the apiserver -----------
    // A second replica waits for the Lease; when the leader dies it takes over.
    let mut standby = Operator::start_with(&op_kubeconfig, "operator-1", ALLOW_TEST_NAMES);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(admin.clone(), "privreg-system");
    eventually("the standby waits", TIMEOUT, || async {
        standby
            .log()
            .contains("another replica leads")
            .then_some(())
    })
    .await;
    let holder = |l: k8s_openapi::api::coordination::v1::Lease| l.spec?.holder_identity;
    assert_eq!(
        holder(leases.get("privreg-operator").await.unwrap()).as_deref(),
        Some("operator-0")
    );
    operator.kill9();
    eventually("the standby takes the Lease", TIMEOUT, || async {
        (holder(leases.get("privreg-operator").await.ok()?)? == "operator-1").then_some(())
    })
    .await;
    secrets
        .delete("reg-tls", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the new leader reconciles", TIMEOUT, || async {
        secrets.get_opt("reg-tls").await.ok()?.map(|_| ())
    })
    .await;
    standby.kill9();
    // The first replica, restarted, takes the Lease back once it expires.
    secrets
        .delete("reg-tls", &DeleteParams::default())
        .await
        .unwrap();
    operator.spawn();
    eventually("converged after an operator restart", TIMEOUT, || async {
        secrets.get_opt("reg-tls").await.ok()?.map(|_| ())
    })
    .await;
    cp.restart_apiserver().await;
    let admin = cp.client().await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    secrets
        .delete("reg-tls", &DeleteParams::default())
        .await
        .unwrap();
    let restarted = Instant::now();
    eventually(
        // Each watch resumed after the restart meets one 410 Expired, and the
        // controller's watches share one backoff (capped at 2 s, see
        // `trigger_backoff`; about 90 s before the cap). Bounded, not fast.
        "converged after an apiserver restart",
        Duration::from_secs(180),
        || async { secrets.get_opt("reg-tls").await.ok()?.map(|_| ()) },
    )
    .await;
    println!(
        "converged {:.1?} after the apiserver restart",
        restarted.elapsed()
    );

    // --- delete: the garbage collector removes the children, the volume stays ---
    let doomed: PrivateRegistry = serde_norway::from_str(&format!(
        "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: scratch, namespace: {NS}}}\nspec: {{storage: {{retainOnDelete: false, size: 1Gi}}}}\n"
    ))
    .unwrap();
    registries
        .create(&PostParams::default(), &doomed)
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NS);
    // The registry watch may still be recovering from the apiserver restart
    // (410 Expired until the new watch cache passes its resourceVersion; see
    // above): bounded as generously.
    eventually("scratch volume claim", Duration::from_secs(180), || async {
        pvcs.get_opt("scratch-data").await.ok()?.map(|_| ())
    })
    .await;
    println!(
        "a new registry's volume claim {:.1?} after the apiserver restart",
        restarted.elapsed()
    );
    for name in ["reg", "scratch"] {
        registries
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    eventually(
        "children garbage-collected",
        Duration::from_secs(90),
        || async {
            let gone = deployments.get_opt("reg").await.ok()?.is_none()
                && secrets.get_opt("reg-ca").await.ok()?.is_none()
                && secrets.get_opt("reg-tls").await.ok()?.is_none()
                && cms.get_opt("reg-ca").await.ok()?.is_none();
            gone.then_some(())
        },
    )
    .await;
    assert!(
        pvcs.get_opt("reg-data").await.unwrap().is_some(),
        "retainOnDelete (default) keeps the volume"
    );
    eventually(
        "the unretained volume goes",
        Duration::from_secs(90),
        || async {
            let p = pvcs.get_opt("scratch-data").await.ok()?;
            p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    let bundles: Api<ConfigMap> = Api::namespaced(admin.clone(), "privreg-system");
    eventually("trust bundle entry removed", TIMEOUT, || async {
        let text = bundles
            .get("privreg-trust-bundle")
            .await
            .ok()?
            .data?
            .get("bundle.json")?
            .clone();
        (!text.contains("apps/reg")).then_some(())
    })
    .await;
    drop(kubelet);
    let log = operator.log();
    assert!(!log.contains("PRIVATE KEY"), "keys never reach the log");
    cp.stop();
}
