//! Prometheus metrics of the registry. Labels come from fixed sets (endpoint kinds,
//! methods, status codes, storage operations), never from user input.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StorageLabels {
    pub operation: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<EndpointLabels, Histogram>,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub upload_seconds: Histogram,
    pub storage_errors: Family<StorageLabels, Counter>,
    pub auth_failures: Counter,
    pub auth_limited: Counter,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
    pub connections_timed_out: Counter,
    pub uploads_refused: Counter,
    pub uploads_purged: Counter,
    pub storage_free_bytes: Gauge,
    pub storage_size_bytes: Gauge,
    pub storage_min_free_bytes: Gauge,
    pub storage_pressure: Gauge,
    pub uploads_refused_storage_full: Counter,
    pub gc_runs: Counter,
    pub gc_blobs_deleted: Counter,
    pub gc_bytes_freed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("privreg");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint, method and status",
            requests.clone(),
        );
        let request_seconds = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to the response head, by endpoint",
            request_seconds.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "http_received_bytes",
            "Request body bytes received",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "http_sent_bytes",
            "Response body bytes sent",
            bytes_sent.clone(),
        );
        let upload_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "blob_upload_duration_seconds",
            "From the start of an upload session to its commit",
            upload_seconds.clone(),
        );
        let storage_errors = Family::<StorageLabels, Counter>::default();
        registry.register(
            "storage_errors",
            "Storage failures by operation",
            storage_errors.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests whose credentials were checked and refused (401)",
            auth_failures.clone(),
        );
        let auth_limited = Counter::default();
        registry.register(
            "auth_limited",
            "Requests refused unchecked: the user's or address's failure budget was spent (429)",
            auth_limited.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept because --max-connections were open",
            connections_refused.clone(),
        );
        let connections_timed_out = Counter::default();
        registry.register(
            "connections_timed_out",
            "Connections closed after --idle-timeout-seconds without a byte either way",
            connections_timed_out.clone(),
        );
        let uploads_refused = Counter::default();
        registry.register(
            "uploads_refused",
            "Upload requests or sessions refused by a limit (429)",
            uploads_refused.clone(),
        );
        let uploads_purged = Counter::default();
        registry.register(
            "uploads_purged",
            "Abandoned upload sessions deleted by the purge",
            uploads_purged.clone(),
        );
        let storage_free_bytes = Gauge::default();
        registry.register(
            "storage_free_bytes",
            "Free bytes on the data directory's filesystem (for unprivileged writers)",
            storage_free_bytes.clone(),
        );
        let storage_size_bytes = Gauge::default();
        registry.register(
            "storage_size_bytes",
            "Size of the data directory's filesystem",
            storage_size_bytes.clone(),
        );
        let storage_min_free_bytes = Gauge::default();
        registry.register(
            "storage_min_free_bytes",
            "--min-free-space in bytes: below it new uploads are refused",
            storage_min_free_bytes.clone(),
        );
        let storage_pressure = Gauge::default();
        registry.register(
            "storage_pressure",
            "1 while free space is below --min-free-space (new uploads refused), else 0",
            storage_pressure.clone(),
        );
        let uploads_refused_storage_full = Counter::default();
        registry.register(
            "uploads_refused_storage_full",
            "Uploads refused because free space was below --min-free-space",
            uploads_refused_storage_full.clone(),
        );
        let gc_runs = Counter::default();
        registry.register(
            "gc_runs",
            "Online garbage collections completed",
            gc_runs.clone(),
        );
        let gc_blobs_deleted = Counter::default();
        registry.register(
            "gc_blobs_deleted",
            "Blobs deleted by online garbage collection",
            gc_blobs_deleted.clone(),
        );
        let gc_bytes_freed = Counter::default();
        registry.register(
            "gc_freed_bytes",
            "Bytes freed by online garbage collection",
            gc_bytes_freed.clone(),
        );
        Metrics {
            registry,
            auth_failures,
            auth_limited,
            storage_free_bytes,
            storage_size_bytes,
            storage_min_free_bytes,
            storage_pressure,
            uploads_refused_storage_full,
            gc_runs,
            gc_blobs_deleted,
            gc_bytes_freed,
            connections_open,
            connections_refused,
            connections_timed_out,
            uploads_refused,
            uploads_purged,
            requests,
            request_seconds,
            bytes_received,
            bytes_sent,
            upload_seconds,
            storage_errors,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_with_prefix() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                endpoint: "blob",
                method: "GET",
                status: 200,
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"privreg_http_requests_total{endpoint="blob",method="GET",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("privreg_http_received_bytes_total 0"),
            "{text}"
        );
    }
}
