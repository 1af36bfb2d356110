//! A real Kubernetes control plane for the operator's integration tests: etcd,
//! kube-apiserver and kube-controller-manager (and kube-scheduler on request),
//! built from Go modules by `scripts/k8s-tools.sh`, on free loopback ports,
//! with their data, PKI, kubeconfigs and logs in a temp dir. Everything started
//! here is stopped on drop (SIGTERM, then SIGKILL after a bounded wait).
//!
//! ```ignore
//! let Some(cp) = ControlPlane::start().await else { return }; // SKIPPED off CI
//! let client = cp.client().await;                              // system:masters
//! let (op, kubeconfig) = cp.client_for_user("privreg-operator", &[]).await;
//! ```
//!
//! The binaries come from `PRIVREG_ETCD`, `PRIVREG_KUBE_APISERVER`,
//! `PRIVREG_KUBE_CONTROLLER_MANAGER`, `PRIVREG_KUBE_SCHEDULER`, else from the
//! cache paths the script builds into (versions read from the wrapper modules'
//! go.mod). Missing binaries fail the test in CI (`CI`/`PRIVREG_REQUIRE_TOOLS`)
//! and skip it elsewhere. `PRIVREG_KEEP_CLUSTER=1` keeps the temp dir (logs,
//! kubeconfigs) after the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

use super::{free_port, tools_required};

/// The service CIDR; its first address is the `kubernetes` Service's ClusterIP.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

/// The first host address of an IPv4 CIDR (`10.96.0.0/16` -> `10.96.0.1`): the
/// ClusterIP the apiserver gives the `kubernetes` Service.
pub fn first_service_ip(cidr: &str) -> std::net::Ipv4Addr {
    let (net, bits) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("{cidr}: not a CIDR"));
    let net: std::net::Ipv4Addr = net.parse().expect("an IPv4 service CIDR");
    let bits: u32 = bits.parse().expect("a prefix length");
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    std::net::Ipv4Addr::from((u32::from(net) & mask) + 1)
}

const CONTROL_PLANE_GO_MOD: &str = include_str!("../k8s/control-plane/go.mod");
const ETCD_GO_MOD: &str = include_str!("../k8s/etcd/go.mod");

/// The Kubernetes version the wrapper module pins (e.g. `v1.34.2`).
pub fn kubernetes_version() -> &'static str {
    go_mod_version(CONTROL_PLANE_GO_MOD, "k8s.io/kubernetes")
}

/// The etcd version the wrapper module pins (e.g. `v3.6.16`).
pub fn etcd_version() -> &'static str {
    go_mod_version(ETCD_GO_MOD, "go.etcd.io/etcd/server/v3")
}

fn go_mod_version(go_mod: &'static str, module: &str) -> &'static str {
    go_mod
        .lines()
        .map(|l| l.trim().trim_start_matches("require").trim())
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(module)).then(|| it.next()).flatten()
        })
        .unwrap_or_else(|| panic!("{module} is not required in its wrapper go.mod"))
}

/// The control-plane binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
}

impl Binaries {
    /// Finds every binary (env var, else the k8s-tools cache). In CI a missing one
    /// panics; elsewhere this prints SKIPPED and returns None.
    pub fn find() -> Option<Binaries> {
        let k = kubernetes_version();
        let found = (|| {
            Ok::<_, String>(Binaries {
                etcd: k8s_tool("etcd", etcd_version(), "PRIVREG_ETCD")?,
                kube_apiserver: k8s_tool("kube-apiserver", k, "PRIVREG_KUBE_APISERVER")?,
                kube_controller_manager: k8s_tool(
                    "kube-controller-manager",
                    k,
                    "PRIVREG_KUBE_CONTROLLER_MANAGER",
                )?,
                kube_scheduler: k8s_tool("kube-scheduler", k, "PRIVREG_KUBE_SCHEDULER")?,
            })
        })();
        match found {
            Ok(b) => Some(b),
            Err(e) if tools_required() => {
                panic!("{e}; the control plane is required: run scripts/k8s-tools.sh")
            }
            Err(e) => {
                eprintln!("SKIPPED: {e}; run scripts/k8s-tools.sh");
                None
            }
        }
    }
}

