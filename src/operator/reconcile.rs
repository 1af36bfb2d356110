//! One reconcile of a PrivateRegistry, as a pipeline: validate -> ownership and
//! consent checks -> Service (for its ClusterIP) -> CA -> server certificate ->
//! CA ConfigMap, PVC, Deployment -> status. Building is pure (`objects`,
//! `certificates`, `status`); this module only reads and writes. Nothing is
//! written when the spec is invalid, and nothing is ever written to an object
//! this registry does not own (see `ownership`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::certificates::{self, CurrentLeaf, LeafDecision};
use super::error::{Error, Refusal, Result};
use super::objects;
use super::rotation::{self, CaState, StartReason, Step};
use super::status::{self, Observed};
use super::validate::{self, Desired};
use crate::api::PrivateRegistry;
use crate::certs::{self, CertAndKey};

/// The longest a registry goes without a reconcile (a safety net for missed events).
const RESYNC: Duration = Duration::from_secs(3600);

pub async fn reconcile(pr: Arc<PrivateRegistry>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pr.namespace().unwrap_or_default();
    let registries: Api<PrivateRegistry> = Api::namespaced(ctx.client.clone(), &ns);
    let desired = match validate::validate(&pr, &ctx.policy) {
        Ok(d) => d,
        Err(e) => {
            // An invalid spec changes nothing that runs; it only says why.
            let message = e.to_string();
            let new = status::not_ready(
                pr.status.as_ref(),
                e.reason(),
                message.clone(),
                pr.meta().generation,
                &now(),
            );
            if pr.status.as_ref() != Some(&new) {
                publish(
                    &ctx,
                    &pr,
                    EventType::Warning,
                    e.reason(),
                    "Validate",
                    &message,
                )
                .await;
            }
            patch_status(&registries, &pr, new).await?;
            return Ok(Action::await_change());
        }
    };
    let owner = pr.controller_owner_ref(&()).ok_or(Error::NoUid)?;
    if let Err(holder) = super::claims::holds(&pr, &ctx.all_registries(), |other| {
        validate::validate(other, &ctx.policy).is_ok()
    }) {
        return Err(Refusal::HostnameConflict {
            endpoint: desired.endpoint(),
            holder,
        }
        .into());
    }

    check_ownership(&ctx, &desired, &owner).await?;
    check_consent(&ctx, &desired).await?;

    let service = apply(&ctx, &ns, objects::service(&desired, &owner)).await?;
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| ip != "None");

    let sans = desired.sans(cluster_ip.as_deref());
    let ca = ensure_ca(&ctx, &pr, &desired, &owner, &sans).await?;
    if let Some(permitted) = &ca.state.constraints
        && let Some(outside) = sans.iter().find(|s| !certs::permits(permitted, s))
    {
        return Err(Refusal::OutsideNameConstraints(outside.clone()).into());
    }
    let (ca_state, rotation_due) = if ca.generated {
        rotate(&ctx, &pr, &desired, &owner, ca).await?
    } else {
        (ca.state, None)
    };
    let published_ca = ca_state.published_pem();
    let ca = ca_state.current;
    let leaf = ensure_leaf(&ctx, &pr, &desired, &owner, &ca, &sans).await?;

    apply(
        &ctx,
        &ns,
        objects::ca_configmap(&desired, &published_ca, &owner),
    )
    .await?;
    let pvc_phase = match objects::pvc(&desired, &owner) {
        Some(pvc) => apply(&ctx, &ns, pvc).await?.status.and_then(|s| s.phase),
        None => None,
    };
    if desired.replicas > 1 {
        apply(&ctx, &ns, objects::pod_disruption_budget(&desired, &owner)).await?;
    }
    let deployment = apply(&ctx, &ns, objects::deployment(&desired, &owner, &sans)).await?;
    let available_replicas = deployment
        .status
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let serving = match cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        Some(ip) if ctx.check_serving && available_replicas > 0 => {
            Some(super::serving::probe(ip, desired.port, &desired.hostname, &leaf.cert_pem).await)
        }
        _ => None,
    };
    let serving_current = matches!(serving, None | Some(super::serving::Serving::Current));
    let pod_problem = if available_replicas == 0 {
        registry_pod_problem(&ctx, &desired).await
    } else {
        None
    };

    let observed = Observed {
        endpoint: desired.endpoint(),
        cluster_ip,
        ca_fingerprint: certs::inspect(&ca.cert_pem)
            .ok()
            .map(|i| i.sha256_fingerprint),
        not_after: Some(leaf.not_after),
        pvc_phase,
        bucket: match &desired.storage {
            validate::Storage::Bucket(b) => Some(b.bucket.clone()),
            validate::Storage::Volume { .. } => None,
        },
        available_replicas,
        serving,
        pod_problem: pod_problem.clone(),
    };
    let new = status::compute(pr.status.as_ref(), &observed, pr.meta().generation, &now());
    let ready_reason = |s: &crate::api::PrivateRegistryStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == status::READY)
            .map(|c| c.reason.clone())
    };
    let newly_failing = ready_reason(&new).as_deref() == Some(status::POD_FAILING)
        && pr.status.as_ref().and_then(ready_reason).as_deref() != Some(status::POD_FAILING);
    patch_status(&registries, &pr, new).await?;
    if newly_failing && let Some(problem) = &pod_problem {
        publish(
            &ctx,
            &pr,
            EventType::Warning,
            status::POD_FAILING,
            "CheckRegistryPod",
            &format!("the registry pod does not start: {problem}"),
        )
        .await;
    }

    // Come back when the certificate is due, or at the resync interval. A
    // renewal time already past means the certificate is capped by its CA's end
    // and was kept: nothing to do until the resync.
    let until_renewal = (leaf.renew_at - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(RESYNC);
    let mut next = rotation_due.map_or(until_renewal, |r| r.min(until_renewal));
    if available_replicas == 0 {
        // Registry pods are watched: their changes bring a reconcile. This
        // is only the safety net for a missed one.
        next = next.min(POD_RECHECK);
    }
    if !serving_current {
        // Nothing in the API changes when kube-proxy starts routing or the
        // kubelet refreshes the Secret volume: look again soon.
        next = next.min(SERVING_RECHECK);
    }
    Ok(Action::requeue(next.clamp(Duration::from_secs(1), RESYNC)))
}

