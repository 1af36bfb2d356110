//! Status computation: conditions with `observedGeneration`, keeping each
//! condition's `lastTransitionTime` while its status does not change. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::PrivateRegistryStatus;

pub const READY: &str = "Ready";
pub const CERTIFICATE_READY: &str = "CertificateReady";
pub const STORAGE_READY: &str = "StorageReady";
pub const AVAILABLE: &str = "Available";
/// Owned by the trust task (its own field manager), with `trustedNodes` and
/// `desiredNodes`; the reconcile never writes these.
pub const TRUST_DISTRIBUTED: &str = "TrustDistributed";
/// Owned by the storage task (its own field manager): `True` while the
/// registry refuses new uploads for want of free space.
pub const STORAGE_PRESSURE: &str = "StoragePressure";

/// What the reconcile saw, for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub endpoint: String,
    pub cluster_ip: Option<String>,
    pub ca_fingerprint: Option<String>,
    pub not_after: Option<time::OffsetDateTime>,
    /// The PVC's phase (`Bound`, `Pending`, ...).
    pub pvc_phase: Option<String>,
    /// The S3 bucket the registry keeps its images in, instead of a volume.
    pub bucket: Option<String>,
    /// Available replicas of the registry Deployment.
    pub available_replicas: i32,
    /// What the Service presents (None: not checked, by configuration or
    /// because no pod is available yet).
    pub serving: Option<super::serving::Serving>,
    /// Why no registry pod is available (see `pod_problem`), if known.
    pub pod_problem: Option<String>,
}

/// The Ready and Available reason while the registry's pod fails.
pub const POD_FAILING: &str = "RegistryPodFailing";

/// One condition, carrying over the transition time of `previous` if unchanged.
fn condition(
    previous: Option<&PrivateRegistryStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    condition_with(previous, type_, status, reason, message, generation, now)
}

/// `condition` with any status (`True`, `False`, `Unknown`).
fn condition_with(
    previous: Option<&PrivateRegistryStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = status.to_owned();
    let last = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: last.unwrap_or_else(|| now.clone()),
    }
}

