//! Property test: whatever a tenant writes into a PrivateRegistry spec, the
//! operator's pure pipeline (validate -> certificates -> objects) returns a value
//! or an error and never panics. One panic here once took the operator down for
//! every namespace (`tls.ca.validity: 5000000000000h` overflowed a date add).

use std::time::Duration;

use privreg::api::PrivateRegistry;
use privreg::certs::{self, KeyAlgorithm};
use privreg::operator::certificates::{self, CurrentLeaf};
use privreg::operator::objects;
use privreg::operator::policy::Policy;
use privreg::operator::validate::validate;
use proptest::prelude::*;

/// Durations as a hostile tenant writes them: valid, huge, zero, malformed.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,20}(h|m|s)",
        "([0-9]{1,7}(h|m|s)){1,4}",
        Just("0s".to_owned()),
        Just("5000000000000h".to_owned()),
        Just("18446744073709551615s".to_owned()),
        ".{0,12}",
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?",
        ".{0,40}",
        Just("../../etc".to_owned()),
        Just("a".repeat(300)),
    ]
}

fn san() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,10}(\\.[a-z]{1,10}){0,3}",
        "\\*\\.[a-z]{1,10}\\.[a-z]{2,5}",
        "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
        "[0-9a-f:]{2,20}",
        ".{0,20}",
    ]
}

prop_compose! {
    /// `storage.s3` as a hostile tenant writes it.
    fn s3()(
        endpoint in proptest::option::of(prop_oneof![
            "https?://[a-z0-9.]{1,20}(:[0-9]{1,6})?/?",
            "https?://.{0,30}",
            Just("https://user:pw@s3.example".to_owned()),
            Just("https://[::1]:9000".to_owned()),
            ".{0,30}",
        ]),
        bucket in prop_oneof!["[a-z0-9.-]{1,70}", ".{0,20}"],
        prefix in proptest::option::of(prop_oneof!["[A-Za-z0-9./_-]{0,40}", name(), ".{0,20}"]),
        region in proptest::option::of(prop_oneof!["[a-z0-9-]{1,40}", ".{0,10}"]),
        redirect in proptest::option::of(any::<i32>()),
        replicas in proptest::option::of(any::<i32>()),
        credentials in name(),
    ) -> (serde_json::Value, Option<i32>) {
        let mut s3 = serde_json::json!({"bucket": bucket, "credentialsSecretRef": {"name": credentials}});
        if let Some(v) = endpoint { s3["endpoint"] = v.into(); }
        if let Some(v) = prefix { s3["prefix"] = v.into(); }
        if let Some(v) = region { s3["region"] = v.into(); }
        if let Some(v) = redirect { s3["redirectSeconds"] = v.into(); }
        (s3, replicas)
    }
}

prop_compose! {
    fn spec()(
        hostname in proptest::option::of(name()),
        port in proptest::option::of(any::<i32>()),
        size in proptest::option::of(prop_oneof!["[0-9]{1,25}(\\.[0-9]{1,12})?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", ".{0,10}"]),
        class in proptest::option::of(name()),
        retain in proptest::option::of(any::<bool>()),
        ca_validity in proptest::option::of(duration()),
        cert_validity in proptest::option::of(duration()),
        renew_before in proptest::option::of(duration()),
        extra_sans in proptest::collection::vec(san(), 0..70),
        htpasswd in proptest::option::of(name()),
        ca_secret in proptest::option::of(name()),
        constraints in any::<bool>(),
        image in proptest::option::of(prop_oneof![Just("privreg:test".to_owned()), ".{0,600}"]),
        tolerations in 0usize..40,
        selectors in 0usize..40,
    ) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "storage": {},
            "tls": {"ca": {"nameConstraints": constraints}, "cert": {"extraSANs": extra_sans}},
        });
        let mut set = |path: &[&str], v: Option<serde_json::Value>| {
            if let Some(v) = v {
                let mut at = &mut spec;
                for p in &path[..path.len() - 1] {
                    at = &mut at[*p];
                }
                at[path[path.len() - 1]] = v;
            }
        };
        set(&["hostname"], hostname.map(Into::into));
        set(&["port"], port.map(Into::into));
        set(&["storage", "size"], size.map(Into::into));
        set(&["storage", "storageClassName"], class.map(Into::into));
        set(&["storage", "retainOnDelete"], retain.map(Into::into));
        set(&["tls", "ca", "validity"], ca_validity.map(Into::into));
        set(&["tls", "cert", "validity"], cert_validity.map(Into::into));
        set(&["tls", "cert", "renewBefore"], renew_before.map(Into::into));
        set(&["tls", "ca", "secretRef"], ca_secret.map(|n| serde_json::json!({"name": n})));
        set(&["auth"], htpasswd.map(|n| serde_json::json!({"htpasswdSecretRef": {"name": n}})));
        set(&["image"], image.map(Into::into));
        set(&["tolerations"], Some((0..tolerations).map(|_| serde_json::json!({"operator": "Exists"})).collect::<Vec<_>>().into()));
        set(&["nodeSelector"], Some((0..selectors).map(|i| (format!("k{i}"), serde_json::json!("v"))).collect::<serde_json::Map<_, _>>().into()));
        spec
    }
}

