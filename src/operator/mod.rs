//! The operator role: reconciles every PrivateRegistry into its CA, certificate,
//! storage, Deployment and Service (see DESIGN.md), and reports status.
//!
//! `validate`, `certificates`, `objects` and `status` are pure and carry the unit
//! tests; `reconcile` reads and writes through the API; this module wires the
//! controller, leader election, health and metrics.

pub mod certificates;
pub mod claims;
pub mod daemonset;
pub mod error;
#[cfg(test)]
mod fake_api;
pub mod leader;
pub mod objects;
pub mod pod_problem;
pub mod policy;
pub mod reconcile;
#[cfg(test)]
mod reconcile_tests;
pub mod rotation;
pub mod serving;
pub mod status;
pub mod storage_pressure;
pub mod trust_bundle;
pub mod trust_status;
pub mod uninstall;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::api::PrivateRegistry;
use crate::cli::OperatorArgs;
use error::Error;

/// The field manager of the trust task: it owns `trustedNodes`, `desiredNodes`
/// and the `TrustDistributed` condition of every PrivateRegistry's status.
pub const TRUST_FIELD_MANAGER: &str = "privreg-operator-trust";
/// The field manager of the storage task's `StoragePressure` condition.
pub const STORAGE_FIELD_MANAGER: &str = "privreg-operator-storage";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    /// What the cluster admin allows (images).
    pub policy: policy::Policy,
    pub metrics: OperatorMetrics,
    /// Wakes the trust-bundle task after a reconcile.
    pub bundle_nudge: Arc<tokio::sync::Notify>,
    /// Cancelled when this replica must stop writing (SIGTERM, or leadership
    /// lost): work started outside a reconcile (the failure reports of
    /// `error_policy`) ends with it, so nothing of ours lands after handover.
    pub stop: CancellationToken,
    /// Consecutive failures per registry, for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The controllers' caches of PrivateRegistries (one per watched
    /// namespace), set once they exist: who claims which host name, and what
    /// the trust bundle lists, are read from here, not listed again.
    pub registries: std::sync::OnceLock<Vec<kube::runtime::reflector::Store<PrivateRegistry>>>,
    /// The trust DaemonSet as the cluster admin configured it.
    pub trust_daemonset: daemonset::TrustDaemonSetConfig,
    /// The bundles published so far (which CA each listed for which registry).
    pub published: std::sync::Mutex<trust_status::Published>,
    /// The caches of CA ConfigMaps, the trust DaemonSet and its pods.
    pub trust_stores: std::sync::OnceLock<trust_bundle::TrustStores>,
    /// Set once those caches have listed everything.
    pub trust_ready: std::sync::atomic::AtomicBool,
    /// How long an old CA stays trusted after a rotation.
    pub ca_overlap: Duration,
    /// The operator's Deployment, owner of the trust DaemonSet and bundle.
    pub owner_deployment: Option<String>,
    /// Whether Ready waits for the Service to present the current certificate.
    pub check_serving: bool,
}

impl Context {
    /// Whether every node running the trust agent trusts every certificate of
    /// `pem` for this registry; `None` while that is not known yet.
    pub fn nodes_trust(&self, pr: &PrivateRegistry, pem: &str, enabled: bool) -> Option<bool> {
        if !enabled {
            return Some(true);
        }
        if !self.trust_ready.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let stores = self.trust_stores.get()?;
        // Only a DaemonSet whose status describes its current template says how
        // many nodes there are; otherwise the answer is not known yet.
        let daemonset = stores.daemonset.state().into_iter().next()?;
        trust_status::current_desired(&daemonset)?;
        let daemonset = Some(daemonset);
        let pods = stores.pods.state();
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let n = trust_status::count(
            &object_key(pr),
            &trust_status::ca_fingerprints(pem),
            daemonset.as_deref(),
            pods.iter().map(|p| p.as_ref()),
            &published,
        );
        Some(n.desired == 0 || n.trusted >= n.desired)
    }

    /// Every PrivateRegistry the operator sees (empty until the caches exist).
    pub fn all_registries(&self) -> Vec<Arc<PrivateRegistry>> {
        self.registries
            .get()
            .map(|stores| stores.iter().flat_map(|s| s.state()).collect())
            .unwrap_or_default()
    }
}

/// Retry delay after `failures` consecutive failures: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