pub fn compute(
    previous: Option<&PrivateRegistryStatus>,
    observed: &Observed,
    generation: Option<i64>,
    now: &Time,
) -> PrivateRegistryStatus {
    let cert_ok = observed.not_after.is_some();
    let cert = condition(
        previous,
        CERTIFICATE_READY,
        cert_ok,
        if cert_ok { "Issued" } else { "Missing" },
        match observed.not_after {
            Some(t) => format!("server certificate valid until {}", rfc3339(t)),
            None => "no server certificate yet".to_owned(),
        },
        generation,
        now,
    );
    let phase = observed
        .pvc_phase
        .clone()
        .unwrap_or_else(|| "Unknown".to_owned());
    // A bucket is the registry pods' to reach (their readiness checks it, so
    // an unreachable bucket shows as no available pod); the operator never
    // holds the tenant's S3 credentials nor dials the tenant's endpoint.
    let storage_ok = observed.bucket.is_some() || phase == "Bound";
    let (reason, message) = match &observed.bucket {
        Some(bucket) => (
            "ObjectStorage",
            format!(
                "images are kept in S3 bucket {bucket}; each registry pod's readiness checks it"
            ),
        ),
        None if storage_ok => ("Bound", format!("volume claim is {phase}")),
        None => ("NotBound", format!("volume claim is {phase}")),
    };
    let storage = condition(
        previous,
        STORAGE_READY,
        storage_ok,
        reason,
        message,
        generation,
        now,
    );
    let available_ok = observed.available_replicas > 0;
    let pod_problem = observed.pod_problem.as_deref().filter(|_| !available_ok);
    let available = condition(
        previous,
        AVAILABLE,
        available_ok,
        match (available_ok, pod_problem) {
            (true, _) => "MinimumReplicasAvailable",
            (false, Some(_)) => POD_FAILING,
            (false, None) => "NotAvailable",
        },
        match pod_problem {
            Some(problem) => format!("registry pod: {problem}"),
            None => format!("{} registry pod(s) available", observed.available_replicas),
        },
        generation,
        now,
    );
    let pod_wait = pod_problem.map_or_else(
        || "registry pod".to_owned(),
        |p| format!("registry pod: {p}"),
    );
    use super::serving::Serving;
    let serving_ok = matches!(observed.serving, None | Some(Serving::Current));
    let ready_ok = cert_ok && storage_ok && available_ok && serving_ok;
    let serving_wait = match &observed.serving {
        Some(Serving::Stale) => "the Service to present the current certificate".to_owned(),
        Some(Serving::Unreachable(why)) => format!("the Service to answer ({why})"),
        _ => String::new(),
    };
    let waiting: Vec<&str> = [
        (cert_ok, "certificate"),
        (storage_ok, "storage"),
        (available_ok, pod_wait.as_str()),
        (serving_ok, serving_wait.as_str()),
    ]
    .iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| *what)
    .collect();
    let reason = match (&observed.serving, ready_ok) {
        (_, true) => "Ready",
        (Some(Serving::Stale), _) if cert_ok && storage_ok && available_ok => {
            "CertificateNotServed"
        }
        (Some(Serving::Unreachable(_)), _) if cert_ok && storage_ok && available_ok => "NotServing",
        _ if cert_ok && storage_ok && pod_problem.is_some() => POD_FAILING,
        _ => "Waiting",
    };
    let ready = condition(
        previous,
        READY,
        ready_ok,
        reason,
        if ready_ok {
            format!("serving at {}", observed.endpoint)
        } else {
            format!("waiting for {}", waiting.join(", "))
        },
        generation,
        now,
    );
    PrivateRegistryStatus {
        conditions: vec![ready, cert, storage, available],
        endpoint: Some(observed.endpoint.clone()),
        cluster_ip: observed.cluster_ip.clone(),
        ca_fingerprint: observed.ca_fingerprint.clone(),
        certificate_not_after: observed.not_after.map(rfc3339),
        trusted_nodes: None,
        desired_nodes: None,
        observed_generation: generation,
    }
}

/// The part of a status the reconcile owns: everything but the trust fields.
pub fn reconciled_part(status: &PrivateRegistryStatus) -> PrivateRegistryStatus {
    let mut s = status.clone();
    s.conditions
        .retain(|c| c.type_ != TRUST_DISTRIBUTED && c.type_ != STORAGE_PRESSURE);
    s.trusted_nodes = None;
    s.desired_nodes = None;
    s
}

/// The trust task's part of the status for `observed`, or `None` when the
/// status already says exactly that (nothing to write).
pub fn trust_patch(
    previous: Option<&PrivateRegistryStatus>,
    observed: &super::trust_status::TrustObservation,
    generation: Option<i64>,
    now: &Time,
) -> Option<serde_json::Value> {
    let c = condition(
        previous,
        TRUST_DISTRIBUTED,
        observed.distributed,
        observed.reason,
        observed.message.clone(),
        generation,
        now,
    );
    let unchanged = previous.is_some_and(|p| {
        p.trusted_nodes == Some(observed.nodes.trusted)
            && p.desired_nodes == Some(observed.nodes.desired)
            && p.conditions.iter().any(|old| old == &c)
    });
    (!unchanged).then(|| {
        serde_json::json!({
            "trustedNodes": observed.nodes.trusted,
            "desiredNodes": observed.nodes.desired,
            "conditions": [c],
        })
    })
}

/// The storage task's condition for `observed`, or `None` when the status
/// already says exactly that (nothing to write).
pub fn storage_patch(
    previous: Option<&PrivateRegistryStatus>,
    observed: &super::storage_pressure::StorageObservation,
    generation: Option<i64>,
    now: &Time,
) -> Option<serde_json::Value> {
    let c = condition_with(
        previous,
        STORAGE_PRESSURE,
        observed.status,
        observed.reason,
        observed.message.clone(),
        generation,
        now,
    );
    // The message carries the numbers of the moment the status changed; free
    // space moves with every push, and rewriting the status for each move
    // would cost a write per registry per check. The metrics have live values.
    let unchanged = previous.is_some_and(|p| {
        p.conditions.iter().any(|old| {
            old.type_ == c.type_
                && old.status == c.status
                && old.reason == c.reason
                && old.observed_generation == c.observed_generation
        })
    });
    (!unchanged).then(|| serde_json::json!({ "conditions": [c] }))
}

