//! The test control plane is a real Kubernetes: kube-apiserver persists to etcd,
//! kube-controller-manager runs its controllers (garbage collection,
//! deployments, replicasets, serviceaccounts), and RBAC is enforced for
//! identities that are not `system:masters`. One control plane for all checks
//! (starting one costs tens of seconds).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, PodTemplateSpec, Secret,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

use common::cluster::eventually;
use common::cluster::{self, ControlPlane};

const KCM_TIMEOUT: Duration = Duration::from_secs(90);

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let ns: Api<Namespace> = Api::all(client.clone());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: meta(name),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_is_real() {
    let Some(mut cp) = ControlPlane::start().await else {
        return;
    };
    let client = cp.client().await;

    // The apiserver reports the pinned version.
    let v = client.apiserver_version().await.expect("GET /version");
    assert_eq!(v.git_version, cluster::kubernetes_version(), "{v:?}");

    namespace_and_configmap(&client).await;
    owner_reference_garbage_collection(&client).await;
    deployment_gets_replicaset_and_pods(&client).await;
    rbac_is_enforced(&cp, &client).await;
    service_account_token_identity(&cp, &client).await;
    scheduler_reports_no_nodes(&mut cp, &client).await;
    apiserver_restart_keeps_state(&mut cp, &client).await;
}

async fn namespace_and_configmap(client: &Client) {
    create_namespace(client, "smoke").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "smoke");
    let cm = ConfigMap {
        metadata: meta("hello"),
        data: Some(BTreeMap::from([("greeting".into(), "hi".into())])),
        ..Default::default()
    };
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let got = cms.get("hello").await.unwrap();
    assert_eq!(got.data.unwrap()["greeting"], "hi");
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    // Stored in etcd, listed back.
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(names.contains(&"hello".to_string()), "{names:?}");
    // The root CA publisher (kcm) puts kube-root-ca.crt into every namespace.
    eventually("kube-root-ca.crt in the new namespace", KCM_TIMEOUT, || {
        let cms = cms.clone();
        async move { cms.get_opt("kube-root-ca.crt").await.ok().flatten() }
    })
    .await;
}

