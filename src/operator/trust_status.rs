//! Which nodes trust which registry, from what the operator can see without
//! giving the node agent any API rights: the trust DaemonSet's status (how many
//! nodes should run the agent) and its pods (a Ready pod's bundle-hash
//! annotation names the bundle that node's files match). Pure.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use sha2::{Digest as _, Sha256};

use super::daemonset::BUNDLE_HASH_ANNOTATION;
use crate::trust::bundle::Bundle;

/// How many published bundles are remembered: pods made for an older bundle
/// still count for the registries it listed, until they are replaced.
const REMEMBERED_BUNDLES: usize = 32;

/// SHA-256 (lowercase hex) of each certificate in a PEM bundle.
pub fn ca_fingerprints(pem: &str) -> BTreeSet<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|der| hex::encode(Sha256::digest(der.as_ref())))
        .collect()
}

/// The PEM blocks of `pem`, sorted and deduplicated: equal sets of
/// certificates give equal text.
pub fn canonical_pem(pem: &str) -> String {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks: Vec<String> = pem
        .split_inclusive(END)
        .map(str::trim)
        .filter(|b| b.ends_with(END))
        .map(str::to_owned)
        .collect();
    blocks.sort();
    blocks.dedup();
    let mut out = blocks.join("\n");
    out.push('\n');
    out
}

/// SHA-256 (lowercase hex) of the bundle bytes, as the agent hashes the file.
pub fn bundle_hash(json: &str) -> String {
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// The bundles this operator published, newest last: for each, which CA
/// certificates it listed for which registry.
#[derive(Debug, Default)]
pub struct Published {
    bundles: VecDeque<(String, BTreeMap<String, BTreeSet<String>>)>,
}

impl Published {
    pub fn record(&mut self, hash: &str, bundle: &Bundle) {
        if self.bundles.back().is_some_and(|(h, _)| h == hash) {
            return;
        }
        self.bundles.retain(|(h, _)| h != hash);
        let listed = bundle
            .registries
            .iter()
            .map(|e| (e.registry.clone(), ca_fingerprints(&e.ca_pem)))
            .collect();
        self.bundles.push_back((hash.to_owned(), listed));
        while self.bundles.len() > REMEMBERED_BUNDLES {
            self.bundles.pop_front();
        }
    }

    /// Whether the bundle `hash` listed every certificate of `cas` for `registry`.
    pub fn lists(&self, hash: &str, registry: &str, cas: &BTreeSet<String>) -> bool {
        !cas.is_empty()
            && self
                .bundles
                .iter()
                .find(|(h, _)| h == hash)
                .and_then(|(_, listed)| listed.get(registry))
                .is_some_and(|have| cas.is_subset(have))
    }

    /// Whether the newest bundle lists `registry` at all.
    pub fn latest_lists(&self, registry: &str) -> bool {
        self.bundles
            .back()
            .is_some_and(|(_, listed)| listed.contains_key(registry))
    }

    pub fn latest(&self) -> Option<&str> {
        self.bundles.back().map(|(h, _)| h.as_str())
    }
}

/// Nodes that trust a registry, out of those that should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCount {
    pub trusted: i32,
    pub desired: i32,
}

/// Ready, and not on its way out.
pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The DaemonSet's desired node count, if its status describes its current
/// template (otherwise how many nodes it covers is not known yet).
pub fn current_desired(daemonset: &DaemonSet) -> Option<i32> {
    let status = daemonset.status.as_ref()?;
    (status.observed_generation >= daemonset.metadata.generation)
        .then_some(status.desired_number_scheduled)
}

/// The nodes with a Ready agent pod whose bundle-hash annotation satisfies `on`.
pub fn ready_nodes<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    on: impl Fn(&str) -> bool,
) -> BTreeSet<&'a str> {
    pods.into_iter()
        .filter(|p| pod_ready(p))
        .filter(|p| {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(BUNDLE_HASH_ANNOTATION))
                .is_some_and(|h| on(h))
        })
        .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
        .collect()
}

/// Counts the nodes whose Ready agent reports a bundle listing every one of the
/// registry's current CA certificates (`cas`).
pub fn count<'a>(
    registry: &str,
    cas: &BTreeSet<String>,
    daemonset: Option<&DaemonSet>,
    pods: impl IntoIterator<Item = &'a Pod>,
    published: &Published,
) -> NodeCount {
    let desired = daemonset
        .and_then(|d| d.status.as_ref())
        .map(|s| s.desired_number_scheduled)
        .unwrap_or(0);
    let nodes = ready_nodes(pods, |h| published.lists(h, registry, cas));
    NodeCount {
        trusted: i32::try_from(nodes.len()).unwrap_or(i32::MAX),
        desired,
    }
}

/// The `TrustDistributed` condition's inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustObservation {
    pub nodes: NodeCount,
    pub distributed: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Why a registry is or is not trusted everywhere.
