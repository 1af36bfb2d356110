//! The OCI distribution-spec conformance suite (pinned; built by
//! scripts/test-tools.sh) against `privreg serve` over TLS, all four workflows
//! including referrers, with and without authentication. The reference registry
//! (Debian's docker-registry, CNCF Distribution 2.8.2) runs the same suite in the
//! same job; its result is reported beside ours, not gated on.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Privreg, free_port, tool};
use privreg::certs::{KeyAlgorithm, generate_ca, issue_server_cert};

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Where junit.xml and report.html of one run are kept.
fn report_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("conformance")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// CA, server cert and key (SANs 127.0.0.1, localhost) written into `dir`.
fn write_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = generate_ca("conformance CA", DAY, KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = issue_server_cert(
        &ca,
        &["127.0.0.1".into(), "localhost".into()],
        DAY,
        KeyAlgorithm::EcdsaP256,
    )
    .unwrap();
    let paths = (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.cert_pem).unwrap();
    std::fs::write(&paths.1, leaf.cert_pem).unwrap();
    std::fs::write(&paths.2, leaf.key_pem).unwrap();
    (paths.0, paths.1, paths.2)
}

/// Runs the suite; returns (exit success, summary line, full output).
fn run_suite(url: &str, ca: &Path, out: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(script("conformance.sh")).arg(url).arg(ca).arg(out);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    let output = cmd.output().expect("run conformance.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = text
        .lines()
        .find(|l| l.starts_with("conformance:"))
        .unwrap_or("conformance: no summary")
        .to_owned();
    (output.status.success(), summary, text)
}

fn suite_available() -> bool {
    tool("conformance.test", "PRIVREG_CONFORMANCE").is_some()
}

#[test]
fn privreg_passes_the_conformance_suite() {
    if !suite_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_pki(dir.path());
    let data = dir.path().join("data");
    let reg = Privreg::start(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let out = report_dir("privreg");
    let (ok, summary, text) = run_suite(
        &reg.url(),
        &ca,
        &out,
        &[("OCI_AUTOMATIC_CROSSMOUNT", "true")],
    );
    println!("privreg {summary} (report: {})", out.display());
    assert!(
        ok,
        "conformance failures against privreg:\n{text}\nserver log:\n{}",
        reg.log()
    );
    assert!(summary.contains(" 0 failed"), "{summary}");
}

#[test]
fn privreg_passes_the_conformance_suite_with_authentication() {
    if !suite_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_pki(dir.path());
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("conformance-password", 5).unwrap();
    std::fs::write(&htpasswd, format!("tester:{hash}\n")).unwrap();
    let data = dir.path().join("data");
    let reg = Privreg::start(
        &data,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--htpasswd",
            htpasswd.to_str().unwrap(),
        ],
    );
    let out = report_dir("privreg-auth");
    let (ok, summary, text) = run_suite(
        &reg.url(),
        &ca,
        &out,
        &[
            ("OCI_AUTOMATIC_CROSSMOUNT", "true"),
            ("OCI_USERNAME", "tester"),
            ("OCI_PASSWORD", "conformance-password"),
        ],
    );
    println!("privreg (htpasswd) {summary}");
    assert!(
        ok,
        "conformance failures against privreg with auth:\n{text}"
    );
    assert!(
        !reg.log().contains("conformance-password"),
        "the password must never reach the log"
    );
}

/// The reference registry's result, for the record; it is known to fail a dozen
/// tests (no referrers API, tag pagination, chunk ordering) and does not gate.
#[test]
fn reference_registry_baseline_is_reported() {
    if !suite_available() || tool("docker-registry", "DOCKER_REGISTRY").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, port, _stop) = start_reference(dir.path());
    let out = report_dir("reference");
    let (_ok, summary, _text) = run_suite(
        &format!("https://127.0.0.1:{port}"),
        &ca,
        &out,
        &[("OCI_AUTOMATIC_CROSSMOUNT", "false")],
    );
    println!("reference docker-registry {summary} (not gating)");
    assert!(
        out.join("junit.xml").is_file(),
        "the suite ran against the reference"
    );
}

/// Runs the redesigned suite (conformance v2, OCI 1.1 profile: sha512, anonymous
/// mount, nested indexes, non-distributable layers...). Returns (exit success,
/// "N passed, M failed" over its test lines, full output).
fn run_suite_v2(
    suite: &Path,
    host: &str,
    ca: &Path,
    out: &Path,
    extra_env: &[(&str, &str)],
) -> (bool, String, String) {
    let output = Command::new(suite)
        .envs(extra_env.iter().copied())
        .current_dir(out)
        .env("OCI_REGISTRY", host)
        .env("OCI_TLS", "enabled")
        .env("OCI_REPO1", "myorg/myrepo")
        .env("OCI_REPO2", "myorg/other")
        .env("OCI_RESULTS_DIR", out)
        .env("SSL_CERT_FILE", ca)
        .output()
        .expect("run conformance v2");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = junit_totals(&out.join("junit.xml"))
        .map(|(tests, failures, skipped)| {
            format!(
                "{} passed, {failures} failed, {skipped} skipped",
                tests - failures - skipped
            )
        })
        .unwrap_or_else(|| "no junit.xml".to_owned());
    (output.status.success(), summary, text)
}

