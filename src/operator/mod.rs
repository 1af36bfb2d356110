//! The operator role: reconciles every PrivateRegistry into its CA, certificate,
//! storage, Deployment and Service (see DESIGN.md), and reports status.
//!
//! `validate`, `certificates`, `objects` and `status` are pure and carry the unit
//! tests; `reconcile` reads and writes through the API; this module wires the
//! controller, leader election, health and metrics.

pub mod certificates;
pub mod error;
pub mod leader;
pub mod objects;
pub mod reconcile;
pub mod status;
pub mod trust_bundle;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::PrivateRegistry;
use crate::cli::OperatorArgs;
use error::Error;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub default_image: String,
    pub metrics: OperatorMetrics,
    /// Wakes the trust-bundle task after a reconcile.
    pub bundle_nudge: Arc<tokio::sync::Notify>,
    /// Consecutive failures per registry, for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

/// Retry delay after `failures` consecutive failures: 5 s doubling to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

fn object_key(pr: &PrivateRegistry) -> String {
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

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Counter,
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
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            duration.clone(),
        );
        OperatorMetrics {
            registry,
            reconciles,
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

async fn reconcile_measured(pr: Arc<PrivateRegistry>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    tracing::debug!(registry = %pr.name_any(), "reconciling");
    let start = Instant::now();
    let key = object_key(&pr);
    let result = reconcile::reconcile(pr, ctx.clone()).await;
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
        registry = %format!("{}/{}", pr.namespace().unwrap_or_default(), pr.name_any()),
        error = %error,
        source = ?std::error::Error::source(error).map(|s| s.to_string()),
        "reconcile failed"
    );
    let note = match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    };
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        reconcile::publish(
            &ctx2,
            &pr,
            kube::runtime::events::EventType::Warning,
            "ReconcileFailed",
            "Reconcile",
            &note,
        )
        .await;
    });
    Action::requeue(backoff(failures))
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
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
        default_image: args.image.clone(),
        metrics: OperatorMetrics::new(),
        bundle_nudge: Arc::new(tokio::sync::Notify::new()),
        failures: Default::default(),
    });

    let health = ctx.clone();
    let listen = args.metrics_listen;
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/readyz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let h = health.clone();
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
    });

    if args.leader_elect {
        let elector = Arc::new(leader::LeaderElector::new(
            client.clone(),
            &args.namespace,
            "privreg-operator",
            &identity,
            Duration::from_secs(15),
        ));
        elector.acquire(Duration::from_secs(2)).await;
        tracing::info!(%identity, "leading");
        let keeper = elector.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                match keeper.try_acquire().await {
                    Ok(true) => {}
                    // Lost the lease: stop at once, so two leaders never overlap.
                    Ok(false) => {
                        tracing::error!("lost the leader lease; exiting");
                        std::process::exit(1);
                    }
                    Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
                }
            }
        });
    }

    tokio::spawn(trust_bundle::run(
        client.clone(),
        args.namespace.clone(),
        ctx.bundle_nudge.clone(),
        Duration::from_secs(args.trust_bundle_resync_seconds.max(1)),
    ));

    let registries: Api<PrivateRegistry> = Api::all(client.clone());
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
    tracing::info!(image = %args.image, "privreg operator starting");
    Controller::new(registries, registries_config)
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<Secret>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        // A retained volume has no owner reference, so map it back by label.
        .watches(
            Api::<PersistentVolumeClaim>::all(client.clone()),
            owned,
            |pvc| {
                let name = pvc.labels().get(crate::labels::INSTANCE)?.clone();
                Some(ObjectRef::<PrivateRegistry>::new(&name).within(&pvc.namespace()?))
            },
        )
        .shutdown_on_signal()
        .run(reconcile_measured, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(registry = %object.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
    tracing::info!("operator stopped");
    Ok(())
}