fn owner() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "privreg.dev/v1alpha1".into(),
        kind: "PrivateRegistry".into(),
        name: "reg".into(),
        uid: "u-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The resource around `spec`, if it deserialises at all.
fn registry(spec: serde_json::Value) -> Option<PrivateRegistry> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1",
        "kind": "PrivateRegistry",
        "metadata": {"name": "reg", "namespace": "tenant", "uid": "u-1", "generation": 1},
        "spec": spec,
    }))
    .ok()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_spec_panics_the_pipeline(spec in spec(), cluster_ip in proptest::option::of(san())) {
        let Some(pr) = registry(spec) else {
            return Ok(());
        };
        let policy = Policy::new("privreg:test", &["allowed.example/*".into()]).unwrap();
        let Ok(d) = validate(&pr, &policy) else { return Ok(()) };
        // Everything validate accepts is within the published bounds.
        prop_assert!(d.cert_validity >= Duration::from_secs(3600));
        prop_assert!(d.renew_before.as_secs() * 3 < d.cert_validity.as_secs() * 2);
        let owner = owner();
        let _ = objects::service(&d, &owner);
        let _ = objects::pvc(&d, &owner);
        let sans = d.sans(cluster_ip.as_deref());
        let _ = objects::deployment(&d, &owner, &sans);

        // ECDSA keeps the property fast; the algorithm does not change the date math.
        let permitted: Vec<String> = sans.iter().map(|s| certs::constraint_for(s)).collect();
        let ca = certs::generate_constrained_ca(
            "ca",
            d.ca_validity,
            KeyAlgorithm::EcdsaP256,
            d.ca_name_constraints.then_some(permitted.as_slice()),
        );
        let Ok(ca) = ca else { return Ok(()) };
        let _ = objects::ca_configmap(&d, &ca.cert_pem, &owner);
        let policy_text = certificates::policy(d.cert_validity, KeyAlgorithm::EcdsaP256);
        if let Ok(leaf) = certs::issue_server_cert(&ca, &sans, d.cert_validity, KeyAlgorithm::EcdsaP256) {
            let ca_end = certs::inspect(&ca.cert_pem).unwrap().not_after;
            prop_assert!(certs::inspect(&leaf.cert_pem).unwrap().not_after <= ca_end);
            let current = CurrentLeaf {
                cert_pem: Some(&leaf.cert_pem),
                key_pem: Some(&leaf.key_pem),
                ca_pem: Some(&ca.cert_pem),
                policy: Some(&policy_text),
            };
            let _ = certificates::decide(
                &current,
                &ca.cert_pem,
                &sans,
                &policy_text,
                d.renew_before,
                time::OffsetDateTime::now_utc(),
            );
            let _ = objects::tls_secret(&d, &leaf, &ca.cert_pem, &policy_text, &owner);
        }
    }

    #[test]
    fn certificate_lifetimes_never_panic(secs in any::<u64>()) {
        let _ = certs::generate_ca("ca", Duration::from_secs(secs), KeyAlgorithm::EcdsaP256);
        let _ = certs::expiry(time::OffsetDateTime::now_utc(), Duration::from_secs(secs));
    }

    /// Whatever a bucket spec holds, the pipeline does not panic, and what
    /// validate accepts stays within the prefix and names no user, path or
    /// query; a volume keeps one replica.
    #[test]
    fn no_bucket_spec_escapes(bucket in s3(), size in proptest::option::of("[0-9]{1,3}Gi")) {
        let (s3, replicas) = bucket;
        let mut spec = serde_json::json!({"storage": {"s3": s3}});
        if let Some(r) = replicas { spec["replicas"] = r.into(); }
        if let Some(size) = size { spec["storage"]["size"] = size.into(); }
        let Some(pr) = registry(spec) else {
            return Ok(());
        };
        let policy = Policy::new("privreg:test", &[]).unwrap();
        let Ok(d) = validate(&pr, &policy) else { return Ok(()) };
        prop_assert!((1..=64).contains(&d.replicas));
        match &d.storage {
            privreg::operator::validate::Storage::Bucket(b) => {
                prop_assert!(b.prefix.split('/').all(|p| p != ".." && p != "."));
                prop_assert!(!b.prefix.starts_with('/'));
                let endpoint = b.endpoint.clone().unwrap_or_default();
                prop_assert!(!endpoint.contains(['@', '?', '#', ' ']), "{endpoint}");
                prop_assert!(endpoint.matches('/').count() <= 2, "{endpoint}");
            }
            privreg::operator::validate::Storage::Volume { .. } => prop_assert_eq!(d.replicas, 1),
        }
        let _ = objects::deployment(&d, &owner(), &d.sans(None));
        let _ = objects::pod_disruption_budget(&d, &owner());
    }
}
