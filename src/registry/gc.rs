//! `privreg gc`: the offline collector's command line. It prints what it
//! deletes (or would), one line each, and a summary.

use std::time::Duration;

use anyhow::Context as _;

use super::storage::Store;
use super::storage::gc::GcOptions;
use crate::cli::GcArgs;

pub fn run(args: &GcArgs) -> anyhow::Result<()> {
    let root = super::storage::Layout::new(&args.data);
    anyhow::ensure!(
        root.repositories().is_dir(),
        "{} holds no registry data (no docker/registry/v2/repositories)",
        args.data.display()
    );
    // A dry run only reads; a collection beside a running registry could
    // delete what it is about to reference (that is the online collector's
    // job, behind the registry's push gate).
    let store = if args.dry_run {
        Store::new(&args.data)
    } else {
        Store::new_exclusive(&args.data)
    }
    .context("opening the data directory")?;
    let opts = GcOptions {
        dry_run: args.dry_run,
        delete_untagged: args.delete_untagged,
        grace: Duration::from_secs(args.grace_seconds),
    };
    let report = store.collect_garbage(&opts).context("garbage collection")?;
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for (repo, d) in &report.manifests_deleted {
        println!("{repo}: {verb} untagged manifest {d}");
    }
    for d in &report.blobs_deleted {
        println!("{verb} blob {d}");
    }
    println!(
        "{} blobs kept, {} spared by the grace period, {} blobs and {} manifests {verb} ({} bytes), {} stale repository links removed",
        report.blobs_kept,
        report.blobs_spared,
        report.blobs_deleted.len(),
        report.manifests_deleted.len(),
        report.bytes_freed,
        report.layer_links_removed
    );
    Ok(())
}
