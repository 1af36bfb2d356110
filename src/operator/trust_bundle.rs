//! The trust bundle: one ConfigMap in the operator's namespace listing every
//! registry's endpoints and CA, which the node agent (`privreg trust`) reads from a
//! read-only mount. Level-based: rebuilt from the list of PrivateRegistries, so a
//! deleted registry drops out and the agent removes its node files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource as _, ResourceExt};

use super::validate::Desired;
use crate::api::PrivateRegistry;

pub const BUNDLE_NAME: &str = "privreg-trust-bundle";

/// The wire format is shared with the node agent, which owns its validation.
pub use crate::trust::bundle::{BUNDLE_KEY, Bundle, BundleEntry};

/// The bundle entry of a registry whose spec validated as `desired`, whose
/// Service has `cluster_ip`. Everything comes from the validated spec and the
/// operator's own Service, never from the status (which a user with rights on
/// the status subresource could write).
pub fn entry(
    pr: &PrivateRegistry,
    desired: &Desired,
    cluster_ip: &str,
    ca_pem: &str,
) -> Option<BundleEntry> {
    if !desired.trust_enabled {
        return None;
    }
    let ip: std::net::IpAddr = cluster_ip.parse().ok()?;
    // `host:port` needs an IPv6 address in brackets (`[fd00::10]:5000`); the
    // /etc/hosts line below takes the bare address.
    let ip_host = match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    };
    let port = desired.port;
    Some(BundleEntry {
        registry: super::object_key(pr),
        endpoints: vec![desired.endpoint(), format!("{ip_host}:{port}")],
        server: format!("https://{ip_host}:{port}"),
        ca_pem: ca_pem.to_owned(),
        runtimes: desired.trust_runtimes.clone(),
        hosts_entry: desired
            .hosts_entry
            .then(|| (ip.to_string(), desired.hostname.clone())),
    })
}

/// The bundle's bytes: entries sorted, so equal bundles are equal bytes (and
/// hash alike, which is what the agent's readiness is checked against).
pub fn bundle_json(mut bundle: Bundle) -> String {
    bundle
        .registries
        .sort_by(|a, b| a.registry.cmp(&b.registry));
    serde_json::to_string_pretty(&bundle).expect("bundle serializes")
}

/// The ConfigMap holding `json` (from [`bundle_json`]).
pub fn configmap(namespace: &str, json: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(BUNDLE_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (crate::labels::NAME.to_owned(), "privreg".to_owned()),
                (
                    crate::labels::COMPONENT.to_owned(),
                    "trust-bundle".to_owned(),
                ),
                (
                    crate::labels::MANAGED_BY.to_owned(),
                    crate::FIELD_MANAGER.to_owned(),
                ),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(BUNDLE_KEY.to_owned(), json)])),
        ..Default::default()
    }
}

/// Whether an object was made by the operator for this very registry: a CA
/// ConfigMap or Service of the same name made by anyone else must never reach
/// the nodes.
fn made_for(meta: &ObjectMeta, pr: &PrivateRegistry) -> bool {
    pr.controller_owner_ref(&())
        .is_some_and(|owner| super::reconcile::controlled_by(meta, &owner))
}

/// A registry's validated spec, if its trust belongs in the bundle: trust
/// enabled, its spec valid under the admin's policy (an allowed host name), and
/// it holds the endpoint it claims (no HostnameConflict).
pub fn eligible(
    pr: &PrivateRegistry,
    all: &[Arc<PrivateRegistry>],
    policy: &super::policy::Policy,
) -> Option<Desired> {
    if !pr.spec.trust.enabled {
        return None;
    }
    let desired = super::validate::validate(pr, policy).ok()?;
    super::claims::holds(pr, all, |other| {
        super::validate::validate(other, policy).is_ok()
    })
    .ok()?;
    Some(desired)
}

/// The ClusterIP of the registry's own Service (controlled by this registry).
fn cluster_ip_of(pr: &PrivateRegistry, stores: &TrustStores) -> Option<String> {
    let ns = pr.namespace()?;
    let key = ObjectRef::<Service>::new(&pr.name_any()).within(&ns);
    let service = stores.services.iter().find_map(|s| s.get(&key))?;
    let ip = service.spec.as_ref()?.cluster_ip.clone()?;
    (made_for(&service.metadata, pr) && ip != "None" && !ip.is_empty()).then_some(ip)
}

