//! The agent's plain-HTTP endpoints: `/healthz` (the process answers),
//! `/readyz` (the node matches the bundle and containerd is not known to ignore
//! it; the body says why not) and `/metrics` (Prometheus text). Labels come from
//! fixed sets, never from the bundle.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::trust::summary::{self, ContainerdAdvice, Readiness, Summary, VERDICT_LABELS};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `start`, `change` (the bundle's directory changed) or `resync` (the timer).
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub syncs: Family<TriggerLabels, Counter>,
    pub sync_errors: Family<ReasonLabels, Counter>,
    pub entries_applied: Gauge,
    pub entries_refused: Gauge,
    pub converged: Gauge,
    pub files_changed: Family<ActionLabels, Counter>,
    pub containerd_config: Family<VerdictLabels, Gauge>,
    pub sync_seconds: Histogram,
    pub last_sync: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("privreg_trust");
        let syncs = Family::<TriggerLabels, Counter>::default();
        registry.register("syncs", "Sync passes run, by trigger", syncs.clone());
        let sync_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sync_errors",
            "Sync passes that stopped before writing (the node was left as it is), by reason",
            sync_errors.clone(),
        );
        let entries_applied = Gauge::default();
        registry.register(
            "entries_applied",
            "Bundle entries accepted in the last completed sync",
            entries_applied.clone(),
        );
        let entries_refused = Gauge::default();
        registry.register(
            "entries_refused",
            "Bundle entries refused in the last completed sync",
            entries_refused.clone(),
        );
        let converged = Gauge::default();
        registry.register(
            "converged",
            "1 when the last sync left the node matching the bundle",
            converged.clone(),
        );
        let files_changed = Family::<ActionLabels, Counter>::default();
        registry.register(
            "file_changes",
            "Paths written, removed, backed up or restored on the node",
            files_changed.clone(),
        );
        let containerd_config = Family::<VerdictLabels, Gauge>::default();
        for verdict in VERDICT_LABELS {
            // Every label present from the start, so a query never sees a gap.
            drop(containerd_config.get_or_create(&VerdictLabels { verdict }));
        }
        registry.register(
            "containerd_config",
            "1 for the verdict of the last containerd config check (does containerd read the certs.d the agent writes)",
            containerd_config.clone(),
        );
        let sync_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "sync_duration_seconds",
            "Time of one sync pass",
            sync_seconds.clone(),
        );
        let last_sync = Gauge::default();
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last sync pass",
            last_sync.clone(),
        );
        Metrics {
            registry,
            syncs,
            sync_errors,
            entries_applied,
            entries_refused,
            converged,
            files_changed,
            containerd_config,
            sync_seconds,
            last_sync,
        }
    }

    /// Records one pass.
    pub fn record(&self, trigger: &'static str, s: &Summary, containerd: &ContainerdAdvice) {
        self.syncs.get_or_create(&TriggerLabels { trigger }).inc();
        match &s.failure {
            Some(f) => {
                self.sync_errors
                    .get_or_create(&ReasonLabels { reason: f.category })
                    .inc();
            }
            None => {
                self.entries_applied.set(gauge_value(s.applied));
                self.entries_refused.set(gauge_value(s.refused.len()));
                for (action, paths) in [
                    ("written", &s.changes.written),
                    ("removed", &s.changes.removed),
                    ("backed_up", &s.changes.backed_up),
                    ("restored", &s.changes.restored),
                ] {
                    if !paths.is_empty() {
                        self.files_changed
                            .get_or_create(&ActionLabels { action })
                            .inc_by(paths.len() as u64);
                    }
                }
            }
        }
        self.converged.set(i64::from(s.converged));
        for verdict in VERDICT_LABELS {
            self.containerd_config
                .get_or_create(&VerdictLabels { verdict })
                .set(i64::from(verdict == containerd.label()));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.last_sync.set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an empty answer is the worst case.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What the last pass found, as `/readyz` reads it.
#[derive(Debug, Default)]
pub struct Status {
    pub last: Option<Summary>,
    pub containerd: Option<ContainerdAdvice>,
}

/// Shared by the run loop (writer) and the HTTP handlers (readers).
#[derive(Default)]
pub struct Shared {
    pub metrics: Metrics,
    status: Mutex<Status>,
    /// The bundle hash this pod was created for (`--expected-bundle`).
    pub expected_bundle: Option<String>,
}

impl Shared {
    /// Readiness also requires the mounted bundle to hash to `expected_bundle`.
    pub fn expecting(expected_bundle: Option<String>) -> Shared {
        Shared {
            expected_bundle,
            ..Shared::default()
        }
    }

    pub fn set(&self, last: Summary, containerd: ContainerdAdvice) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.last = Some(last);
        status.containerd = Some(containerd);
    }

    pub fn readiness(&self) -> Readiness {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        summary::readiness(
            status.last.as_ref(),
            status.containerd.as_ref(),
            self.expected_bundle.as_deref(),
        )
    }
}

/// The router, callable without a socket in tests.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(metrics))
        .with_state(shared)
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let r = shared.readiness();
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, r.body)
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::containerd_config::Verdict;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(app: &axum::Router, path: &str) -> (u16, String) {
        let res = app
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn advice(verdict: Verdict) -> ContainerdAdvice {
        ContainerdAdvice {
            verdict: Some(verdict),
            line: format!("containerd: {verdict:?}"),
        }
    }

    #[tokio::test]
    async fn readyz_follows_the_last_pass_and_the_containerd_check() {
        let shared = Arc::new(Shared::default());
        let app = router(shared.clone());
        assert_eq!(get(&app, "/healthz").await, (200, "ok\n".into()));
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("no sync has completed yet"), "{body}");

        let good = Summary {
            applied: 1,
            converged: true,
            ..Summary::default()
        };
        shared.set(good.clone(), advice(Verdict::Effective));
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("containerd: Effective"), "{body}");

        shared.set(good.clone(), advice(Verdict::DependsOnVersion));
        assert_eq!(get(&app, "/readyz").await.0, 200);

        shared.set(good, advice(Verdict::NotEffective));
        let (code, body) = get(&app, "/readyz").await;
        assert_eq!(code, 503);
        assert!(body.contains("containerd: NotEffective"), "{body}");
    }

    #[tokio::test]
    async fn metrics_count_passes_and_errors() {
        let shared = Arc::new(Shared::default());
        let s = Summary {
            applied: 2,
            converged: true,
            changes: summary::Changes {
                written: vec!["/a".into(), "/b".into()],
                ..Default::default()
            },
            ..Summary::default()
        };
        shared
            .metrics
            .record("start", &s, &advice(Verdict::Effective));
        let err = std::io::Error::other("gone");
        shared.metrics.record(
            "change",
            &Summary::failed("read_bundle", &err),
            &advice(Verdict::Effective),
        );
        let (code, text) = get(&router(shared), "/metrics").await;
        assert_eq!(code, 200);
        for line in [
            "privreg_trust_syncs_total{trigger=\"start\"} 1",
            "privreg_trust_syncs_total{trigger=\"change\"} 1",
            "privreg_trust_sync_errors_total{reason=\"read_bundle\"} 1",
            "privreg_trust_entries_applied 2",
            "privreg_trust_entries_refused 0",
            "privreg_trust_converged 0",
            "privreg_trust_file_changes_total{action=\"written\"} 2",
            "privreg_trust_containerd_config{verdict=\"effective\"} 1",
            "privreg_trust_containerd_config{verdict=\"not_effective\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
