//! The operator must not be a confused deputy. On a real control plane, a tenant
//! whose only right is to manage PrivateRegistries in namespace `team-a` (a user
//! bound to a Role, not system:masters) tries to use the operator, which holds
//! cluster-wide rights, to do what RBAC forbids them:
//!
//! 1. read a Secret of their namespace (htpasswd and CA references, the image);
//! 2. take over, then delete, objects they did not create (name collisions);
//! 3. crash the operator for every namespace (an overflowing validity);
//! 4. make the operator spin (a 2 s certificate).
//!
//! Each attempt fails with the stated reason, and every foreign object keeps its
//! resourceVersion and content.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use privreg::api::PrivateRegistry;

use common::cluster::{ControlPlane, eventually};
use common::operator::{
    Operator, TIMEOUT, apply_docs, apply_file, condition, docs, install, repo_path,
};

const TENANT_NS: &str = "team-a";

fn registry(name: &str, spec: serde_json::Value) -> PrivateRegistry {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1",
        "kind": "PrivateRegistry",
        "metadata": {"name": name, "namespace": TENANT_NS},
        "spec": spec,
    }))
    .unwrap()
}

/// The tenant: may do anything with PrivateRegistries in team-a, nothing else.
async fn tenant_client(cp: &ControlPlane, admin: &Client) -> Client {
    apply_docs(
        admin,
        vec![
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "registry-owner", "namespace": TENANT_NS},
                "rules": [{"apiGroups": ["privreg.dev"], "resources": ["privateregistries"], "verbs": ["*"]}]
            }),
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "registry-owner", "namespace": TENANT_NS},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "registry-owner"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant"}]
            }),
        ],
    )
    .await;
    cp.client_for_user("tenant", &[]).await.0
}

/// What must not change: resourceVersion, owners, and content of an object.
async fn fingerprint<K>(admin: &Client, name: &str) -> (String, String)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object = Api::<K>::namespaced(admin.clone(), TENANT_NS)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut value = serde_json::to_value(&object).unwrap();
    // Status is written by others (kcm binds volumes); spec, data, owners and
    // labels are what a takeover would change.
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
        if let Some(meta) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("managedFields");
        }
    }
    (object.resource_version().unwrap(), value.to_string())
}

async fn foreign_state(admin: &Client) -> BTreeMap<&'static str, (String, String)> {
    BTreeMap::from([
        (
            "secret/app-db",
            fingerprint::<Secret>(admin, "app-db").await,
        ),
        (
            "secret/team-ca",
            fingerprint::<Secret>(admin, "team-ca").await,
        ),
        ("service/web", fingerprint::<Service>(admin, "web").await),
        (
            "secret/web-tls",
            fingerprint::<Secret>(admin, "web-tls").await,
        ),
        (
            "configmap/web-ca",
            fingerprint::<ConfigMap>(admin, "web-ca").await,
        ),
        (
            "pvc/web-data",
            fingerprint::<PersistentVolumeClaim>(admin, "web-data").await,
        ),
    ])
}

/// Objects another team member (with more rights than the tenant) made.
async fn create_foreign_objects(admin: &Client) {
    let secret = |name: &str, data: &[(&str, &str)], labels: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": TENANT_NS, "labels": labels},
            "stringData": data.iter().cloned().collect::<BTreeMap<_, _>>(),
        })
    };
    let ca = privreg::certs::generate_ca(
        "team CA",
        Duration::from_secs(86_400 * 30),
        privreg::certs::KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    apply_docs(
        admin,
        vec![
            secret("app-db", &[("password", "hunter2"), ("htpasswd", "x")], serde_json::json!({})),
            secret(
                "team-ca",
                &[("tls.crt", &ca.cert_pem), ("tls.key", &ca.key_pem)],
                serde_json::json!({}),
            ),
            secret("web-tls", &[("tls.crt", "web cert")], serde_json::json!({})),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": TENANT_NS},
                "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}
            }),
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "web-ca", "namespace": TENANT_NS},
                "data": {"ca.crt": "web's own CA"}
            }),
            serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "web-data", "namespace": TENANT_NS},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
            }),
        ],
    )
    .await;
}

async fn ready_reason(registries: &Api<PrivateRegistry>, name: &str) -> Option<(String, String)> {
    let pr = registries.get(name).await.ok()?;
    condition(&pr, "Ready")
}

async fn wait_for_reason(registries: &Api<PrivateRegistry>, name: &str, reason: &str) -> String {
    eventually(
        &format!("{name}: Ready=False {reason}"),
        TIMEOUT,
        || async {
            let pr = registries.get(name).await.ok()?;
            let c = pr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == reason).then_some(c.message)
        },
    )
    .await
}

