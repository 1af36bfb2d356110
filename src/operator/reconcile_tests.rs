//! `reconcile` end to end against the in-memory API (`fake_api`): the paths
//! whose point is what the operator does *not* do (write on an invalid spec,
//! adopt another's object, read a Secret without consent, mint a second CA,
//! rewrite a settled status), checked on every request it makes. No cluster,
//! so they run with the unit tests, in well under a second.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use kube::runtime::controller::Action;

use super::error::{Error, Refusal};
use super::fake_api::FakeApi;
use super::objects;
use super::reconcile::reconcile;
use super::validate::{self, Desired};
use crate::api::PrivateRegistry;
use crate::certs::{self, CertAndKey, KeyAlgorithm};

const NS: &str = "tools";
const NAME: &str = "reg";

/// A PrivateRegistry `reg` in `tools` (uid `u-1`, generation 1) with `spec`
/// (YAML flow style).
fn registry(spec: &str) -> PrivateRegistry {
    validate::tests::registry(&format!(
        "apiVersion: privreg.dev/v1alpha1
kind: PrivateRegistry
metadata: {{name: {NAME}, namespace: {NS}, uid: u-1, generation: 1}}
spec: {spec}
"
    ))
}

/// A fake apiserver holding `pr` (the status is written through it) and `others`.
fn fake_with(pr: &PrivateRegistry, others: impl FnOnce(&FakeApi)) -> FakeApi {
    let fake = FakeApi::default();
    fake.insert(pr);
    others(&fake);
    fake
}

async fn run(fake: &FakeApi, pr: PrivateRegistry) -> Result<Action, Error> {
    reconcile(Arc::new(pr), fake.context()).await
}

fn desired(pr: &PrivateRegistry) -> Desired {
    validate::validate(pr, &validate::tests::own_image("privreg:test")).expect("a valid spec")
}

/// `pr`'s controller reference, with another uid if given (a deleted registry
/// of the same name, or someone else).
fn owner(pr: &PrivateRegistry, uid: Option<&str>) -> OwnerReference {
    let mut owner = pr.controller_owner_ref(&()).expect("a uid");
    if let Some(uid) = uid {
        owner.uid = uid.to_owned();
    }
    owner
}

fn text(secret: &Secret, key: &str) -> String {
    let bytes = &secret.data.as_ref().expect("data")[key].0;
    String::from_utf8(bytes.clone()).expect("UTF-8")
}

fn stored_secret(fake: &FakeApi, name: &str) -> Secret {
    fake.get(NS, name)
        .unwrap_or_else(|| panic!("Secret {name}"))
}

/// Whether a client trusting only `ca_pem` accepts `leaf_pem` for `name`
/// (rustls' verifier, as a registry client checks it).
fn verifies(leaf_pem: &str, ca_pem: &str, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(ca_pem)).expect("a CA");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("a verifier");
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    verifier
        .verify_server_cert(&der(leaf_pem), &[], &name, &[], UnixTime::now())
        .is_ok()
}

fn condition(pr: &PrivateRegistry, type_: &str) -> (String, String) {
    let status = pr.status.as_ref().expect("a status");
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("condition {type_}"));
    (c.status.clone(), c.reason.clone())
}

/// Asserts the reconcile only read: no create, apply or patch of anything.
fn assert_read_only(fake: &FakeApi) {
    let requests = fake.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.method == Method::GET),
        "{requests:#?}"
    );
}

/// A registry reconciled once from nothing, and its fake.
async fn settled() -> FakeApi {
    let fake = fake_with(&registry("{}"), |_| {});
    let pr = fake.get(NS, NAME).expect("the registry");
    run(&fake, pr).await.expect("first reconcile");
    fake
}

