//! The whole recipe as a cluster user lives it, on a real node
//! (tests/common/realnode.rs: kubelet, containerd, runc, CNI bridge and
//! kube-proxy in a network namespace of their own):
//!
//! 1. privreg's image (scripts/image.py) is imported into the node's containerd
//!    and `helm install` runs the chart; the operator pods become Ready and one
//!    takes the leader Lease.
//! 2. A PrivateRegistry `registry.internal:5000` with a 1Gi volume: the
//!    registry pod runs `privreg serve` from the same image on a bound local
//!    PersistentVolume; the trust DaemonSet's pod writes certs.d and the hosts
//!    line on the node; the status says Ready and 1/1 trusted.
//! 3. skopeo, run as the node (its network and mount namespaces), pushes a
//!    small image to `registry.internal:5000/demo/hello:v1`, trusting only the
//!    CA ConfigMap's certificate, through the ClusterIP (kube-proxy).
//! 4. A Pod with that image (imagePullPolicy Always) runs and logs its line:
//!    kubelet pulled it from the private registry with no manual step.
//! 5. Faults: the registry pod deleted comes back with its data and the image
//!    pulls again; containerd and kubelet restarted, the node's files are still
//!    right and pulls work.
//! 6. The PrivateRegistry deleted: its node files go, a pull by its name fails,
//!    the PersistentVolume is retained. `helm uninstall`: the trust agent's
//!    uninstall removes everything it wrote; the node's certs.d is as before.
//! 7. The durations of install → operator Ready, PrivateRegistry → Ready and
//!    trusted, push → pod Running are printed.
//!
//! Needs root, x86-64 (the hello and pause programs are hand-made ELF files),
//! the node binaries (scripts/k8s-tools.sh), helm (scripts/test-tools.sh) and
//! the image archive (`python3 scripts/image.py`, which scripts/test.sh runs).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use privreg::api::PrivateRegistry;

use common::cluster::eventually;
use common::images::{hello_image, write_layout};
use common::operator::condition;
use common::realnode::{RealNode, in_node};
use common::{run, tool, tools_required};

const OPERATOR_NS: &str = "privreg-system";
const RELEASE: &str = "privreg";
const HOSTNAME: &str = "registry.internal";
const HELLO: &str = "hello from a private registry, pulled by the cluster";
const TIMEOUT: Duration = Duration::from_secs(180);
/// The chart's caOverlapSeconds here: short, so a rotation ends in the test.
const CA_OVERLAP_SECONDS: u64 = 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The archive scripts/image.py wrote (its image.json says where).
fn image_archive() -> Option<(PathBuf, String)> {
    let info = repo().join("target/image/image.json");
    let found = std::fs::read(&info).ok().and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        Some((
            PathBuf::from(v["archive"].as_str()?),
            v["reference"].as_str()?.to_owned(),
        ))
    });
    match found {
        Some((archive, reference)) if archive.is_file() => Some((archive, reference)),
        _ if tools_required() => panic!("no image archive: run python3 scripts/image.py"),
        _ => {
            eprintln!("SKIPPED: no image archive (python3 scripts/image.py)");
            None
        }
    }
}

struct Timings(Vec<(String, Duration)>, Instant);

impl Timings {
    fn mark(&mut self, what: &str) {
        self.0.push((what.to_owned(), self.1.elapsed()));
        eprintln!("[{:>6.1?}] {what}", self.1.elapsed());
        self.1 = Instant::now();
    }
}

#[test]
fn the_recipe_on_a_real_node() {
    if !common::root_or_skip("the real node") {
        return;
    }
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("SKIPPED: the real node's hand-made programs are x86-64");
        return;
    }
    // One thread: RealNode::start moves it into the node's network namespace,
    // and every client and tool of the test must live there too.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(recipe());
}

