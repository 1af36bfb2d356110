//! Who holds a `host:port`. Node trust is node-wide: every node would pull
//! `<hostname>:<port>/...` from whichever registry the bundle names for it, so
//! exactly one registry may hold each endpoint. The oldest live claimant holds
//! it; a later one is refused (`HostnameConflict`) and kept out of the bundle,
//! and the holder is never disturbed by a newcomer. Only a claimant whose spec is
//! valid under the admin's policy counts: a registry refused for its name
//! (`HostnameNotAllowed`) cannot block the namespace that owns the name. Pure.

use kube::ResourceExt;

use super::object_key as key;
use super::validate::DEFAULT_PORT;
use crate::api::PrivateRegistry;

/// The endpoint a registry claims, from its spec alone (so a registry claims its
/// name before it was ever reconciled). Host names compare case-insensitively.
pub fn claimed_endpoint(pr: &PrivateRegistry) -> Option<String> {
    let namespace = pr.namespace()?;
    let host = match &pr.spec.hostname {
        Some(h) => h.to_ascii_lowercase(),
        None => format!("{}.{namespace}.svc", pr.name_any()),
    };
    let port = pr
        .spec
        .port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT);
    Some(format!("{host}:{port}"))
}

/// The registry holding `endpoint` among `all`: the oldest claimant not being
/// deleted (ties, as when timestamps are equal to the second, by namespace/name).
pub fn holder<'a>(
    endpoint: &str,
    all: impl IntoIterator<Item = &'a PrivateRegistry>,
) -> Option<&'a PrivateRegistry> {
    all.into_iter()
        .filter(|pr| pr.metadata.deletion_timestamp.is_none())
        .filter(|pr| claimed_endpoint(pr).as_deref() == Some(endpoint))
        .min_by_key(|pr| {
            (
                pr.metadata.creation_timestamp.as_ref().map(|t| t.0),
                key(pr),
            )
        })
}

/// Whether `pr` holds the endpoint it claims, given every registry the operator
/// sees, of which only those `valid` says are count. A registry not (yet) in
/// `all` is compared with the others as it is.
pub fn holds(
    pr: &PrivateRegistry,
    all: &[std::sync::Arc<PrivateRegistry>],
    valid: impl Fn(&PrivateRegistry) -> bool,
) -> Result<(), String> {
    let Some(endpoint) = claimed_endpoint(pr) else {
        return Ok(());
    };
    let me = key(pr);
    let others = all
        .iter()
        .map(|a| a.as_ref())
        .filter(|a| key(a) != me)
        .filter(|a| valid(a));
    match holder(&endpoint, others.chain(std::iter::once(pr))) {
        Some(h) if key(h) != me => Err(key(h)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pr(ns: &str, name: &str, host: Option<&str>, created: i64) -> PrivateRegistry {
        let mut pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"hostname": host},
        }))
        .unwrap();
        pr.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
            ));
        pr
    }

    #[test]
    fn the_oldest_claimant_holds_and_keeps_holding() {
        let first = pr("team-a", "reg", Some("registry.internal"), 100);
        let later = pr("team-b", "grab", Some("REGISTRY.internal"), 200);
        let other = pr("team-b", "own", Some("own.internal"), 50);
        let all: Vec<Arc<PrivateRegistry>> = [&first, &later, &other]
            .map(|p| Arc::new(p.clone()))
            .to_vec();
        assert_eq!(holds(&first, &all, |_| true), Ok(()));
        assert_eq!(holds(&later, &all, |_| true), Err("team-a/reg".to_owned()));
        assert_eq!(holds(&other, &all, |_| true), Ok(()));
        // A claimant the store has not seen yet is still judged against the rest.
        let newcomer = pr("team-c", "new", Some("registry.internal"), 300);
        assert_eq!(
            holds(&newcomer, &all, |_| true),
            Err("team-a/reg".to_owned())
        );
        // When the holder goes, the next oldest holds.
        let mut leaving = first.clone();
        leaving.metadata.deletion_timestamp = first.metadata.creation_timestamp.clone();
        let all: Vec<Arc<PrivateRegistry>> =
            [&leaving, &later].map(|p| Arc::new(p.clone())).to_vec();
        assert_eq!(holds(&later, &all, |_| true), Ok(()));
    }

    #[test]
    fn default_names_and_ports_are_claims_too() {
        let a = pr("ns", "reg", None, 1);
        assert_eq!(claimed_endpoint(&a).as_deref(), Some("reg.ns.svc:5000"));
        let b = pr("ns2", "x", Some("reg.ns.svc"), 2);
        let all = vec![Arc::new(a.clone()), Arc::new(b.clone())];
        assert_eq!(holds(&b, &all, |_| true), Err("ns/reg".to_owned()));
    }

    #[test]
    fn an_invalid_claimant_blocks_nobody() {
        let squatter = pr("team-b", "squat", Some("reg.team-a.svc"), 1);
        let owner = pr("team-a", "reg", None, 2);
        let all = vec![Arc::new(squatter.clone()), Arc::new(owner.clone())];
        let valid = |p: &PrivateRegistry| p.namespace().as_deref() != Some("team-b");
        assert_eq!(holds(&owner, &all, valid), Ok(()));
        assert_eq!(
            holds(&owner, &all, |_| true),
            Err("team-b/squat".to_owned())
        );
    }
}
