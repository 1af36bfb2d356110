//! The Helm chart and the plain manifests: `helm lint --strict`, `helm template`,
//! and what they render carries the operator with the same RBAC as deploy/, in
//! both modes: cluster-wide (the default, a ClusterRole) and namespaced
//! (`watchNamespaces`, a Role per watched namespace and no cluster-scoped RBAC),
//! which is also what deploy/rbac-namespaced/team-a.yaml gives kubectl users.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::{Value, json};

use common::{run, run_failing, tool};

const NAMESPACE: &str = "privreg-system";
const WATCH: &str = "watchNamespaces={team-a,team-b}";
const ALLOWED_IMAGES: &str =
    "allowedImages={registry.internal/mirror/privreg:*,ghcr.io/acme/privreg:1.2.3}";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/privreg")
}

/// Every non-empty YAML document of `text`, as JSON values.
fn yaml_docs(source: &str, text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .enumerate()
        .map(|(i, de)| {
            Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{source}: YAML document {i} does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn file_docs(relative: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|e| panic!("read {relative}: {e}"));
    yaml_docs(relative, &text)
}

/// `helm template <release> charts/privreg -n <namespace>` with every `--set`.
fn render(helm: &Path, release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.args(["template", release])
        .arg(chart())
        .args(["--namespace", namespace, "--include-crds"])
        .args(["--kube-version", "1.34.0"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = run(&mut cmd);
    let text = String::from_utf8(out.stdout).expect("helm template output is UTF-8");
    yaml_docs(&format!("helm template {sets:?}"), &text)
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// (kind, namespace, name) of an object; the namespace is "" when unset.
fn key(doc: &Value) -> (String, String, String) {
    (
        str_of(doc, "/kind").to_owned(),
        str_of(doc, "/metadata/namespace").to_owned(),
        str_of(doc, "/metadata/name").to_owned(),
    )
}

fn keys(docs: &[Value]) -> BTreeSet<(String, String, String)> {
    docs.iter().map(key).collect()
}

/// templates/admission-policy.yaml, rendered in both modes (it grants nothing).
const ADMISSION_POLICY: (&str, &str, &str) = (
    "ValidatingAdmissionPolicy",
    "",
    "reg-operator-allowed-images",
);
const ADMISSION_POLICY_BINDING: (&str, &str, &str) = (
    "ValidatingAdmissionPolicyBinding",
    "",
    "reg-operator-allowed-images",
);

fn expected_keys(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(k, ns, n)| ((*k).to_owned(), (*ns).to_owned(), (*n).to_owned()))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, namespace: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| key(d) == (kind.to_owned(), namespace.to_owned(), name.to_owned()))
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} among {:?}", keys(docs)))
}

/// The operator container's environment, by variable name.
fn env(docs: &[Value]) -> BTreeMap<String, Value> {
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (str_of(e, "/name").to_owned(), e.clone()))
        .collect()
}

/// The rules of deploy/02-rbac.yaml's ClusterRole: what the operator may do
/// to PrivateRegistries and their children, in any mode.
fn plain_cluster_rules() -> Value {
    let plain = file_docs("deploy/02-rbac.yaml");
    find(&plain, "ClusterRole", "", "privreg-operator")["rules"].clone()
}

/// `roleRef` names `kind` `name`, and the operator's ServiceAccount (and only
/// it) is the subject.
fn assert_binds(binding: &Value, kind: &str, name: &str, sa: &str, sa_namespace: &str) {
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}),
        "{binding}"
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": sa, "namespace": sa_namespace}]),
        "{binding}"
    );
}

#[test]
fn chart_lints_strictly() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let namespaced = [WATCH, ALLOWED_IMAGES];
    for sets in [&[][..], &namespaced[..]] {
        let mut cmd = Command::new(&helm);
        cmd.args(["lint", "--strict"]).arg(chart());
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{sets:?}: {text}"
        );
    }
}