/// Whether `object` is controlled by the PrivateRegistry `owner` (by uid: a
/// re-created registry of the same name is another owner).
pub(crate) fn controlled_by(meta: &kube::api::ObjectMeta, owner: &OwnerReference) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == owner.uid)
}

/// A retained volume has no owner; it is this registry's if it carries the
/// operator's labels for this registry (so a re-created registry re-attaches its
/// own data, and nobody else's).
fn retained_volume_of(meta: &kube::api::ObjectMeta, registry: &str) -> bool {
    let labels = meta.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(crate::labels::INSTANCE) == Some(registry)
        && label(crate::labels::MANAGED_BY) == Some(crate::FIELD_MANAGER)
        && meta.owner_references.as_ref().is_none_or(Vec::is_empty)
}

/// The namespaced objects a registry owns, as the generic reads and writes need them.
pub(crate) trait Owned:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Owned for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType: Default>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

async fn get_opt<K: Owned>(ctx: &Context, ns: &str, name: &str) -> Result<Option<K>> {
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|source| Error::Get {
            kind: kind_name::<K>(),
            name: name.to_owned(),
            source,
        })
}

/// Refuses (`NameConflict`) when an object the registry would write exists and is
/// not its own. A tenant who may only create PrivateRegistries must not be able
/// to make the operator take over, change, or (through garbage collection)
/// delete a Service, Secret, ConfigMap, volume or Deployment they did not create.
async fn check_ownership(ctx: &Context, d: &Desired, owner: &OwnerReference) -> Result<()> {
    async fn check<K: Owned>(
        ctx: &Context,
        d: &Desired,
        name: String,
        owned: impl Fn(&kube::api::ObjectMeta) -> bool,
    ) -> Result<()> {
        match get_opt::<K>(ctx, &d.namespace, &name).await? {
            Some(existing) if !owned(existing.meta()) => Err(Refusal::NameConflict {
                kind: kind_name::<K>(),
                name,
            }
            .into()),
            _ => Ok(()),
        }
    }
    let ours = |m: &kube::api::ObjectMeta| controlled_by(m, owner);
    let our_volume =
        |m: &kube::api::ObjectMeta| controlled_by(m, owner) || retained_volume_of(m, &d.name);
    let generated_ca = async {
        match d.ca_secret {
            // A brought CA is checked for consent instead (`check_consent`).
            Some(_) => Ok(()),
            None => check::<Secret>(ctx, d, d.ca_secret_name(), ours).await,
        }
    };
    futures_util::try_join!(
        check::<Service>(ctx, d, d.workload_name(), ours),
        check::<Deployment>(ctx, d, d.workload_name(), ours),
        check::<Secret>(ctx, d, d.tls_secret_name(), ours),
        check::<ConfigMap>(ctx, d, d.ca_configmap_name(), ours),
        check::<PersistentVolumeClaim>(ctx, d, d.pvc_name(), our_volume),
        check::<PodDisruptionBudget>(ctx, d, d.workload_name(), ours),
        generated_ca,
    )?;
    Ok(())
}