async fn owner_reference_garbage_collection(client: &Client) {
    create_namespace(client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "gc");
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("owner"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: owner.name_any(),
                uid: owner.metadata.uid.clone().unwrap(),
                ..Default::default()
            }]),
            ..meta("dependent")
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    // An unowned bystander stays.
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: meta("bystander"),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let t = Instant::now();
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(
        "the dependent ConfigMap is garbage-collected",
        KCM_TIMEOUT,
        || {
            let cms = cms.clone();
            async move {
                match cms.get_opt("dependent").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    eprintln!("garbage collection took {:.1?}", t.elapsed());
    assert!(cms.get_opt("bystander").await.unwrap().is_some());
}

async fn deployment_gets_replicaset_and_pods(client: &Client) {
    create_namespace(client, "apps").await;
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let deploy = Deployment {
        metadata: meta("web"),
        spec: Some(DeploymentSpec {
            replicas: Some(2),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: Some("example.invalid/web:1".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "apps");
    let d = deploys
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();
    let d_uid = d.metadata.uid.unwrap();

    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "apps");
    let rs = eventually("the Deployment gets a ReplicaSet", KCM_TIMEOUT, || {
        let rss = rss.clone();
        async move {
            rss.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        }
    })
    .await;
    let owner = &rs.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Deployment", d_uid.as_str())
    );
    assert_eq!(owner.controller, Some(true));

    // The ReplicaSet controller creates the pods (Pending: no nodes here).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    let rs_uid = rs.metadata.uid.clone().unwrap();
    eventually("the ReplicaSet creates 2 pods", KCM_TIMEOUT, || {
        let pods = pods.clone();
        let rs_uid = rs_uid.clone();
        async move {
            let list = pods.list(&ListParams::default()).await.ok()?;
            let owned = list
                .items
                .iter()
                .filter(|p| p.owner_references().iter().any(|o| o.uid == rs_uid))
                .count();
            (owned == 2).then_some(())
        }
    })
    .await;
    // And the deployment controller reports it in status.
    eventually("Deployment status.replicas = 2", KCM_TIMEOUT, || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get("web").await.ok()?;
            (d.status?.replicas == Some(2)).then_some(())
        }
    })
    .await;
}

async fn rbac_is_enforced(cp: &ControlPlane, admin: &Client) {
    create_namespace(admin, "rbac").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "rbac");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: meta("s"),
                string_data: Some(BTreeMap::from([("k".into(), "v".into())])),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let (alice, kubeconfig) = cp.client_for_user("alice", &["team-a"]).await;
    assert!(kubeconfig.is_file());
    let alice_secrets: Api<Secret> = Api::namespaced(alice.clone(), "rbac");
    let err = alice_secrets
        .list(&ListParams::default())
        .await
        .expect_err("alice has no bindings yet");
    assert_eq!(status_code(&err), Some(403), "{err}");

    let roles: Api<Role> = Api::namespaced(admin.clone(), "rbac");
    roles
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("secret-reader"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["".into()]),
                    resources: Some(vec!["secrets".into()]),
                    verbs: vec!["get".into(), "list".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "rbac");
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("alice-reads-secrets"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "secret-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "User".into(),
                    name: "alice".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();

    // The RBAC authorizer sees the binding through its informer: bounded poll.
    let listed = eventually(
        "alice may list secrets after the RoleBinding",
        Duration::from_secs(30),
        || {
            let s = alice_secrets.clone();
            async move { s.list(&ListParams::default()).await.ok() }
        },
    )
    .await;
    assert_eq!(listed.items.len(), 1);
    // Still nothing beyond the Role: not in another namespace, not write.
    let elsewhere: Api<Secret> = Api::namespaced(alice.clone(), "smoke");
    let err = elsewhere.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    let err = alice_secrets
        .delete("s", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");

    // A group in the certificate's O is honoured: bind the group, not the user.
    let (bob, _) = cp.client_for_user("bob", &["team-x", "team-b"]).await;
    let bob_secrets: Api<Secret> = Api::namespaced(bob, "rbac");
    let err = bob_secrets.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("team-b-reads-secrets"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "secret-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "Group".into(),
                    name: "team-b".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    eventually(
        "bob (group team-b, the second O) may list secrets",
        Duration::from_secs(30),
        || {
            let s = bob_secrets.clone();
            async move { s.list(&ListParams::default()).await.ok() }
        },
    )
    .await;
}

async fn service_account_token_identity(cp: &ControlPlane, admin: &Client) {
    let (sa_client, kubeconfig) = cp.client_for_service_account("rbac", "robot").await;
    assert!(kubeconfig.is_file());
    let secrets: Api<Secret> = Api::namespaced(sa_client, "rbac");
    let err = secrets.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(status_code(&err), Some(403), "{err}");
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "rbac");
    bindings
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("robot-reads-secrets"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "secret-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "robot".into(),
                    namespace: Some("rbac".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    eventually(
        "the ServiceAccount may list secrets after its RoleBinding",
        Duration::from_secs(30),
        || {
            let s = secrets.clone();
            async move { s.list(&ListParams::default()).await.ok() }
        },
    )
    .await;
}

/// kube-scheduler (started on request) tries the pending pods: with no nodes it
/// marks them Unschedulable.
async fn scheduler_reports_no_nodes(cp: &mut ControlPlane, client: &Client) {
    cp.start_scheduler().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "apps");
    eventually(
        "kube-scheduler marks a pod Unschedulable",
        KCM_TIMEOUT,
        || {
            let pods = pods.clone();
            async move {
                let list = pods.list(&ListParams::default()).await.ok()?;
                list.items.iter().find_map(|p| {
                    p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
                        c.type_ == "PodScheduled"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("Unschedulable")
                    })?;
                    Some(())
                })
            }
        },
    )
    .await;
}

/// The apiserver restarts on the same etcd: state survives and an existing
/// client reconnects.
async fn apiserver_restart_keeps_state(cp: &mut ControlPlane, client: &Client) {
    let t = Instant::now();
    cp.restart_apiserver().await;
    eprintln!("kube-apiserver restarted in {:.1?}", t.elapsed());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "smoke");
    let got = eventually(
        "the old client reads after the restart",
        Duration::from_secs(30),
        || {
            let cms = cms.clone();
            async move { cms.get("hello").await.ok() }
        },
    )
    .await;
    assert_eq!(got.data.unwrap()["greeting"], "hi");
}