pub fn observe(enabled: bool, in_bundle: bool, nodes: NodeCount) -> TrustObservation {
    let (distributed, reason, message) = if !enabled {
        (
            false,
            "Disabled",
            "spec.trust.enabled is false: nodes are not given this registry's CA".to_owned(),
        )
    } else if !in_bundle {
        (
            false,
            "NotInBundle",
            "not in the trust bundle yet (see the Ready condition)".to_owned(),
        )
    } else if nodes.desired == 0 {
        (
            false,
            "NoNodes",
            "no node runs the trust agent yet".to_owned(),
        )
    } else if nodes.trusted < nodes.desired {
        (
            false,
            "Distributing",
            format!(
                "{} of {} nodes trust the current CA",
                nodes.trusted, nodes.desired
            ),
        )
    } else {
        (
            true,
            "AllNodesTrust",
            format!("all {} nodes trust the current CA", nodes.desired),
        )
    };
    let nodes = if enabled && in_bundle {
        nodes
    } else {
        NodeCount {
            trusted: 0,
            ..nodes
        }
    };
    TrustObservation {
        nodes,
        distributed,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::bundle::BundleEntry;

    fn entry(registry: &str, ca_pem: &str) -> BundleEntry {
        BundleEntry {
            registry: registry.into(),
            endpoints: vec!["r.test:5000".into()],
            server: "https://10.0.0.1:5000".into(),
            ca_pem: ca_pem.into(),
            runtimes: vec![crate::api::Runtime::Containerd],
            hosts_entry: None,
        }
    }

    fn pod(node: &str, hash: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("t-{node}"), "annotations": {BUNDLE_HASH_ANNOTATION: hash}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn daemonset(desired: i32) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "privreg-trust"},
            "status": {"desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                       "numberMisscheduled": 0, "numberReady": 0}
        }))
        .unwrap()
    }

    #[test]
    fn ready_pods_on_bundles_listing_the_current_ca_count_once_per_node() {
        let ca = || {
            crate::certs::generate_ca(
                "test CA",
                std::time::Duration::from_secs(86400),
                crate::certs::KeyAlgorithm::EcdsaP256,
            )
            .unwrap()
            .cert_pem
        };
        let (old, new) = (ca(), ca());
        let (old_fp, new_fp) = (ca_fingerprints(&old), ca_fingerprints(&new));
        assert_eq!(old_fp.len(), 1);
        assert_ne!(old_fp, new_fp);
        let mut published = Published::default();
        let one = Bundle {
            registries: vec![entry("a/reg", &old)],
        };
        let both = Bundle {
            registries: vec![entry("a/reg", &format!("{old}{new}"))],
        };
        published.record("h1", &one);
        published.record("h2", &both);
        assert_eq!(published.latest(), Some("h2"));

        let ds = daemonset(3);
        let pods = [
            pod("n1", "h1", true),
            pod("n2", "h2", true),
            pod("n3", "h2", false),
            pod("n2", "h2", true),
        ];
        // The old CA is in both bundles: two Ready nodes.
        let c = count("a/reg", &old_fp, Some(&ds), &pods, &published);
        assert_eq!(
            c,
            NodeCount {
                trusted: 2,
                desired: 3
            }
        );
        // The new CA only in h2; both together only in h2.
        let both_fp: BTreeSet<String> = old_fp.union(&new_fp).cloned().collect();
        assert_eq!(
            count("a/reg", &both_fp, Some(&ds), &pods, &published).trusted,
            1
        );
        // Another registry, an unknown hash, no DaemonSet.
        assert_eq!(
            count("b/reg", &old_fp, Some(&ds), &pods, &published).trusted,
            0
        );
        assert_eq!(
            count("a/reg", &old_fp, None, &[pod("n9", "zz", true)], &published),
            NodeCount::default()
        );
    }

    #[test]
    fn conditions_say_why() {
        let all = NodeCount {
            trusted: 2,
            desired: 2,
        };
        let o = observe(true, true, all);
        assert!(o.distributed);
        assert_eq!(o.message, "all 2 nodes trust the current CA");
        let some = observe(
            true,
            true,
            NodeCount {
                trusted: 1,
                desired: 2,
            },
        );
        assert_eq!((some.distributed, some.reason), (false, "Distributing"));
        assert_eq!(observe(true, true, NodeCount::default()).reason, "NoNodes");
        let off = observe(false, true, all);
        assert_eq!(
            (off.reason, off.nodes.trusted, off.nodes.desired),
            ("Disabled", 0, 2)
        );
        assert_eq!(observe(true, false, all).reason, "NotInBundle");
    }

    #[test]
    fn canonical_pem_ignores_order_and_duplicates() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            canonical_pem(&format!("{b}{a}")),
            canonical_pem(&format!("{a}{b}{a}"))
        );
        assert_eq!(canonical_pem(a), a);
    }

    #[test]
    fn memory_is_bounded() {
        let mut p = Published::default();
        for i in 0..100 {
            p.record(&format!("h{i}"), &Bundle::default());
        }
        assert_eq!(p.bundles.len(), REMEMBERED_BUNDLES);
        assert_eq!(p.latest(), Some("h99"));
    }
}
