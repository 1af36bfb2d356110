//! The command line: one subcommand per role. Every option has a long flag and a
//! `PRIVREG_*` environment variable, so the operator can render either.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::registry::storage::space::MinFree;
use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "privreg",
    version,
    about = "A private, TLS-secured image registry for Kubernetes"
)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, env = "PRIVREG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the registry: the OCI Distribution API over HTTPS.
    Serve(Box<ServeArgs>),
    /// Run the operator: reconcile PrivateRegistry objects.
    Operator(OperatorArgs),
    /// Run the node agent: write every registry's CA trust on this node.
    Trust(TrustArgs),
    /// Remove privreg's trust files from every node (the chart's pre-delete hook):
    /// asks the operator to switch its trust DaemonSet to uninstalling and waits
    /// until every node reports done.
    TrustUninstall(TrustUninstallArgs),
    /// Print the CustomResourceDefinitions (YAML) generated from the Rust types.
    Crds,
    /// Delete blobs no manifest references (offline mark and sweep over a data
    /// directory, also one `registry:2` wrote). Stop the registry first, or run
    /// it `--read-only`; a running `privreg serve` can collect online instead.
    Gc(GcArgs),
}

/// Options of `privreg gc`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Data directory (as given to `privreg serve --data`).
    #[arg(long, env = "PRIVREG_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// Print what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Also delete manifests that no tag reaches (keeping children of tagged
    /// indexes and referrers of kept manifests), and then their blobs.
    #[arg(long)]
    pub delete_untagged: bool,

    /// Keep unreferenced blobs written less than this many seconds ago.
    #[arg(long, default_value_t = 0)]
    pub grace_seconds: u64,
}

/// Options of `privreg operator`. The Kubernetes connection comes from the
/// in-cluster service account or KUBECONFIG.
#[derive(Debug, Clone, Args)]
pub struct OperatorArgs {
    /// The operator's own namespace (its leader Lease and the trust DaemonSet live here).
    #[arg(long, env = "PRIVREG_NAMESPACE", default_value = "privreg-system")]
    pub namespace: String,

    /// The privreg image that registry pods run, unless a PrivateRegistry names one.
    #[arg(long, env = "PRIVREG_IMAGE", default_value = concat!("ghcr.io/privreg/privreg:", env!("CARGO_PKG_VERSION")))]
    pub image: String,

