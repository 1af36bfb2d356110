//! The whole recipe in one test, with no mocks: a `PrivateRegistry` is applied;
//! `privreg operator` (under its ServiceAccount's RBAC from deploy/02-rbac.yaml)
//! makes the CA and TLS Secrets, the CA ConfigMap, the volume claim, the
//! Deployment, the Service, the trust bundle and the trust DaemonSet; the test
//! plays kubelet and runs `privreg serve` and `privreg trust` exactly as that
//! Deployment and DaemonSet say; skopeo pushes a small runnable image; a real
//! containerd (Debian's, with runc) pulls it through the CRI, as kubelet does, by
//! the registry's friendly name `reg.demo.svc:5000`, trusting only the files the
//! agent wrote; `ctr run` runs it and it prints its line; the status says the
//! node trusts the registry; deleting the registry removes the node's files.
//!
//! ## How the node reaches the ClusterIP
//!
//! The operator puts the Service's ClusterIP, allocated by the apiserver, into
//! the server certificate and the trust bundle: the agent's hosts.toml sends
//! `reg.demo.svc:5000` to `https://<ClusterIP>:5000`, and containerd verifies the
//! certificate for that IP. Nothing here runs kube-proxy, so nothing would
//! route a ClusterIP from the usual 10.96.0.0/16. This test's control plane
//! therefore allocates ClusterIPs from a loopback range, [`SERVICE_CIDR`]
//! (`127.96.0.0/16`; kube-apiserver 1.34 accepts it: only external and endpoint
//! IPs are refused when loopback). Linux delivers all of 127.0.0.0/8 to `lo`,
//! so the harness, playing kube-proxy as well as kubelet, runs `privreg serve` on
//! exactly `<ClusterIP>:<Service port>` and every client on the host reaches it:
//! no address is added to any interface, no route, no network namespace, no
//! root needed for the networking (root is needed for containerd and runc), and
//! nothing to clean up if the test dies. The ClusterIP is a real allocation
//! that the test never chooses, so the certificate SAN and hosts.toml carry the
//! apiserver's value end to end.
//!
//! The alternatives considered: a ClusterIP chosen by the test (the operator
//! owns the Service, so only by changing the product), or adding the 10.96.x.y
//! address to `lo` for the test's duration (a non-loopback address in the
//! host's network namespace, which TESTRIG.md asks tests not to add, and a leak
//! if the test is killed).
//!
//! Loopback has one trap (TESTRIG A3): containerd speaks plain HTTP to a
//! loopback registry unless a hosts.toml says `https://`. The agent's hosts.toml
//! does, for both the friendly name and the `<ClusterIP>:5000` form; so the
//! "untrusted" control here is a ctr pull through a hosts.toml of the test's own
//! with the same `https://<ClusterIP>:5000` route and no CA (x509 unknown
//! authority), not a pull with no hosts.toml at all (which would only show the
//! plain-HTTP default, and for the friendly name would ask the machine's DNS).
//!
//! The friendly name is resolved by nothing but hosts.toml: no DNS, no
//! /etc/hosts line (`trust.hostsEntry` stays false, and the test checks that the
//! node's and the machine's /etc/hosts do not name it).
//!
//! The image: one layer holding `/bin/hello`, a static x86-64 ELF of ~150 bytes
//! built by the test (tests/common/images.rs, `hello_binary`) that writes
//! [`HELLO`] and exits, so the image is made offline with no compiler and no
//! busybox. On other architectures the test says SKIPPED.

mod common;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use privreg::api::PrivateRegistry;
use privreg::operator::daemonset::DAEMONSET_NAME;

use common::cluster::ControlPlane;
use common::images::{hello_binary, hello_image, write_layout};
use common::kubelet::ensure_node;
use common::node::{Crictl, NodeContainerd, output_within, text};
use common::operator::{Operator, condition, install, verifies};
use common::registry_pod::{provide_volume, run_registry_pod, service_address};
use common::skopeo::Skopeo;
use common::trust_pod::{OPERATOR_NS, daemonset_hash, published_bundle, run_trust_pod};
use common::{tool, tools_required};