async fn recipe() {
    let Some((archive, image)) = image_archive() else {
        return;
    };
    let Some(helm) = tool("helm", "PRIVREG_HELM") else {
        return;
    };
    let Some(skopeo) = tool("skopeo", "PRIVREG_SKOPEO") else {
        return;
    };
    let Some(node) = RealNode::start(&[&archive]).await else {
        return;
    };
    let admin = node.client().await;
    let work = node.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut t = Timings(Vec::new(), Instant::now());

    report_image(&node, &image);
    local_storage_class(&admin).await;
    node.provide_volume("pv-a", "2Gi", 65532).await;
    node.provide_volume("pv-b", "2Gi", 65532).await;

    // --- 1. helm install ----------------------------------------------------
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let values = work.join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: {repository}, tag: \"{tag}\"}}\n\
             allowedHostnames: ['*.{{namespace}}.svc', '*.{{namespace}}.svc.{{clusterDomain}}', '*.internal']\n\
             caOverlapSeconds: {CA_OVERLAP_SECONDS}\n\
             storageCheckSeconds: 5\n"
        ),
    )
    .unwrap();
    let install = Command::new(&helm)
        .args(["install", RELEASE])
        .arg(repo().join("charts/privreg"))
        .args([
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--kubeconfig",
        ])
        .arg(node.kubeconfig())
        .arg("--values")
        .arg(&values)
        .args(["--wait", "--timeout", "180s"])
        .output()
        .unwrap();
    if !install.status.success() {
        node.fail(&format!(
            "helm install: {}",
            String::from_utf8_lossy(&install.stderr)
        ));
    }
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let holder = eventually("the leader Lease", TIMEOUT, || async {
        leases
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find_map(|l| l.spec?.holder_identity)
    })
    .await;
    assert!(
        holder.starts_with(RELEASE),
        "the leader is an operator pod: {holder}"
    );
    t.mark("1. helm install → operator pods Ready, leader elected");

    // --- 2. two PrivateRegistries -------------------------------------------
    let registries = [("team-a", 5000), ("team-b", 5001)];
    for (ns, port) in registries {
        create_namespace(&admin, ns).await;
        let api: Api<PrivateRegistry> = Api::namespaced(admin.clone(), ns);
        let host = format!("{ns}.{HOSTNAME}");
        let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
            "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
            "metadata": {"name": "registry", "namespace": ns},
            "spec": {
                "hostname": host,
                "port": port,
                "storage": {"size": "1Gi"},
                // The local volume is a directory on the test machine's disk:
                // 5% of that disk is not this registry's to keep free.
                "registry": {"minFreeSpace": "64Mi"},
                "trust": {"hostsEntry": true},
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &pr)
            .await
            .expect("create PrivateRegistry");
    }
    for (ns, _) in registries {
        wait_ready_and_trusted(&node, &admin, ns).await;
    }
    let table =
        String::from_utf8_lossy(&run(node.kubectl().args(["get", "preg", "-n", "team-a"])).stdout)
            .into_owned();
    eprintln!("{table}");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..5),
        Some(
            &[
                "registry",
                &format!("team-a.{HOSTNAME}:5000") as &str,
                "True",
                "1",
                "1"
            ][..]
        ),
        "kubectl get preg shows the endpoint, Ready and 1 of 1 nodes trusting:\n{table}"
    );
    t.mark("2. PrivateRegistries applied → Ready and trusted 1/1");

    // --- 3. skopeo pushes as the node ---------------------------------------
    let hello = hello_image(HELLO).expect("x86-64");
    let layout = work.join("hello");
    write_layout(&layout, &[("v1", &hello.manifest)], hello.blobs());
    let pusher = Pusher {
        skopeo: skopeo.clone(),
        work: work.clone(),
        layout: layout.clone(),
    };
    for (ns, port) in registries {
        pusher
            .push(&node, &admin, ns, &format!("{ns}.{HOSTNAME}:{port}"))
            .await;
    }
    t.mark("3. skopeo push (as the node, through the ClusterIP)");

    // --- 4. pods run the private image ---------------------------------------
    for (ns, port) in registries {
        run_pod(
            &node,
            &admin,
            ns,
            "hello",
            &format!("{ns}.{HOSTNAME}:{port}/demo/hello:v1"),
        )
        .await;
    }
    t.mark("4. pods pulled the private image and ran it");

    // The trial's other failure: a volume the registry's uid cannot write
    // (hostPath ignores fsGroup). The status and an Event say why, in the
    // registry's own words; once the admin fixes the directory it recovers.
    create_namespace(&admin, "team-d").await;
    node.provide_host_path_volume("pv-d", "2Gi").await;
    let registries_d: Api<PrivateRegistry> = Api::namespaced(admin.clone(), "team-d");
    let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
        "metadata": {"name": "registry", "namespace": "team-d"},
        "spec": {"storage": {"size": "1Gi"}}
    }))
    .unwrap();
    registries_d
        .create(&PostParams::default(), &pr)
        .await
        .unwrap();
    let (reason, message) = eventually("Ready=False, RegistryPodFailing", TIMEOUT, || async {
        let pr = registries_d.get("registry").await.ok()?;
        condition(&pr, "Ready")
            .filter(|(_, r)| r == "RegistryPodFailing")
            .map(|(_, r)| {
                let msg = pr
                    .status
                    .as_ref()
                    .unwrap()
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .unwrap()
                    .message
                    .clone();
                (r, msg)
            })
    })
    .await;
    eprintln!("team-d: Ready=False {reason}: {message}");
    assert!(
        message.contains("Permission denied"),
        "the registry's own error is in the status: {message}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), "team-d");
    let warned = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("RegistryPodFailing")
                && e.type_.as_deref() == Some("Warning")
        });
    let warned = warned.expect("a Warning Event RegistryPodFailing");
    assert!(
        warned
            .note
            .unwrap_or_default()
            .contains("Permission denied")
    );
    std::os::unix::fs::chown(node.volume_dir("pv-d"), Some(65532), Some(65532)).unwrap();
    let fixed = Instant::now();
    wait_ready_and_trusted(&node, &admin, "team-d").await;
    eprintln!(
        "team-d: Ready {:.1?} after the volume was made writable",
        fixed.elapsed()
    );
    t.mark(
        "4b. a root-owned hostPath volume → RegistryPodFailing with the reason, then fixed → Ready",
    );

    // A registry whose volume is under its minimum free space: a minimum of
    // 100% puts it there at once. The operator reads the pod's metrics and
    // says so in the status and a Warning Event; a sane minimum relieves it.
    let set_min_free = |value: &'static str| {
        let api = registries_d.clone();
        async move {
            api.patch(
                "registry",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"registry": {"minFreeSpace": value}}})),
            )
            .await
            .expect("patch spec.registry.minFreeSpace");
        }
    };
    let storage_condition = |want: (&'static str, &'static str)| {
        let api = registries_d.clone();
        async move {
            let pr = api.get("registry").await.ok()?;
            let c = pr
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "StoragePressure")?;
            ((c.status.as_str(), c.reason.as_str()) == want).then_some(c.message)
        }
    };
    let event = |reason: &'static str, type_: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some(type_))
                .and_then(|e| e.note)
        }
    };
    // The volume is a directory on the test machine's disk: 5% of that disk
    // is not this registry's to keep free.
    set_min_free("64Mi").await;
    eventually("StoragePressure=False", TIMEOUT, || {
        storage_condition(("False", "EnoughFreeSpace"))
    })
    .await;
    set_min_free("100%").await;
    let message = eventually("StoragePressure=True", TIMEOUT, || {
        storage_condition(("True", "BelowMinFreeSpace"))
    })
    .await;
    eprintln!("team-d: StoragePressure=True: {message}");
    assert!(message.contains("new pushes are refused"), "{message}");
    let note = eventually("a Warning Event StoragePressure", TIMEOUT, || {
        event("StoragePressure", "Warning")
    })
    .await;
    assert!(note.contains("MiB free of"), "{note}");
    set_min_free("64Mi").await;
    eventually("StoragePressure=False again", TIMEOUT, || {
        storage_condition(("False", "EnoughFreeSpace"))
    })
    .await;
    eventually("a Normal Event StoragePressureRelieved", TIMEOUT, || {
        event("StoragePressureRelieved", "Normal")
    })
    .await;
    wait_ready_and_trusted(&node, &admin, "team-d").await;
    t.mark("4c. minFreeSpace above the free space → StoragePressure=True + Warning Event, relieved → False");

    // --- 5. faults -----------------------------------------------------------
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "team-a");
    let registry_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=privreg"))
        .await
        .unwrap();
    let before: Vec<String> = registry_pods.items.iter().map(|p| p.name_any()).collect();
    assert!(!before.is_empty(), "a registry pod runs in team-a");
    for name in &before {
        pods.delete(name, &DeleteParams::default()).await.unwrap();
    }
    let deleted = Instant::now();
    eventually("a new registry pod, Ready", TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=privreg"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|p| {
                !before.contains(&p.name_any())
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .then_some(())
    })
    .await;
    wait_ready_and_trusted(&node, &admin, "team-a").await;
    let ca_a = work.join("certs-team-a/ca.crt");
    loop {
        // The status can still carry Ready from before the delete until the
        // operator sees the Deployment change: wait for the pushed manifest.
        let ok = in_node("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "5", "--cacert"])
            .arg(&ca_a)
            .arg(format!(
                "https://team-a.{HOSTNAME}:5000/v2/demo/hello/manifests/v1"
            ))
            .args(["-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
            .status()
            .unwrap()
            .success();
        if ok {
            break;
        }
        if deleted.elapsed() > TIMEOUT {
            node.fail("the replaced registry pod does not serve the pushed manifest");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "registry pod replaced, serving the pushed image {:.1?} after the delete",
        deleted.elapsed()
    );
    run_pod(
        &node,
        &admin,
        "team-a",
        "after-pod-delete",
        &format!("team-a.{HOSTNAME}:5000/demo/hello:v1"),
    )
    .await;
    t.mark("5a. registry pod deleted → back with its data, pull works");

    let mut node = node;
    node.restart_containerd_and_kubelet().await;
    for (ns, port) in registries {
        assert_node_trusts(&node, &format!("{ns}.{HOSTNAME}:{port}"));
    }
    run_pod(
        &node,
        &admin,
        "team-b",
        "after-restart",
        &format!("team-b.{HOSTNAME}:5001/demo/hello:v1"),
    )
    .await;
    t.mark("5b. containerd + kubelet restarted → files right, pull works");

    // The trial's failure: the Service deleted and re-created gets a new
    // ClusterIP; Ready must wait until the new certificate is served there.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(admin.clone(), "team-a");
    let registries_a: Api<PrivateRegistry> = Api::namespaced(admin.clone(), "team-a");
    let old_ip = cluster_ip(&registries_a).await.expect("a ClusterIP");
    services
        .delete("registry", &DeleteParams::default())
        .await
        .unwrap();
    let changed = Instant::now();
    eventually("a new ClusterIP in the status", TIMEOUT, || async {
        (cluster_ip(&registries_a).await? != old_ip).then_some(())
    })
    .await;
    wait_ready_and_trusted(&node, &admin, "team-a").await;
    let ready_after = changed.elapsed();
    let new_ip = cluster_ip(&registries_a).await.expect("a ClusterIP");
    eventually(
        "the node's hosts line names the new ClusterIP",
        TIMEOUT,
        || async {
            let hosts = node.read_node_file("/etc/hosts")?;
            hosts
                .lines()
                .any(|l| l.starts_with(&format!("{new_ip} ")) && l.contains(HOSTNAME))
                .then_some(())
        },
    )
    .await;
    assert_served(&node, &format!("team-a.{HOSTNAME}:5000"), &ca_a);
    run_pod(
        &node,
        &admin,
        "team-a",
        "after-new-ip",
        &format!("team-a.{HOSTNAME}:5000/demo/hello:v1"),
    )
    .await;
    eprintln!(
        "Service re-created: Ready and served at the new ClusterIP {ready_after:.1?} after the delete"
    );
    t.mark("5c. Service re-created → new ClusterIP served, Ready, pull works");

    // A CA rotation: pods keep pulling through the whole overlap.
    let before_ca = registries_a
        .get("registry")
        .await
        .unwrap()
        .status
        .unwrap()
        .ca_fingerprint
        .unwrap();
    let annotate =
        serde_json::json!({"metadata": {"annotations": {"privreg.dev/rotate-ca": "e2e"}}});
    registries_a
        .patch(
            "registry",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&annotate),
        )
        .await
        .unwrap();
    let rotation = Instant::now();
    let mut pulls = 0;
    loop {
        pulls += 1;
        let name = format!("during-rotation-{pulls}");
        run_pod(
            &node,
            &admin,
            "team-a",
            &name,
            &format!("team-a.{HOSTNAME}:5000/demo/hello:v1"),
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), "team-a");
        let _ = pods.delete(&name, &DeleteParams::default()).await;
        let pr = registries_a.get("registry").await.unwrap();
        let rotated =
            pr.status.as_ref().and_then(|s| s.ca_fingerprint.clone()) != Some(before_ca.clone());
        if rotated && old_ca_dropped(&admin, "team-a").await {
            break;
        }
        if rotation.elapsed() > TIMEOUT {
            node.fail(&format!("the CA rotation did not finish: {:?}", pr.status));
        }
    }
    // The ConfigMap now holds the new CA only, and the registry serves under it.
    std::fs::write(&ca_a, ca_configmap(&admin, "team-a").await).unwrap();
    wait_ready_and_trusted(&node, &admin, "team-a").await;
    assert_served(&node, &format!("team-a.{HOSTNAME}:5000"), &ca_a);
    run_pod(
        &node,
        &admin,
        "team-a",
        "after-rotation",
        &format!("team-a.{HOSTNAME}:5000/demo/hello:v1"),
    )
    .await;
    eprintln!(
        "CA rotated in {:.1?}; {pulls} pulls during it, all succeeded",
        rotation.elapsed()
    );
    t.mark("5d. CA rotated → every pull during the overlap and after works");

    // --- 6. delete one registry, then uninstall -------------------------------
    let api: Api<PrivateRegistry> = Api::namespaced(admin.clone(), "team-b");
    api.delete("registry", &DeleteParams::default())
        .await
        .unwrap();
    let gone = format!("team-b.{HOSTNAME}:5001");
    eventually("team-b's node files are removed", TIMEOUT, || async {
        (!node
            .node_etc_changes("containerd/certs.d")
            .iter()
            .any(|p| p.contains(&gone)))
        .then_some(())
    })
    .await;
    let hosts = node.read_node_file("/etc/hosts").unwrap_or_default();
    assert!(
        !hosts.contains(&format!("team-b.{HOSTNAME}")),
        "hosts line removed:\n{hosts}"
    );
    let pvs: Api<PersistentVolume> = Api::all(admin.clone());
    let pv = pvs.list(&ListParams::default()).await.unwrap();
    assert!(
        pv.items.iter().any(|p| p
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|c| c.namespace.as_deref())
            == Some("team-b")),
        "team-b's volume is retained"
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(admin.clone(), "team-b");
    assert!(
        claims.get_opt("registry-data").await.unwrap().is_some(),
        "team-b's volume claim is retained (retainOnDelete)"
    );
    // A pull by the deleted registry's name fails now: no trust, no route.
    let pods_b: Api<Pod> = Api::namespaced(admin.clone(), "team-b");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "after-delete"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "hello",
            "image": format!("team-b.{HOSTNAME}:5001/demo/hello:v1"), "imagePullPolicy": "Always"}]}
    }))
    .unwrap();
    pods_b.create(&PostParams::default(), &pod).await.unwrap();
    let pull_error = eventually(
        "the pull by the deleted registry's name fails",
        TIMEOUT,
        || async {
            let p = pods_b.get("after-delete").await.ok()?;
            let waiting = p
                .status?
                .container_statuses?
                .first()?
                .state
                .clone()?
                .waiting?;
            matches!(
                waiting.reason.as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
            .then(|| waiting.message.unwrap_or_default())
        },
    )
    .await;
    eprintln!("pull after the registry was deleted: {pull_error}");
    pods_b
        .delete("after-delete", &DeleteParams::default())
        .await
        .unwrap();
    t.mark("6a. PrivateRegistry deleted → node files gone, pulls by its name fail, volume kept");

    run(Command::new(&helm)
        .args([
            "uninstall",
            RELEASE,
            "--namespace",
            OPERATOR_NS,
            "--kubeconfig",
        ])
        .arg(node.kubeconfig())
        .args(["--wait", "--timeout", "300s"]));
    let left = node.node_etc_changes("containerd/certs.d");
    assert!(
        left.is_empty(),
        "the node's certs.d is as before installation: {left:?}"
    );
    for sub in ["docker/certs.d", "containers/certs.d"] {
        let left = node.node_etc_changes(sub);
        assert!(left.is_empty(), "/etc/{sub} is as before: {left:?}");
    }
    let hosts = node.read_node_file("/etc/hosts").unwrap_or_default();
    assert!(
        !hosts.contains(HOSTNAME),
        "no privreg line in /etc/hosts:\n{hosts}"
    );
    t.mark("6b. helm uninstall → the node's files as before");

    // --- the same with kubectl apply -f deploy/ -------------------------------
    // team-a's registry is still there (helm keeps CRDs and their objects);
    // deploy/'s operator allows only the default names (`*.<namespace>.svc`),
    // so it refuses team-a's `*.internal` name; a new registry in team-c.
    run(node
        .kubectl()
        .args(["apply", "-f"])
        .arg(repo().join("deploy")));
    run(node.kubectl().args([
        "-n",
        OPERATOR_NS,
        "rollout",
        "status",
        "deployment/privreg-operator",
        "--timeout=180s",
    ]));
    t.mark("7. kubectl apply -f deploy/ → operator pods Ready");
    create_namespace(&admin, "team-c").await;
    node.provide_volume("pv-c", "2Gi", 65532).await;
    let api: Api<PrivateRegistry> = Api::namespaced(admin.clone(), "team-c");
    let pr: PrivateRegistry = serde_json::from_value(serde_json::json!({
        "apiVersion": "privreg.dev/v1alpha1", "kind": "PrivateRegistry",
        "metadata": {"name": "registry", "namespace": "team-c"},
        "spec": {"storage": {"size": "1Gi"}, "trust": {"hostsEntry": true}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &pr).await.unwrap();
    wait_ready_and_trusted(&node, &admin, "team-c").await;
    let reference = pusher
        .push(&node, &admin, "team-c", "registry.team-c.svc:5000")
        .await;
    run_pod(&node, &admin, "team-c", "hello", &reference).await;
    t.mark("8. with deploy/: a new registry, push, a pod pulls");

    // Uninstalling with kubectl: trust-uninstall first (README), then delete.
    run(Command::new(env!("CARGO_BIN_EXE_privreg"))
        .args(["trust-uninstall", "--namespace", OPERATOR_NS])
        .env("KUBECONFIG", node.kubeconfig()));
    run(node
        .kubectl()
        .args(["delete", "-f"])
        .arg(repo().join("deploy"))
        .args(["--timeout=180s"]));
    for sub in ["containerd/certs.d", "docker/certs.d", "containers/certs.d"] {
        let left = node.node_etc_changes(sub);
        assert!(left.is_empty(), "/etc/{sub} is as before: {left:?}");
    }
    let hosts = node.read_node_file("/etc/hosts").unwrap_or_default();
    assert!(
        !hosts.contains(".svc"),
        "no privreg line in /etc/hosts:\n{hosts}"
    );
    t.mark("9. privreg trust-uninstall + kubectl delete -f deploy/ → node as before");

    eprintln!("real-node recipe timings:");
    for (what, d) in &t.0 {
        eprintln!("  {d:>8.1?}  {what}");
    }
}

/// The image's compressed size (scripts/image.py's image.json) and how long
/// `privreg --version` takes in a container of it, `ctr run` included (the
/// median of 5; the container's setup by runc is most of it).
fn report_image(node: &RealNode, image: &str) {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join("target/image/image.json")).unwrap())
            .unwrap();
    let mut runs = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let out = run(in_node(&node.bins.ctr)
            .arg("--address")
            .arg(node.dir.join("containerd/containerd.sock"))
            .args(["--namespace", "k8s.io", "run", "--rm", image])
            .arg(format!("version-{i}"))
            .args(["/usr/local/bin/privreg", "--version"]));
        runs.push(t.elapsed());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("privreg "),
            "privreg --version printed {text:?}"
        );
    }
    runs.sort();
    eprintln!(
        "image {image}: {:.1} MB compressed; `ctr run --rm … privreg --version`: median {:.0?} (min {:.0?})",
        info["compressed_bytes"].as_f64().unwrap_or_default() / 1e6,
        runs[2],
        runs[0]
    );
}

