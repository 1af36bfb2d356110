//! The Helm chart and the plain manifests: `helm lint --strict`, `helm template`,
//! and what they render carries the operator with the same RBAC as deploy/.

mod common;

use std::path::Path;
use std::process::Command;

use common::{run, tool};

fn chart() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/charts/privreg")
}

#[test]
fn chart_lints_strictly() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let out = run(Command::new(helm).args(["lint", "--strict", chart()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0 chart(s) failed"), "{text}");
}

#[test]
fn chart_renders_the_operator_with_least_privilege() {
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let out = run(Command::new(helm).args([
        "template",
        "reg",
        chart(),
        "--namespace",
        "privreg-system",
        "--include-crds",
        "--kube-version",
        "1.34.0",
        "--set",
        "image.tag=test",
    ]));
    let rendered = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_norway::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.is_object())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/privreg/privreg:test");
    assert_eq!(container["args"][0], "operator");

    // The chart's ClusterRole grants exactly what deploy/02-rbac.yaml grants.
    let plain =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/02-rbac.yaml"))
            .unwrap();
    let plain_role = plain
        .split("\n---")
        .filter_map(|d| serde_norway::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "ClusterRole")
        .unwrap();
    let chart_role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(chart_role["rules"], plain_role["rules"]);
    // No wildcard anywhere.
    assert!(!chart_role["rules"].to_string().contains('*'));
}