/// A Secret the spec names (htpasswd, a brought CA) is used only with its
/// owner's consent: the label `privreg.dev/use: <use>`. Otherwise anyone who may
/// create a PrivateRegistry could read any Secret of the namespace through the
/// registry pod, or make any key pair sign certificates.
async fn consented_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
    use_: &'static str,
    keys: &[&'static str],
) -> Result<Secret> {
    let refuse = || Refusal::SecretNotOptedIn {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        label: objects::SECRET_USE_LABEL,
        use_,
    };
    let secret = get_secret(ctx, namespace, name).await?.ok_or_else(refuse)?;
    if secret
        .labels()
        .get(objects::SECRET_USE_LABEL)
        .map(String::as_str)
        != Some(use_)
    {
        return Err(refuse().into());
    }
    if let Some(key) = keys
        .iter()
        .find(|k| secret.data.as_ref().is_none_or(|d| !d.contains_key(**k)))
    {
        return Err(Refusal::SecretKeyMissing {
            name: name.to_owned(),
            key,
        }
        .into());
    }
    Ok(secret)
}

async fn check_consent(ctx: &Context, d: &Desired) -> Result<()> {
    if let Some(name) = &d.htpasswd_secret {
        consented_secret(
            ctx,
            &d.namespace,
            name,
            "htpasswd",
            &[objects::HTPASSWD_KEY],
        )
        .await?;
    }
    if let validate::Storage::Bucket(b) = &d.storage {
        consented_secret(
            ctx,
            &d.namespace,
            &b.credentials_secret,
            "s3-credentials",
            &[validate::S3_ACCESS_KEY_ID, validate::S3_SECRET_ACCESS_KEY],
        )
        .await?;
    }
    Ok(())
}

/// Runs CPU-heavy work (key generation: RSA-4096 takes seconds) on the blocking
/// pool, so it never stalls the async workers that serve every other registry.
async fn off_runtime<T, F>(work: F) -> Result<T>
where
    F: FnOnce() -> Result<T, certs::CertError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Error::Certificate),
        Err(e) if e.is_panic() => Err(Error::Panicked(format!("certificate work: {e}"))),
        Err(e) => Err(Error::Panicked(format!("certificate work cancelled: {e}"))),
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Server-side apply with the operator's one field manager; returns the object as
/// the apiserver now has it.
async fn apply<K: Owned>(ctx: &Context, ns: &str, object: K) -> Result<K> {
    apply_with(&Api::namespaced(ctx.client.clone(), ns), object).await
}

/// [`apply`] through a given `Api` (the trust task applies in the operator's
/// own namespace).
pub(crate) async fn apply_with<K: Owned>(api: &Api<K>, object: K) -> Result<K> {
    let name = object.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(&object).map_err(Error::Serialize)?;
    // Apply bodies must name their type.
    value["apiVersion"] = K::api_version(&Default::default()).into();
    value["kind"] = K::kind(&Default::default()).into();
    api.patch(
        &name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: kind_name::<K>(),
        name,
        source,
    })
}

fn kind_name<K: Resource>() -> &'static str
where
    K::DynamicType: Default,
{
    match K::kind(&Default::default()).as_ref() {
        "Service" => "Service",
        "Secret" => "Secret",
        "ConfigMap" => "ConfigMap",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "Deployment" => "Deployment",
        "DaemonSet" => "DaemonSet",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        _ => "object",
    }
}

fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

async fn get_secret(ctx: &Context, ns: &str, name: &str) -> Result<Option<Secret>> {
    get_opt(ctx, ns, name).await
}

/// The registry's CA as its Secret holds it.
struct Ca {
    state: CaState,
    /// Generated by the operator (so the operator rotates it).
    generated: bool,
    /// The Secret's resourceVersion, the precondition of a rotation's write.
    resource_version: Option<String>,
}