/// (tests, failures, skipped) from the first element of a junit report.
fn junit_totals(path: &Path) -> Option<(u64, u64, u64)> {
    let xml = std::fs::read_to_string(path).ok()?;
    let head = &xml[xml.find("<testsuites")?..];
    let head = &head[..head.find('>')?];
    let attr = |name: &str| -> Option<u64> {
        let start = head.find(&format!(" {name}=\""))? + name.len() + 3;
        head[start..].split('"').next()?.parse().ok()
    };
    let failures = attr("failures").unwrap_or(0) + attr("errors").unwrap_or(0);
    Some((attr("tests")?, failures, attr("skipped").unwrap_or(0)))
}

#[test]
fn privreg_passes_the_conformance_v2_suite() {
    let Some(suite) = tool("conformance", "PRIVREG_CONFORMANCE2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_pki(dir.path());
    let reg = Privreg::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--allow-sparse-manifests",
        ],
    );
    let out = report_dir("privreg-v2");
    // The development profile turns on the optional cases (tag parameters on a
    // PUT by digest, upload cancel, digest headers); sparse manifests are opt-in
    // on both sides.
    let (ok, summary, text) = run_suite_v2(
        &suite,
        &reg.host(),
        &ca,
        &out,
        &[("OCI_VERSION", "1.1+dev"), ("OCI_DATA_SPARSE", "true")],
    );
    println!(
        "privreg conformance v2: {summary} (report: {})",
        out.display()
    );
    assert!(ok, "conformance v2 failures against privreg:\n{text}");
    assert!(summary.contains(" 0 failed"), "{summary}");
}

#[test]
fn reference_registry_v2_baseline_is_reported() {
    let Some(suite) = tool("conformance", "PRIVREG_CONFORMANCE2") else {
        return;
    };
    if tool("docker-registry", "DOCKER_REGISTRY").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, port, _stop) = start_reference(dir.path());
    let out = report_dir("reference-v2");
    let (_ok, summary, text) = run_suite_v2(&suite, &format!("127.0.0.1:{port}"), &ca, &out, &[]);
    println!("reference docker-registry conformance v2: {summary} (not gating)");
    assert!(
        text.contains("OCI Conformance Test"),
        "the suite ran:\n{text}"
    );
}

/// Starts Debian's docker-registry over TLS in `dir`; returns its CA, its port
/// and a guard that stops it.
fn start_reference(dir: &Path) -> (PathBuf, u16, StopReference) {
    let (ca, cert, key) = write_pki(dir);
    let data = dir.join("reference").join("data");
    let port = free_port();
    let start = Command::new("bash")
        .arg(script("reference-registry.sh"))
        .arg(&data)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stderr)
    );
    (ca, port, StopReference(data))
}

struct StopReference(PathBuf);

impl Drop for StopReference {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("reference-registry.sh"))
            .arg("--stop")
            .arg(&self.0)
            .status();
    }
}

/// Both suite generations against two `privreg serve` replicas on one S3
/// bucket (SeaweedFS on loopback), behind a proxy that sends every request
/// to the other replica: upload sessions, tags and manifests live in the
/// bucket, not in one process.
#[test]
fn two_replicas_on_s3_pass_both_conformance_suites() {
    if !suite_available() {
        return;
    }
    let Some(suite2) = tool("conformance", "PRIVREG_CONFORMANCE2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(s3) = common::daemons::SeaweedFs::start(dir.path(), "registry") else {
        return;
    };
    let (ca, cert, key) = write_pki(dir.path());
    let replica = |n: usize| {
        let data = dir.path().join(format!("replica-{n}"));
        let tls = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--allow-sparse-manifests",
        ];
        s3.start_privreg(&data, "conformance", &tls.map(String::from))
    };
    let replicas = [replica(1), replica(2)];
    let proxy = common::round_robin::RoundRobin::start(
        replicas.iter().map(|r| r.url()).collect(),
        &cert,
        &key,
        &ca,
    );
    let logs = || {
        format!(
            "replica 1:\n{}\nreplica 2:\n{}\nSeaweedFS:\n{}",
            replicas[0].log(),
            replicas[1].log(),
            s3.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        )
    };

    let out = report_dir("privreg-s3-replicas");
    let (ok, summary, text) = run_suite(
        &proxy.url(),
        &ca,
        &out,
        &[("OCI_AUTOMATIC_CROSSMOUNT", "true")],
    );
    println!(
        "two replicas on S3: {summary}; requests per replica {:?}",
        proxy.counts()
    );
    assert!(ok, "conformance failures:\n{text}\n{}", logs());
    assert!(summary.contains(" 0 failed"), "{summary}");

    let out = report_dir("privreg-s3-replicas-v2");
    let (ok, summary, text) = run_suite_v2(
        &suite2,
        &proxy.host(),
        &ca,
        &out,
        &[("OCI_VERSION", "1.1+dev"), ("OCI_DATA_SPARSE", "true")],
    );
    println!(
        "two replicas on S3, conformance v2: {summary}; requests per replica {:?}",
        proxy.counts()
    );
    assert!(ok, "conformance v2 failures:\n{text}\n{}", logs());
    assert!(summary.contains(" 0 failed"), "{summary}");
    let counts = proxy.counts();
    assert!(counts.iter().all(|&c| c > 100), "{counts:?}");
}
