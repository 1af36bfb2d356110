//! The node agent, `privreg trust`, as the real binary on a node the test builds:
//! a node root, a trust bundle in a ConfigMap-style volume updated the way the
//! kubelet updates it (`..data` symlink rename), and, for the pulls, a real
//! containerd whose CRI `config_path` points into that node root, `privreg serve`
//! over TLS on a loopback address other than 127.0.0.1 (standing in for the
//! ClusterIP) and crictl making the CRI `PullImage` calls kubelet makes.
//!
//! The registry's friendly name (`registry.privreg.test`) is never resolved:
//! the hosts.toml the agent writes sends it to `https://<ip>:<port>`, and the
//! server certificate carries that IP as a SAN (TESTRIG A3, A7).

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use privreg::api::Runtime;
use privreg::certs::{self, CertAndKey, KeyAlgorithm};
use privreg::operator::trust_bundle::{self, BUNDLE_KEY, Bundle, BundleEntry};
use serde_json::json;

use common::images::{self, host_arch, write_layout};
use common::node::{
    BundleVolume, Crictl, NodeContainerd, Serve, TrustAgent, text, trust_uninstall,
};
use common::skopeo::Skopeo;
use common::tool;

const UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";
/// The registry's friendly name: never in DNS, never in /etc/hosts.
const NAME: &str = "registry.privreg.test";
/// Stands in for the registry Service's ClusterIP. Loopback, so the test needs
/// no network, but not 127.0.0.1, and reached through hosts.toml with https://
/// (containerd would speak plain HTTP to a loopback registry without one).
const IP: &str = "127.0.0.87";

/// The bundle JSON exactly as the operator publishes it in its ConfigMap.
fn bundle_json(entries: Vec<BundleEntry>) -> Vec<u8> {
    let cm = trust_bundle::configmap(
        "privreg-system",
        trust_bundle::bundle_json(Bundle {
            registries: entries,
        }),
    );
    cm.data
        .and_then(|mut d| d.remove(BUNDLE_KEY))
        .expect("the ConfigMap holds the bundle")
        .into_bytes()
}

/// A bundle entry shaped like `trust_bundle::entry` makes them: the friendly
/// name and the ClusterIP form as endpoints, the ClusterIP as server.
fn entry(registry: &str, name: &str, ip: &str, port: u16, ca_pem: &str) -> BundleEntry {
    BundleEntry {
        registry: registry.into(),
        endpoints: vec![format!("{name}:{port}"), format!("{ip}:{port}")],
        server: format!("https://{ip}:{port}"),
        ca_pem: ca_pem.into(),
        runtimes: vec![Runtime::Containerd, Runtime::Docker, Runtime::CriO],
        hosts_entry: None,
    }
}

fn new_ca(name: &str) -> CertAndKey {
    certs::generate_ca(name, Duration::from_secs(86_400), KeyAlgorithm::EcdsaP256).unwrap()
}

