//! The node agent (`privreg trust`): writes registry CA trust on the node.
//!
//! A pipeline with a purity line, like the operator's:
//!
//! 1. [`bundle`] parses the trust bundle the operator publishes and validates
//!    every entry as hostile input (a bad entry is refused alone);
//! 2. [`render`] turns valid entries into the exact files each runtime reads,
//!    per node layout ([`render::Preset`]), without touching the filesystem;
//! 3. [`apply`] makes the node match, writing only what differs and touching
//!    only what privreg wrote (through [`nodefs`], which never follows a
//!    symlink out of the host root);
//! 4. [`containerd_config`] tells whether the node's containerd reads the
//!    certs.d the agent writes at all.
//!
//! [`sync`] runs 1 to 3 once; the command-line loop and readiness build on it.

pub mod agent;
pub mod apply;
pub mod bundle;
pub mod containerd_config;
pub mod health;
pub mod nodefs;
pub mod render;
pub mod summary;

use std::path::Path;

/// What one pass did: the refused entries and the node report.
#[derive(Debug)]
pub struct Outcome {
    pub rejected: Vec<bundle::EntryError>,
    pub report: apply::Report,
}

impl Outcome {
    /// The node matches the bundle: no entry refused, nothing left undone.
    pub fn converged(&self) -> bool {
        self.rejected.is_empty() && self.report.converged()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The bundle could not be read at all: the node is left as it is.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
}

/// One level-based pass: parse `bundle_json`, render for `layout`, apply under
/// `root`. A bundle that does not parse changes nothing on the node; a refused
/// entry keeps its registry's last good files.
pub fn sync(
    root: &Path,
    state_dir: &Path,
    layout: &render::Layout,
    bundle_json: &[u8],
) -> Result<Outcome, SyncError> {
    let validated = bundle::parse(bundle_json)?;
    let desired = render::render(&validated.valid, layout);
    let keep = validated.rejected_registries();
    let report = apply::apply(root, state_dir, layout, &desired, &keep)?;
    Ok(Outcome {
        rejected: validated.rejected,
        report,
    })
}

/// `privreg trust`: the agent's run loop ([`agent`]); errors are typed inside
/// and become `anyhow` only here, at the edge.
pub async fn run(args: crate::cli::TrustArgs) -> anyhow::Result<()> {
    agent::run(args).await.map_err(anyhow::Error::from)
}