/// `<namespace>/<name>`: how logs, claims and the trust bundle name a registry.
pub(crate) fn object_key(pr: &PrivateRegistry) -> String {
    format!("{}/{}", pr.namespace().unwrap_or_default(), pr.name_any())
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn retries_back_off_to_five_minutes() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(5));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: &'static str,
}

/// An API server request by HTTP method (GET covers get, list and watch).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    pub method: &'static str,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Counter,
    /// Requests this operator sent to the API server: the cost of a
    /// reconcile on the control plane, watched at scale.
    pub api_requests: Family<ApiRequestLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
}

impl OperatorMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("privreg_operator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let failures = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles by category",
            failures.clone(),
        );
        let api_requests = Family::<ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API server, by HTTP method",
            api_requests.clone(),
        );
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        OperatorMetrics {
            registry,
            reconciles,
            api_requests,
            failures,
            duration,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("String writes cannot fail");
        out
    }
}

/// Reconciles run at once per watched scope. Unbounded, 1,000 registries
/// created together sent thousands of requests at once and the API server
/// answered many with 504 (its in-flight limit); 16 keep it busy without
/// queueing past its timeouts.
const CONCURRENT_RECONCILES: u16 = 16;

/// Triggers for one registry within this time make one reconcile: creating a
/// registry's six objects otherwise wakes it six times.
const RECONCILE_DEBOUNCE: Duration = Duration::from_millis(250);

fn reconcile_pacing() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default()
        .concurrency(CONCURRENT_RECONCILES)
        .debounce(RECONCILE_DEBOUNCE)
}

/// The API client, counting every request it sends into `metrics`.
async fn counted_client(metrics: &OperatorMetrics) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    let requests = metrics.api_requests.clone();
    let count =
        tower::util::MapRequestLayer::new(move |req: axum::http::Request<kube::client::Body>| {
            let method = match *req.method() {
                axum::http::Method::GET => "GET",
                axum::http::Method::POST => "POST",
                axum::http::Method::PUT => "PUT",
                axum::http::Method::PATCH => "PATCH",
                axum::http::Method::DELETE => "DELETE",
                _ => "OTHER",
            };
            requests.get_or_create(&ApiRequestLabels { method }).inc();
            req
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

async fn reconcile_measured(pr: Arc<PrivateRegistry>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    tracing::debug!(registry = %pr.name_any(), "reconciling");
    let start = Instant::now();
    let key = object_key(&pr);
    // A panic in one reconcile (a bug, hostile input that slipped past
    // validation) must not take down the controller, which serves every other
    // registry: it becomes this object's error, with backoff.
    let result = std::panic::AssertUnwindSafe(reconcile::reconcile(pr, ctx.clone()))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(Error::Panicked(panic_message(panic.as_ref()))));
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
    ctx.bundle_nudge.notify_one();
    result
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Errors: counted by category, logged with their cause, an Event on the object,
/// and a retry that backs off.
fn error_policy(pr: Arc<PrivateRegistry>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(object_key(&pr)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };

    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            category: error.category(),
        })
        .inc();
    tracing::warn!(
        registry = %object_key(&pr),
        error = %error,
        source = ?std::error::Error::source(error).map(|s| s.to_string()),
        "reconcile failed"
    );
    let note = match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    };
    // The user sees why in the Ready condition and an Event; other conditions
    // and everything that runs stay as they were.
    let reason = error.reason();
    let stop = ctx.stop.clone();
    let report = async move {
        reconcile::publish(
            &ctx,
            &pr,
            kube::runtime::events::EventType::Warning,
            reason,
            "Reconcile",
            &note,
        )
        .await;
        let new = status::not_ready(
            pr.status.as_ref(),
            reason,
            note,
            pr.metadata.generation,
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
        );
        let api: Api<PrivateRegistry> =
            Api::namespaced(ctx.client.clone(), &pr.namespace().unwrap_or_default());
        if let Err(e) = reconcile::patch_status(&api, &pr, new).await {
            tracing::warn!(error = %e, "recording the failure in the status failed");
        }
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = report => {}
        }
    });
    Action::requeue(backoff(failures))
}