/// The ClusterIP in the status of `registry`.
async fn cluster_ip(api: &Api<PrivateRegistry>) -> Option<String> {
    api.get("registry").await.ok()?.status?.cluster_ip
}

/// Whether the operator reported dropping the previous CA of `ns/registry`.
async fn old_ca_dropped(admin: &Client, ns: &str) -> bool {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("PreviousCADropped"))
        })
        .unwrap_or(false)
}

async fn local_storage_class(admin: &Client) {
    let sc: StorageClass = serde_json::from_value(serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {
            "name": "local",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain",
    }))
    .unwrap();
    let api: Api<StorageClass> = Api::all(admin.clone());
    api.create(&PostParams::default(), &sc)
        .await
        .expect("create StorageClass");
}

/// Pushes the hello image to a registry as the node does: skopeo in the
/// node's namespaces, trusting only the registry's CA ConfigMap.
struct Pusher {
    skopeo: PathBuf,
    work: PathBuf,
    layout: PathBuf,
}

impl Pusher {
    /// Pushes to `<host_port>/demo/hello:v1` right after Ready (which means
    /// served); returns that reference.
    async fn push(&self, node: &RealNode, admin: &Client, ns: &str, host_port: &str) -> String {
        let certs = self.work.join(format!("certs-{ns}"));
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::write(certs.join("ca.crt"), ca_configmap(admin, ns).await).unwrap();
        let policy = self.work.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        assert_served(node, host_port, &certs.join("ca.crt"));
        let reference = format!("{host_port}/demo/hello:v1");
        run(in_node(&self.skopeo)
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--preserve-digests", "--dest-cert-dir"])
            .arg(&certs)
            .arg(format!("oci:{}:v1", self.layout.display()))
            .arg(format!("docker://{reference}")));
        reference
    }
}

