//! A PrivateRegistry on an S3 bucket, reconciled by `privreg operator` on a real
//! control plane (etcd, kube-apiserver, kube-controller-manager) under exactly
//! the RBAC of deploy/02-rbac.yaml, with a real SeaweedFS on loopback:
//!
//! - admission refuses more than one replica on a volume, and an endpoint with
//!   anything but a scheme, host and port;
//! - the credentials Secret is used only once its owner labels it, and until
//!   then nothing is created;
//! - then: no volume claim, a RollingUpdate Deployment of two replicas spread
//!   over nodes, mounting the two credential keys only, and a
//!   PodDisruptionBudget that the disruption controller applies to the pods;
//! - the test plays kubelet for both replicas (`privreg serve` with the
//!   Deployment's own arguments over the projected Secret): what one replica
//!   accepts, the other serves, from the bucket;
//! - an eviction of one pod is allowed, of the second refused (the budget).

mod common;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, EvictParams, Patch, PatchParams, PostParams};
use privreg::api::PrivateRegistry;

use common::cluster::{ControlPlane, eventually};
use common::daemons::SeaweedFs;
use common::oci::{get_bytes, image_manifest, push_manifest, push_monolithic, random_bytes};
use common::operator::{Operator, TIMEOUT, condition, install};
use common::registry_pod::{registry_client, run_registry_pod};
use common::{free_port, tools_required};

const NS: &str = "team-s3";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn registry(spec: &str) -> PrivateRegistry {
    serde_norway::from_str(&format!(
        "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: reg, namespace: {NS}}}\nspec: {spec}\n"
    ))
    .unwrap()
}