/// Runs the operator until SIGTERM (Ok) or until it loses the leader Lease (Err,
/// so the process exits non-zero and comes back as a standby).
pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let policy = policy::Policy::with_hostnames(
        &args.image,
        &args.allowed_images,
        &args.allowed_hostnames,
        &args.cluster_domain,
    )?;
    let scope = Scope::new(&args.watch_namespaces)?;
    let trust_daemonset = daemonset::TrustDaemonSetConfig::new(
        &args.namespace,
        &args.image,
        args.trust_preset,
        &args.trust_node_selector,
        &args.trust_tolerations,
    )?;
    let sigterm = CancellationToken::new();
    tokio::spawn(cancel_on_signal(sigterm.clone()));

    let metrics = OperatorMetrics::new();
    let client = counted_client(&metrics)
        .await
        .context("connecting to the Kubernetes API")?;
    let identity = args.pod_name.clone().unwrap_or_else(|| {
        gethostname::gethostname()
            .into_string()
            .unwrap_or_else(|_| "privreg-operator".into())
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::FIELD_MANAGER.to_owned(),
                instance: Some(identity.clone()),
            },
        ),
        policy,
        metrics,
        bundle_nudge: Arc::new(tokio::sync::Notify::new()),
        failures: Default::default(),
        // Leading ends no later than SIGTERM; with leader election, earlier
        // when the Lease is lost.
        stop: sigterm.child_token(),
        registries: std::sync::OnceLock::new(),
        trust_daemonset,
        published: Default::default(),
        trust_stores: std::sync::OnceLock::new(),
        trust_ready: Default::default(),
        // At most a year: the arithmetic on it stays far from overflow.
        ca_overlap: Duration::from_secs(args.ca_overlap_seconds.min(365 * 86_400)),
        owner_deployment: args.owner_deployment.clone(),
        check_serving: args.check_serving,
    });
    tokio::spawn(serve_health(ctx.clone(), args.metrics_listen));

    if !args.leader_elect {
        run_controllers(&ctx, &args, &scope).await;
        tracing::info!("operator stopped");
        return Ok(());
    }

    let config = leader::LeaderConfig::default();
    config.validate()?;
    let margin = config.handover_margin();
    let elector = Arc::new(leader::LeaderElector::new(
        client.clone(),
        &args.namespace,
        "privreg-operator",
        &identity,
        config,
    ));
    if !elector.acquire(&sigterm).await? {
        // SIGTERM while standing by: nothing to hand over.
        let _ = elector.release().await;
        tracing::info!("standby stopped");
        return Ok(());
    }
    tracing::info!(%identity, "leading");
    let shutdown = ctx.stop.clone();
    let keeper = tokio::spawn({
        let (elector, shutdown) = (elector.clone(), shutdown.clone());
        async move {
            let held = elector.hold(&shutdown).await;
            shutdown.cancel();
            held
        }
    });
    let controllers = run_controllers(&ctx, &args, &scope);
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => {}
        // Once leading ends, reconciles in flight get the handover margin to
        // finish; after that they are dropped, so no write of ours can land while
        // another replica leads.
        _ = async { shutdown.cancelled().await; tokio::time::sleep(margin).await } => {
            tracing::warn!("reconciles did not finish within the handover margin; dropped");
        }
    }
    shutdown.cancel();
    let held = keeper.await.unwrap_or_else(|e| {
        Err(leader::LeaderError::Lost {
            reason: format!("the lease keeper failed: {e}"),
        })
    });
    // A lost Lease is not ours to release (and a hung apiserver would delay the
    // exit past the handover); only a replica that stops on SIGTERM hands over.
    if held.is_ok()
        && let Err(e) = elector.release().await
    {
        tracing::warn!(error = %e, "releasing the leader Lease failed");
    }
    held.context("leader election")?;
    tracing::info!("operator stopped; leader Lease released");
    Ok(())
}

/// Cancels `token` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(token: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

async fn serve_health(ctx: Arc<Context>, listen: std::net::SocketAddr) {
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let h = ctx.clone();
                async move { h.metrics.encode() }
            }),
        );
    match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => {
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(error = %e, "health server failed");
            }
        }
        Err(e) => tracing::error!(error = %e, %listen, "cannot listen for health and metrics"),
    }
}

/// Which namespaces the operator watches: all (a ClusterRole), or a list (a Role
/// in each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Namespaces(Vec<String>),
}

