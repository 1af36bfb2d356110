//! Whether each registry still has room: the `StoragePressure` condition and a
//! Warning Event when a registry starts refusing uploads for want of free space.
//!
//! Only the registry sees its volume, so the operator asks it: every check
//! interval it lists the registry pods of the watched namespaces (one list per
//! namespace scope, not one per registry), reads each Ready pod's metrics
//! endpoint over the pod network (`privreg_storage_free_bytes`,
//! `privreg_storage_min_free_bytes`, `privreg_storage_pressure`, measured by
//! the registry on each scrape), and writes the condition with its own field
//! manager when its status or reason changes. The registry needs no API
//! credentials for this, and the operator needs none from the registry: the
//! metrics endpoint is the one Prometheus reads.
//!
//! Pods are found by label in the tenant's namespace, so a tenant could label
//! pods of their own to be read; they can only speak for their own registry,
//! every read is bounded in time and size, and at most `MAX_PODS_PER_REGISTRY`
//! pods are read per registry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::{Context, Scope};
use crate::api::PrivateRegistry;
use crate::labels;

/// How long one read of a pod's metrics may take (connect, request, body).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// The most metrics text read from one pod (the registry's is a few KiB).
const MAX_METRICS_BYTES: usize = 1 << 20;
/// Pods read per registry per check; more are ignored (the registry runs one).
const MAX_PODS_PER_REGISTRY: usize = 4;
/// Pods read at once.
const CONCURRENT_SCRAPES: usize = 16;

/// What one registry pod reported about its data volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageReport {
    pub free: u64,
    pub size: u64,
    pub min_free: u64,
    /// New uploads are refused (the registry's own verdict).
    pub pressure: bool,
}

impl StorageReport {
    /// Reads the registry's storage gauges from its metrics text (unlabelled
    /// samples: `name value`); `None` if one is missing.
    pub fn from_metrics(text: &str) -> Option<StorageReport> {
        let gauge = |name: &str| -> Option<u64> {
            text.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(' ')?;
                // Gauges are integers; tolerate a float rendering.
                let v: f64 = value.split_whitespace().next()?.parse().ok()?;
                (v.is_finite() && v >= 0.0).then_some(v as u64)
            })
        };
        Some(StorageReport {
            free: gauge("privreg_storage_free_bytes")?,
            size: gauge("privreg_storage_size_bytes")?,
            min_free: gauge("privreg_storage_min_free_bytes")?,
            pressure: gauge("privreg_storage_pressure")? != 0,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered {0}")]
    Status(hyper::StatusCode),
    #[error("the answer is over {MAX_METRICS_BYTES} bytes or unreadable")]
    Body,
    #[error("no storage gauges in the metrics (a registry older than this operator?)")]
    NoGauges,
    #[error("no answer within {SCRAPE_TIMEOUT:?}")]
    Timeout,
}

/// Reads the storage report of the registry pod at `ip:port`.
pub async fn scrape(ip: IpAddr, port: u16) -> Result<StorageReport, ScrapeError> {
    let addr = SocketAddr::new(ip, port);
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, fetch_metrics(addr))
        .await
        .map_err(|_| ScrapeError::Timeout)??;
    StorageReport::from_metrics(&text).ok_or(ScrapeError::NoGauges)
}

/// `GET /metrics` over plain HTTP/1.1.
async fn fetch_metrics(addr: SocketAddr) -> Result<String, ScrapeError> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(ScrapeError::Connect)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    let exchange = async move {
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|_| ScrapeError::Body)?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            return Err(ScrapeError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_METRICS_BYTES)
            .collect()
            .await
            .map_err(|_| ScrapeError::Body)?
            .to_bytes();
        // Dropping the sender lets the connection future end.
        drop(sender);
        String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::Body)
    };
    // The connection future moves the bytes; it ends once the exchange is done.
    let (result, _) = tokio::join!(exchange, connection);
    result
}

/// The storage task's view of one registry, for its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageObservation {
    /// `True` (under pressure), `False`, or `Unknown` (not measured).
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
}

pub const UNDER_PRESSURE: &str = "BelowMinFreeSpace";
pub const ENOUGH_SPACE: &str = "EnoughFreeSpace";
pub const NOT_MEASURED: &str = "NotMeasured";