/// The CA: the user's Secret (with consent), or the generated one, created
/// exactly once. `create` (not apply) means two racing reconciles cannot both
/// mint a CA: the loser gets a conflict and reads the winner's, if it is this
/// registry's own.
async fn ensure_ca(
    ctx: &Context,
    pr: &PrivateRegistry,
    d: &Desired,
    owner: &OwnerReference,
    sans: &[String],
) -> Result<Ca> {
    let name = d.ca_secret_name();
    let read = |s: &Secret, generated: bool| -> Result<Ca> {
        let mut state =
            CaState::from_secret(s).map_err(|_| Error::BadCaSecret { name: name.clone() })?;
        if !generated {
            // The user's CA is theirs to rotate: only its certificate and key count.
            state = CaState::new(state.current, state.constraints);
        }
        Ok(Ca {
            state,
            generated,
            resource_version: s.resource_version(),
        })
    };
    if d.ca_secret.is_some() {
        let brought =
            consented_secret(ctx, &d.namespace, &name, "ca", &["tls.crt", "tls.key"]).await?;
        return read(&brought, false);
    }
    if let Some(existing) = get_secret(ctx, &d.namespace, &name).await? {
        if !controlled_by(existing.meta(), owner) {
            return Err(Refusal::NameConflict {
                kind: "Secret",
                name,
            }
            .into());
        }
        return read(&existing, true);
    }
    let permitted: Option<Vec<String>> = d
        .ca_name_constraints
        .then(|| sans.iter().map(|s| certs::constraint_for(s)).collect());
    let ca = generate_ca(d, permitted.as_deref()).await?;
    let state = CaState::new(ca, permitted);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &d.namespace);
    match secrets
        .create(
            &PostParams {
                field_manager: Some(crate::FIELD_MANAGER.to_owned()),
                ..Default::default()
            },
            &objects::ca_secret(d, &state, owner),
        )
        .await
    {
        Ok(created) => {
            publish(
                ctx,
                pr,
                EventType::Normal,
                "CAGenerated",
                "CreateCA",
                &format!("generated CA {}", fingerprint(&state.current.cert_pem)),
            )
            .await;
            Ok(Ca {
                state,
                generated: true,
                resource_version: created.resource_version(),
            })
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = get_secret(ctx, &d.namespace, &name)
                .await?
                .ok_or(Error::BadCaSecret { name: name.clone() })?;
            if !controlled_by(winner.meta(), owner) {
                return Err(Refusal::NameConflict {
                    kind: "Secret",
                    name,
                }
                .into());
            }
            read(&winner, true)
        }
        Err(source) => Err(Error::CreateCaSecret { name, source }),
    }
}

fn fingerprint(pem: &str) -> String {
    certs::inspect(pem)
        .map(|i| i.sha256_fingerprint)
        .unwrap_or_default()
}

/// A new CA for this registry (off the runtime: RSA keys take seconds).
async fn generate_ca(d: &Desired, permitted: Option<&[String]>) -> Result<CertAndKey> {
    let common_name = format!("privreg CA for {}/{}", d.namespace, d.name);
    let (validity, algorithm) = (d.ca_validity, d.key_algorithm);
    let permitted = permitted.map(<[String]>::to_vec);
    off_runtime(move || {
        certs::generate_constrained_ca(&common_name, validity, algorithm, permitted.as_deref())
    })
    .await
}

/// How often a rotation waiting for the nodes looks again.
const ROTATION_POLL: Duration = Duration::from_secs(10);