#[tokio::test]
async fn a_new_registry_gets_every_object_and_one_ca() {
    let fake = settled().await;
    let ca = stored_secret(&fake, "reg-ca");
    let owners = ca.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        matches!(owners.as_slice(), [o] if o.uid == "u-1" && o.controller == Some(true)),
        "{owners:?}"
    );
    let creates: Vec<String> = fake
        .writes()
        .into_iter()
        .filter(|r| r.method == Method::POST)
        .map(|r| r.path)
        .collect();
    assert_eq!(creates, [FakeApi::path::<Secret>(NS, "reg-ca")]);

    let service: Service = fake.get(NS, NAME).expect("Service");
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("an IP");
    assert!(fake.get::<Deployment>(NS, NAME).is_some());
    assert!(fake.get::<PersistentVolumeClaim>(NS, "reg-data").is_some());
    let configmap: ConfigMap = fake.get(NS, "reg-ca").expect("ConfigMap");
    let ca_pem = text(&ca, "tls.crt");
    assert_eq!(configmap.data.expect("data")["ca.crt"], ca_pem);
    let tls = stored_secret(&fake, "reg-tls");
    assert_eq!(text(&tls, "ca.crt"), ca_pem);
    for name in ["reg.tools.svc", "reg.tools.svc.cluster.local", &cluster_ip] {
        assert!(verifies(&text(&tls, "tls.crt"), &ca_pem, name), "{name}");
    }

    let pr: PrivateRegistry = fake.get(NS, NAME).expect("the registry");
    assert_eq!(
        condition(&pr, "CertificateReady"),
        ("True".into(), "Issued".into())
    );
    // No volume bound and no pod in a fake: not ready, and saying why.
    assert_eq!(condition(&pr, "Ready"), ("False".into(), "Waiting".into()));
    let status = pr.status.expect("a status");
    assert_eq!(status.cluster_ip, Some(cluster_ip));
    assert_eq!(
        status.ca_fingerprint,
        Some(certs::inspect(&ca_pem).expect("a CA").sha256_fingerprint)
    );
    let status_writes: Vec<_> = fake
        .writes()
        .into_iter()
        .filter(|r| r.path.ends_with("/status"))
        .collect();
    assert!(
        matches!(status_writes.as_slice(), [w] if w.content_type.as_deref() == Some("application/apply-patch+yaml")),
        "{status_writes:#?}"
    );
    assert_eq!(fake.event_reasons(), ["CAGenerated", "CertificateIssued"]);
}

#[tokio::test]
async fn a_settled_registry_changes_nothing() {
    let fake = settled().await;
    // The kubelet's part: the registry pod is available.
    let mut deployment: Deployment = fake.get(NS, NAME).expect("Deployment");
    deployment.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
        available_replicas: Some(1),
        ..Default::default()
    });
    fake.insert(&deployment);
    let pr = fake.get(NS, NAME).expect("the registry");
    run(&fake, pr)
        .await
        .expect("the reconcile that sees the pod");
    let before = fake.objects();
    fake.take_requests();
    let pr = fake.get(NS, NAME).expect("the registry");

    let action = run(&fake, pr).await.expect("second reconcile");

    // The certificate is due in 60 days: back at the hourly resync.
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
    // No status write, no CA, no certificate, no Event. The Service, ConfigMap,
    // volume claim and Deployment are applied again each time; unchanged, the
    // apiserver persists nothing (same resourceVersions, same objects).
    let mut writes: Vec<String> = fake.writes().into_iter().map(|w| w.path).collect();
    writes.sort();
    let mut applied = vec![
        FakeApi::path::<Service>(NS, NAME),
        FakeApi::path::<ConfigMap>(NS, "reg-ca"),
        FakeApi::path::<PersistentVolumeClaim>(NS, "reg-data"),
        FakeApi::path::<Deployment>(NS, NAME),
    ];
    applied.sort();
    assert_eq!(writes, applied);
    assert!(fake.event_reasons().is_empty());
    assert_eq!(fake.objects(), before);
}

