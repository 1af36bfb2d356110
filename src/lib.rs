//! privreg: a private, TLS-secured OCI image registry for Kubernetes.
//!
//! One binary plays every role (see `cli`): the registry server (`registry`),
//! and, as they arrive, the operator and the node trust agent.
#![forbid(unsafe_code)]

pub mod api;
pub mod certs;
pub mod cli;
pub mod registry;
pub mod telemetry;

/// The API group of privreg's custom resources.
pub const API_GROUP: &str = "privreg.dev";
