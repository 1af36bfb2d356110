//! The trust bundle: one ConfigMap in the operator's namespace listing every
//! registry's endpoints and CA, which the node agent (`privreg trust`) reads from a
//! read-only mount. Level-based: rebuilt from the list of PrivateRegistries, so a
//! deleted registry drops out and the agent removes its node files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::api::PrivateRegistry;

pub const BUNDLE_NAME: &str = "privreg-trust-bundle";

/// The wire format is shared with the node agent, which owns its validation.
pub use crate::trust::bundle::{BUNDLE_KEY, Bundle, BundleEntry};

/// The bundle entry of a registry, if it trusts nodes and is far enough along.
pub fn entry(pr: &PrivateRegistry, ca_pem: &str) -> Option<BundleEntry> {
    if !pr.spec.trust.enabled {
        return None;
    }
    let status = pr.status.as_ref()?;
    let endpoint = status.endpoint.clone()?;
    let ip = status.cluster_ip.clone()?;
    let (host, port) = endpoint.rsplit_once(':')?;
    // `host:port` needs an IPv6 address in brackets (`[fd00::10]:5000`); the
    // /etc/hosts line below takes the bare address.
    let ip_host = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.clone(),
    };
    Some(BundleEntry {
        registry: format!("{}/{}", pr.namespace().unwrap_or_default(), pr.name_any()),
        endpoints: vec![endpoint.clone(), format!("{ip_host}:{port}")],
        server: format!("https://{ip_host}:{port}"),
        ca_pem: ca_pem.to_owned(),
        runtimes: pr.spec.trust.runtimes.clone(),
        hosts_entry: pr
            .spec
            .trust
            .hosts_entry
            .then(|| (ip.clone(), host.to_owned())),
    })
}

/// The ConfigMap for a bundle; entries sorted so equal bundles are equal bytes.
pub fn configmap(namespace: &str, mut bundle: Bundle) -> ConfigMap {
    bundle
        .registries
        .sort_by(|a, b| a.registry.cmp(&b.registry));
    let json = serde_json::to_string_pretty(&bundle).expect("bundle serializes");
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

/// Whether the CA ConfigMap was written by the operator for this very registry:
/// a ConfigMap of that name made by anyone else must never put a CA on nodes.
fn owned_by(cm: &ConfigMap, pr: &PrivateRegistry) -> bool {
    let uid = pr.metadata.uid.as_deref();
    uid.is_some()
        && cm
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid)
}

/// Whether a registry's trust belongs in the bundle: trust enabled, its spec
/// valid under the admin's policy (an allowed host name), and it holds the
/// endpoint it claims (no HostnameConflict).
pub fn eligible(
    pr: &PrivateRegistry,
    all: &[Arc<PrivateRegistry>],
    policy: &super::policy::Policy,
) -> bool {
    pr.spec.trust.enabled
        && super::validate::validate(pr, policy).is_ok()
        && super::claims::holds(pr, all).is_ok()
}

/// Rebuilds and applies the bundle once, from the controllers' caches.
pub async fn refresh(ctx: &super::Context, namespace: &str) -> Result<usize, kube::Error> {
    let client = &ctx.client;
    let all = ctx.all_registries();
    let mut bundle = Bundle::default();
    for pr in all.iter().filter(|pr| eligible(pr, &all, &ctx.policy)) {
        let Some(ns) = pr.namespace() else { continue };
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let Some(cm) = cms.get_opt(&format!("{}-ca", pr.name_any())).await? else {
            continue;
        };
        if !owned_by(&cm, pr) {
            continue;
        }
        let Some(ca) = cm.data.as_ref().and_then(|d| d.get("ca.crt")) else {
            continue;
        };
        bundle.registries.extend(entry(pr, ca));
    }
    let count = bundle.registries.len();
    let cm = configmap(namespace, bundle);
    let mut value = serde_json::to_value(&cm).expect("ConfigMap serializes");
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            BUNDLE_NAME,
            &PatchParams::apply(crate::FIELD_MANAGER).force(),
            &Patch::Apply(value),
        )
        .await?;
    Ok(count)
}

/// Keeps the bundle current: after each nudge (a reconcile finished) and at least
/// every `every` (which catches deletions), until `ctx.stop`.
pub async fn run(ctx: Arc<super::Context>, namespace: String, every: Duration) {
    let stop = ctx.stop.clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            result = refresh(&ctx, &namespace) => match result {
                Ok(n) => tracing::debug!(registries = n, "trust bundle applied"),
                Err(e) => tracing::warn!(error = %e, "updating the trust bundle failed"),
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ctx.bundle_nudge.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PrivateRegistryStatus;

    fn registry(trust: bool, hosts: bool) -> PrivateRegistry {
        let mut pr: PrivateRegistry = serde_norway::from_str(&format!(
            "apiVersion: privreg.dev/v1alpha1\nkind: PrivateRegistry\nmetadata: {{name: reg, namespace: tools}}\nspec: {{trust: {{enabled: {trust}, hostsEntry: {hosts}}}}}\n"
        ))
        .unwrap();
        pr.status = Some(PrivateRegistryStatus {
            endpoint: Some("registry.internal:5000".into()),
            cluster_ip: Some("10.96.0.20".into()),
            ..Default::default()
        });
        pr
    }

    #[test]
    fn entries_name_both_endpoints_and_the_ip_server() {
        let e = entry(&registry(true, true), "PEM").unwrap();
        assert_eq!(e.endpoints, ["registry.internal:5000", "10.96.0.20:5000"]);
        assert_eq!(e.server, "https://10.96.0.20:5000");
        assert_eq!(
            e.hosts_entry,
            Some(("10.96.0.20".into(), "registry.internal".into()))
        );
        assert_eq!(
            entry(&registry(true, false), "PEM").unwrap().hosts_entry,
            None
        );
        assert!(entry(&registry(false, false), "PEM").is_none());
        let mut pending = registry(true, false);
        pending.status = None;
        assert!(entry(&pending, "PEM").is_none());
    }

    #[test]
    fn ipv6_cluster_ips_are_bracketed() {
        let mut pr = registry(true, true);
        pr.status.as_mut().unwrap().cluster_ip = Some("fd00::10".into());
        let e = entry(&pr, "PEM").unwrap();
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
            let mut pr = registry(true, true);
            pr.status.as_mut().unwrap().cluster_ip = Some(ip.into());
            let e = entry(&pr, &ca).unwrap();
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
        let mut a = entry(&registry(true, false), "A").unwrap();
        let mut b = a.clone();
        a.registry = "z/last".into();
        b.registry = "a/first".into();
        let one = configmap(
            "privreg-system",
            Bundle {
                registries: vec![a.clone(), b.clone()],
            },
        );
        let two = configmap(
            "privreg-system",
            Bundle {
                registries: vec![b, a],
            },
        );
        assert_eq!(one, two);
        assert!(!one.data.unwrap()[BUNDLE_KEY].contains("PRIVATE KEY"));
    }
}