#[test]
fn chart_renders_the_operator_with_least_privilege() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let docs = render(&helm, "reg", NAMESPACE, &["image.tag=test"]);
    // Cluster-wide mode, exactly these objects.
    let ns = NAMESPACE;
    assert_eq!(
        keys(&docs),
        expected_keys(&[
            (
                "CustomResourceDefinition",
                "",
                "privateregistries.privreg.dev"
            ),
            ("ServiceAccount", ns, "reg-operator"),
            ("ClusterRole", "", "reg-operator"),
            ("ClusterRoleBinding", "", "reg-operator"),
            ("Role", ns, "reg-operator-leader"),
            ("RoleBinding", ns, "reg-operator-leader"),
            ("Role", ns, "reg-operator-trust"),
            ("RoleBinding", ns, "reg-operator-trust"),
            ("Deployment", ns, "reg-operator"),
            ("Service", ns, "reg-operator-metrics"),
            ADMISSION_POLICY,
            ADMISSION_POLICY_BINDING,
            ("ServiceAccount", ns, "reg-operator-trust-uninstall"),
            ("Role", ns, "reg-operator-trust-uninstall"),
            ("RoleBinding", ns, "reg-operator-trust-uninstall"),
            ("Job", ns, "reg-operator-trust-uninstall"),
        ])
    );
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/privreg/privreg:test");
    assert_eq!(container["args"][0], "operator");
    // No namespace list and no image list: every namespace, the own image only.
    let names: Vec<String> = env(&docs).into_keys().collect();
    assert_eq!(
        names,
        [
            "POD_NAME",
            "PRIVREG_CA_OVERLAP_SECONDS",
            "PRIVREG_CHECK_SERVING",
            "PRIVREG_IMAGE",
            "PRIVREG_LOG_FORMAT",
            "PRIVREG_NAMESPACE",
            "PRIVREG_OWNER_DEPLOYMENT",
            "PRIVREG_STORAGE_CHECK_SECONDS",
            "PRIVREG_TRUST_PRESET",
            "PRIVREG_TRUST_TOLERATIONS",
        ]
    );
    assert_eq!(env(&docs)["PRIVREG_CA_OVERLAP_SECONDS"]["value"], "300");
    assert_eq!(env(&docs)["PRIVREG_CHECK_SERVING"]["value"], "true");
    assert_eq!(
        env(&docs)["PRIVREG_TRUST_TOLERATIONS"]["value"],
        r#"[{"operator":"Exists"}]"#
    );

    // The chart's ClusterRole grants exactly what deploy/02-rbac.yaml grants.
    let chart_role = find(&docs, "ClusterRole", "", "reg-operator");
    assert_eq!(chart_role["rules"], plain_cluster_rules());
    // No wildcard anywhere.
    assert!(!chart_role["rules"].to_string().contains('*'));
    assert_binds(
        find(&docs, "ClusterRoleBinding", "", "reg-operator"),
        "ClusterRole",
        "reg-operator",
        "reg-operator",
        ns,
    );
    // And the leader Role is deploy/02-rbac.yaml's.
    let plain = file_docs("deploy/02-rbac.yaml");
    assert_eq!(
        find(&docs, "Role", ns, "reg-operator-leader")["rules"],
        find(&plain, "Role", ns, "privreg-operator-leader")["rules"]
    );
    // The pre-delete hook: a Job whose only right is the uninstall request.
    let job = find(&docs, "Job", ns, "reg-operator-trust-uninstall");
    assert_eq!(job["metadata"]["annotations"]["helm.sh/hook"], "pre-delete");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["trust-uninstall", "--timeout-seconds", "300"])
    );
    assert_eq!(
        find(&docs, "Role", ns, "reg-operator-trust-uninstall")["rules"],
        json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["privreg-uninstall"], "verbs": ["get", "patch", "delete"]},
        ])
    );
    // And the trust Role (the DaemonSet, its pods, and the operator's own
    // Deployment by name, which is the release's here).
    let plain_trust = find(&plain, "Role", ns, "privreg-operator-trust")["rules"]
        .to_string()
        .replace("\"privreg-operator\"", "\"reg-operator\"");
    assert_eq!(
        find(&docs, "Role", ns, "reg-operator-trust")["rules"],
        serde_json::from_str::<Value>(&plain_trust).unwrap()
    );
}