    /// Address for `/healthz`, `/readyz` and `/metrics` (plain HTTP).
    #[arg(long, env = "PRIVREG_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,

    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "PRIVREG_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Seconds between full rebuilds of the trust bundle (it is also rebuilt after
    /// every reconcile; the rebuild catches deleted registries).
    #[arg(
        long,
        env = "PRIVREG_TRUST_BUNDLE_RESYNC_SECONDS",
        default_value_t = 30
    )]
    pub trust_bundle_resync_seconds: u64,

    /// This replica's name (the Lease holder and the Events' reporter).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Watch only these namespaces (comma-separated); the operator then needs a
    /// Role in each of them instead of a ClusterRole. Empty: every namespace.
    #[arg(long, env = "PRIVREG_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,

    /// Images a PrivateRegistry's `spec.image` may name (comma-separated patterns,
    /// `*` matches any run of characters). The operator's own `--image` is always
    /// allowed; by default nothing else is, because the image runs with the
    /// registry's Secrets mounted.
    #[arg(long, env = "PRIVREG_ALLOWED_IMAGES", value_delimiter = ',')]
    pub allowed_images: Vec<String>,

    /// Host names a PrivateRegistry may claim (comma-separated): exact names or
    /// `*.suffix` (any name ending in `.suffix`); `{namespace}` stands for the
    /// registry's namespace and `{clusterDomain}` for --cluster-domain. Node trust
    /// is node-wide, so a name outside this list is refused (HostnameNotAllowed).
    #[arg(
        long,
        env = "PRIVREG_ALLOWED_HOSTNAMES",
        value_delimiter = ',',
        default_value = "*.{namespace}.svc,*.{namespace}.svc.{clusterDomain},*.{namespace}.{clusterDomain}"
    )]
    pub allowed_hostnames: Vec<String>,

    /// The cluster's DNS domain.
    #[arg(long, env = "PRIVREG_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// The operator's own Deployment (in --namespace): it owns the trust
    /// DaemonSet and bundle, so they go when the operator is uninstalled.
    #[arg(long, env = "PRIVREG_OWNER_DEPLOYMENT")]
    pub owner_deployment: Option<String>,

    /// During a CA rotation, how long the old CA stays trusted after the new one
    /// signs the server certificate: long enough for the kubelet to refresh the
    /// registry pod's Secret volume and the registry to reload it.
    #[arg(long, env = "PRIVREG_CA_OVERLAP_SECONDS", default_value_t = 300)]
    pub ca_overlap_seconds: u64,

    /// Ready only once the registry's Service presents the current server
    /// certificate (a TLS handshake with the ClusterIP). Turn off only where the
    /// operator cannot reach Services (`--check-serving=false`).
    #[arg(long, env = "PRIVREG_CHECK_SERVING", default_value_t = true, action = clap::ArgAction::Set)]
    pub check_serving: bool,

    /// Seconds between reads of each registry pod's storage metrics, for the
    /// `StoragePressure` condition and Event (0: never). Needs the pod network,
    /// so it runs only with --check-serving.
    #[arg(long, env = "PRIVREG_STORAGE_CHECK_SECONDS", default_value_t = 60)]
    pub storage_check_seconds: u64,

    /// How the nodes run containerd, for the trust DaemonSet: where its certs.d
    /// and config live (`containerd`, `k3s`, `rke2`, `microk8s`).
    #[arg(long, env = "PRIVREG_TRUST_PRESET", value_enum, default_value_t = crate::trust::render::Preset::Containerd)]
    pub trust_preset: crate::trust::render::Preset,

    /// Nodes the trust DaemonSet runs on (`key=value`, comma-separated; empty:
    /// every node).
    #[arg(long, env = "PRIVREG_TRUST_NODE_SELECTOR", value_delimiter = ',')]
    pub trust_node_selector: Vec<String>,

    /// Tolerations of the trust DaemonSet, as a JSON list. The default tolerates
    /// every taint, so control-plane and tainted nodes trust the registries too.
    #[arg(
        long,
        env = "PRIVREG_TRUST_TOLERATIONS",
        default_value = r#"[{"operator":"Exists"}]"#
    )]
    pub trust_tolerations: String,
}

