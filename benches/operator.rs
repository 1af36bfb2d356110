//! The operator at scale: 1,000 PrivateRegistries (`BENCH_REGISTRIES`)
//! created at once against a real control plane (etcd + kube-apiserver +
//! kube-controller-manager, built by scripts/k8s-tools.sh), timed until every
//! one has all its objects and a CertificateReady status. Reports reconciles
//! per second, the API requests the operator sent (its own counter) per
//! registry and per reconcile, its peak RSS, and the time for one spec change
//! to reach its Deployment with all the others present.
//!
//!   eval "$(scripts/k8s-tools.sh --env)"; cargo bench --bench operator

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use privreg::api::PrivateRegistry;

fn registry_count() -> usize {
    std::env::var("BENCH_REGISTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// (reconciles started, API requests sent) from the operator's metrics.
async fn operator_counts(metrics_port: u16) -> (f64, f64) {
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (
        sum("privreg_operator_reconciles_total"),
        sum("privreg_operator_api_requests_total"),
    )
}
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
    // BENCH_OPERATOR_WRAPPER="heaptrack -o /tmp/op" runs the operator under a
    // profiler (its peak RSS line is then the wrapper's).
    let wrapper = std::env::var("BENCH_OPERATOR_WRAPPER").unwrap_or_default();
    let mut command_line: Vec<String> = wrapper.split_whitespace().map(str::to_owned).collect();
    command_line.push(env!("CARGO_BIN_EXE_privreg").to_owned());
    let mut operator = Command::new(&command_line[0])
        .args(&command_line[1..])
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
    let n = registry_count();
    let start = Instant::now();
    for i in 0..n {
        let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
            "metadata": {"name": format!("r{i:04}"), "namespace": NS},
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
    let deadline = Instant::now() + Duration::from_secs(1800);
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
        if ready == n && deps == n && tls >= 2 * n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not converged: {ready} ready, {deps} deployments, {tls} secrets"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let converged = start.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        .unwrap_or_default();
    let (reconciles, requests) = operator_counts(metrics_port).await;

    // One spec change with every other registry present: until the
    // Deployment carries it.
    let changed = Instant::now();
    registries
        .patch(
            "r0000",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"registry": {"maxConnections": 777}}})),
        )
        .await
        .unwrap();
    loop {
        let d = deployments.get("r0000").await.unwrap();
        let args = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next())
            .and_then(|c| c.args)
            .unwrap_or_default();
        if args.iter().any(|a| a == "--max-connections=777") {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(300),
            "spec change not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let change = changed.elapsed();

    println!(
        "{n} PrivateRegistries: created in {:.1}s; all objects present and certificates issued after {:.1}s",
        created.as_secs_f64(),
        converged.as_secs_f64()
    );
    println!(
        "  reconciles: {reconciles:.0} ({:.1} per s); API requests by the operator: {requests:.0} ({:.1} per registry, {:.1} per reconcile)",
        reconciles / converged.as_secs_f64(),
        requests / n as f64,
        requests / reconciles.max(1.0)
    );
    println!(
        "  operator peak RSS {rss}; one spec change reached its Deployment in {:.2}s",
        change.as_secs_f64()
    );
    let _ = operator.kill();
    let _ = operator.wait();
    cp.stop();
}