/// Creates a registry as the tenant; it must be accepted.
async fn create(registries: &Api<PrivateRegistry>, name: &str, spec: serde_json::Value) {
    registries
        .create(&PostParams::default(), &registry(name, spec))
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

fn refused_422(result: Result<PrivateRegistry, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(e)) if e.code == 422 => e.message,
        other => panic!("admission must refuse with 422: {other:?}"),
    }
}

/// The CRD with its schema bounds stripped, as if applied by an older release:
/// the operator must hold the same line on its own.
fn crd_without_bounds() -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                for k in [
                    "x-kubernetes-validations",
                    "pattern",
                    "maxLength",
                    "maximum",
                    "minimum",
                    "maxItems",
                    "maxProperties",
                ] {
                    o.remove(k);
                }
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut crd = docs(&repo_path("crds/privreg.dev_privateregistries.yaml"))
        .pop()
        .unwrap();
    strip(&mut crd);
    crd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_use_the_operator_against_others() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    let admin = cp.client().await;
    install(&admin, &[TENANT_NS]).await;
    apply_file(&admin, "deploy/04-admission-policy.yaml").await;
    let (_, op_kubeconfig) = cp
        .client_for_service_account("privreg-system", "privreg-operator")
        .await;
    // The admin lets registries claim `*.internal` names (and their own
    // namespace's, the default).
    let operator = Operator::start_with(
        &op_kubeconfig,
        "operator-0",
        &[
            "--allowed-hostnames",
            "*.internal,*.{namespace}.svc,*.{namespace}.svc.{clusterDomain}",
        ],
    );
    let tenant = tenant_client(&cp, &admin).await;
    let registries: Api<PrivateRegistry> = Api::namespaced(tenant.clone(), TENANT_NS);
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), TENANT_NS);
    create_foreign_objects(&admin).await;

    // The baseline: RBAC alone keeps the tenant out of Secrets.
    let direct = Api::<Secret>::namespaced(tenant.clone(), TENANT_NS)
        .get("app-db")
        .await;
    assert!(matches!(direct, Err(kube::Error::Api(ref e)) if e.code == 403));
    let before = foreign_state(&admin).await;

    // --- 1. reading a Secret through the registry pod --------------------------
    create(
        &registries,
        "leak",
        serde_json::json!({"auth": {"htpasswdSecretRef": {"name": "app-db"}}}),
    )
    .await;
    let message = wait_for_reason(&registries, "leak", "SecretNotOptedIn").await;
    assert!(
        message.contains("privreg.dev/use=htpasswd"),
        "the message says how to opt in: {message}"
    );
    create(
        &registries,
        "signer",
        serde_json::json!({"tls": {"ca": {"secretRef": {"name": "team-ca"}}}}),
    )
    .await;
    wait_for_reason(&registries, "signer", "SecretNotOptedIn").await;
    // Nothing was made for either: no pod template mounts the Secret, no
    // certificate was signed with the team's CA.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), TENANT_NS);
    for name in ["leak", "signer"] {
        assert!(deployments.get_opt(name).await.unwrap().is_none());
        assert!(
            admin_secrets
                .get_opt(&format!("{name}-tls"))
                .await
                .unwrap()
                .is_none()
        );
    }
    // Choosing the program that would read the mounts: refused at admission.
    let message = refused_422(
        registries
            .create(
                &PostParams::default(),
                &registry("reader", serde_json::json!({"image": "evil.example/cat:1"})),
            )
            .await,
    );
    assert!(message.contains("not allowed"), "{message}");

    // With the owner's consent (the label), the Secret is used, and only its
    // htpasswd key is mounted.
    let users = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "users", "namespace": TENANT_NS, "labels": {"privreg.dev/use": "htpasswd"}},
        "stringData": {"htpasswd": "alice:$2y$05$abcdefghijklmnopqrstuu5Jd0ZrPiL3zVA.2HSU/rmOVnlPCmHj2", "other": "not for the registry"}
    });
    apply_docs(&admin, vec![users]).await;
    create(
        &registries,
        "authed",
        serde_json::json!({"auth": {"htpasswdSecretRef": {"name": "users"}}}),
    )
    .await;
    let dep = eventually("authed Deployment", TIMEOUT, || async {
        deployments.get_opt("authed").await.ok()?
    })
    .await;
    let auth_volume = dep
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "auth")
        .unwrap()
        .secret
        .unwrap();
    let items: Vec<String> = auth_volume
        .items
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(items, ["htpasswd"]);

    // --- 2. taking over objects of that name -----------------------------------
    create(&registries, "web", serde_json::json!({})).await;
    let message = wait_for_reason(&registries, "web", "NameConflict").await;
    assert!(message.contains("web"), "names the object: {message}");
    // Deleting the registry must not take the foreign objects with it.
    registries
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();

    // A retained volume of the registry's own is re-attached when it comes back.
    create(&registries, "keep", serde_json::json!({})).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), TENANT_NS);
    let kept = eventually("keep-data", TIMEOUT, || async {
        pvcs.get_opt("keep-data").await.ok()?
    })
    .await;
    registries
        .delete("keep", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "keep's Secrets collected",
        Duration::from_secs(90),
        || async {
            admin_secrets
                .get_opt("keep-tls")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    create(&registries, "keep", serde_json::json!({})).await;
    eventually(
        "keep re-created with its volume",
        Duration::from_secs(120),
        || async {
            let pr = registries.get("keep").await.ok()?;
            (condition(&pr, "CertificateReady")?.0 == "True").then_some(())
        },
    )
    .await;
    assert_eq!(
        pvcs.get("keep-data").await.unwrap().uid(),
        kept.uid(),
        "the same volume"
    );

    // --- 3. crashing the operator, 4. making it spin ------------------------------
    // All refused by admission (422), each with what it got wrong.
    for (spec, says) in [
        (
            serde_json::json!({"tls": {"ca": {"validity": "5000000000000h"}}}),
            "validity",
        ),
        (
            serde_json::json!({"tls": {"cert": {"validity": "2s", "renewBefore": "1s"}}}),
            "1h",
        ),
        (
            serde_json::json!({"tls": {"cert": {"validity": "3h", "renewBefore": "2h"}}}),
            "two thirds",
        ),
        (serde_json::json!({"storage": {"size": "9Ei"}}), "size"),
    ] {
        let message = refused_422(
            registries
                .create(&PostParams::default(), &registry("hostile", spec))
                .await,
        );
        assert!(message.contains(says), "{message}");
    }

    // The same attacks past a CRD without bounds: the operator refuses them
    // itself, stays up, and keeps serving everyone else.
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    let bounded = docs(&repo_path("crds/privreg.dev_privateregistries.yaml"))
        .pop()
        .unwrap();
    crds.patch(
        "privateregistries.privreg.dev",
        &PatchParams::apply("privreg-test").force(),
        &Patch::Apply(crd_without_bounds()),
    )
    .await
    .unwrap();
    let admin_registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), TENANT_NS);
    eventually("the unbounded CRD is served", TIMEOUT, || async {
        admin_registries
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &registry(
                    "probe",
                    serde_json::json!({"tls": {"cert": {"validity": "2s", "renewBefore": "1s"}}}),
                ),
            )
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    for (name, spec) in [
        (
            "crash",
            serde_json::json!({"tls": {"ca": {"validity": "5000000000000h"}}}),
        ),
        (
            "spin",
            serde_json::json!({"tls": {"cert": {"validity": "2s", "renewBefore": "1s"}}}),
        ),
    ] {
        registries
            .create(&PostParams::default(), &registry(name, spec))
            .await
            .unwrap();
        let message = wait_for_reason(&registries, name, "InvalidSpec").await;
        assert!(message.contains("between"), "{message}");
    }
    let reconciles = operator.reconciles().await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle = operator.reconciles().await.unwrap() - reconciles;
    assert!(
        idle < 10,
        "refused registries must not spin: {idle} reconciles in 10 s"
    );
    // Everyone else is still served.
    create(&registries, "after", serde_json::json!({})).await;
    eventually("a later registry is reconciled", TIMEOUT, || async {
        let pr = registries.get("after").await.ok()?;
        (condition(&pr, "CertificateReady")?.0 == "True").then_some(())
    })
    .await;
    crds.patch(
        "privateregistries.privreg.dev",
        &PatchParams::apply("privreg-test").force(),
        &Patch::Apply(bounded),
    )
    .await
    .unwrap();

    // --- 5. capturing names every node trusts ---------------------------------
    // A name the admin did not allow (here: the world's own registry).
    create(
        &registries,
        "impostor",
        serde_json::json!({"hostname": "registry.k8s.io", "port": 443, "trust": {"hostsEntry": true}}),
    )
    .await;
    wait_for_reason(&registries, "impostor", "HostnameNotAllowed").await;
    // An allowed name held by another registry: the first claimant keeps it.
    create(
        &registries,
        "first",
        serde_json::json!({"hostname": "registry.internal"}),
    )
    .await;
    eventually("first holds registry.internal", TIMEOUT, || async {
        let pr = registries.get("first").await.ok()?;
        (condition(&pr, "CertificateReady")?.0 == "True").then_some(())
    })
    .await;
    create(
        &registries,
        "second",
        serde_json::json!({"hostname": "registry.internal"}),
    )
    .await;
    let message = wait_for_reason(&registries, "second", "HostnameConflict").await;
    assert!(message.contains("team-a/first"), "{message}");
    let bundles: Api<ConfigMap> = Api::namespaced(admin.clone(), "privreg-system");
    let bundle = eventually("the holder is in the bundle", TIMEOUT, || async {
        let text = bundles
            .get_opt("privreg-trust-bundle")
            .await
            .ok()??
            .data?
            .remove("bundle.json")?;
        text.contains("team-a/first").then_some(text)
    })
    .await;
    for outsider in ["team-a/second", "team-a/impostor", "registry.k8s.io"] {
        assert!(!bundle.contains(outsider), "{outsider} in {bundle}");
    }
    assert_eq!(
        condition(&registries.get("first").await.unwrap(), "CertificateReady")
            .unwrap()
            .0,
        "True",
        "the holder is unaffected"
    );

    // --- nothing foreign was read into a pod, changed, adopted or deleted --------
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(foreign_state(&admin).await, before);
    for name in ["leak", "signer", "web"] {
        assert_ne!(
            ready_reason(&registries, name).await.map(|r| r.1),
            Some("Ready".to_owned())
        );
    }
    let log = operator.log();
    assert!(!log.contains("PRIVATE KEY"), "keys never reach the log");
    assert!(
        !log.contains("hunter2"),
        "Secret data never reaches the log"
    );
    assert!(!log.contains("panicked"), "no reconcile panicked");
    drop(operator);

    namespaced_operator_sees_only_its_namespaces(&cp, &admin).await;
    cp.stop();
}