/// Options of `privreg trust`, the node agent. It needs no Kubernetes API access:
/// everything comes from the mounted bundle.
#[derive(Debug, Clone, Args)]
pub struct TrustArgs {
    /// The node's filesystem as mounted into the pod (hostPath mounts below it).
    #[arg(
        long,
        visible_alias = "host-root",
        env = "PRIVREG_NODE_ROOT",
        default_value = "/host"
    )]
    pub node_root: PathBuf,

    /// The mounted trust bundle file (ConfigMap key bundle.json).
    #[arg(
        long,
        env = "PRIVREG_TRUST_BUNDLE",
        default_value = "/etc/privreg/bundle/bundle.json"
    )]
    pub bundle: PathBuf,

    /// Where the agent records what it wrote (on the node, so it survives restarts).
    #[arg(
        long,
        env = "PRIVREG_TRUST_STATE_DIR",
        default_value = "/host/var/lib/privreg-trust"
    )]
    pub state_dir: PathBuf,

    /// How the node runs containerd: where its certs.d lives.
    #[arg(long, env = "PRIVREG_TRUST_PRESET", value_enum, default_value_t = crate::trust::render::Preset::Containerd)]
    pub preset: crate::trust::render::Preset,

    /// Seconds between full resyncs (the bundle is also watched for changes).
    #[arg(long, env = "PRIVREG_TRUST_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,

    /// Address for `/healthz`, `/readyz` and `/metrics` (plain HTTP).
    #[arg(long, env = "PRIVREG_METRICS_LISTEN", default_value = "0.0.0.0:8081")]
    pub metrics_listen: SocketAddr,

    /// The SHA-256 (lowercase hex) of the bundle this agent's pod was created
    /// for (the DaemonSet passes its pod annotation `privreg.dev/bundle-sha256`
    /// through the downward API). Ready only once the mounted bundle is that one
    /// and the node's files match it, so a Ready agent tells the operator that
    /// this node trusts exactly that bundle.
    #[arg(long, env = "PRIVREG_TRUST_EXPECTED_BUNDLE")]
    pub expected_bundle: Option<String>,

    /// Remove everything the agent wrote on this node, restore what it backed
    /// up, and exit (run by the chart's pre-delete hook).
    #[arg(long, env = "PRIVREG_TRUST_UNINSTALL")]
    pub uninstall: bool,

    /// With --uninstall: then stay running, Ready once nothing is left, until
    /// SIGTERM (the trust DaemonSet while the operator uninstalls node trust).
    #[arg(long, requires = "uninstall")]
    pub stay: bool,
}

/// Options of `privreg trust-uninstall`.
#[derive(Debug, Clone, Args)]
pub struct TrustUninstallArgs {
    /// The operator's namespace.
    #[arg(long, env = "PRIVREG_NAMESPACE", default_value = "privreg-system")]
    pub namespace: String,

    /// Give up (non-zero exit) after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_seconds: u64,
}

/// Object storage for `privreg serve`: set `--s3-bucket` to use it.
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// S3 bucket to store in (Distribution's layout under `--s3-prefix`).
    /// Several registries may serve one bucket.
    #[arg(long, env = "PRIVREG_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// Endpoint of an S3-compatible server (`https://host:port`); AWS when unset.
    #[arg(long, env = "PRIVREG_S3_ENDPOINT", requires = "s3_bucket")]
    pub s3_endpoint: Option<String>,

    /// Region of the bucket.
    #[arg(long, env = "PRIVREG_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Key prefix under which the layout starts (Distribution's `rootdirectory`).
    #[arg(long, env = "PRIVREG_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,

    /// Path-style requests (`endpoint/bucket/key`), which most self-hosted
    /// servers need.
    #[arg(long, env = "PRIVREG_S3_PATH_STYLE")]
    pub s3_path_style: bool,

    /// PEM CA certificates to trust for the endpoint (a private CA).
    #[arg(long, env = "PRIVREG_S3_CA_FILE", requires = "s3_bucket")]
    pub s3_ca_file: Option<PathBuf>,

    /// File holding the access key id (a mounted Secret); without it, the
    /// AWS environment variables and the usual AWS credential chain.
    #[arg(long, env = "PRIVREG_S3_ACCESS_KEY_FILE", requires_all = ["s3_bucket", "s3_secret_key_file"])]
    pub s3_access_key_file: Option<PathBuf>,

    /// File holding the secret access key (a mounted Secret).
    #[arg(
        long,
        env = "PRIVREG_S3_SECRET_KEY_FILE",
        requires = "s3_access_key_file"
    )]
    pub s3_secret_key_file: Option<PathBuf>,

    /// Answer blob GETs with a 307 redirect to a presigned URL of the object,
    /// valid this many seconds (0: stream every blob through the registry).
    /// Clients then read from the bucket: the endpoint must be reachable and
    /// trusted by every client, and pulls no longer pass through the
    /// registry's metrics and limits.
    #[arg(long, env = "PRIVREG_S3_REDIRECT_SECONDS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub s3_redirect_seconds: u64,

    /// Plain HTTP to the endpoint: credentials and content cross the network
    /// unencrypted. Only for a server on the same host.
    #[arg(long, env = "PRIVREG_S3_ALLOW_HTTP", requires = "s3_endpoint")]
    pub s3_allow_http: bool,
}

