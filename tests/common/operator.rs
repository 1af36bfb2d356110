//! The operator's test harness: install the CRD and RBAC into a real control
//! plane, run `privreg operator` as a process, and read what it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use privreg::api::PrivateRegistry;

use super::cluster::eventually;
use super::free_port;

pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn docs(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .split("\n---")
        .filter_map(|d| serde_norway::from_str::<serde_json::Value>(d).ok())
        .filter(|v| v.is_object())
        .collect()
}

pub fn repo_path(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Installs the CRD, the namespaces `privreg-system` and `namespaces`, and the
/// operator's RBAC from deploy/02-rbac.yaml, as admin.
pub async fn install(admin: &Client, tenant_namespaces: &[&str]) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in docs(&repo_path("crds/privreg.dev_privateregistries.yaml")) {
        crds.patch(
            crd["metadata"]["name"].as_str().unwrap(),
            &PatchParams::apply("privreg-test").force(),
            &Patch::Apply(crd.clone()),
        )
        .await
        .unwrap();
    }
    eventually("CRD established", TIMEOUT, || async {
        let crd = crds.get("privateregistries.privreg.dev").await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in std::iter::once("privreg-system").chain(tenant_namespaces.iter().copied()) {
        let n = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &n).await.unwrap();
    }
    apply_file(admin, "deploy/02-rbac.yaml").await;
}

/// Server-side applies every object of a YAML file in the repository, as admin.
pub async fn apply_file(admin: &Client, path: &str) {
    apply_docs(admin, docs(&repo_path(path))).await;
}

pub async fn apply_docs(admin: &Client, docs: Vec<serde_json::Value>) {
    let discovery = kube::Discovery::new(admin.clone()).run().await.unwrap();
    for doc in docs {
        let obj: kube::api::DynamicObject = serde_json::from_value(doc.clone()).unwrap();
        let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap();
        let api: Api<kube::api::DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                admin.clone(),
                obj.metadata.namespace.as_deref().unwrap(),
                &ar,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(admin.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("privreg-test").force(),
            &Patch::Apply(doc),
        )
        .await
        .unwrap();
    }
}

/// `privreg operator` as a process, killed on drop.
pub struct Operator {
    child: Option<Child>,
    identity: String,
    kubeconfig: PathBuf,
    metrics_port: u16,
    log: PathBuf,
    extra: Vec<String>,
}

impl Operator {
    pub fn start(kubeconfig: &Path, identity: &str) -> Operator {
        Operator::start_with(kubeconfig, identity, &[])
    }

    /// Started with more flags (`--allowed-images`, `--watch-namespaces`, ...).
    pub fn start_with(kubeconfig: &Path, identity: &str, extra: &[&str]) -> Operator {
        // Kept after the run (target/tmp), for whoever debugs a failure; named by
        // the test process too, so test binaries run side by side never share one.
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{identity}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut op = Operator {
            child: None,
            identity: identity.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            metrics_port: free_port(),
            log,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        op.spawn();
        op
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // The operator's namespace, unless the extra flags name another.
        let namespace = if self.extra.iter().any(|a| a == "--namespace") {
            &[][..]
        } else {
            &["--namespace", "privreg-system"][..]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_privreg"))
            .arg("operator")
            .args(namespace)
            .args([
                "--image",
                "privreg:test",
                "--leader-elect",
                "--pod-name",
                &self.identity,
                "--trust-bundle-resync-seconds",
                "2",
                "--metrics-listen",
            ])
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(&self.extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,privreg=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start privreg operator");
        self.child = Some(child);
    }

    /// SIGTERM, as kubelet stops a container; waits (bounded) for the exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// Whether the process has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn reconciles(&self) -> Option<u64> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with("privreg_operator_reconciles_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn condition(pr: &PrivateRegistry, type_: &str) -> Option<(String, String)> {
    pr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub fn secret_text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// Verifies `leaf_pem` against `ca_pem` for `name`, as a TLS client would.
pub fn verifies(ca_pem: &str, leaf_pem: &str, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        std::sync::Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .unwrap();
    let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}