/// The registry's CA certificate(s) as its own CA ConfigMap publishes them.
fn ca_of(pr: &PrivateRegistry, stores: &TrustStores) -> Option<String> {
    let ns = pr.namespace()?;
    let key = ObjectRef::<ConfigMap>::new(&format!("{}-ca", pr.name_any())).within(&ns);
    let cm = stores.ca_configmaps.iter().find_map(|s| s.get(&key))?;
    if !made_for(&cm.metadata, pr) {
        return None;
    }
    cm.data.as_ref()?.get("ca.crt").cloned()
}

/// The caches the trust task reads: the CA ConfigMaps and the registries'
/// Services (every watched namespace), and the trust DaemonSet and its pods
/// (the operator's namespace).
pub struct TrustStores {
    pub ca_configmaps: Vec<Store<ConfigMap>>,
    pub services: Vec<Store<Service>>,
    pub daemonset: Store<DaemonSet>,
    pub pods: Store<Pod>,
}

/// The bundle every eligible registry contributes to, from the caches. Entries
/// the node agent would refuse (it checks each as hostile input) are left out
/// here, with a warning: one refused entry would keep every node's agent from
/// being Ready, and so stall every registry's trust status and CA rotation.
pub fn build(ctx: &super::Context, stores: &TrustStores) -> Bundle {
    let all = ctx.all_registries();
    let mut entries = Vec::new();
    for pr in all.iter() {
        let Some(desired) = eligible(pr, &all, &ctx.policy) else {
            continue;
        };
        let (Some(ca), Some(ip)) = (ca_of(pr, stores), cluster_ip_of(pr, stores)) else {
            continue;
        };
        // In a canonical order, so that promoting the next CA during a
        // rotation (which reorders the ConfigMap) does not change the bundle.
        entries.extend(entry(
            pr,
            &desired,
            &ip,
            &super::trust_status::canonical_pem(&ca),
        ));
    }
    let checked = crate::trust::bundle::validate(&entries);
    let refused = checked.rejected_registries();
    for e in &checked.rejected {
        tracing::warn!(error = %e, "left out of the trust bundle");
    }
    entries.retain(|e| !refused.contains(&e.registry));
    Bundle {
        registries: entries,
    }
}

/// What the trust task remembers between passes.
#[derive(Default)]
struct Applied {
    /// The hash last published (ConfigMap and DaemonSet), and when.
    last: Option<(String, Instant)>,
    /// The operator's Deployment, owner of the bundle and the DaemonSet.
    owner: Option<OwnerReference>,
}