/// The condition for what a registry's pods reported: under pressure if any
/// pod says so (they share one volume), measured if any pod answered.
pub fn observe(reports: &[Result<StorageReport, String>]) -> StorageObservation {
    let measured: Vec<&StorageReport> = reports.iter().filter_map(|r| r.as_ref().ok()).collect();
    let worst = measured
        .iter()
        .copied()
        .max_by_key(|r| (r.pressure, std::cmp::Reverse(r.free)));
    match worst {
        Some(r) if r.pressure => StorageObservation {
            status: "True",
            reason: UNDER_PRESSURE,
            message: format!(
                "{} free of {}, below the minimum of {} (spec.registry.minFreeSpace): \
                 new pushes are refused while pulls go on; delete images and let \
                 garbage collection free their blobs, or grow the volume",
                mib(r.free),
                mib(r.size),
                mib(r.min_free)
            ),
        },
        Some(r) => StorageObservation {
            status: "False",
            reason: ENOUGH_SPACE,
            message: format!(
                "free space is above the minimum of {} (spec.registry.minFreeSpace)",
                mib(r.min_free)
            ),
        },
        None => StorageObservation {
            status: "Unknown",
            reason: NOT_MEASURED,
            message: match reports.iter().find_map(|r| r.as_ref().err()) {
                Some(why) => format!("the registry pod's metrics could not be read: {why}"),
                None => "no registry pod is ready".to_owned(),
            },
        },
    }
}

/// Bytes in MiB, one decimal: the unit of volume sizes.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Checks every registry once per `interval` until the operator stops leading.
pub async fn run(ctx: Arc<Context>, scope: Scope, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        check_all(&ctx, &scope).await;
    }
}

/// Ready registry pods by `<namespace>/<registry name>`, at most
/// `MAX_PODS_PER_REGISTRY` each.
async fn registry_pods(ctx: &Context, scope: &Scope) -> Option<HashMap<String, Vec<IpAddr>>> {
    let selector = super::objects::all_registry_pods_selector();
    let mut by_registry: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for api in scope.apis::<Pod>(&ctx.client) {
        // In pages: a thousand pods in one list is tens of MiB of heap.
        let mut params = ListParams::default().labels(&selector).limit(PODS_PER_PAGE);
        for _ in 0..MAX_PAGES {
            let page = match api.list(&params).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "listing registry pods for the storage check failed");
                    return None;
                }
            };
            add_ready_pods(&mut by_registry, page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
    }
    Some(by_registry)
}

const PODS_PER_PAGE: u32 = 100;
const MAX_PAGES: usize = 1_000;

/// Adds each ready pod's address to its registry's, at most
/// `MAX_PODS_PER_REGISTRY` each.
fn add_ready_pods(by_registry: &mut HashMap<String, Vec<IpAddr>>, pods: Vec<Pod>) {
    for pod in pods {
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let (Some(ip), Some(instance), Some(ns)) =
            (ip, pod.labels().get(labels::INSTANCE), pod.namespace())
        else {
            continue;
        };
        if !super::trust_status::pod_ready(&pod) {
            continue;
        }
        let ips = by_registry.entry(format!("{ns}/{instance}")).or_default();
        if ips.len() < MAX_PODS_PER_REGISTRY {
            ips.push(ip);
        }
    }
}

async fn check_all(ctx: &Arc<Context>, scope: &Scope) {
    let Some(pods) = registry_pods(ctx, scope).await else {
        return;
    };
    let registries = ctx.all_registries();
    let port = super::validate::METRICS_PORT;
    let reads = registries.iter().map(|pr| {
        let ips = pods
            .get(&super::object_key(pr))
            .cloned()
            .unwrap_or_default();
        async move {
            let mut reports = Vec::with_capacity(ips.len());
            for ip in ips {
                reports.push(scrape(ip, port).await.map_err(|e| e.to_string()));
            }
            (pr.clone(), observe(&reports))
        }
    });
    let observed: Vec<_> = futures_util::stream::iter(reads)
        .buffer_unordered(CONCURRENT_SCRAPES)
        .collect()
        .await;
    for (pr, observation) in observed {
        if ctx.stop.is_cancelled() {
            return;
        }
        record(ctx, &pr, &observation).await;
    }
}