#[test]
fn chart_namespaced_mode_grants_roles_in_the_watched_namespaces_only() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let ns = "privreg-ops";
    let docs = render(&helm, "reg", ns, &[WATCH, ALLOWED_IMAGES]);
    // No cluster-scoped RBAC: cluster-scoped are only the CRD (from crds/,
    // installed by Helm) and the admission policy, which grant nothing.
    assert_eq!(
        keys(&docs),
        expected_keys(&[
            (
                "CustomResourceDefinition",
                "",
                "privateregistries.privreg.dev"
            ),
            ("ServiceAccount", ns, "reg-operator"),
            ("Role", "team-a", "reg-operator"),
            ("RoleBinding", "team-a", "reg-operator"),
            ("Role", "team-b", "reg-operator"),
            ("RoleBinding", "team-b", "reg-operator"),
            ("Role", ns, "reg-operator-trust-bundle"),
            ("RoleBinding", ns, "reg-operator-trust-bundle"),
            ("Role", ns, "reg-operator-leader"),
            ("RoleBinding", ns, "reg-operator-leader"),
            ("Role", ns, "reg-operator-trust"),
            ("RoleBinding", ns, "reg-operator-trust"),
            ("Deployment", ns, "reg-operator"),
            ("Service", ns, "reg-operator-metrics"),
            ADMISSION_POLICY,
            ADMISSION_POLICY_BINDING,
            ("ServiceAccount", ns, "reg-operator-trust-uninstall"),
            ("Role", ns, "reg-operator-trust-uninstall"),
            ("RoleBinding", ns, "reg-operator-trust-uninstall"),
            ("Job", ns, "reg-operator-trust-uninstall"),
        ])
    );

    // Each watched namespace: the cluster-wide rules, bound to the operator.
    let cluster_wide = render(&helm, "reg", ns, &[]);
    let cluster_rules = &find(&cluster_wide, "ClusterRole", "", "reg-operator")["rules"];
    assert_eq!(*cluster_rules, plain_cluster_rules());
    for watched in ["team-a", "team-b"] {
        let role = find(&docs, "Role", watched, "reg-operator");
        assert_eq!(role["rules"], *cluster_rules, "Role in {watched}");
        let binding = find(&docs, "RoleBinding", watched, "reg-operator");
        assert_binds(binding, "Role", "reg-operator", "reg-operator", ns);
    }
    // The operator's own namespace: its trust bundle ConfigMap and its Lease.
    assert_eq!(
        find(&docs, "Role", ns, "reg-operator-trust-bundle")["rules"],
        json!([{
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get", "list", "watch", "create", "patch"],
        }])
    );
    assert_eq!(
        find(&docs, "Role", ns, "reg-operator-leader")["rules"],
        find(&cluster_wide, "Role", ns, "reg-operator-leader")["rules"]
    );
    for name in ["reg-operator-trust-bundle", "reg-operator-leader"] {
        let binding = find(&docs, "RoleBinding", ns, name);
        assert_binds(binding, "Role", name, "reg-operator", ns);
    }

    // The operator is told what it watches and which images it may run.
    let vars = env(&docs);
    assert_eq!(
        vars["PRIVREG_WATCH_NAMESPACES"],
        json!({"name": "PRIVREG_WATCH_NAMESPACES", "value": "team-a,team-b"})
    );
    assert_eq!(
        vars["PRIVREG_ALLOWED_IMAGES"],
        json!({
            "name": "PRIVREG_ALLOWED_IMAGES",
            "value": "registry.internal/mirror/privreg:*,ghcr.io/acme/privreg:1.2.3",
        })
    );
    // Each value works without the other.
    let images_only = render(&helm, "reg", ns, &[ALLOWED_IMAGES]);
    assert!(images_only.iter().any(|d| d["kind"] == "ClusterRole"));
    let vars = env(&images_only);
    assert!(vars.contains_key("PRIVREG_ALLOWED_IMAGES"));
    assert!(!vars.contains_key("PRIVREG_WATCH_NAMESPACES"));
}