/// A binary `scripts/k8s-tools.sh` builds: `$var`, else
/// `${PRIVREG_CACHE:-~/.cache/privreg}/k8s/<name>-<version>/<name>`.
pub fn k8s_tool(name: &str, version: &str, var: &str) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(var).map(PathBuf::from) {
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{var}={} is not a file", p.display()))
        };
    }
    let p = std::env::var_os("PRIVREG_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/privreg")))
        .unwrap_or_default()
        .join("k8s")
        .join(format!("{name}-{version}"))
        .join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{name} not found (set {var}, or build {})",
            p.display()
        ))
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs the apiserver's serving certificate and every client
/// certificate (`--client-ca-file`), and is kcm's cluster signer.
pub struct ClusterCa {
    params: CertificateParams,
    key: KeyPair,
    pub cert_pem: String,
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f;
    SerialNumber::from_slice(&b)
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(7);
    params.serial_number = Some(random_serial());
}

impl ClusterCa {
    pub fn new() -> ClusterCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "privreg-test-cluster-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let cert_pem = params.self_signed(&key).expect("self-sign CA").pem();
        ClusterCa {
            params,
            key,
            cert_pem,
        }
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A serving certificate for `sans` (IP addresses or DNS names).
    pub fn serving_cert(&self, cn: &str, sans: &[&str]) -> CertPair {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("SANs");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from CN and the groups
    /// from O. rcgen keeps one value per attribute type, so the second group is
    /// written as the same OID (2.5.4.10) under rcgen's custom type; at most two
    /// groups fit (`system:authenticated` is added by the apiserver anyway).
    /// For a ServiceAccount's full identity use
    /// [`ControlPlane::client_for_service_account`].
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> CertPair {
        assert!(
            groups.len() <= 2,
            "client_cert: at most two groups fit in a certificate made by rcgen (got {groups:?})"
        );
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = groups.first() {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        if let Some(g) = groups.get(1) {
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 10]), *g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> CertPair {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for ClusterCa {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes a kubeconfig (JSON, which is valid YAML) for `server` trusting `ca_pem`,
/// authenticating with `auth` (the `user` object: client cert data or a token).
fn write_kubeconfig(path: &Path, server: &str, ca_pem: &str, user: &str, auth: serde_json::Value) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "privreg-test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": auth}],
        "contexts": [{"name": user, "context": {"cluster": "privreg-test", "user": user}}],
        "current-context": user,
    });
    write_private(path, &serde_json::to_vec_pretty(&doc).unwrap());
}

fn cert_auth(pair: &CertPair) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    serde_json::json!({
        "client-certificate-data": b64(&pair.cert_pem),
        "client-key-data": b64(&pair.key_pem),
    })
}

fn write_private(path: &Path, data: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> kube::Client {
    client_with_retry(path, true).await
}

/// A client of the kubeconfig at `path`; with `retry` false it sees a 429 or
/// 503 as it comes (kube's default client retries them, for minutes: an
/// eviction a PodDisruptionBudget refuses would wait instead of failing).
pub async fn client_with_retry(path: &Path, retry: bool) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("read kubeconfig {}: {e}", path.display()));
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    let mut config = config;
    config.default_retry = retry;
    kube::Client::try_from(config).expect("build kube client")
}