/// `privreg trust` arguments for a node root, a bundle and a state directory.
fn agent_args(root: &Path, bundle: &Path, state: &Path, resync_seconds: u64) -> Vec<String> {
    [
        "--node-root",
        &root.display().to_string(),
        "--bundle",
        &bundle.display().to_string(),
        "--state-dir",
        &state.display().to_string(),
        "--resync-seconds",
        &resync_seconds.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Every file and directory under `dir`: relative path → bytes (`None` for a directory).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_owned();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                todo.push(p);
            } else {
                out.insert(rel, Some(std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// The certificates (DER) in a PEM file, empty when it is missing.
fn ders(path: &Path) -> Vec<Vec<u8>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Ok(pem) = std::fs::read(path) else {
        return Vec::new();
    };
    CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.expect("PEM").to_vec())
        .collect()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// No tools needed: the agent follows a kubelet-style volume, logs refused
/// entries, a broken bundle and the containerd verdict once each (not at every
/// resync), answers /healthz, /readyz (with reasons) and /metrics, leaves the
/// files on SIGTERM and removes them with --uninstall.
#[test]
fn agent_follows_the_bundle_and_reports_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let config = root.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let cri = "[plugins.\"io.containerd.grpc.v1.cri\".registry]";
    std::fs::write(
        &config,
        format!("version = 2\n{cri}\n  config_path = \"/opt/elsewhere/certs.d\"\n"),
    )
    .unwrap();

    let ca = new_ca("privreg test CA");
    let good = entry("tools/reg", NAME, "10.96.0.20", 5000, &ca.cert_pem);
    let mut bad = entry(
        "tools/bad",
        "bad.privreg.test",
        "10.96.0.21",
        5000,
        &ca.cert_pem,
    );
    bad.server = "http://10.96.0.21:5000".into();
    let mut vol = BundleVolume::new(&dir.path().join("bundle"));
    vol.publish(&bundle_json(vec![good.clone(), bad]));
    let state = dir.path().join("state");
    let args = agent_args(&root, &vol.path(), &state, 1);
    let mut agent = TrustAgent::start(&args, &dir.path().join("agent.log"));
    assert_eq!(agent.get("/healthz"), Some((200, "ok\n".to_owned())));

    // Several passes later, each problem has been said once, and /readyz says
    // all of them.
    let resync = "privreg_trust_syncs_total{trigger=\"resync\"}";
    agent.wait_for("three resyncs", Duration::from_secs(20), |a| {
        a.metric(resync).unwrap_or_default() >= 3.0
    });
    let (code, body) = agent.get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("refused bundle entry \"tools/bad\": server \"http://10.96.0.21:5000\""),
        "{body}"
    );
    assert!(
        body.contains("containerd does NOT read /etc/containerd/certs.d"),
        "{body}"
    );
    let log = agent.log();
    assert_eq!(lines_with(&log, "trust bundle entry refused"), 1, "{log}");
    let refused = log
        .lines()
        .find(|l| l.contains("trust bundle entry refused"))
        .unwrap();
    assert!(
        refused.contains("WARN")
            && refused.contains("registry=tools/bad")
            && refused.contains("field=server")
            && refused.contains("problem="),
        "{refused}"
    );
    let warn = log
        .lines()
        .filter(|l| l.contains("containerd does NOT read"))
        .collect::<Vec<_>>();
    assert_eq!(warn.len(), 1, "{log}");
    assert!(
        warn[0].contains("WARN")
            && warn[0].contains(&format!(
                "set config_path = \"/etc/containerd/certs.d\" under {cri} (config version 2) in /etc/containerd/config.toml"
            )),
        "{}",
        warn[0]
    );
    assert!(log.contains("privreg trust starting"), "{log}");
    assert!(log.contains("preset=containerd"), "{log}");
    for (sample, want) in [
        ("privreg_trust_entries_applied", 1.0),
        ("privreg_trust_entries_refused", 1.0),
        ("privreg_trust_converged", 0.0),
        (
            "privreg_trust_containerd_config{verdict=\"not_effective\"}",
            1.0,
        ),
        ("privreg_trust_syncs_total{trigger=\"start\"}", 1.0),
    ] {
        assert_eq!(agent.metric(sample), Some(want), "{sample}");
    }

    // The good entry applied regardless.
    let certs_d = root.join("etc/containerd/certs.d");
    let host_dir = certs_d.join(format!("{NAME}:5000"));
    let hosts = std::fs::read_to_string(host_dir.join("hosts.toml")).unwrap();
    assert!(
        hosts.contains("[host.\"https://10.96.0.20:5000\"]"),
        "{hosts}"
    );
    assert_eq!(ders(&host_dir.join("ca.crt")), [der_of(&ca.cert_pem)]);

    // Both fixed: containerd reads certs.d, the bad entry leaves the bundle.
    std::fs::write(
        &config,
        format!("version = 2\n{cri}\n  config_path = \"/etc/containerd/certs.d\"\n"),
    )
    .unwrap();
    vol.publish(&bundle_json(vec![good.clone()]));
    agent.wait_ready(Duration::from_secs(10));
    let log = agent.log();
    assert!(log.contains("no longer refused"), "{log}");
    assert!(
        log.contains("containerd reads /etc/containerd/certs.d"),
        "{log}"
    );
    assert!(log.contains("the node matches the trust bundle"), "{log}");
    let (_, body) = agent.get("/readyz").unwrap();
    assert!(
        body.starts_with("ready: the node matches the trust bundle (1 registries)"),
        "{body}"
    );

    // A bundle that does not parse leaves the node as it is, and says so once.
    let before = snapshot(&certs_d);
    vol.publish(b"{ this is not JSON");
    agent.wait_for(
        "/readyz to report the parse failure",
        Duration::from_secs(10),
        |a| {
            a.get("/readyz")
                .is_some_and(|(c, b)| c == 503 && b.contains("(parse_bundle)"))
        },
    );
    let n = agent.metric(resync).unwrap_or_default();
    agent.wait_for("two more resyncs", Duration::from_secs(10), |a| {
        a.metric(resync).unwrap_or_default() >= n + 2.0
    });
    assert_eq!(
        snapshot(&certs_d),
        before,
        "a broken bundle changed the node"
    );
    let log = agent.log();
    assert_eq!(lines_with(&log, "sync failed"), 1, "{log}");
    assert!(
        agent
            .metric("privreg_trust_sync_errors_total{reason=\"parse_bundle\"}")
            .unwrap_or_default()
            >= 3.0
    );

    vol.publish(&bundle_json(vec![good]));
    agent.wait_ready(Duration::from_secs(10));
    assert!(agent.log().contains("sync works again"));
    assert_eq!(snapshot(&certs_d), before);

    // SIGTERM: exit 0, the node's files stay for the next agent.
    let status = agent.sigterm(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", agent.log());
    assert!(agent.log().contains("shutdown requested"));
    assert_eq!(snapshot(&certs_d), before);

    // --uninstall: everything the agent wrote goes, including certs.d it created.
    let out = trust_uninstall(&args);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("privreg trust --uninstall: removed"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("removed   /etc/containerd/certs.d/{NAME}:5000\n")),
        "{stdout}"
    );
    assert!(!certs_d.exists(), "{:?}", snapshot(&root));
    assert!(!state.join("state.json").exists());
    assert!(config.exists(), "the containerd config is never touched");

    // An uninstall that cannot read its record fails loudly (non-zero).
    let broken = dir.path().join("broken-state");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("state.json"), b"garbage").unwrap();
    let out = trust_uninstall(&agent_args(&root, &vol.path(), &broken, 60));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("does not parse"), "{}", text(&out));
}

