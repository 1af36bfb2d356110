//! The operator at scale: 100 PrivateRegistries created at once against a real
//! control plane (etcd + kube-apiserver + kube-controller-manager, built by
//! scripts/k8s-tools.sh), timed until every one has all its objects and a
//! CertificateReady status; then the operator's peak RSS.
//!
//!   eval "$(scripts/k8s-tools.sh --env)"; cargo bench --bench operator

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use privreg::api::PrivateRegistry;

const REGISTRIES: usize = 100;
const NS: &str = "bench";

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run());
}

async fn run() {
    let Some(mut cp) = common::cluster::ControlPlane::start().await else {
        eprintln!("control-plane binaries missing: eval \"$(scripts/k8s-tools.sh --env)\"");
        return;
    };
    let admin = cp.client().await;
    common::operator::install(&admin, &[NS]).await;

    let metrics_port = common::free_port();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args([
            "operator",
            "--namespace",
            "privreg-system",
            "--image",
            "privreg:bench",
            "--metrics-listen",
        ])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the operator");
    let pid = operator.id();

    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    let start = Instant::now();
    for i in 0..REGISTRIES {
        let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
            "metadata": {"name": format!("r{i:03}"), "namespace": NS},
            "spec": {"storage": {"size": "1Gi"}}
        }))
        .unwrap();
        registries
            .create(&PostParams::default(), &pr)
            .await
            .unwrap();
    }
    let created = start.elapsed();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = registries
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "CertificateReady" && c.status == "True")
                })
            })
            .count();
        let deps = deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        let tls = secrets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if ready == REGISTRIES && deps == REGISTRIES && tls >= 2 * REGISTRIES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged: {ready} ready, {deps} deployments, {tls} secrets"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = start.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_default();
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reconciles = metrics
        .lines()
        .find(|l| l.starts_with("privreg_operator_reconciles_total"))
        .unwrap_or("?")
        .to_owned();
    println!(
        "{REGISTRIES} PrivateRegistries: created in {:.1}s, all objects present and certificates issued after {:.1}s; operator peak RSS {rss}; {reconciles}",
        created.as_secs_f64(),
        converged.as_secs_f64()
    );
    let _ = operator.kill();
    let _ = operator.wait();
    cp.stop();
}