/// One control-plane process: its command line, log file and child.
struct Daemon {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn spawn(name: &'static str, program: &Path, args: Vec<String>, dir: &Path) -> Daemon {
        let mut d = Daemon {
            name,
            program: program.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
        };
        d.start();
        d
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    /// Panics (with the log tail) if the process has exited.
    fn check_running(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            panic!(
                "{} exited ({status}) during startup; log tail:\n{}",
                self.name,
                tail(&self.log, 60)
            );
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(None) = c.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How long each phase of [`ControlPlane::start`] took.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartTimes {
    pub pki: Duration,
    pub etcd: Duration,
    pub apiserver: Duration,
    pub controller_manager: Duration,
    pub total: Duration,
}

/// etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler on request).
pub struct ControlPlane {
    /// The apiserver's secure port on 127.0.0.1.
    pub port: u16,
    pub etcd_port: u16,
    pub times: StartTimes,
    bins: Binaries,
    ca: ClusterCa,
    /// `--service-cluster-ip-range` of kube-apiserver and kcm.
    service_cidr: String,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    admin_kubeconfig: PathBuf,
    admin: CertPair,
    kcm_port: u16,
    scheduler_port: Option<u16>,
    // Stopped in reverse order of start.
    etcd: Daemon,
    apiserver: Daemon,
    kcm: Option<Daemon>,
    scheduler: Option<Daemon>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// SIGTERM, then SIGKILL after this. With clients' watches open (kcm's always
/// are) kube-apiserver drains for up to its --request-timeout (60 s) before it
/// exits; its state is in etcd, so a kill loses nothing a test relies on.
const APISERVER_STOP_GRACE: Duration = Duration::from_secs(5);

impl ControlPlane {
    /// Makes the PKI, starts etcd, kube-apiserver (waits for `/readyz`) and
    /// kube-controller-manager (waits for `/healthz` and the `default`
    /// ServiceAccount), and writes the admin kubeconfig. None (SKIPPED) when the
    /// binaries are missing outside CI.
    pub async fn start() -> Option<ControlPlane> {
        let bins = Binaries::find()?;
        Some(Self::start_with(bins).await)
    }

    /// [`ControlPlane::start`] with another service CIDR than [`SERVICE_CIDR`]:
    /// ClusterIPs are allocated from it (tests/recipe.rs uses a loopback range,
    /// so the host reaches a ClusterIP with no route and no address to add).
    pub async fn start_with_service_cidr(cidr: &str) -> Option<ControlPlane> {
        let bins = Binaries::find()?;
        Some(Self::start_full(bins, cidr, None).await)
    }

    pub async fn start_with(bins: Binaries) -> ControlPlane {
        Self::start_full(bins, SERVICE_CIDR, None).await
    }

    /// The control plane of a real node (tests/common/realnode.rs), started
    /// from a thread inside the node's network namespace: the apiserver also
    /// listens on `node_ip` and advertises it (the `kubernetes` Service's
    /// endpoint, so pods reach it through kube-proxy), its certificate names it,
    /// and it reaches the kubelet with a client certificate (logs).
    pub async fn start_for_node(bins: Binaries, service_cidr: &str, node_ip: &str) -> ControlPlane {
        Self::start_full(bins, service_cidr, Some(node_ip)).await
    }

    async fn start_full(bins: Binaries, service_cidr: &str, node_ip: Option<&str>) -> ControlPlane {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let t0 = Instant::now();
        let mut times = StartTimes::default();
        let dir = tempfile::Builder::new()
            .prefix("privreg-cluster-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_owned();
        let pki = root.join("pki");
        std::fs::create_dir_all(&pki).unwrap();
        std::fs::create_dir_all(root.join("users")).unwrap();

        // --- PKI --------------------------------------------------------------
        let ca = ClusterCa::new();
        write_private(&pki.join("ca.crt"), ca.cert_pem.as_bytes());
        write_private(&pki.join("ca.key"), ca.key_pem().as_bytes());
        let kubernetes_service_ip = first_service_ip(service_cidr).to_string();
        let mut sans = vec![
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            &kubernetes_service_ip,
        ];
        sans.extend(node_ip);
        let serving = ca.serving_cert("kube-apiserver", &sans);
        write_private(&pki.join("apiserver.crt"), serving.cert_pem.as_bytes());
        write_private(&pki.join("apiserver.key"), serving.key_pem.as_bytes());
        let sa = KeyPair::generate().expect("service-account key");
        write_private(&pki.join("sa.key"), sa.serialize_pem().as_bytes());
        write_private(&pki.join("sa.pub"), sa.public_key_pem().as_bytes());
        let admin = ca.client_cert("admin", &["system:masters"]);
        times.pki = t0.elapsed();

        // --- etcd -------------------------------------------------------------
        let t = Instant::now();
        let etcd_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_args: Vec<String> = vec![
            "--name=default".into(),
            format!("--data-dir={}", root.join("etcd").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--initial-cluster-state=new".into(),
            // Test data: durability across power loss is not needed.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let mut etcd = Daemon::spawn("etcd", &bins.etcd, etcd_args, &root);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        wait_until(&mut etcd, Duration::from_secs(60), || {
            let http = http.clone();
            let url = format!("{client_url}/health");
            async move {
                match http.get(&url).send().await {
                    Ok(r) => {
                        r.status().is_success() && r.text().await.is_ok_and(|t| t.contains("true"))
                    }
                    Err(_) => false,
                }
            }
        })
        .await;
        times.etcd = t.elapsed();

        // --- kube-apiserver ---------------------------------------------------
        let t = Instant::now();
        let port = free_port();
        let p = |f: &str| pki.join(f).display().to_string();
        let mut apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={client_url}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-issuer=https://127.0.0.1:{port}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={service_cidr}"),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            format!("--cert-dir={}", root.join("apiserver-certs").display()),
        ];
        match node_ip {
            None => apiserver_args.push("--bind-address=127.0.0.1".into()),
            Some(ip) => {
                // Only lo and the node's veth exist in the namespace.
                let kubelet_client =
                    ca.client_cert("kube-apiserver-kubelet-client", &["system:masters"]);
                write_private(
                    &pki.join("kubelet-client.crt"),
                    kubelet_client.cert_pem.as_bytes(),
                );
                write_private(
                    &pki.join("kubelet-client.key"),
                    kubelet_client.key_pem.as_bytes(),
                );
                apiserver_args.extend([
                    "--bind-address=0.0.0.0".into(),
                    format!("--advertise-address={ip}"),
                    format!("--kubelet-client-certificate={}", p("kubelet-client.crt")),
                    format!("--kubelet-client-key={}", p("kubelet-client.key")),
                    "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
                ]);
            }
        }
        let apiserver = Daemon::spawn(
            "kube-apiserver",
            &bins.kube_apiserver,
            apiserver_args,
            &root,
        );

        let admin_kubeconfig = root.join("admin.kubeconfig");
        let server = format!("https://127.0.0.1:{port}");
        write_kubeconfig(
            &admin_kubeconfig,
            &server,
            &ca.cert_pem,
            "admin",
            cert_auth(&admin),
        );

        let mut cp = ControlPlane {
            port,
            etcd_port,
            times,
            bins,
            ca,
            service_cidr: service_cidr.to_owned(),
            dir: Some(dir),
            root,
            admin_kubeconfig,
            admin,
            kcm_port: 0,
            scheduler_port: None,
            etcd,
            apiserver,
            kcm: None,
            scheduler: None,
        };
        cp.wait_apiserver_ready().await;
        cp.times.apiserver = t.elapsed();

        // --- kube-controller-manager -----------------------------------------
        let t = Instant::now();
        cp.start_controller_manager().await;
        cp.times.controller_manager = t.elapsed();
        cp.times.total = t0.elapsed();
        eprintln!(
            "control plane (kube-apiserver {}, etcd {}) ready on {} in {:.1?} \
             (pki {:.1?}, etcd {:.1?}, apiserver {:.1?}, controller-manager {:.1?}); dir {}",
            kubernetes_version(),
            etcd_version(),
            cp.url(),
            cp.times.total,
            cp.times.pki,
            cp.times.etcd,
            cp.times.apiserver,
            cp.times.controller_manager,
            cp.root.display()
        );
        cp
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The temp dir holding the PKI (`pki/`), kubeconfigs, etcd data and logs.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// The cluster CA certificate (PEM file): trust anchor for the apiserver.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("pki/ca.crt")
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    /// The admin (`O=system:masters`) kubeconfig.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A kube client as admin (`system:masters`).
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// An admin client that does not retry a 429 or 503 (see [`client_with_retry`]).
    pub async fn client_without_retry(&self) -> kube::Client {
        client_with_retry(&self.admin_kubeconfig, false).await
    }

    /// Writes a kubeconfig that authenticates as `user` in `groups` with a client
    /// certificate signed by the cluster CA (at most two groups; see
    /// [`ClusterCa::client_cert`]). The identity has no rights beyond what RBAC
    /// grants it (and `system:authenticated`'s discovery roles).
    pub fn kubeconfig_for_user(&self, user: &str, groups: &[&str]) -> PathBuf {
        let pair = self.ca.client_cert(user, groups);
        let path = self
            .root
            .join("users")
            .join(format!("{}.kubeconfig", sanitize(user)));
        write_kubeconfig(
            &path,
            &self.url(),
            &self.ca.cert_pem,
            user,
            cert_auth(&pair),
        );
        path
    }

    /// A client (and its kubeconfig) for `user` in `groups`: for running code
    /// under exactly the RBAC it is granted, not `system:masters`.
    pub async fn client_for_user(&self, user: &str, groups: &[&str]) -> (kube::Client, PathBuf) {
        let path = self.kubeconfig_for_user(user, groups);
        (client_from_kubeconfig(&path).await, path)
    }

    /// A client (and its kubeconfig) holding a bound token of ServiceAccount
    /// `namespace/name` (created if missing), minted by the TokenRequest API:
    /// exactly the identity a pod with that ServiceAccount has
    /// (`system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts` and
    /// `system:serviceaccounts:<ns>`). Valid for an hour.
    pub async fn client_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> (kube::Client, PathBuf) {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::api::{Api, PostParams};

        let admin = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .expect("TokenRequest status")
            .token;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let path = self
            .root
            .join("users")
            .join(format!("{}.kubeconfig", sanitize(&user)));
        write_kubeconfig(
            &path,
            &self.url(),
            &self.ca.cert_pem,
            &user,
            serde_json::json!({ "token": token }),
        );
        (client_from_kubeconfig(&path).await, path)
    }

    /// Starts kube-scheduler (CN=system:kube-scheduler) and waits for its
    /// `/healthz`. Needed only where a pod must get a `nodeName` (with nodes).
    pub async fn start_scheduler(&mut self) {
        if self.scheduler.is_some() {
            return;
        }
        let pair = self.ca.client_cert("system:kube-scheduler", &[]);
        let kubeconfig = self.root.join("scheduler.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &self.url(),
            &self.ca.cert_pem,
            "system:kube-scheduler",
            cert_auth(&pair),
        );
        let port = free_port();
        let kc = kubeconfig.display().to_string();
        let args = vec![
            format!("--kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--leader-elect=false".into(),
        ];
        let mut d = Daemon::spawn(
            "kube-scheduler",
            &self.bins.kube_scheduler,
            args,
            &self.root,
        );
        wait_healthz(&mut d, port).await;
        self.scheduler = Some(d);
        self.scheduler_port = Some(port);
    }

    async fn start_controller_manager(&mut self) {
        let pair = self.ca.client_cert("system:kube-controller-manager", &[]);
        let kubeconfig = self.root.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kubeconfig,
            &self.url(),
            &self.ca.cert_pem,
            "system:kube-controller-manager",
            cert_auth(&pair),
        );
        let port = free_port();
        let kc = kubeconfig.display().to_string();
        let p = |f: &str| self.root.join("pki").join(f).display().to_string();
        // As kubeadm runs it: its own identity, and one ServiceAccount per
        // controller (so each runs under its bootstrap RBAC role). No
        // --authentication/authorization-kubeconfig: the apiserver has no
        // front-proxy (requestheader) CA, and kcm would log an error for it every
        // few seconds; /healthz is always allowed anyway.
        let args = vec![
            format!("--kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--leader-elect=false".into(),
            "--controllers=*".into(),
            "--use-service-account-credentials=true".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!("--service-cluster-ip-range={}", self.service_cidr),
            "--cluster-name=privreg-test".into(),
            "--profiling=false".into(),
        ];
        let mut d = Daemon::spawn(
            "kube-controller-manager",
            &self.bins.kube_controller_manager,
            args,
            &self.root,
        );
        wait_healthz(&mut d, port).await;
        self.kcm = Some(d);
        self.kcm_port = port;
        // Controllers run once the serviceaccount controller made `default`.
        self.wait_for_default_service_account().await;
    }

    async fn wait_for_default_service_account(&mut self) {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let sas: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client().await, "default");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if sas.get_opt("default").await.ok().flatten().is_some() {
                return;
            }
            if let Some(k) = self.kcm.as_mut() {
                k.check_running();
            }
            if Instant::now() > deadline {
                self.fail("the `default` ServiceAccount did not appear (kube-controller-manager)");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_apiserver_ready(&mut self) {
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", self.admin.key_pem, self.admin.cert_pem).as_bytes(),
        )
        .expect("admin identity");
        let http = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.cert_pem.as_bytes()).unwrap(),
            )
            .tls_built_in_root_certs(false)
            .identity(identity)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("{}/readyz", self.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            self.apiserver.check_running();
            if Instant::now() > deadline {
                let verbose = match http.get(format!("{url}?verbose")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                self.fail(&format!("kube-apiserver /readyz not 200:\n{verbose}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops kube-apiserver and starts it again with the same flags and etcd;
    /// waits for `/readyz`. Clients reconnect on their own.
    pub async fn restart_apiserver(&mut self) {
        self.apiserver.stop(APISERVER_STOP_GRACE);
        self.apiserver.start();
        self.wait_apiserver_ready().await;
    }

    /// Stops (SIGTERM) kube-controller-manager; `start_controller_manager_again`
    /// restarts it.
    pub fn stop_controller_manager(&mut self) {
        if let Some(k) = self.kcm.as_mut() {
            k.stop(Duration::from_secs(15));
        }
    }

    pub async fn start_controller_manager_again(&mut self) {
        let port = self.kcm_port;
        if let Some(k) = self.kcm.as_mut()
            && k.child.is_none()
        {
            k.start();
            wait_healthz(k, port).await;
        }
    }

    /// PIDs of the running processes, by name.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        [
            Some(&self.etcd),
            Some(&self.apiserver),
            self.kcm.as_ref(),
            self.scheduler.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(|d| d.pid().map(|p| (d.name, p)))
        .collect()
    }

    /// The log of one component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Panics with the tail of every log.
    pub fn fail(&self, msg: &str) -> ! {
        let mut s = format!("{msg}\n(control plane dir {})", self.root.display());
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let p = self.root.join(format!("{name}.log"));
            if p.exists() {
                s.push_str(&format!("\n--- {name}.log (tail) ---\n{}", tail(&p, 40)));
            }
        }
        panic!("{s}");
    }

    /// Stops everything (also done on drop).
    pub fn stop(&mut self) {
        if let Some(d) = self.scheduler.as_mut() {
            d.stop(Duration::from_secs(10));
        }
        if let Some(d) = self.kcm.as_mut() {
            d.stop(Duration::from_secs(10));
        }
        self.apiserver.stop(APISERVER_STOP_GRACE);
        self.etcd.stop(Duration::from_secs(10));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os("PRIVREG_KEEP_CLUSTER").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("PRIVREG_KEEP_CLUSTER: kept {}", d.keep().display());
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Polls `ready` every 200 ms until it says yes; panics (with the log tail) if
/// the process exits or `timeout` passes.
async fn wait_until<F, Fut>(d: &mut Daemon, timeout: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return;
        }
        d.check_running();
        if Instant::now() > deadline {
            panic!(
                "{} not ready within {timeout:?}; log tail:\n{}",
                d.name,
                tail(&d.log, 60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for `https://127.0.0.1:<port>/healthz` (kcm and the scheduler serve a
/// self-signed certificate; `/healthz` needs no authentication).
async fn wait_healthz(d: &mut Daemon, port: u16) {
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    wait_until(d, READY_TIMEOUT, || {
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
}

/// Polls `check` every 250 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
