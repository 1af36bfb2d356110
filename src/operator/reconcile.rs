//! One reconcile of a PrivateRegistry, as a pipeline: validate -> Service (for its
//! ClusterIP) -> CA -> server certificate -> CA ConfigMap, PVC, Deployment ->
//! status. Building is pure (`objects`, `certificates`, `status`); this module only
//! reads and writes. Nothing is written when the spec is invalid.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Context;
use super::certificates::{self, CurrentLeaf, LeafDecision};
use super::error::{Error, Result};
use super::objects;
use super::status::{self, Observed};
use super::validate::{self, Desired};
use crate::api::PrivateRegistry;
use crate::certs::{self, CertAndKey};

/// The longest a registry goes without a reconcile (a safety net for missed events).
const RESYNC: Duration = Duration::from_secs(3600);

pub async fn reconcile(pr: Arc<PrivateRegistry>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pr.namespace().unwrap_or_default();
    let registries: Api<PrivateRegistry> = Api::namespaced(ctx.client.clone(), &ns);
    let desired = match validate::validate(&pr, &ctx.default_image) {
        Ok(d) => d,
        Err(e) => {
            // An invalid spec changes nothing that runs; it only says why.
            let message = e.to_string();
            publish(
                &ctx,
                &pr,
                EventType::Warning,
                e.reason(),
                "Validate",
                &message,
            )
            .await;
            let new = status::invalid(pr.status.as_ref(), message, pr.meta().generation, &now());
            patch_status(&registries, &pr, new).await?;
            return Ok(Action::await_change());
        }
    };
    let owner = pr
        .controller_owner_ref(&())
        .expect("PrivateRegistry has a name and uid");

    let service = apply(&ctx, &ns, objects::service(&desired, &owner)).await?;
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| ip != "None");

    let ca = ensure_ca(&ctx, &pr, &desired, &owner).await?;
    let sans = desired.sans(cluster_ip.as_deref());
    let (not_after, renew_at) = ensure_leaf(&ctx, &pr, &desired, &owner, &ca, &sans).await?;

    apply(
        &ctx,
        &ns,
        objects::ca_configmap(&desired, &ca.cert_pem, &owner),
    )
    .await?;
    let pvc = apply(&ctx, &ns, objects::pvc(&desired, &owner)).await?;
    let deployment = apply(&ctx, &ns, objects::deployment(&desired, &owner)).await?;

    let observed = Observed {
        endpoint: desired.endpoint(),
        cluster_ip,
        ca_fingerprint: certs::inspect(&ca.cert_pem)
            .ok()
            .map(|i| i.sha256_fingerprint),
        not_after: Some(not_after),
        pvc_phase: pvc.status.and_then(|s| s.phase),
        available_replicas: deployment
            .status
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    };
    let new = status::compute(pr.status.as_ref(), &observed, pr.meta().generation, &now());
    patch_status(&registries, &pr, new).await?;

    // Come back when the certificate is due, or at the resync interval.
    let until_renewal = (renew_at - time::OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
    Ok(Action::requeue(
        until_renewal.clamp(Duration::from_secs(1), RESYNC),
    ))
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Server-side apply with the operator's one field manager; returns the object as
/// the apiserver now has it.
async fn apply<K>(ctx: &Context, ns: &str, object: K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
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
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::GetSecret {
            name: name.to_owned(),
            source,
        })
}

/// The CA: the user's Secret, or the generated one, created exactly once. `create`
/// (not apply) means two racing reconciles cannot both mint a CA: the loser gets
/// a conflict and reads the winner's.
async fn ensure_ca(
    ctx: &Context,
    pr: &PrivateRegistry,
    d: &Desired,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Result<CertAndKey> {
    let name = d.ca_secret_name();
    let read = |s: &Secret| -> Result<CertAndKey> {
        let cert_pem = secret_text(s, "tls.crt");
        let key_pem = secret_text(s, "tls.key");
        match (cert_pem, key_pem) {
            (Some(cert_pem), Some(key_pem)) if certs::inspect(&cert_pem).is_ok() => {
                Ok(CertAndKey { cert_pem, key_pem })
            }
            _ => Err(Error::BadCaSecret { name: name.clone() }),
        }
    };
    if let Some(existing) = get_secret(ctx, &d.namespace, &name).await? {
        return read(&existing);
    }
    if d.ca_secret.is_some() {
        return Err(Error::BadCaSecret { name });
    }
    let ca = certs::generate_ca(
        &format!("privreg CA for {}/{}", d.namespace, d.name),
        d.ca_validity,
        d.key_algorithm,
    )
    .map_err(Error::Certificate)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &d.namespace);
    match secrets
        .create(&PostParams::default(), &objects::ca_secret(d, &ca, owner))
        .await
    {
        Ok(_) => {
            let fingerprint = certs::inspect(&ca.cert_pem)
                .map(|i| i.sha256_fingerprint)
                .unwrap_or_default();
            publish(
                ctx,
                pr,
                EventType::Normal,
                "CAGenerated",
                "CreateCA",
                &format!("generated CA {fingerprint}"),
            )
            .await;
            Ok(ca)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = get_secret(ctx, &d.namespace, &name)
                .await?
                .ok_or(Error::BadCaSecret { name: name.clone() })?;
            read(&winner)
        }
        Err(source) => Err(Error::CreateCaSecret { name, source }),
    }
}

/// Keeps or (re)issues the server certificate; returns its notAfter and renewal time.
async fn ensure_leaf(
    ctx: &Context,
    pr: &PrivateRegistry,
    d: &Desired,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    ca: &CertAndKey,
    sans: &[String],
) -> Result<(time::OffsetDateTime, time::OffsetDateTime)> {
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
            Ok((not_after, renew_at))
        }
        LeafDecision::Issue(reason) => {
            let leaf = certs::issue_server_cert(ca, sans, d.cert_validity, d.key_algorithm)
                .map_err(Error::Certificate)?;
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
            Ok((info.not_after, info.not_after - d.renew_before))
        }
    }
}

async fn patch_status(
    api: &Api<PrivateRegistry>,
    pr: &PrivateRegistry,
    new: crate::api::PrivateRegistryStatus,
) -> Result<()> {
    if pr.status.as_ref() == Some(&new) {
        // Unchanged: write nothing, so a settled registry costs no API writes.
        return Ok(());
    }
    let patch = serde_json::json!({ "status": new });
    api.patch_status(
        &pr.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::PatchStatus)?;
    Ok(())
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