#[tokio::test]
async fn a_registry_without_an_available_pod_is_looked_at_again_within_minutes() {
    // A pod that crash-loops or waits for its image changes the pod, not the
    // Deployment: the controller watches registry pods for that (see
    // tests/operator.rs); this requeue is only the safety net, far apart so
    // 1,000 pod-less registries do not keep the API server busy.
    let fake = settled().await;
    let pr = fake.get(NS, NAME).expect("the registry");
    let action = run(&fake, pr).await.expect("second reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

/// A CA Secret like the one a racing reconcile of the registry with `uid`
/// would have created first, and its CA.
fn racing_ca(pr: &PrivateRegistry, uid: Option<&str>) -> (Secret, CertAndKey) {
    let ca = certs::generate_ca(
        "the winner",
        Duration::from_secs(86_400 * 365),
        KeyAlgorithm::EcdsaP256,
    )
    .expect("a CA");
    let secret = objects::ca_secret(
        &desired(pr),
        &super::rotation::CaState::new(ca.clone(), None),
        &owner(pr, uid),
    );
    (secret, ca)
}

#[tokio::test]
async fn a_lost_ca_race_uses_the_winners_ca() {
    let pr = registry("{}");
    let (winner, winner_ca) = racing_ca(&pr, None);
    let fake = fake_with(&pr, |f| f.race(Method::POST, &winner));

    run(&fake, pr)
        .await
        .expect("reconciled with the winner's CA");

    let ca_path = FakeApi::path::<Secret>(NS, "reg-ca");
    let creates = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == Method::POST && r.path == ca_path)
        .count();
    assert_eq!(creates, 1, "one create, refused; no second attempt");
    assert_eq!(
        text(&stored_secret(&fake, "reg-ca"), "tls.crt"),
        winner_ca.cert_pem
    );
    let tls = stored_secret(&fake, "reg-tls");
    assert_eq!(text(&tls, "ca.crt"), winner_ca.cert_pem);
    assert!(verifies(
        &text(&tls, "tls.crt"),
        &winner_ca.cert_pem,
        "reg.tools.svc"
    ));
    assert!(!fake.event_reasons().contains(&"CAGenerated".to_owned()));
}

#[tokio::test]
async fn a_ca_race_won_by_another_owner_is_refused() {
    let pr = registry("{}");
    let (winner, _) = racing_ca(&pr, Some("u-someone-else"));
    let fake = fake_with(&pr, |f| f.race(Method::POST, &winner));

    let err = run(&fake, pr).await.expect_err("refused");

    assert!(
        matches!(&err, Error::Refused(Refusal::NameConflict { kind: "Secret", name }) if name == "reg-ca"),
        "{err:?}"
    );
    // Only the Service (applied first, for its ClusterIP) and the refused create.
    let writes: Vec<(Method, String)> = fake
        .writes()
        .into_iter()
        .map(|w| (w.method, w.path))
        .collect();
    assert_eq!(
        writes,
        [
            (Method::PATCH, FakeApi::path::<Service>(NS, NAME)),
            (Method::POST, FakeApi::path::<Secret>(NS, "reg-ca")),
        ]
    );
}

#[tokio::test]
async fn a_failed_ca_create_stops_before_the_certificate() {
    let pr = registry("{}");
    let ca_path = FakeApi::path::<Secret>(NS, "reg-ca");
    let fake = fake_with(&pr, |f| f.fail(Method::POST, ca_path.clone(), 500));

    let err = run(&fake, pr).await.expect_err("the apiserver failed");

    assert!(
        matches!(&err, Error::CreateCaSecret { name, .. } if name == "reg-ca"),
        "{err:?}"
    );
    assert!(fake.get::<Secret>(NS, "reg-ca").is_none());
    let last = fake.writes().pop().expect("writes");
    assert_eq!((last.method, last.path), (Method::POST, ca_path));
}

#[tokio::test]
async fn an_invalid_spec_writes_only_the_status() {
    for (spec, reason) in [
        ("{image: 'evil.example/reader:1'}", "ImageNotAllowed"),
        // Admission refuses this too, if the CRD it runs with carries the rule.
        ("{tls: {ca: {validity: 1h}}}", "InvalidSpec"),
    ] {
        let pr = registry(spec);
        let fake = fake_with(&pr, |_| {});

        let action = run(&fake, pr).await.expect(spec);

        assert_eq!(action, Action::await_change(), "{spec}");
        let status_path = format!("{}/status", FakeApi::path::<PrivateRegistry>(NS, NAME));
        let writes: Vec<String> = fake.writes().into_iter().map(|w| w.path).collect();
        assert_eq!(writes, [status_path], "{spec}");
        // Not even read: nothing but the registry's own status and the Event.
        assert!(
            fake.requests().iter().all(|r| r.method != Method::GET),
            "{spec}"
        );
        let pr: PrivateRegistry = fake.get(NS, NAME).expect("the registry");
        assert_eq!(
            condition(&pr, "Ready"),
            ("False".into(), reason.into()),
            "{spec}"
        );
        assert_eq!(fake.event_reasons(), [reason], "{spec}");
    }
}

/// Asserts that with `squatter` in place the reconcile refuses with
/// `NameConflict` naming it, and only read.
async fn refuses_next_to<K: Resource<DynamicType = ()> + serde::Serialize>(squatter: K) {
    let pr = registry("{}");
    let fake = fake_with(&pr, |f| f.insert(&squatter));
    let before = fake.objects();

    let err = run(&fake, pr).await.expect_err("refused");

    let kind = K::kind(&());
    assert!(
        matches!(&err, Error::Refused(Refusal::NameConflict { kind: k, name })
            if *k == kind && Some(name) == squatter.meta().name.as_ref()),
        "{err:?}"
    );
    assert_read_only(&fake);
    assert_eq!(fake.objects(), before);
}

#[tokio::test]
async fn another_owners_object_is_never_touched() {
    let pr = registry("{}");
    let unowned = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    refuses_next_to(Service {
        metadata: unowned(NAME),
        ..Default::default()
    })
    .await;
    // A volume claim without the operator's labels is not a retained one of ours.
    refuses_next_to(PersistentVolumeClaim {
        metadata: unowned("reg-data"),
        ..Default::default()
    })
    .await;
    // The ConfigMap of a deleted registry of the same name: other uid.
    refuses_next_to(objects::ca_configmap(
        &desired(&pr),
        "PEM",
        &owner(&pr, Some("u-0")),
    ))
    .await;
}

#[tokio::test]
async fn a_retained_volume_is_attached_again() {
    let pr = registry("{}");
    // What a deleted registry of the same name left: labels, no owner.
    let retained = objects::pvc(&desired(&pr), &owner(&pr, Some("u-0"))).expect("a volume");
    let fake = fake_with(&pr, |f| f.insert(&retained));

    run(&fake, pr).await.expect("not a NameConflict");

    let pvc: PersistentVolumeClaim = fake.get(NS, "reg-data").expect("the claim");
    assert_eq!(
        pvc.metadata.owner_references,
        Some(Vec::new()),
        "still retained"
    );
}

/// The Secret `users` with the consent label `privreg.dev/use: <label>` if
/// given, and these keys.
fn users_secret(label: Option<&str>, keys: &[&str]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("users".into()),
            namespace: Some(NS.into()),
            labels: label.map(|l| [(objects::SECRET_USE_LABEL.to_owned(), l.to_owned())].into()),
            ..Default::default()
        },
        data: Some(
            keys.iter()
                .map(|k| ((*k).to_owned(), k8s_openapi::ByteString(b"x".to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// With each Secret (or none) of `cases`, the reconcile is refused for the
/// reason given, names the Secret `users`, and writes nothing.
async fn assert_refused_read_only(
    pr: &PrivateRegistry,
    cases: impl IntoIterator<Item = (Option<Secret>, &str)>,
) {
    for (secret, reason) in cases {
        let fake = fake_with(pr, |f| secret.iter().for_each(|s| f.insert(s)));

        let err = run(&fake, pr.clone()).await.expect_err("refused");

        assert!(
            matches!(&err, Error::Refused(r) if r.reason() == reason),
            "{err:?}"
        );
        assert!(err.to_string().contains("users"), "{err}");
        assert_read_only(&fake);
    }
}

#[tokio::test]
async fn an_htpasswd_secret_is_used_only_with_consent() {
    let pr = registry("{auth: {htpasswdSecretRef: {name: users}}}");
    let refused = [
        (None, "SecretNotOptedIn"),
        (Some(users_secret(None, &["htpasswd"])), "SecretNotOptedIn"),
        (
            Some(users_secret(Some("ca"), &["htpasswd"])),
            "SecretNotOptedIn",
        ),
        (
            Some(users_secret(Some("htpasswd"), &["users"])),
            "SecretKeyMissing",
        ),
    ];
    assert_refused_read_only(&pr, refused).await;

    let fake = fake_with(&pr, |f| {
        f.insert(&users_secret(Some("htpasswd"), &["htpasswd", "notes"]))
    });
    run(&fake, pr).await.expect("consented");
    let deployment: Deployment = fake.get(NS, NAME).expect("Deployment");
    let pod = deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let auth = pod
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.name == "auth")
        .and_then(|v| v.secret)
        .expect("an auth volume");
    assert_eq!(auth.secret_name.as_deref(), Some("users"));
    let items: Vec<String> = auth
        .items
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(items, [objects::HTPASSWD_KEY]);
}

/// A registry on a bucket: its credentials Secret only with consent (else
/// nothing is written), then no volume claim, a disruption budget, and the
/// replicas asked for.
#[tokio::test]
async fn a_bucket_registry_needs_consent_and_gets_no_volume() {
    let pr = registry(
        "{replicas: 2, storage: {s3: {endpoint: 'https://s3.storage:8333', bucket: images, credentialsSecretRef: {name: users}}}}",
    );
    let keys = [
        crate::operator::validate::S3_ACCESS_KEY_ID,
        crate::operator::validate::S3_SECRET_ACCESS_KEY,
    ];
    let refused = [
        (None, "SecretNotOptedIn"),
        (
            Some(users_secret(Some("htpasswd"), &keys)),
            "SecretNotOptedIn",
        ),
        (
            Some(users_secret(Some("s3-credentials"), &keys[..1])),
            "SecretKeyMissing",
        ),
    ];
    assert_refused_read_only(&pr, refused).await;

    let fake = fake_with(&pr, |f| {
        f.insert(&users_secret(Some("s3-credentials"), &keys))
    });
    run(&fake, pr).await.expect("consented");
    assert!(fake.get::<PersistentVolumeClaim>(NS, "reg-data").is_none());
    let budget: k8s_openapi::api::policy::v1::PodDisruptionBudget =
        fake.get(NS, NAME).expect("a disruption budget");
    assert_eq!(
        budget.spec.and_then(|s| s.max_unavailable),
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let deployment: Deployment = fake.get(NS, NAME).expect("Deployment");
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(2));
    let registry: PrivateRegistry = fake.get(NS, NAME).expect("the registry");
    assert_eq!(
        condition(&registry, crate::operator::status::STORAGE_READY),
        ("True".to_owned(), "ObjectStorage".to_owned())
    );
}