/// Options of `privreg serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "PRIVREG_LISTEN", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,

    /// Data directory. Blobs live under `<data>/docker/registry/v2` (the layout of
    /// CNCF Distribution, so a `registry:2` data directory can be served as it is);
    /// a generated local CA lives under `<data>/tls`.
    #[arg(long, env = "PRIVREG_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// Keep blobs and manifests in an S3-compatible bucket instead of `--data`
    /// (which then holds only a generated local CA).
    #[command(flatten)]
    pub s3: S3Args,

    /// PEM server certificate chain. Reloaded when the file changes.
    #[arg(long, env = "PRIVREG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the server certificate. Reloaded when the file changes.
    #[arg(long, env = "PRIVREG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Extra subject alternative names (DNS names or IP addresses) for the
    /// generated server certificate, used only when no --tls-cert is given.
    #[arg(long = "san", env = "PRIVREG_SANS", value_delimiter = ',')]
    pub sans: Vec<String>,

    /// Serve plain HTTP instead of HTTPS. Only for tests and TLS-terminating proxies.
    #[arg(long, env = "PRIVREG_INSECURE_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,

    /// htpasswd file with bcrypt entries; enables HTTP Basic authentication.
    #[arg(long, env = "PRIVREG_HTPASSWD")]
    pub htpasswd: Option<PathBuf>,

    /// With --htpasswd: let unauthenticated clients pull; pushing still needs a login.
    #[arg(long, env = "PRIVREG_ANONYMOUS_PULL", requires = "htpasswd")]
    pub anonymous_pull: bool,

    /// With --anonymous-pull: let unauthenticated clients list the catalog too.
    /// Off by default: anonymous pull of a known name should not reveal every name.
    #[arg(long, env = "PRIVREG_ANONYMOUS_CATALOG", requires = "anonymous_pull")]
    pub anonymous_catalog: bool,

    /// Failed logins allowed per user name and per client address per minute;
    /// beyond it, 429 with Retry-After and no password check (0: no limit).
    #[arg(long, env = "PRIVREG_AUTH_FAILURES_PER_MINUTE", default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub auth_failures_per_minute: u32,

    /// Seconds between checks of the htpasswd file for changes (a Secret update).
    #[arg(long, env = "PRIVREG_HTPASSWD_RELOAD_SECONDS", default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub htpasswd_reload_seconds: u64,

    /// Refuse every write (push, delete) with UNSUPPORTED; pulls keep working.
    #[arg(long, env = "PRIVREG_READ_ONLY")]
    pub read_only: bool,

    /// Largest manifest accepted, in bytes.
    #[arg(long, env = "PRIVREG_MAX_MANIFEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_manifest_bytes: u64,

    /// Accept manifests and indexes that name blobs or child manifests this
    /// registry does not hold (an index copied with one platform only). Off:
    /// every reference must be present, so every pull of a tag can complete.
    #[arg(long, env = "PRIVREG_ALLOW_SPARSE_MANIFESTS")]
    pub allow_sparse_manifests: bool,

    /// Largest blob accepted, in bytes (0: no limit).
    #[arg(long, env = "PRIVREG_MAX_BLOB_BYTES", default_value_t = 0)]
    pub max_blob_bytes: u64,

    /// Address for Prometheus metrics (`/metrics`), health and readiness, over plain HTTP.
    #[arg(long, env = "PRIVREG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds that in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "PRIVREG_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,

    /// Requests receiving an upload body at once; more get 429 TOOMANYREQUESTS.
    #[arg(long, env = "PRIVREG_MAX_CONCURRENT_UPLOADS", default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_concurrent_uploads: u32,

    /// Open upload sessions; a new one beyond it gets 429 TOOMANYREQUESTS.
    #[arg(long, env = "PRIVREG_MAX_UPLOAD_SESSIONS", default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_upload_sessions: u32,

    /// Upload sessions untouched for this many seconds are deleted.
    #[arg(long, env = "PRIVREG_UPLOAD_MAX_AGE_SECONDS", default_value_t = 86_400,
        value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    pub upload_max_age_seconds: u64,

    /// Seconds between purges of abandoned upload sessions (one also runs at start).
    #[arg(long, env = "PRIVREG_UPLOAD_PURGE_INTERVAL_SECONDS", default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub upload_purge_interval_seconds: u64,

    /// Seconds between online garbage collections (0: never; `privreg gc` then
    /// does it offline). Blobs no manifest references are deleted.
    #[arg(long, env = "PRIVREG_GC_INTERVAL_SECONDS", default_value_t = 86_400,
        value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub gc_interval_seconds: u64,

    /// Unreferenced blobs (and, with --gc-delete-untagged, untagged manifests)
    /// written or reused less than this many seconds ago are kept: a push
    /// uploads its blobs before its manifest.
    #[arg(long, env = "PRIVREG_GC_GRACE_SECONDS", default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    pub gc_grace_seconds: u64,

    /// Online collections also delete manifests no tag reaches (keeping children
    /// of tagged indexes and referrers of kept manifests).
    #[arg(long, env = "PRIVREG_GC_DELETE_UNTAGGED")]
    pub gc_delete_untagged: bool,

    /// Free space to keep on the data directory's filesystem: a byte count
    /// (10Gi, 500M) or a percentage (5%). Below it, uploads are refused at once
    /// with 403 DENIED ("storage is full"); pulls, deletes and GC go on.
    #[arg(long, env = "PRIVREG_MIN_FREE_SPACE", default_value = "5%")]
    pub min_free_space: MinFree,

    /// Client connections open at once; more are closed at accept.
    #[arg(long, env = "PRIVREG_MAX_CONNECTIONS", default_value_t = 2048,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    /// Seconds a new connection gets for its TLS handshake and a request's
    /// headers get to arrive (slow-header clients are cut off after it).
    #[arg(long, env = "PRIVREG_HEADER_TIMEOUT_SECONDS", default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_seconds: u64,

    /// Seconds a connection may move no byte either way (idle between requests,
    /// a stalled body, a client that stopped reading) before it is closed.
    #[arg(long, env = "PRIVREG_IDLE_TIMEOUT_SECONDS", default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_seconds: u64,

    /// Seconds an upload waits for the next piece of its request body, even on an
    /// HTTP/2 connection that other streams keep busy.
    #[arg(long, env = "PRIVREG_BODY_TIMEOUT_SECONDS", default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub body_timeout_seconds: u64,

    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, env = "PRIVREG_MAX_STREAMS_PER_CONNECTION", default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_streams_per_connection: u32,

    /// Seconds between checks of the certificate files for rotation.
    #[arg(long, env = "PRIVREG_TLS_RELOAD_SECONDS", default_value_t = 10)]
    pub tls_reload_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_defaults_match_registry_2() {
        let cli = Cli::try_parse_from(["privreg", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve parses as Serve")
        };
        assert_eq!(args.listen, "0.0.0.0:5000".parse().unwrap());
        assert_eq!(args.data, PathBuf::from("./data"));
        assert!(!args.insecure_http);
    }

    #[test]
    fn cert_and_key_come_together() {
        assert!(Cli::try_parse_from(["privreg", "serve", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Cli::try_parse_from(["privreg", "serve", "--tls-cert", "c", "--tls-key", "k"]).is_ok()
        );
    }

    #[test]
    fn plain_http_and_a_certificate_exclude_each_other() {
        let r = Cli::try_parse_from([
            "privreg",
            "serve",
            "--insecure-http",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