/// The status of a registry the operator did not (fully) reconcile: an invalid
/// spec, a refusal (`NameConflict`, `SecretNotOptedIn`, ...) or a failure:
/// `Ready=False` with that reason, every other field as it was (nothing that
/// runs was changed).
pub fn not_ready(
    previous: Option<&PrivateRegistryStatus>,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> PrivateRegistryStatus {
    let mut status = previous.map(reconciled_part).unwrap_or_default();
    let ready = condition(previous, READY, false, reason, message, generation, now);
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    status.observed_generation = generation;
    status
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn ready_needs_everything_and_transition_times_stick() {
        let mut obs = Observed {
            endpoint: "reg.ns.svc:5000".into(),
            not_after: Some(time::OffsetDateTime::now_utc()),
            pvc_phase: Some("Pending".into()),
            ..Default::default()
        };
        let first = compute(None, &obs, Some(1), &now(100));
        assert_eq!(first.conditions[0].type_, READY);
        assert_eq!(first.conditions[0].status, "False");
        assert!(first.conditions[0].message.contains("storage"));
        let again = compute(Some(&first), &obs, Some(1), &now(200));
        assert_eq!(again, first, "nothing changed, so nothing to write");

        obs.pvc_phase = Some("Bound".into());
        obs.available_replicas = 1;
        let ready = compute(Some(&first), &obs, Some(2), &now(300));
        assert_eq!(ready.conditions[0].status, "True");
        assert_eq!(ready.conditions[0].last_transition_time, now(300));
        let cert = ready
            .conditions
            .iter()
            .find(|c| c.type_ == CERTIFICATE_READY)
            .unwrap();
        assert_eq!(cert.last_transition_time, now(100));
        assert_eq!(ready.observed_generation, Some(2));
    }

    #[test]
    fn ready_waits_for_the_service_to_present_the_current_certificate() {
        use crate::operator::serving::Serving;
        let mut obs = Observed {
            endpoint: "reg.ns.svc:5000".into(),
            not_after: Some(time::OffsetDateTime::now_utc()),
            pvc_phase: Some("Bound".into()),
            available_replicas: 1,
            serving: Some(Serving::Stale),
            ..Default::default()
        };
        let ready = |obs: &Observed| compute(None, obs, Some(1), &now(1)).conditions[0].clone();
        let stale = ready(&obs);
        assert_eq!(
            (stale.status.as_str(), stale.reason.as_str()),
            ("False", "CertificateNotServed")
        );
        assert!(
            stale.message.contains("current certificate"),
            "{}",
            stale.message
        );
        obs.serving = Some(Serving::Unreachable(
            "10.96.0.9:5000: connection refused".into(),
        ));
        let unreachable = ready(&obs);
        assert_eq!(unreachable.reason, "NotServing");
        assert!(
            unreachable.message.contains("connection refused"),
            "{}",
            unreachable.message
        );
        obs.serving = Some(Serving::Current);
        assert_eq!(ready(&obs).status, "True");
        obs.serving = None;
        assert_eq!(ready(&obs).status, "True", "not checked: as before");
    }

    #[test]
    fn invalid_spec_only_touches_ready() {
        let obs = Observed {
            endpoint: "e:1".into(),
            not_after: Some(time::OffsetDateTime::now_utc()),
            ..Default::default()
        };
        let before = compute(None, &obs, Some(1), &now(1));
        let after = not_ready(
            Some(&before),
            "InvalidSpec",
            "bad port".into(),
            Some(2),
            &now(2),
        );
        assert_eq!(after.conditions[0].reason, "InvalidSpec");
        assert_eq!(after.endpoint, before.endpoint);
        assert_eq!(after.conditions.len(), before.conditions.len());
    }
}