/// Moves a generated CA's rotation one step (see `rotation`). Returns the CA
/// state to use now and when to look again.
async fn rotate(
    ctx: &Context,
    pr: &PrivateRegistry,
    d: &Desired,
    owner: &OwnerReference,
    ca: Ca,
) -> Result<(CaState, Option<Duration>)> {
    let now = time::OffsetDateTime::now_utc();
    let until = |t: time::OffsetDateTime| Duration::try_from(t - now).unwrap_or(Duration::ZERO);
    let request = pr.annotations().get(rotation::ROTATE_ANNOTATION).cloned();
    let state = ca.state;
    let trust_both = state
        .overlap_pem()
        .and_then(|pem| ctx.nodes_trust(pr, &pem, d.trust_enabled));
    // When the current CA's server certificate went out, if it has.
    let leaf_from_current = if state.previous.is_some() {
        get_secret(ctx, &d.namespace, &d.tls_secret_name())
            .await?
            .filter(|s| {
                secret_text(s, "ca.crt").map(|c| c.trim().to_owned())
                    == Some(state.current.cert_pem.trim().to_owned())
            })
            .and_then(|s| secret_text(&s, "tls.crt"))
            .and_then(|leaf| certs::inspect(&leaf).ok())
            .map(|info| info.issued_at)
    } else {
        None
    };
    let step = rotation::next_step(
        &state,
        request.as_deref(),
        d.ca_renew_before,
        now,
        trust_both,
        leaf_from_current,
        ctx.ca_overlap,
    );
    if !matches!(step, Step::Keep { .. }) {
        tracing::info!(registry = %super::object_key(pr), ?step, ?trust_both, "CA rotation");
    }
    let mut new = state.clone();
    let (reason, message) = match step {
        // A previous CA waiting for the new certificate to go out: look again soon.
        Step::Keep { until: None } if state.previous.is_some() => {
            return Ok((state, Some(ROTATION_POLL)));
        }
        Step::Keep { until: next } => return Ok((state, next.map(until))),
        Step::Wait => return Ok((state, Some(ROTATION_POLL))),
        Step::Start(why) => {
            let next = generate_ca(d, state.constraints.as_deref()).await?;
            let message = format!(
                "rotating the CA ({}): new CA {} published next to {}; it signs once every node trusts both",
                match why {
                    StartReason::Expiring => "it nears its end",
                    StartReason::Requested => "requested",
                },
                fingerprint(&next.cert_pem),
                fingerprint(&state.current.cert_pem),
            );
            new.next = Some(next);
            if why == StartReason::Requested {
                new.handled = request;
            }
            ("CARotationStarted", message)
        }
        Step::Promote => {
            let next = new.next.take().expect("a next CA to promote");
            let old = std::mem::replace(&mut new.current, next);
            new.previous = Some(old.cert_pem);
            new.previous_until = now.checked_add(
                time::Duration::try_from(ctx.ca_overlap).unwrap_or(time::Duration::ZERO),
            );
            let message = format!(
                "every node trusts the new CA {}: it signs the server certificate now; the old CA stays trusted for {} s",
                fingerprint(&new.current.cert_pem),
                ctx.ca_overlap.as_secs()
            );
            ("CARotated", message)
        }
        Step::DropPrevious => {
            let message = format!(
                "the overlap is over: the old CA {} is no longer trusted",
                new.previous.as_deref().map(fingerprint).unwrap_or_default()
            );
            new.previous = None;
            new.previous_until = None;
            ("PreviousCADropped", message)
        }
    };
    let mut secret = objects::ca_secret(d, &new, owner);
    // The precondition: a rotation step is taken once, by whoever read the
    // Secret as it is now; a racing reconcile gets a conflict and retries.
    secret.metadata.resource_version = ca.resource_version;
    apply(ctx, &d.namespace, secret).await?;
    publish(ctx, pr, EventType::Normal, reason, "RotateCA", &message).await;
    let again = match (&new.next, new.previous_until) {
        (Some(_), _) => Some(ROTATION_POLL),
        (None, Some(t)) => Some(until(t).max(ROTATION_POLL)),
        _ => None,
    };
    Ok((new, again))
}

/// Keeps or (re)issues the server certificate; returns its notAfter and renewal time.
/// The server certificate in the TLS Secret after [`ensure_leaf`].
struct Leaf {
    cert_pem: String,
    not_after: time::OffsetDateTime,
    renew_at: time::OffsetDateTime,
}

/// How soon a registry whose Service does not present the current
/// certificate yet is looked at again.
const SERVING_RECHECK: Duration = Duration::from_secs(2);

/// How soon a registry with no available pod is looked at again without a
/// change to its pods (at 1,000 registries, 15 s meant 67 reconciles and
/// about 1,000 API requests per second for nothing).
const POD_RECHECK: Duration = Duration::from_secs(300);

/// Why the registry's pods are not available (`pod_problem`), from a list of
/// its pods by label. Best effort: a failed list says nothing.
async fn registry_pod_problem(ctx: &Context, d: &Desired) -> Option<String> {
    let selector = objects::selector(d);
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(ctx.client.clone(), &d.namespace);
    match pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => super::pod_problem::describe(&list.items),
        Err(e) => {
            tracing::debug!(error = %e, namespace = %d.namespace, "listing the registry's pods");
            None
        }
    }
}

