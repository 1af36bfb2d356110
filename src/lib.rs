//! privreg: a private, TLS-secured OCI image registry for Kubernetes.
//!
//! One binary plays every role (see `cli`): the registry server (`registry`),
//! and, as they arrive, the operator and the node trust agent.
#![forbid(unsafe_code)]

pub mod api;
pub mod certs;
pub mod cli;
pub mod operator;
pub mod registry;
pub mod telemetry;
pub mod trust;

/// The API group of privreg's custom resources.
pub const API_GROUP: &str = "privreg.dev";

/// The one field manager the operator applies with (server-side apply).
pub const FIELD_MANAGER: &str = "privreg-operator";

/// Recommended labels on every object privreg creates.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";

    /// Labels as a label selector query (`k=v,k=v`, in the map's order).
    pub fn selector(labels: &std::collections::BTreeMap<String, String>) -> String {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}