impl Scope {
    pub fn new(namespaces: &[String]) -> anyhow::Result<Scope> {
        let mut list: Vec<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        list.sort();
        list.dedup();
        if let Some(bad) = list
            .iter()
            .find(|n| !crate::certs::is_dns_name(n) || n.contains('.') || n.len() > 63)
        {
            anyhow::bail!("--watch-namespaces: {bad:?} is not a namespace name");
        }
        Ok(if list.is_empty() {
            Scope::Cluster
        } else {
            Scope::Namespaces(list)
        })
    }

    /// One `Api` per watched namespace (or one for all).
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Scope::Cluster => vec![Api::all(client.clone())],
            Scope::Namespaces(list) => list
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect(),
        }
    }
}

/// The controllers (one per watched namespace, or one for all) and the trust
/// bundle task, until `ctx.stop` is cancelled. Everything runs inside this one
/// future (nothing spawned), so dropping it stops every write at once.
async fn run_controllers(ctx: &Arc<Context>, args: &OperatorArgs, scope: &Scope) {
    let stop = ctx.stop.clone();
    let (stores, watches) = trust_watches(ctx, args, scope);
    let _ = ctx.trust_stores.set(stores);
    let bundle = trust_bundle::run(
        ctx.clone(),
        args.namespace.clone(),
        Duration::from_secs(args.trust_bundle_resync_seconds.max(1)),
    );
    // Consistent lists: after an apiserver restart, a list served from a fresh
    // watch cache can carry a resourceVersion older than the cache's window, and
    // every watch resumed from it fails with 410 Expired, again and again.
    let registries_config =
        watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    let owned = watcher::Config::default()
        .labels(&format!(
            "{}={}",
            crate::labels::MANAGED_BY,
            crate::FIELD_MANAGER
        ))
        .list_semantic(watcher::ListSemantic::MostRecent);
    let consented = watcher::Config::default()
        .labels(objects::SECRET_USE_LABEL)
        .list_semantic(watcher::ListSemantic::MostRecent);
    let registry_pods = watcher::Config::default()
        .labels(&objects::all_registry_pods_selector())
        .list_semantic(watcher::ListSemantic::MostRecent);
    tracing::info!(image = %args.image, ?scope, "privreg operator starting");
    let client = &ctx.client;
    let controllers = scope
        .apis::<PrivateRegistry>(client)
        .into_iter()
        .zip(scope.apis::<Deployment>(client))
        .zip(scope.apis::<Service>(client))
        .zip(scope.apis::<Secret>(client))
        .zip(scope.apis::<ConfigMap>(client))
        .zip(scope.apis::<PersistentVolumeClaim>(client))
        .zip(scope.apis::<Pod>(client))
        .map(
            |((((((registries, deployments), services), secrets), configmaps), pvcs), pods)| {
                let (reader, writer) = reflector::store();
                let referencing = reader.clone();
                let trigger = reflector(
                    writer,
                    watcher(registries, registries_config.clone()).modify(without_managed_fields),
                )
                .applied_objects();
                Controller::for_stream(trigger, reader)
                    .with_config(reconcile_pacing())
                    .trigger_backoff(trigger_backoff())
                    .owns(deployments, owned.clone())
                    .owns(services, owned.clone())
                    .owns(secrets.clone(), owned.clone())
                    // A tenant's Secret that carries the consent label: when
                    // its owner labels it (or changes it), the registries that
                    // name it are reconciled at once, not after a refusal's
                    // backoff has run out.
                    .watches(secrets, consented.clone(), move |secret| {
                        let namespace = secret.namespace();
                        let name = secret.name_any();
                        referencing
                            .state()
                            .into_iter()
                            .filter(|pr| {
                                pr.namespace() == namespace
                                    && pr.spec.referenced_secrets().any(|s| s == name)
                            })
                            .map(|pr| ObjectRef::from_obj(&*pr))
                            .collect::<Vec<_>>()
                    })
                    .owns(configmaps, owned.clone())
                    // A retained volume has no owner reference, so map it back by label.
                    .watches(pvcs, owned.clone(), |pvc| {
                        let name = pvc.labels().get(crate::labels::INSTANCE)?.clone();
                        Some(ObjectRef::<PrivateRegistry>::new(&name).within(&pvc.namespace()?))
                    })
                    // A registry pod that waits for its image or crash-loops
                    // changes the pod, not the Deployment: its changes are
                    // what bring the status's pod problem up to date (rather
                    // than looking again every few seconds per registry).
                    .watches(pods, registry_pods.clone(), |pod| {
                        let name = pod.labels().get(crate::labels::INSTANCE)?.clone();
                        Some(ObjectRef::<PrivateRegistry>::new(&name).within(&pod.namespace()?))
                    })
            },
        )
        .collect::<Vec<_>>();
    let _ = ctx
        .registries
        .set(controllers.iter().map(Controller::store).collect());
    let controllers = controllers.into_iter().map(|controller| {
        let stop = stop.clone();
        controller
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(reconcile_measured, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, _)) => {
                        tracing::debug!(registry = %object.name, "reconciled")
                    }
                    Err(e) => tracing::debug!(error = %e, "controller event"),
                }
            })
    });
    // Reads the registries' pods over the pod network: on where Services are
    // (--check-serving), and where it is asked for.
    let storage_check = (ctx.check_serving && args.storage_check_seconds > 0).then(|| {
        storage_pressure::run(
            ctx.clone(),
            scope.clone(),
            Duration::from_secs(args.storage_check_seconds),
        )
    });
    let trust = async {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = futures_util::future::join3(
                bundle,
                watches,
                futures_util::future::OptionFuture::from(storage_check),
            ) => {}
        }
    };
    futures_util::future::join(futures_util::future::join_all(controllers), trust).await;
}

