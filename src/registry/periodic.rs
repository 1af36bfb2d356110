//! Background work on a fixed period: file reloads, purges, collections. The
//! work runs on the blocking pool (it reads files); a panic in one round is
//! logged and the next round still runs.

use std::time::Duration;

/// Runs `work` every `every`, the first time after `every` (or at once when
/// `at_start`), until the process ends.
pub fn blocking_every<F>(every: Duration, at_start: bool, what: &'static str, work: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let work = std::sync::Arc::new(work);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        if !at_start {
            tick.tick().await;
        }
        loop {
            tick.tick().await;
            let w = work.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || w()).await {
                tracing::warn!(error = %e, task = what, "periodic task failed");
            }
        }
    });
}