/// The credentials Secret as its owner made it: the two keys, and (once they
/// consent) the label.
fn credentials(s3: &SeaweedFs, consent: bool) -> Secret {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-keys", "namespace": NS, "labels":
            if consent { serde_json::json!({"privreg.dev/use": "s3-credentials"}) }
            else { serde_json::json!({}) }},
        "stringData": {
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "notes": "not for the registry"
        }
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_s3_runs_two_replicas_with_a_disruption_budget() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let work = tempfile::tempdir().unwrap();
    let Some(s3) = SeaweedFs::start(work.path(), "images") else {
        assert!(!tools_required(), "SeaweedFS is required");
        return;
    };
    let Some(cp) = ControlPlane::start().await else {
        return;
    };
    let admin = cp.client().await;
    install(&admin, &[NS]).await;
    let (_op_client, op_kubeconfig) = cp
        .client_for_service_account("privreg-system", "privreg-operator")
        .await;
    let _operator = Operator::start_with(&op_kubeconfig, "operator-s3", &["--check-serving=false"]);
    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);

    // --- admission: replicas need a bucket; an endpoint is scheme://host:port --
    for spec in [
        "{replicas: 2}".to_owned(),
        "{storage: {size: 1Gi, s3: {bucket: images, credentialsSecretRef: {name: s3-keys}}}}"
            .to_owned(),
        "{storage: {s3: {endpoint: 'https://user:pw@s3.example', bucket: images, credentialsSecretRef: {name: s3-keys}}}}".to_owned(),
        "{storage: {s3: {bucket: images, prefix: '../team-b', credentialsSecretRef: {name: s3-keys}}}}".to_owned(),
    ] {
        let refused = registries.create(&PostParams::default(), &registry(&spec)).await;
        assert!(
            matches!(refused, Err(kube::Error::Api(ref e)) if e.code == 422),
            "{spec}: {refused:?}"
        );
    }

    // --- without the owner's consent, nothing is created ----------------------
    secrets
        .create(&PostParams::default(), &credentials(&s3, false))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let endpoint = format!("http://127.0.0.1:{}", s3.s3_port);
    let spec = format!(
        "{{replicas: 2, tls: {{cert: {{extraSANs: ['127.0.0.1']}}}}, storage: {{s3: {{endpoint: '{endpoint}', bucket: images, prefix: team-s3/reg, pathStyle: true, credentialsSecretRef: {{name: s3-keys}}}}}}}}"
    );
    registries
        .create(&PostParams::default(), &registry(&spec))
        .await
        .unwrap();
    eventually("refused without consent", TIMEOUT, || async {
        let pr = registries.get("reg").await.ok()?;
        let (status, reason) = condition(&pr, "Ready")?;
        (status == "False" && reason == "SecretNotOptedIn").then_some(())
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    assert!(deployments.get_opt("reg").await.unwrap().is_none());

    // --- consent: the objects of a bucket registry ------------------------------
    secrets
        .patch(
            "s3-keys",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"privreg.dev/use": "s3-credentials"}}}),
            ),
        )
        .await
        .unwrap();
    let labelled = std::time::Instant::now();
    // The operator watches Secrets that carry the consent label: the
    // Deployment follows the label within seconds, not after the refusals'
    // backoff (which has grown to minutes by now).
    let deployment = eventually("the Deployment", Duration::from_secs(30), || async {
        deployments.get_opt("reg").await.ok()?
    })
    .await;
    eprintln!(
        "refused for {:?}; Deployment {:?} after the label",
        labelled - started,
        labelled.elapsed()
    );
    let spec = deployment.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let strategy = spec.strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        strategy.rolling_update.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );
    let pod = spec.template.spec.unwrap();
    assert!(
        pod.topology_spread_constraints
            .unwrap_or_default()
            .iter()
            .any(|c| c.topology_key == "kubernetes.io/hostname")
    );
    let volumes = pod.volumes.unwrap_or_default();
    assert!(volumes.iter().all(|v| v.persistent_volume_claim.is_none()));
    let mounted: Vec<String> = volumes
        .iter()
        .filter_map(|v| v.secret.as_ref())
        .filter(|s| s.secret_name.as_deref() == Some("s3-keys"))
        .flat_map(|s| s.items.clone().unwrap_or_default())
        .map(|i| i.key)
        .collect();
    assert_eq!(mounted, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NS);
    assert!(
        claims.get_opt("reg-data").await.unwrap().is_none(),
        "no volume"
    );
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), NS);
    let budget = budgets.get("reg").await.unwrap();
    assert_eq!(budget.owner_references()[0].name, "reg");

    // --- two replicas, played: one accepts, the other serves -------------------
    let a = run_registry_pod(
        &admin,
        NS,
        "reg",
        "node-a",
        ([127, 0, 0, 1], free_port()).into(),
        &work.path().join("pod-a"),
    )
    .await;
    let b = run_registry_pod(
        &admin,
        NS,
        "reg",
        "node-b",
        ([127, 0, 0, 1], free_port()).into(),
        &work.path().join("pod-b"),
    )
    .await;
    assert_ne!(a.pod_name, b.pod_name, "two pods");
    assert!(
        a.args.iter().any(|arg| arg == "--s3-bucket=images"),
        "{:?}",
        a.args
    );
    let client = registry_client(&admin, NS, "reg").await;
    let (url_a, url_b) = (format!("https://{}", a.addr), format!("https://{}", b.addr));
    let config = random_bytes(512);
    let layer = random_bytes(3 << 20);
    push_monolithic(&client, &url_a, "app", config.clone())
        .await
        .unwrap();
    push_monolithic(&client, &url_a, "app", layer.clone())
        .await
        .unwrap();
    let manifest = image_manifest(OCI_MANIFEST, &config, &[&layer], serde_json::json!({}));
    let digest = push_manifest(&client, &url_a, "app", "v1", OCI_MANIFEST, manifest.clone())
        .await
        .unwrap();
    let (status, body) = get_bytes(&client, &format!("{url_b}/v2/app/manifests/v1")).await;
    assert_eq!(
        (status, body),
        (200, manifest),
        "the other replica serves it"
    );
    let layer_digest = common::sha256(&layer);
    let (status, body) = get_bytes(&client, &format!("{url_b}/v2/app/blobs/{layer_digest}")).await;
    assert_eq!(status, 200);
    assert!(body == layer, "the layer reads back identical");
    eprintln!(
        "{:?}: pushed {digest} through one replica, pulled through the other",
        started.elapsed()
    );

    // --- the budget: ready pods counted, one eviction allowed, not two --------
    let registry = eventually("Ready=True", TIMEOUT, || async {
        let pr = registries.get("reg").await.ok()?;
        (condition(&pr, "Ready")?.0 == "True").then_some(pr)
    })
    .await;
    assert_eq!(
        condition(&registry, "StorageReady").map(|c| c.1),
        Some("ObjectStorage".to_owned())
    );
    eventually("the budget allows one disruption", TIMEOUT, || async {
        let status = budgets.get("reg").await.ok()?.status?;
        (status.current_healthy == 2 && status.disruptions_allowed == 1).then_some(())
    })
    .await;
    eprintln!("{:?}: the budget counts both pods", started.elapsed());
    // A client that sees the budget's 429 instead of retrying it.
    let pods: Api<Pod> = Api::namespaced(cp.client_without_retry().await, NS);
    pods.evict(&a.pod_name, &EvictParams::default())
        .await
        .expect("the first eviction is allowed");
    let second = pods.evict(&b.pod_name, &EvictParams::default()).await;
    assert!(
        matches!(second, Err(kube::Error::Api(ref e)) if e.code == 429),
        "the second eviction must wait: {second:?}"
    );
    eprintln!("{:?}: evictions checked", started.elapsed());
}