async fn ensure_leaf(
    ctx: &Context,
    pr: &PrivateRegistry,
    d: &Desired,
    owner: &OwnerReference,
    ca: &CertAndKey,
    sans: &[String],
) -> Result<Leaf> {
    let existing = get_secret(ctx, &d.namespace, &d.tls_secret_name()).await?;
    let texts = existing.as_ref().map(|s| {
        (
            secret_text(s, "tls.crt"),
            secret_text(s, "tls.key"),
            secret_text(s, "ca.crt"),
            s.annotations().get(objects::POLICY_ANNOTATION).cloned(),
        )
    });
    let current = match &texts {
        Some((c, k, a, p)) => CurrentLeaf {
            cert_pem: c.as_deref(),
            key_pem: k.as_deref(),
            ca_pem: a.as_deref(),
            policy: p.as_deref(),
        },
        None => CurrentLeaf::default(),
    };
    let policy = certificates::policy(d.cert_validity, d.key_algorithm);
    let now = time::OffsetDateTime::now_utc();
    match certificates::decide(&current, &ca.cert_pem, sans, &policy, d.renew_before, now) {
        LeafDecision::Keep {
            not_after,
            renew_at,
        } => {
            // Nothing is written: a settled registry costs no API writes.
            Ok(Leaf {
                cert_pem: current.cert_pem.unwrap_or_default().to_owned(),
                not_after,
                renew_at,
            })
        }
        LeafDecision::Issue(reason) => {
            let leaf = {
                let (ca, sans) = (ca.clone(), sans.to_vec());
                let (validity, algorithm) = (d.cert_validity, d.key_algorithm);
                off_runtime(move || certs::issue_server_cert(&ca, &sans, validity, algorithm))
                    .await?
            };
            apply(
                ctx,
                &d.namespace,
                objects::tls_secret(d, &leaf, &ca.cert_pem, &policy, owner),
            )
            .await?;
            let info = certs::inspect(&leaf.cert_pem).map_err(Error::Certificate)?;
            let (event_reason, verb) = if reason.is_renewal() {
                ("CertificateRenewed", "renewed")
            } else {
                ("CertificateIssued", "issued")
            };
            publish(
                ctx,
                pr,
                EventType::Normal,
                event_reason,
                "IssueCertificate",
                &format!(
                    "{verb} server certificate for {} until {} ({})",
                    sans.join(", "),
                    status::rfc3339(info.not_after),
                    reason.describe()
                ),
            )
            .await;
            let renew_at = time::Duration::try_from(d.renew_before)
                .ok()
                .and_then(|r| info.not_after.checked_sub(r))
                .unwrap_or(info.not_after);
            Ok(Leaf {
                cert_pem: leaf.cert_pem,
                not_after: info.not_after,
                renew_at,
            })
        }
    }
}

/// Writes the status by server-side apply under the operator's field manager, as
/// every other object; only when it changed, so a settled registry costs no
/// API writes.
pub(crate) async fn patch_status(
    api: &Api<PrivateRegistry>,
    pr: &PrivateRegistry,
    new: crate::api::PrivateRegistryStatus,
) -> Result<()> {
    // The trust fields belong to the trust task's field manager: compare without them.
    if pr.status.as_ref().map(status::reconciled_part).as_ref() == Some(&new) {
        return Ok(());
    }
    apply_status(
        api,
        pr,
        crate::FIELD_MANAGER,
        serde_json::to_value(new).unwrap_or_default(),
    )
    .await
    .map_err(Error::PatchStatus)
}

/// Server-side apply of `status` (the fields `field_manager` owns) to `pr`'s
/// status subresource: the reconcile, the trust task and the storage task
/// each own their part.
pub(crate) async fn apply_status(
    api: &Api<PrivateRegistry>,
    pr: &PrivateRegistry,
    field_manager: &str,
    status: serde_json::Value,
) -> std::result::Result<(), kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1",
        "kind": "PrivateRegistry",
        "status": status,
    });
    api.patch_status(
        &pr.name_any(),
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
}

/// Records an Event on the PrivateRegistry. Failing to record is logged, not fatal.
pub(crate) async fn publish(
    ctx: &Context,
    pr: &PrivateRegistry,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.to_owned()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pr.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "recording an Event failed");
    }
}