/// This control plane's `--service-cluster-ip-range`: loopback (see the module docs).
const SERVICE_CIDR: &str = "127.96.0.0/16";
const NS: &str = "demo";
const NAME: &str = "reg";
const NODE: &str = "node-1";
/// The registry's friendly name and port: the default hostname `<name>.<ns>.svc`.
const ENDPOINT: &str = "reg.demo.svc:5000";
const OPERATOR_IDENTITY: &str = "operator-recipe";
/// What the image prints (the seed recipe's hello-world, privreg's version).
const HELLO: &str = "Hello from privreg! This container was pulled by containerd through the trust agent's files.\n";
const UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";
const TIMEOUT: Duration = Duration::from_secs(90);

/// Whether `name` is in a directory of `PATH` (containerd and its shim look
/// up `containerd-shim-runc-v2` and `runc` there, not in /usr/sbin by default).
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

/// Polls `check` every 250 ms until it returns `Ok`; after `timeout`, panics
/// with `what` and the last `Err` (what was seen instead).
async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Object `name` of `api`, or what stands in the way.
async fn present<K>(api: &Api<K>, name: &str) -> Result<K, String>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let kind = K::kind(&());
    api.get_opt(name)
        .await
        .map_err(|e| format!("{kind} {name}: {e}"))?
        .ok_or_else(|| format!("{kind} {name} not there yet"))
}