/// The caches the trust task reads, and the future that keeps them filled (and
/// nudges the task on every change): the operator's CA ConfigMaps in each
/// watched namespace, and the trust DaemonSet and its pods in its own.
fn trust_watches(
    ctx: &Arc<Context>,
    args: &OperatorArgs,
    scope: &Scope,
) -> (
    trust_bundle::TrustStores,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let client = &ctx.client;
    let nudge = &ctx.bundle_nudge;
    let config = || watcher::Config::default().list_semantic(watcher::ListSemantic::MostRecent);
    let managed = config().labels(&format!(
        "{}={}",
        crate::labels::MANAGED_BY,
        crate::FIELD_MANAGER
    ));
    let mut futures = Vec::new();
    let mut ca_configmaps = Vec::new();
    for api in scope.apis::<ConfigMap>(client) {
        let (store, keep) = cache(api, managed.clone(), nudge);
        ca_configmaps.push(store);
        futures.push(keep);
    }
    let mut services = Vec::new();
    for api in scope.apis::<Service>(client) {
        let (store, keep) = cache(api, managed.clone(), nudge);
        services.push(store);
        futures.push(keep);
    }
    let (daemonset, keep) = cache(
        Api::<DaemonSet>::namespaced(client.clone(), &args.namespace),
        config().fields(&format!("metadata.name={}", daemonset::DAEMONSET_NAME)),
        nudge,
    );
    futures.push(keep);
    let (pods, keep) = cache(
        Api::<Pod>::namespaced(client.clone(), &args.namespace),
        config().labels(&daemonset::selector_string()),
        nudge,
    );
    futures.push(keep);
    let stores = trust_bundle::TrustStores {
        ca_configmaps,
        services,
        daemonset,
        pods,
    };
    (stores, async move {
        futures_util::future::join_all(futures).await;
    })
}

/// The backoff of the controller's watches. They share one: an error of any
/// of them pauses them all. After an apiserver restart each of the seven meets
/// one 410 Expired in turn, and client-go's doubling from 0.8 s to 30 s added
/// up to about 90 s in which no change reached a reconcile (45 s with a 5 s
/// cap, jitter doubling each pause). Capped at 2 s, a restart costs seconds,
/// and a watch that keeps failing (a missing RBAC rule) is tried again every
/// 2-4 s, not in a loop.
fn trigger_backoff() -> impl kube::runtime::utils::Backoff {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

/// What a cached object keeps: its managedFields (a field tree per writer,
/// larger than the rest of a PrivateRegistry) are read by nothing here.
fn without_managed_fields<K: kube::Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A cache of what `api` and `config` select, and the future that keeps it
/// filled and nudges the trust task on every change.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    nudge: &Arc<tokio::sync::Notify>,
) -> (
    kube::runtime::reflector::Store<K>,
    futures_util::future::BoxFuture<'static, ()>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let nudge = nudge.clone();
    let keep = reflector(writer, watcher(api, config).modify(without_managed_fields))
        .default_backoff()
        .for_each(move |event| {
            if event.is_ok() {
                nudge.notify_one();
            }
            async {}
        })
        .boxed();
    (store, keep)
}