/// The chart's namespaced mode, for real: an operator under exactly the RBAC the
/// chart renders for `watchNamespaces: [team-b]` (Roles, nothing cluster-wide)
/// serves team-b and never sees team-a.
async fn namespaced_operator_sees_only_its_namespaces(cp: &ControlPlane, admin: &Client) {
    let Some(helm) = common::tool("helm", "PRIVREG_HELM") else {
        return;
    };
    apply_docs(
        admin,
        ["team-b", "privreg-scoped"]
            .iter()
            .map(|n| serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
            .collect(),
    )
    .await;
    let out = std::process::Command::new(helm)
        .args(["template", "scoped"])
        .arg(repo_path("charts/privreg"))
        .args(["-n", "privreg-scoped", "--set", "watchNamespaces={team-b}"])
        .args(["--kube-version", common::cluster::kubernetes_version()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rbac: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|d| serde_norway::from_str::<serde_json::Value>(d).ok())
        .filter(|d| {
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "ClusterRole",
                "ClusterRoleBinding",
            ]
            .contains(&d["kind"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(
        rbac.iter()
            .all(|d| !d["kind"].as_str().unwrap().starts_with("Cluster")),
        "namespaced mode grants nothing cluster-wide"
    );
    apply_docs(admin, rbac).await;
    let (_, kubeconfig) = cp
        .client_for_service_account("privreg-scoped", "scoped-operator")
        .await;
    let scoped = Operator::start_with(
        &kubeconfig,
        "scoped-0",
        &[
            "--namespace",
            "privreg-scoped",
            "--watch-namespaces",
            "team-b",
        ],
    );
    let team_b: Api<PrivateRegistry> = Api::namespaced(admin.clone(), "team-b");
    let mut b1 = registry("b1", serde_json::json!({}));
    b1.metadata.namespace = Some("team-b".into());
    team_b.create(&PostParams::default(), &b1).await.unwrap();
    eventually("team-b's registry served", TIMEOUT, || async {
        let pr = team_b.get("b1").await.ok()?;
        (condition(&pr, "CertificateReady")?.0 == "True").then_some(())
    })
    .await;
    let bundles: Api<ConfigMap> = Api::namespaced(admin.clone(), "privreg-scoped");
    let bundle = eventually("its own trust bundle", TIMEOUT, || async {
        let text = bundles
            .get_opt("privreg-trust-bundle")
            .await
            .ok()??
            .data?
            .remove("bundle.json")?;
        text.contains("team-b/b1").then_some(text)
    })
    .await;
    assert!(!bundle.contains("team-a/"), "{bundle}");
    // team-a is invisible to it: a new registry there gets no status at all.
    let team_a: Api<PrivateRegistry> = Api::namespaced(admin.clone(), TENANT_NS);
    team_a
        .create(
            &PostParams::default(),
            &registry("unseen", serde_json::json!({})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(team_a.get("unseen").await.unwrap().status.is_none());
    let log = scoped.log();
    assert!(
        !log.contains("forbidden") && !log.contains(" 403"),
        "the Roles cover everything it does: {log}"
    );
}