async fn create_namespace(admin: &Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    let api: Api<Namespace> = Api::all(admin.clone());
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    // Pods need the namespace's default ServiceAccount.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), name);
    eventually("the default ServiceAccount", TIMEOUT, || async {
        sas.get_opt("default").await.ok().flatten()
    })
    .await;
}

async fn ca_configmap(admin: &Client, ns: &str) -> String {
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    cms.get("registry-ca")
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("ca.crt")
        .unwrap()
}

async fn wait_ready_and_trusted(node: &RealNode, admin: &Client, ns: &str) {
    let api: Api<PrivateRegistry> = Api::namespaced(admin.clone(), ns);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let pr = api.get("registry").await.unwrap();
        let ready = condition(&pr, "Ready").is_some_and(|(s, _)| s == "True");
        let s = pr.status.clone().unwrap_or_default();
        if ready && s.trusted_nodes == Some(1) && s.desired_nodes == Some(1) {
            return;
        }
        if Instant::now() > deadline {
            let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
            let dep = deployments
                .get_opt("registry")
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status);
            node.fail(&format!(
                "{ns}/registry not Ready and trusted: {:?}\ndeployment: {dep:?}",
                pr.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `https://<host_port>/v2/` answers as the node sees it (its /etc/hosts,
/// kube-proxy's rules), trusting only `ca`: at once, since Ready means the
/// Service presents the current certificate (the operator checks).
fn assert_served(node: &RealNode, host_port: &str, ca: &std::path::Path) {
    let out = in_node("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            "--cacert",
        ])
        .arg(ca)
        .arg(format!("https://{host_port}/v2/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if code != "200" {
        node.fail(&format!(
            "Ready, but https://{host_port}/v2/ answers {code}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// The node's containerd has a hosts.toml for `host_port` naming the CA.
fn assert_node_trusts(node: &RealNode, host_port: &str) {
    let hosts_toml = node
        .read_node_file(&format!("/etc/containerd/certs.d/{host_port}/hosts.toml"))
        .unwrap_or_default();
    assert!(
        hosts_toml.contains("ca = "),
        "hosts.toml for {host_port}:\n{hosts_toml}"
    );
}

/// Runs a Pod with `image` (pulled every time), waits for it to succeed and
/// checks its log shows [`HELLO`].
async fn run_pod(node: &RealNode, admin: &Client, ns: &str, name: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "hello", "image": image, "imagePullPolicy": "Always"}],
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let p = pods.get(name).await.unwrap();
        let status = p.status.clone().unwrap_or_default();
        match status.phase.as_deref() {
            Some("Succeeded") => break,
            Some("Failed") => node.fail(&format!("pod {ns}/{name} failed: {status:?}")),
            _ => {}
        }
        if Instant::now() > deadline {
            node.fail(&format!("pod {ns}/{name} did not succeed: {status:?}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .expect("pod log");
    assert!(log.contains(HELLO), "pod {ns}/{name} logged {log:?}");
}