#[test]
fn chart_refuses_values_it_cannot_pass_on() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    for (set, why) in [
        // A plain string is not a list (`--set 'watchNamespaces={team-a}'` is).
        ("watchNamespaces=team-a", "got string, want array"),
        ("watchNamespaces={Team_A}", "does not match pattern"),
        ("watchNamespaces={team-a,team-a}", "are equal"),
        // Patterns are passed comma-joined: a comma or a space would split one.
        ("allowedImages={ghcr.io/a b}", "does not match pattern"),
        // A `*` only at the end (a prefix), as the operator and the admission
        // policy read it; the operator would refuse to start.
        (
            "allowedImages={ghcr.io/*/privreg:1}",
            "does not match pattern",
        ),
        (
            "metrics.serviceMonitor.interval=often",
            "does not match pattern",
        ),
        (
            "metrics.servicemonitor.enabled=true",
            "additional properties",
        ),
    ] {
        let out = run_failing(
            Command::new(&helm)
                .args(["template", "reg"])
                .arg(chart())
                .args(["--kube-version", "1.34.0", "--set", set]),
        );
        assert!(out.contains(why), "--set {set}: {out}");
    }
}

#[test]
fn chart_serves_metrics_and_optionally_a_service_monitor() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let docs = render(&helm, "reg", NAMESPACE, &[]);
    let service = docs
        .iter()
        .find(|d| {
            str_of(d, "/kind") == "Service" && str_of(d, "/metadata/name") == "reg-operator-metrics"
        })
        .expect("a metrics Service by default");
    let deployment = docs
        .iter()
        .find(|d| str_of(d, "/kind") == "Deployment")
        .unwrap();
    assert_eq!(
        service.pointer("/spec/selector"),
        deployment.pointer("/spec/selector/matchLabels"),
        "the Service selects the operator's pods"
    );
    assert_eq!(str_of(service, "/spec/ports/0/targetPort"), "metrics");
    assert!(!docs.iter().any(|d| str_of(d, "/kind") == "ServiceMonitor"));

    let docs = render(
        &helm,
        "reg",
        NAMESPACE,
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prom",
        ],
    );
    let monitor = docs
        .iter()
        .find(|d| str_of(d, "/kind") == "ServiceMonitor")
        .expect("a ServiceMonitor when enabled");
    assert_eq!(str_of(monitor, "/metadata/labels/release"), "prom");
    assert_eq!(str_of(monitor, "/spec/endpoints/0/port"), "metrics");
    assert_eq!(
        monitor.pointer("/spec/selector/matchLabels"),
        deployment.pointer("/spec/selector/matchLabels")
    );
}

/// The operator's RBAC (not the uninstall hook's, which kubectl users do not get).
fn is_rbac(doc: &Value) -> bool {
    matches!(
        str_of(doc, "/kind"),
        "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
    ) && doc.pointer("/metadata/annotations/helm.sh~1hook").is_none()
}

/// Without labels (the chart's carry its release), for comparing objects.
fn unlabelled(docs: &[Value]) -> BTreeMap<(String, String, String), Value> {
    docs.iter()
        .map(|d| {
            let mut d = d.clone();
            d["metadata"].as_object_mut().unwrap().remove("labels");
            (key(&d), d)
        })
        .collect()
}

#[test]
fn kubectl_namespaced_example_is_what_the_chart_renders() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let example = unlabelled(&file_docs("deploy/rbac-namespaced/team-a.yaml"));
    let chart: Vec<Value> = render(&helm, "privreg", NAMESPACE, &["watchNamespaces={team-a}"])
        .into_iter()
        .filter(is_rbac)
        .collect();
    let chart = unlabelled(&chart);
    assert_eq!(
        example.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>()
    );
    for (k, doc) in &example {
        assert_eq!(doc, &chart[k], "{k:?}");
    }
    // The objects it shares with the cluster-wide deploy/02-rbac.yaml are the same.
    let plain = unlabelled(&file_docs("deploy/02-rbac.yaml"));
    let shared: Vec<_> = plain.keys().filter(|k| example.contains_key(*k)).collect();
    assert_eq!(shared.len(), 5, "{shared:?}");
    for k in shared {
        assert_eq!(plain[k], example[k], "{k:?}");
    }
}
