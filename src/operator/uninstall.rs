//! Uninstalling node trust from every node (the chart's pre-delete hook).
//!
//! The hook runs `privreg trust-uninstall`, which writes the request ConfigMap
//! `privreg-uninstall` in the operator's namespace and waits. The operator sees
//! it, switches its trust DaemonSet to `privreg trust --uninstall --stay`, counts
//! the nodes whose agent is Ready in that mode (nothing of privreg's left, every
//! backup restored) and reports `done` in the same ConfigMap. The hook then
//! exits and Helm deletes the operator, whose Deployment owns the DaemonSet and
//! the bundle. The hook needs only that one ConfigMap; the agent still needs no
//! API access.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use super::error::Error;
use crate::cli::TrustUninstallArgs;

pub const REQUEST_NAME: &str = "privreg-uninstall";
const DONE_KEY: &str = "done";
const PROGRESS_KEY: &str = "progress";
/// The field manager of the hook's request.
const REQUESTER: &str = "privreg-trust-uninstall";

/// Whether node trust is being uninstalled (the request exists).
pub async fn requested(client: &Client, namespace: &str) -> Result<bool, Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let found = cms
        .get_opt(REQUEST_NAME)
        .await
        .map_err(|source| Error::Get {
            kind: "ConfigMap",
            name: REQUEST_NAME.to_owned(),
            source,
        })?;
    Ok(found.is_some())
}

/// The operator's answer: how far the nodes are, and whether all are done.
/// Owned by the operator's Deployment (when known), the request goes with it.
pub async fn report(
    client: &Client,
    namespace: &str,
    done: bool,
    progress: &str,
    owner: Option<&OwnerReference>,
) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": REQUEST_NAME, "namespace": namespace, "ownerReferences": owner.map(|o| vec![o])},
        "data": {DONE_KEY: done.to_string(), PROGRESS_KEY: progress},
    });
    cms.patch(
        REQUEST_NAME,
        &PatchParams::apply(crate::FIELD_MANAGER),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: "ConfigMap",
        name: REQUEST_NAME.to_owned(),
        source,
    })?;
    Ok(())
}

/// `privreg trust-uninstall`: request, then wait (bounded) for `done`.
pub async fn request_and_wait(args: TrustUninstallArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let cms: Api<ConfigMap> = Api::namespaced(client, &args.namespace);
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": REQUEST_NAME,
            "namespace": args.namespace,
            "labels": {crate::labels::NAME: "privreg", crate::labels::COMPONENT: "uninstall-request"},
        },
        "data": {"requested": k8s_openapi::jiff::Timestamp::now().to_string()},
    });
    cms.patch(
        REQUEST_NAME,
        &PatchParams::apply(REQUESTER).force(),
        &Patch::Apply(&body),
    )
    .await
    .with_context(|| {
        format!(
            "requesting the uninstall ({}/{REQUEST_NAME})",
            args.namespace
        )
    })?;
    tracing::info!(namespace = %args.namespace, "asked the operator to remove node trust from every node");
    let deadline = Instant::now()
        .checked_add(Duration::from_secs(args.timeout_seconds))
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    let mut last = String::new();
    loop {
        let data: BTreeMap<String, String> = cms
            .get_opt(REQUEST_NAME)
            .await
            .context("reading the uninstall's progress")?
            .and_then(|cm| cm.data)
            .unwrap_or_default();
        let progress = data.get(PROGRESS_KEY).cloned().unwrap_or_default();
        if progress != last {
            tracing::info!(%progress, "uninstalling node trust");
            last = progress;
        }
        if data.get(DONE_KEY).map(String::as_str) == Some("true") {
            println!("node trust removed: {last}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            // Withdraw the request: the operator goes back to publishing trust
            // (nodes not yet done keep their files; a later try starts over).
            if let Err(e) = cms
                .delete(REQUEST_NAME, &kube::api::DeleteParams::default())
                .await
            {
                tracing::warn!(error = %e, "withdrawing the uninstall request failed");
            }
            anyhow::bail!(
                "node trust was not removed from every node within {} s (is the operator running?); last progress: {}",
                args.timeout_seconds,
                if last.is_empty() { "none" } else { &last }
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