/// On a failing test, prints the tail of every `*.log` under its directories
/// (control plane, operator, registry pod, agent, containerd) after the panic
/// message, so a failure carries what each process said.
struct DumpLogsOnFailure {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl DumpLogsOnFailure {
    fn logs(&self) -> Vec<PathBuf> {
        let mut out = self.files.clone();
        let mut todo: Vec<(PathBuf, u8)> = self.dirs.iter().map(|d| (d.clone(), 0)).collect();
        while let Some((dir, depth)) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() && depth < 2 {
                    todo.push((p, depth + 1));
                } else if t.is_file() && p.extension().is_some_and(|x| x == "log") {
                    out.push(p);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Drop for DumpLogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for log in self.logs() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} (last {} of {} lines) ---\n{}",
                log.display(),
                lines.len().min(40),
                lines.len(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// The status fields the trust story reports: trusted and desired nodes, and
/// the `TrustDistributed` condition's status and reason.
fn trust_status(pr: &PrivateRegistry) -> (Option<i32>, Option<i32>, Option<(String, String)>) {
    let s = pr.status.as_ref();
    (
        s.and_then(|s| s.trusted_nodes),
        s.and_then(|s| s.desired_nodes),
        condition(pr, "TrustDistributed"),
    )
}

/// `ctr --address <socket> -n <namespace> <args>`, bounded.
fn ctr(
    ctr: &Path,
    socket: &Path,
    namespace: &str,
    args: &[&str],
    limit: Duration,
) -> std::process::Output {
    output_within(
        Command::new(ctr)
            .arg("--address")
            .arg(socket)
            .args(["--namespace", namespace])
            .args(args),
        limit,
    )
}

/// No tools needed: the image's binary, run directly, prints exactly its line.
#[test]
fn the_hello_binary_prints_its_line() {
    let Some(binary) = hello_binary(HELLO) else {
        eprintln!("SKIPPED: no hello binary for {}", std::env::consts::ARCH);
        return;
    };
    assert!(binary.len() < 256, "{} bytes", binary.len());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello");
    std::fs::write(&path, &binary).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Another test thread may fork while the file is still open for writing in
    // this process (ETXTBSY until that child execs): retry, bounded.
    let mut tries = 0;
    let out = loop {
        match Command::new(&path).output() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.expect("run the hello binary"),
        }
    };
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), HELLO);
    assert!(out.stderr.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_recipe_from_a_private_registry_to_a_running_container() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let mut timings: Vec<String> = Vec::new();
    let mut mark = {
        let mut last = Instant::now();
        move |timings: &mut Vec<String>, step: &str| {
            timings.push(format!("{step}: {:.1?}", last.elapsed()));
            last = Instant::now();
        }
    };

    // --- What the test needs, or SKIPPED -------------------------------------
    let Some(image) = hello_image(HELLO) else {
        assert!(
            !tools_required() || std::env::consts::ARCH != "x86_64",
            "the hello image is built for x86-64"
        );
        eprintln!(
            "SKIPPED: the hello image's binary is written for x86-64 only (this is {})",
            std::env::consts::ARCH
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some(containerd), Some(ctr_bin), Some(_runc)) = (
        tool("containerd", "PRIVREG_CONTAINERD"),
        tool("ctr", "PRIVREG_CTR"),
        tool("runc", "PRIVREG_RUNC"),
    ) else {
        return;
    };
    for name in ["runc", "containerd-shim-runc-v2"] {
        if !on_path(name) {
            assert!(
                !tools_required(),
                "{name} must be on PATH (containerd runs it from there)"
            );
            eprintln!("SKIPPED: {name} is not on PATH");
            return;
        }
    }
    let Some(skopeo) = Skopeo::find(&dir.path().join("skopeo")) else {
        return;
    };
    let ctrd_dir = dir.path().join("containerd");
    let Some(crictl) = Crictl::find(
        &ctrd_dir.join("containerd.sock"),
        &dir.path().join("crictl"),
    ) else {
        return;
    };
    if !common::root_or_skip("containerd and runc") {
        return;
    }
    let Some(cp) = ControlPlane::start_with_service_cidr(SERVICE_CIDR).await else {
        return;
    };
    let _dump = DumpLogsOnFailure {
        dirs: vec![cp.dir().to_owned(), dir.path().to_owned()],
        // Where tests/common/operator.rs keeps the operator's log.
        files: vec![
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("{OPERATOR_IDENTITY}-{}.log", std::process::id())),
        ],
    };
    mark(&mut timings, "control plane (etcd, kube-apiserver, kcm)");

    // --- 1. Apply a PrivateRegistry; the operator makes everything -----------
    let admin: Client = cp.client().await;
    install(&admin, &[NS]).await;
    let (_, op_kubeconfig) = cp
        .client_for_service_account(OPERATOR_NS, "privreg-operator")
        .await;
    let operator = Operator::start(&op_kubeconfig, OPERATOR_IDENTITY);
    ensure_node(&admin, NODE).await;
    let registries: Api<PrivateRegistry> = Api::namespaced(admin.clone(), NS);
    let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {}
    }))
    .unwrap();
    registries
        .create(&PostParams::default(), &pr)
        .await
        .expect("apply the PrivateRegistry as admin");

    let pr = wait(
        "CertificateReady=True with a ClusterIP",
        TIMEOUT,
        || async {
            let pr = registries.get(NAME).await.map_err(|e| e.to_string())?;
            let ready = condition(&pr, "CertificateReady");
            let ip = pr.status.as_ref().and_then(|s| s.cluster_ip.clone());
            match (&ready, &ip) {
                (Some((s, _)), Some(_)) if s == "True" => Ok(pr),
                _ => Err(format!("{:?}", pr.status)),
            }
        },
    )
    .await;
    let status = pr.status.clone().unwrap();
    assert_eq!(status.endpoint.as_deref(), Some(ENDPOINT));
    let ip: IpAddr = status.cluster_ip.clone().unwrap().parse().unwrap();
    assert!(
        ip.is_loopback() && ip != IpAddr::from([127, 0, 0, 1]),
        "the ClusterIP {ip} comes from {SERVICE_CIDR}"
    );
    let by_ip = format!("{ip}:5000");
    let uid = pr.uid().unwrap();
    let owned_by_registry = |refs: &[OwnerReference]| {
        refs.iter()
            .any(|o| o.uid == uid && o.controller == Some(true))
    };

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NS);
    let objects = wait("every object of the registry", TIMEOUT, || async {
        Ok((
            present(&secrets, "reg-ca").await?,
            present(&secrets, "reg-tls").await?,
            present(&cms, "reg-ca").await?,
            present(&services, NAME).await?,
            present(&deployments, NAME).await?,
            present(&pvcs, "reg-data").await?,
        ))
    })
    .await;
    let (ca_secret, tls_secret, ca_cm, svc, dep, _pvc) = objects;
    for (what, refs) in [
        ("Secret reg-ca", ca_secret.owner_references()),
        ("Secret reg-tls", tls_secret.owner_references()),
        ("ConfigMap reg-ca", ca_cm.owner_references()),
        ("Service reg", svc.owner_references()),
        ("Deployment reg", dep.owner_references()),
    ] {
        assert!(
            owned_by_registry(refs),
            "{what} is owned by the registry: {refs:?}"
        );
    }
    let svc_spec = svc.spec.clone().unwrap();
    assert_eq!(
        svc_spec.cluster_ip.as_deref(),
        Some(ip.to_string().as_str())
    );
    assert_eq!(svc_spec.ports.as_ref().unwrap()[0].port, 5000);
    let ca_pem = ca_cm
        .data
        .clone()
        .unwrap()
        .remove("ca.crt")
        .expect("ca.crt in ConfigMap reg-ca");
    assert!(!ca_pem.contains("PRIVATE KEY"));
    let leaf_pem =
        String::from_utf8(tls_secret.data.clone().unwrap()["tls.crt"].0.clone()).unwrap();
    for name in [
        "reg.demo.svc",
        "reg.demo.svc.cluster.local",
        ip.to_string().as_str(),
    ] {
        assert!(
            verifies(&ca_pem, &leaf_pem, name),
            "the server certificate verifies for {name} with the CA ConfigMap's certificate"
        );
    }
    let hash = wait(
        "the trust bundle lists demo/reg and the DaemonSet expects it",
        TIMEOUT,
        || async {
            let (json, hash) = published_bundle(&admin).await.ok_or("no bundle yet")?;
            let ds = daemonset_hash(&admin).await;
            let ok = json.contains("\"demo/reg\"")
                && json.contains(&format!("\"{ENDPOINT}\""))
                && json.contains(&format!("\"{by_ip}\""))
                && ds.as_deref() == Some(hash.as_str());
            if ok {
                Ok(hash)
            } else {
                Err(format!("bundle {json}, DaemonSet hash {ds:?}"))
            }
        },
    )
    .await;
    let dss: Api<DaemonSet> = Api::namespaced(admin.clone(), OPERATOR_NS);
    wait("the trust DaemonSet counts the node", TIMEOUT, || async {
        let ds = dss.get(DAEMONSET_NAME).await.map_err(|e| e.to_string())?;
        let s = ds.status.ok_or("no DaemonSet status yet")?;
        if s.desired_number_scheduled == 1 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    mark(
        &mut timings,
        "1. the operator made every object and the bundle",
    );

    // --- 2. The registry pod: privreg serve on <ClusterIP>:5000 --------------
    provide_volume(&admin, NS, NAME).await;
    let addr = service_address(&admin, NS, NAME).await;
    assert_eq!(addr, SocketAddr::new(ip, 5000), "the Service's address");
    let mut registry =
        run_registry_pod(&admin, NS, NAME, NODE, addr, &dir.path().join("registry")).await;
    assert!(
        registry.args.contains(&addr.to_string()),
        "privreg serve listens on the ClusterIP: {:?}",
        registry.args
    );
    // kcm binds the volume on its own schedule; bounded, generously.
    let ready = wait("Ready=True", Duration::from_secs(180), || async {
        let pr = registries.get(NAME).await.map_err(|e| e.to_string())?;
        match condition(&pr, "Ready") {
            Some((s, _)) if s == "True" => Ok(pr),
            _ => Err(format!("{:?}", pr.status.map(|s| s.conditions))),
        }
    })
    .await;
    for c in ["CertificateReady", "StorageReady", "Available"] {
        assert_eq!(
            condition(&ready, c).map(|c| c.0).as_deref(),
            Some("True"),
            "{c}"
        );
    }
    mark(
        &mut timings,
        "2. registry pod serving on the ClusterIP, Ready=True",
    );

    // --- 3. skopeo pushes the image, trusting the CA ConfigMap ---------------
    // skopeo has no hosts.toml, so it names the registry by its ClusterIP.
    let push_certs = dir.path().join("push-certs");
    std::fs::create_dir_all(&push_certs).unwrap();
    std::fs::write(push_certs.join("ca.crt"), &ca_pem).unwrap();
    let layout = dir.path().join("hello-layout");
    write_layout(&layout, &[("1", &image.manifest)], image.blobs());
    skopeo.copy(
        &format!("oci:{}:1", layout.display()),
        &format!("docker://{by_ip}/hello:1"),
        false,
        &push_certs,
    );
    assert_eq!(
        skopeo.raw_manifest(&format!("{by_ip}/hello:1"), &push_certs),
        image.manifest.bytes,
        "the registry serves the pushed manifest byte for byte"
    );
    mark(&mut timings, "3. skopeo push");

    // --- 4. The node: containerd, then the trust agent -----------------------
    let Some(ctrd) = NodeContainerd::start(&containerd, &ctr_bin, &ctrd_dir) else {
        return;
    };
    let root = ctrd.root.clone();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let certs_d = ctrd.certs_d();
    let friendly_ref = format!("{ENDPOINT}/hello:1");

    // Control: the same route without the agent's CA is refused on the certificate.
    let no_ca = dir.path().join("hosts-without-ca");
    std::fs::create_dir_all(no_ca.join(ENDPOINT)).unwrap();
    std::fs::write(
        no_ca.join(ENDPOINT).join("hosts.toml"),
        format!(
            "server = \"https://{by_ip}\"\n\n[host.\"https://{by_ip}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();
    let hosts_dir = no_ca.display().to_string();
    let out = ctr(
        &ctr_bin,
        &ctrd.socket,
        "recipe-control",
        &["images", "pull", "--hosts-dir", &hosts_dir, &friendly_ref],
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success() && text(&out).contains(UNKNOWN_CA),
        "without the agent's CA the pull must fail with `{UNKNOWN_CA}`: {}",
        text(&out)
    );
    assert!(
        !certs_d.join(ENDPOINT).exists(),
        "no node files before the agent"
    );

    let mut node = run_trust_pod(&admin, NODE, &root, dir.path()).await;
    assert_eq!(
        node.expected, hash,
        "the agent's pod is of the current template"
    );
    // The node's files: the CA the ConfigMap publishes, for both names and every runtime.
    let hosts_toml = std::fs::read_to_string(certs_d.join(ENDPOINT).join("hosts.toml"))
        .expect("the agent wrote hosts.toml for the friendly name");
    assert!(
        hosts_toml.contains(&format!("[host.\"https://{by_ip}\"]"))
            && hosts_toml.contains(&format!("server = \"https://{ENDPOINT}\"")),
        "{hosts_toml}"
    );
    let node_dirs: Vec<PathBuf> = [
        "etc/containerd/certs.d",
        "etc/docker/certs.d",
        "etc/containers/certs.d",
    ]
    .iter()
    .flat_map(|d| [root.join(d).join(ENDPOINT), root.join(d).join(&by_ip)])
    .collect();
    for d in &node_dirs {
        assert_eq!(
            std::fs::read_to_string(d.join("ca.crt")).ok().as_deref(),
            Some(ca_pem.as_str()),
            "{}/ca.crt holds the registry's CA",
            d.display()
        );
    }
    assert!(certs_d.join(&by_ip).join("hosts.toml").is_file());
    // No name resolution anywhere: hosts.toml alone routes the friendly name.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert!(
        !std::fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .contains("reg.demo.svc")
    );
    mark(
        &mut timings,
        "4. containerd started, agent Ready with the node's files",
    );

    // --- 5. The kubelet's pull (CRI) by the friendly name --------------------
    let out = crictl.pull(&friendly_ref);
    assert!(
        out.status.success(),
        "CRI pull of {friendly_ref}: {}\nregistry log:\n{}\ncontainerd log:\n{}",
        text(&out),
        registry.log(),
        ctrd.log()
    );
    let digests = crictl.repo_digests(&friendly_ref);
    assert!(
        digests.contains(&format!("{ENDPOINT}/hello@{}", image.manifest.digest)),
        "{digests:?}"
    );
    // The ClusterIP form pulls too (its own certs.d entry).
    let out = crictl.pull(&format!("{by_ip}/hello:1"));
    assert!(
        out.status.success(),
        "CRI pull of {by_ip}/hello:1: {}",
        text(&out)
    );
    mark(&mut timings, "5. CRI pulls");

    // --- 6. ctr run: the container prints its line ---------------------------
    let id = format!("privreg-recipe-{}", std::process::id());
    let out = ctr(
        &ctr_bin,
        &ctrd.socket,
        "k8s.io",
        &["run", "--rm", &friendly_ref, &id],
        Duration::from_secs(90),
    );
    assert!(
        out.status.success(),
        "ctr run {friendly_ref}: {}\ncontainerd log:\n{}",
        text(&out),
        ctrd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        HELLO,
        "{}",
        text(&out)
    );
    eprintln!("the container said: {}", HELLO.trim_end());
    mark(&mut timings, "6. ctr run");

    // --- 7. The status says the node trusts the registry ---------------------
    let pr = wait(
        "trustedNodes=1, desiredNodes=1, TrustDistributed=True/AllNodesTrust",
        TIMEOUT,
        || async {
            let pr = registries.get(NAME).await.map_err(|e| e.to_string())?;
            let got = trust_status(&pr);
            let want = (
                Some(1),
                Some(1),
                Some(("True".to_owned(), "AllNodesTrust".to_owned())),
            );
            if got == want {
                Ok(pr)
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        pr.status.as_ref().unwrap().observed_generation,
        pr.metadata.generation
    );
    mark(&mut timings, "7. status trustedNodes=1/1");

    // --- 8. Delete: the bundle drops it, the agent removes the node's files ---
    registries
        .delete(NAME, &DeleteParams::default())
        .await
        .expect("delete the PrivateRegistry");
    wait("the bundle drops demo/reg", TIMEOUT, || async {
        let (json, hash) = published_bundle(&admin).await.ok_or("no bundle")?;
        let ds = daemonset_hash(&admin).await;
        if !json.contains("\"demo/reg\"") && ds.as_deref() == Some(hash.as_str()) {
            Ok(())
        } else {
            Err(format!("bundle {json}, DaemonSet hash {ds:?}"))
        }
    })
    .await;
    mark(&mut timings, "8a. delete: the bundle drops the registry");
    // The kubelet refreshes the mounted ConfigMap; the running agent follows it.
    node.refresh_volume(&admin).await;
    node.agent
        .wait_for("the registry's node files are gone", TIMEOUT, |_| {
            node_dirs.iter().all(|d| !d.exists())
        });
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    // The kubelet's part once the registry's pod goes: stop its container. (The
    // garbage collector's removal of the registry's objects runs at its own
    // pace, ~25 s after a CRD appears; tests/operator.rs proves it.)
    registry.stop();
    mark(
        &mut timings,
        "8b. delete: the agent removed the node's files",
    );

    let log = operator.log();
    assert!(
        !log.contains("PRIVATE KEY"),
        "keys never reach the operator's log"
    );
    drop(node);
    drop(ctrd);
    drop(registry);
    eprintln!(
        "recipe timings (total {:.1?}):\n  {}",
        started.elapsed(),
        timings.join("\n  ")
    );
}