/// The operator's own Deployment as the (non-controller) owner of what the trust
/// task creates, so that uninstalling the operator (`helm uninstall`,
/// `kubectl delete -f deploy/`) also removes the DaemonSet and the bundle.
/// Best effort: without it the DaemonSet and bundle are still published (and
/// the lookup is tried again at the next pass).
async fn owner_of(ctx: &super::Context, namespace: &str) -> Option<OwnerReference> {
    let name = ctx.owner_deployment.as_ref()?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
    let deployment = match deployments.get_opt(name).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            tracing::warn!(deployment = %name, "the operator's Deployment was not found; the trust DaemonSet and bundle have no owner yet");
            return None;
        }
        Err(e) => {
            tracing::warn!(deployment = %name, error = %e, "reading the operator's Deployment failed; the trust DaemonSet and bundle have no owner yet");
            return None;
        }
    };
    deployment.uid().map(|uid| OwnerReference {
        api_version: "apps/v1".to_owned(),
        kind: "Deployment".to_owned(),
        name: name.clone(),
        uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

/// One pass: publish the bundle and the DaemonSet when the bundle changed (or
/// at every resync), then bring each registry's trust status up to date.
async fn refresh(
    ctx: &super::Context,
    stores: &TrustStores,
    namespace: &str,
    applied: &mut Applied,
    every: Duration,
) -> Result<usize, super::error::Error> {
    if super::uninstall::requested(&ctx.client, namespace).await? {
        uninstall_nodes(ctx, stores, namespace, applied).await?;
        return Ok(0);
    }
    let bundle = build(ctx, stores);
    let count = bundle.registries.len();
    let json = bundle_json(bundle.clone());
    let hash = super::trust_status::bundle_hash(&json);
    let due = match &applied.last {
        Some((h, at)) => h != &hash || at.elapsed() >= every,
        None => true,
    };
    if due {
        if applied.owner.is_none() {
            applied.owner = owner_of(ctx, namespace).await;
        }
        let owners = applied.owner.clone().map(|o| vec![o]);
        // The bundle first, then the pods that expect it.
        let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
        let mut cm = configmap(namespace, json);
        cm.metadata.owner_references = owners.clone();
        super::reconcile::apply_with(&cms, cm).await?;
        ctx.published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(&hash, &bundle);
        let mut ds = super::daemonset::daemonset(&ctx.trust_daemonset, &hash);
        ds.metadata.owner_references = owners;
        let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
        super::reconcile::apply_with(&dss, ds).await?;
        if applied.last.as_ref().map(|(h, _)| h) != Some(&hash) {
            tracing::info!(registries = count, sha256 = %hash, "trust bundle published");
        }
        applied.last = Some((hash, Instant::now()));
    }
    update_statuses(ctx, stores).await;
    Ok(count)
}

/// While node trust is uninstalled: the DaemonSet in uninstall mode, and the
/// count of nodes whose agent is done reported to the requester.
async fn uninstall_nodes(
    ctx: &super::Context,
    stores: &TrustStores,
    namespace: &str,
    applied: &mut Applied,
) -> Result<(), super::error::Error> {
    use super::daemonset::UNINSTALL_MODE;
    if applied.owner.is_none() {
        applied.owner = owner_of(ctx, namespace).await;
    }
    let mut ds = super::daemonset::uninstalling(&ctx.trust_daemonset);
    ds.metadata.owner_references = applied.owner.clone().map(|o| vec![o]);
    let dss: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
    super::reconcile::apply_with(&dss, ds).await?;
    if applied.last.as_ref().map(|(h, _)| h.as_str()) != Some(UNINSTALL_MODE) {
        tracing::warn!(
            "uninstall requested: the trust agents remove privreg's files from every node"
        );
        applied.last = Some((UNINSTALL_MODE.to_owned(), Instant::now()));
    }
    // Only a status that describes the uninstalling template counts.
    let Some(desired) = stores
        .daemonset
        .state()
        .first()
        .and_then(|d| super::trust_status::current_desired(d))
    else {
        return Ok(());
    };
    let pods = stores.pods.state();
    let done =
        super::trust_status::ready_nodes(pods.iter().map(|p| p.as_ref()), |h| h == UNINSTALL_MODE);
    let done_count = i32::try_from(done.len()).unwrap_or(i32::MAX);
    super::uninstall::report(
        &ctx.client,
        namespace,
        done_count >= desired,
        &format!("{done_count} of {desired} nodes have no privreg trust files left"),
        applied.owner.as_ref(),
    )
    .await
}

/// Applies each registry's `trustedNodes`, `desiredNodes` and `TrustDistributed`
/// where they changed, as their own field manager (the reconcile owns the rest
/// of the status).
async fn update_statuses(ctx: &super::Context, stores: &TrustStores) {
    let all = ctx.all_registries();
    let daemonset = stores.daemonset.state().into_iter().next();
    let pods = stores.pods.state();
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    // What changed, worked out under the lock; written after it is released.
    let changed: Vec<(&Arc<PrivateRegistry>, serde_json::Value)> = {
        let published = ctx.published.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .filter_map(|pr| {
                let key = super::object_key(pr);
                let cas = ca_of(pr, stores)
                    .map(|pem| super::trust_status::ca_fingerprints(&pem))
                    .unwrap_or_default();
                let nodes = super::trust_status::count(
                    &key,
                    &cas,
                    daemonset.as_deref(),
                    pods.iter().map(|p| p.as_ref()),
                    &published,
                );
                let observation = super::trust_status::observe(
                    pr.spec.trust.enabled,
                    published.latest_lists(&key),
                    nodes,
                );
                super::status::trust_patch(
                    pr.status.as_ref(),
                    &observation,
                    pr.metadata.generation,
                    &now,
                )
                .map(|patch| (pr, patch))
            })
            .collect()
    };
    for (pr, patch) in changed {
        let api: Api<PrivateRegistry> =
            Api::namespaced(ctx.client.clone(), &pr.namespace().unwrap_or_default());
        if let Err(e) =
            super::reconcile::apply_status(&api, pr, super::TRUST_FIELD_MANAGER, patch).await
        {
            tracing::warn!(registry = %super::object_key(pr), error = %e, "updating the trust status failed");
        }
    }
}

/// Keeps the bundle, the DaemonSet and the trust status current: after each
/// nudge (a reconcile finished, an agent pod or the DaemonSet changed) and at
/// least every `every` (which catches deletions), until `ctx.stop`.
/// The shortest time between two publications of the bundle after a change.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<super::Context>, namespace: String, every: Duration) {
    let stop = ctx.stop.clone();
    let Some(stores) = ctx.trust_stores.get() else {
        tracing::error!("the trust caches were not set up; no trust bundle");
        return;
    };
    // The first bundle must list every registry: wait for the caches.
    let ready = async {
        for s in &stores.ca_configmaps {
            let _ = s.wait_until_ready().await;
        }
        for s in &stores.services {
            let _ = s.wait_until_ready().await;
        }
        let _ = stores.daemonset.wait_until_ready().await;
        let _ = stores.pods.wait_until_ready().await;
        if let Some(registries) = ctx.registries.get() {
            for s in registries {
                let _ = s.wait_until_ready().await;
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = ready => {}
    }
    ctx.trust_ready
        .store(true, std::sync::atomic::Ordering::Release);
    let mut applied = Applied::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = refresh(&ctx, stores, &namespace, &mut applied, every) => match result {
                Ok(n) => tracing::debug!(registries = n, "trust bundle and status refreshed"),
                Err(e) => {
                    applied.last = None;
                    tracing::warn!(error = %e, "updating the trust bundle failed")
                }
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ctx.bundle_nudge.notified() => {
                // Coalesce a burst: a rollout is many pod events, and creating
                // many registries is many reconciles. Each new bundle is a
                // ConfigMap of every CA and a rollout of the node agents, so
                // at most one per PUBLISH_INTERVAL (at 1,000 registries
                // created at once, 200 ms meant hundreds of them).
                let since = applied.last.as_ref().map(|(_, at)| at.elapsed());
                let wait = since
                    .map_or(Duration::ZERO, |s| PUBLISH_INTERVAL.saturating_sub(s))
                    .max(Duration::from_millis(200));
                tokio::time::sleep(wait).await;
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_for(trust: bool, hosts: bool, ip: &str, ca: &str) -> Option<BundleEntry> {
        let pr: PrivateRegistry = serde_norway::from_str(&format!(
            "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: reg, namespace: tools}}\nspec: {{hostname: registry.internal, trust: {{enabled: {trust}, hostsEntry: {hosts}}}}}\n"
        ))
        .unwrap();
        let policy = crate::operator::validate::tests::own_image("privreg:test");
        let desired = crate::operator::validate::validate(&pr, &policy).unwrap();
        entry(&pr, &desired, ip, ca)
    }

    #[test]
    fn entries_name_both_endpoints_and_the_ip_server() {
        let e = entry_for(true, true, "10.96.0.20", "PEM").unwrap();
        assert_eq!(e.endpoints, ["registry.internal:5000", "10.96.0.20:5000"]);
        assert_eq!(e.server, "https://10.96.0.20:5000");
        assert_eq!(
            e.hosts_entry,
            Some(("10.96.0.20".into(), "registry.internal".into()))
        );
        assert_eq!(
            entry_for(true, false, "10.96.0.20", "PEM")
                .unwrap()
                .hosts_entry,
            None
        );
        assert!(entry_for(false, false, "10.96.0.20", "PEM").is_none());
        assert!(entry_for(true, false, "not an ip", "PEM").is_none());
    }

    #[test]
    fn ipv6_cluster_ips_are_bracketed() {
        let e = entry_for(true, true, "fd00::10", "PEM").unwrap();
        assert_eq!(e.endpoints, ["registry.internal:5000", "[fd00::10]:5000"]);
        assert_eq!(e.server, "https://[fd00::10]:5000");
        assert_eq!(
            e.hosts_entry,
            Some(("fd00::10".into(), "registry.internal".into()))
        );
    }

    /// The operator's entries pass the agent's validation, both address families.
    #[test]
    fn entries_pass_the_node_agents_validation() {
        let ca = crate::trust::bundle::tests::ca_pem();
        for ip in ["10.96.0.20", "fd00::10"] {
            let e = entry_for(true, true, ip, &ca).unwrap();
            let valid = crate::trust::bundle::validate_entry(&e).unwrap();
            assert_eq!(
                valid.server.host.to_string(),
                e.endpoints[1].trim_end_matches(":5000")
            );
            assert!(valid.hosts_line.is_some());
        }
    }

    #[test]
    fn configmap_is_deterministic() {
        let mut a = entry_for(true, false, "10.96.0.20", "A").unwrap();
        let mut b = a.clone();
        a.registry = "z/last".into();
        b.registry = "a/first".into();
        let one = configmap(
            "privreg-system",
            bundle_json(Bundle {
                registries: vec![a.clone(), b.clone()],
            }),
        );
        let two = configmap(
            "privreg-system",
            bundle_json(Bundle {
                registries: vec![b, a],
            }),
        );
        assert_eq!(one, two);
        assert!(!one.data.unwrap()[BUNDLE_KEY].contains("PRIVATE KEY"));
    }
}