/// Writes the condition if it changed, and tells of a change into or out of
/// pressure with an Event.
async fn record(ctx: &Context, pr: &PrivateRegistry, observation: &StorageObservation) {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let Some(patch) = super::status::storage_patch(
        pr.status.as_ref(),
        observation,
        pr.metadata.generation,
        &now,
    ) else {
        return;
    };
    let before = pr.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == super::status::STORAGE_PRESSURE)
            .map(|c| c.status.clone())
    });
    let api: Api<PrivateRegistry> =
        Api::namespaced(ctx.client.clone(), &pr.namespace().unwrap_or_default());
    if let Err(e) =
        super::reconcile::apply_status(&api, pr, super::STORAGE_FIELD_MANAGER, patch).await
    {
        tracing::warn!(registry = %super::object_key(pr), error = %e, "updating the storage condition failed");
        return;
    }
    match (before.as_deref(), observation.status) {
        (Some("True"), "True") | (_, "Unknown") => {}
        (_, "True") => {
            tracing::warn!(registry = %super::object_key(pr), message = %observation.message, "registry storage under pressure");
            super::reconcile::publish(
                ctx,
                pr,
                EventType::Warning,
                super::status::STORAGE_PRESSURE,
                "CheckStorage",
                &observation.message,
            )
            .await;
        }
        (Some("True"), _) => {
            super::reconcile::publish(
                ctx,
                pr,
                EventType::Normal,
                "StoragePressureRelieved",
                "CheckStorage",
                &observation.message,
            )
            .await;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP privreg_storage_free_bytes Free bytes\n\
        # TYPE privreg_storage_free_bytes gauge\n\
        privreg_storage_free_bytes 1048576\n\
        privreg_storage_free_bytes_total 7\n\
        privreg_storage_size_bytes 104857600\n\
        privreg_storage_min_free_bytes 5242880\n\
        privreg_storage_pressure 1\n\
        # EOF\n";

    #[test]
    fn reads_the_gauges_and_not_their_lookalikes() {
        assert_eq!(
            StorageReport::from_metrics(TEXT),
            Some(StorageReport {
                free: 1 << 20,
                size: 100 << 20,
                min_free: 5 << 20,
                pressure: true,
            })
        );
        let without = TEXT.replace("privreg_storage_pressure 1\n", "");
        assert_eq!(StorageReport::from_metrics(&without), None);
        assert_eq!(
            StorageReport::from_metrics(&TEXT.replace(" 1048576", " -5")),
            None
        );
    }

    #[test]
    fn any_pod_under_pressure_makes_the_condition_true() {
        let ok = StorageReport {
            free: 50 << 20,
            size: 100 << 20,
            min_free: 5 << 20,
            pressure: false,
        };
        let full = StorageReport {
            free: 1 << 20,
            pressure: true,
            ..ok
        };
        let o = observe(&[Ok(ok), Err("timeout".into()), Ok(full)]);
        assert_eq!((o.status, o.reason), ("True", UNDER_PRESSURE));
        assert!(
            o.message.contains("1.0 MiB free of 100.0 MiB"),
            "{}",
            o.message
        );
        let o = observe(&[Ok(ok)]);
        assert_eq!((o.status, o.reason), ("False", ENOUGH_SPACE));
        let o = observe(&[Err("connection refused".into())]);
        assert_eq!((o.status, o.reason), ("Unknown", NOT_MEASURED));
        assert!(o.message.contains("connection refused"));
        assert_eq!(observe(&[]).message, "no registry pod is ready");
    }

    #[test]
    fn the_condition_is_rewritten_only_when_its_verdict_changes() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let t = |s| Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap());
        let full = |free: u64| {
            observe(&[Ok(StorageReport {
                free,
                size: 100 << 20,
                min_free: 5 << 20,
                pressure: true,
            })])
        };
        let patch = crate::operator::status::storage_patch(None, &full(1 << 20), Some(1), &t(10))
            .expect("a first condition");
        let condition = serde_json::from_value(patch["conditions"][0].clone()).unwrap();
        let status = crate::api::PrivateRegistryStatus {
            conditions: vec![condition],
            ..Default::default()
        };
        // Free space moved, the verdict did not: nothing to write.
        assert!(
            crate::operator::status::storage_patch(Some(&status), &full(2 << 20), Some(1), &t(20))
                .is_none()
        );
        let relieved = observe(&[Ok(StorageReport {
            free: 50 << 20,
            size: 100 << 20,
            min_free: 5 << 20,
            pressure: false,
        })]);
        let patch =
            crate::operator::status::storage_patch(Some(&status), &relieved, Some(1), &t(30))
                .expect("a change");
        assert_eq!(patch["conditions"][0]["status"], "False");
        assert_eq!(
            patch["conditions"][0]["lastTransitionTime"],
            "1970-01-01T00:00:30Z"
        );
    }
}