/// The whole recipe with a real containerd and CRI pulls (the kubelet's path):
/// before the agent the pull fails on the certificate; after it the friendly
/// name pulls with no DNS; the user's files are kept, backed up and restored;
/// a CA rotation never breaks a pull; SIGTERM leaves the files, --uninstall
/// removes them.
#[tokio::test]
async fn cri_pulls_follow_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(containerd), Some(ctr)) = (
        tool("containerd", "PRIVREG_CONTAINERD"),
        tool("ctr", "PRIVREG_CTR"),
    ) else {
        return;
    };
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
    if !common::root_or_skip("containerd") {
        return;
    }
    let mut timings: Vec<String> = Vec::new();

    // The registry: a leaf from CA 1 for the friendly name and the IP.
    let ip: IpAddr = IP.parse().unwrap();
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind on the stand-in ClusterIP")
        .port();
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (cert, key) = (tls.join("server.crt"), tls.join("server.key"));
    let install_leaf = |ca: &CertAndKey| {
        let sans = [NAME.to_owned(), IP.to_owned()];
        let leaf = certs::issue_server_cert(
            ca,
            &sans,
            Duration::from_secs(86_400),
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        for (path, pem) in [(&key, &leaf.key_pem), (&cert, &leaf.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    };
    let ca1 = new_ca("privreg test CA 1");
    install_leaf(&ca1);
    let serve = Serve::start(
        SocketAddr::new(ip, port),
        &dir.path().join("data"),
        &[
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-reload-seconds".into(),
            "1".into(),
        ],
    );

    // One image per step, so each pull fetches its own blobs.
    let steps: Vec<images::Image> = (1..=5)
        .map(|i| {
            images::image(
                host_arch(),
                vec![vec![(
                    format!("etc/step{i}.txt"),
                    format!("privreg trust step {i}\n").into_bytes(),
                )]],
                json!({ "org.opencontainers.image.title": format!("step {i}") }),
            )
        })
        .collect();
    let src = dir.path().join("src");
    let tags: Vec<String> = (1..=5).map(|i| format!("v{i}")).collect();
    let refs: Vec<(&str, &images::Blob)> = tags
        .iter()
        .zip(&steps)
        .map(|(t, img)| (t.as_str(), &img.manifest))
        .collect();
    write_layout(&src, &refs, steps.iter().flat_map(|i| i.blobs()));
    let push_certs = dir.path().join("push-certs");
    std::fs::create_dir_all(&push_certs).unwrap();
    std::fs::write(push_certs.join("ca.crt"), &ca1.cert_pem).unwrap();
    for tag in &tags {
        skopeo.copy(
            &format!("oci:{}:{tag}", src.display()),
            &format!("docker://{IP}:{port}/demo/hello:{tag}"),
            false,
            &push_certs,
        );
    }

    // containerd as the node runs it: it reads the node root's
    // etc/containerd/config.toml (config_path = "/etc/containerd/certs.d"),
    // which is also the file the agent checks.
    let Some(ctrd) = NodeContainerd::start(&containerd, &ctr, &ctrd_dir) else {
        return;
    };
    let root = ctrd.root.clone();
    let certs_d = ctrd.certs_d();
    std::fs::create_dir_all(root.join("etc/docker")).unwrap();

    let friendly = format!("{NAME}:{port}");
    let by_ip = format!("{IP}:{port}");
    let image = |tag: &str| format!("{friendly}/demo/hello:{tag}");
    let pull_ok = |reference: &str, manifest: &images::Blob, timings: &mut Vec<String>| {
        let t = Instant::now();
        let out = crictl.pull(reference);
        assert!(
            out.status.success(),
            "CRI pull {reference}: {}\nserver log:\n{}",
            text(&out),
            serve.log()
        );
        timings.push(format!("pull {reference}: ok in {:?}", t.elapsed()));
        let repo = reference.rsplit_once(':').unwrap().0;
        let digests = crictl.repo_digests(reference);
        assert!(
            digests.contains(&format!("{repo}@{}", manifest.digest)),
            "{reference}: {digests:?}"
        );
    };
    let pull_fails = |reference: &str, timings: &mut Vec<String>| {
        let out = crictl.pull(reference);
        let err = text(&out);
        assert!(!out.status.success(), "CRI pull {reference} succeeded");
        assert!(err.contains(UNKNOWN_CA), "{err}");
        timings.push(format!("pull {reference}: refused, {UNKNOWN_CA}"));
    };

    // The user's own files: a registry privreg knows nothing of, and one for
    // the same name that routes it to the IP without any CA.
    let other = certs_d.join("other.example:5000");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join("hosts.toml"),
        "server = \"https://other.example:5000\"\n",
    )
    .unwrap();
    std::fs::write(other.join("ca.crt"), new_ca("someone else").cert_pem).unwrap();
    let other_before = snapshot(&other);
    let same = certs_d.join(&friendly);
    std::fs::create_dir_all(&same).unwrap();
    let users_hosts = format!(
        "# the user's own: {NAME} goes to {IP}, with no CA\nserver = \"https://{by_ip}\"\n\n\
         [host.\"https://{by_ip}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    );
    std::fs::write(same.join("hosts.toml"), &users_hosts).unwrap();
    std::fs::set_permissions(
        same.join("hosts.toml"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();

    // (a) Before the agent: the certificate is not trusted.
    pull_fails(&image("v1"), &mut timings);

    // The agent, from a kubelet-style volume; only the watch drives it here.
    let mut vol = BundleVolume::new(&dir.path().join("bundle"));
    vol.publish(&bundle_json(vec![entry(
        "demo/hello",
        NAME,
        IP,
        port,
        &ca1.cert_pem,
    )]));
    let state = dir.path().join("state");
    let args = agent_args(&root, &vol.path(), &state, 3600);
    let t = Instant::now();
    let mut agent = TrustAgent::start(&args, &dir.path().join("agent.log"));
    agent.wait_ready(Duration::from_secs(30));
    timings.push(format!("agent start to /readyz 200: {:?}", t.elapsed()));

    let hosts = std::fs::read_to_string(same.join("hosts.toml")).unwrap();
    assert!(hosts.starts_with("# Managed by privreg"), "{hosts}");
    assert!(
        hosts.contains(&format!("[host.\"https://{by_ip}\"]")),
        "{hosts}"
    );
    assert_eq!(
        std::fs::read_to_string(same.join(".privreg-backup/hosts.toml")).unwrap(),
        users_hosts,
        "the user's hosts.toml is backed up byte for byte"
    );
    assert_eq!(snapshot(&other), other_before, "another registry's files");
    assert!(certs_d.join(&by_ip).join("hosts.toml").is_file());
    assert!(
        root.join("etc/docker/certs.d")
            .join(&friendly)
            .join("ca.crt")
            .is_file()
    );
    // No name resolution anywhere: no hosts line on the node or the machine.
    assert!(!root.join("etc/hosts").exists());
    assert!(
        !std::fs::read_to_string("/etc/hosts")
            .unwrap_or_default()
            .contains(NAME)
    );
    let (_, body) = agent.get("/readyz").unwrap();
    assert!(
        body.contains("containerd reads /etc/containerd/certs.d"),
        "{body}"
    );

    // (b) The friendly name pulls through the CRI, and so does the IP form.
    pull_ok(&image("v1"), &steps[0].manifest, &mut timings);
    pull_ok(
        &format!("{by_ip}/demo/hello:v1"),
        &steps[0].manifest,
        &mut timings,
    );

    // (d) CA rotation. 1: the bundle carries both CAs.
    let ca2 = new_ca("privreg test CA 2");
    let ca_crt = same.join("ca.crt");
    vol.publish(&bundle_json(vec![entry(
        "demo/hello",
        NAME,
        IP,
        port,
        &format!("{}{}", ca1.cert_pem, ca2.cert_pem),
    )]));
    let want = vec![der_of(&ca1.cert_pem), der_of(&ca2.cert_pem)];
    let took = agent.wait_for("old + new CA on the node", Duration::from_secs(10), |a| {
        ders(&ca_crt) == want && a.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    timings.push(format!(
        "bundle change (CA 1 + CA 2) to converged: {took:?}"
    ));
    pull_ok(&image("v2"), &steps[1].manifest, &mut timings);

    // 2: the server switches to a leaf from the new CA.
    install_leaf(&ca2);
    let ca2_file = dir.path().join("ca2.crt");
    std::fs::write(&ca2_file, &ca2.cert_pem).unwrap();
    let t = Instant::now();
    loop {
        let client = common::https_client(&ca2_file);
        if client
            .get(format!("https://{by_ip}/v2/"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "privreg serve did not switch to the new leaf:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timings.push(format!(
        "server serving the CA 2 leaf after {:?}",
        t.elapsed()
    ));
    pull_ok(&image("v3"), &steps[2].manifest, &mut timings);

    // 3: the bundle drops the old CA.
    vol.publish(&bundle_json(vec![entry(
        "demo/hello",
        NAME,
        IP,
        port,
        &ca2.cert_pem,
    )]));
    let want = vec![der_of(&ca2.cert_pem)];
    let took = agent.wait_for(
        "only the new CA on the node",
        Duration::from_secs(10),
        |a| ders(&ca_crt) == want && a.get("/readyz").is_some_and(|(c, _)| c == 200),
    );
    timings.push(format!("bundle change (CA 2 only) to converged: {took:?}"));
    pull_ok(&image("v4"), &steps[3].manifest, &mut timings);

    // (c) The entry leaves the bundle: the user's hosts.toml comes back byte for
    // byte (and its mode), privreg's files and directories go.
    vol.publish(&bundle_json(vec![]));
    let took = agent.wait_for("the entry's files removed", Duration::from_secs(10), |a| {
        std::fs::read_to_string(same.join("hosts.toml"))
            .ok()
            .as_deref()
            == Some(users_hosts.as_str())
            && !same.join(".privreg-backup").exists()
            && !certs_d.join(&by_ip).exists()
            && a.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    timings.push(format!(
        "bundle change (entry removed) to converged: {took:?}"
    ));
    assert_eq!(
        snapshot(&same),
        BTreeMap::from([(
            PathBuf::from("hosts.toml"),
            Some(users_hosts.clone().into_bytes())
        )]),
        "only the user's file is left"
    );
    let mode = std::fs::metadata(same.join("hosts.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(!root.join("etc/docker/certs.d").join(&friendly).exists());
    assert_eq!(snapshot(&other), other_before);
    pull_fails(&image("v5"), &mut timings);

    // (e) Back in the bundle; then SIGTERM leaves the files, --uninstall removes them.
    vol.publish(&bundle_json(vec![entry(
        "demo/hello",
        NAME,
        IP,
        port,
        &ca2.cert_pem,
    )]));
    let took = agent.wait_for("the entry back", Duration::from_secs(10), |a| {
        ders(&ca_crt) == want && a.get("/readyz").is_some_and(|(c, _)| c == 200)
    });
    timings.push(format!("bundle change (entry back) to converged: {took:?}"));
    pull_ok(&image("v5"), &steps[4].manifest, &mut timings);

    let files = snapshot(&certs_d);
    let status = agent.sigterm(Duration::from_secs(10));
    assert!(status.success(), "SIGTERM: {status}\n{}", agent.log());
    assert_eq!(
        snapshot(&certs_d),
        files,
        "SIGTERM changed the node's files"
    );
    crictl.rmi(&image("v5"));
    pull_ok(&image("v5"), &steps[4].manifest, &mut timings);

    let out = trust_uninstall(&args);
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains(&format!(
            "restored  /etc/containerd/certs.d/{friendly}/hosts.toml\n"
        )),
        "{summary}"
    );
    assert_eq!(
        snapshot(&same),
        BTreeMap::from([(
            PathBuf::from("hosts.toml"),
            Some(users_hosts.clone().into_bytes())
        )])
    );
    assert!(!certs_d.join(&by_ip).exists());
    assert!(!root.join("etc/docker/certs.d").exists());
    assert!(!state.join("state.json").exists());
    assert_eq!(snapshot(&other), other_before);
    crictl.rmi(&image("v5"));
    pull_fails(&image("v5"), &mut timings);

    eprintln!("trust_node timings:\n  {}", timings.join("\n  "));
    eprintln!("uninstall summary:\n{summary}");
    drop(ctrd);
    drop(serve);
}
