//! The flusher: writes the state heartbeats changed in memory to the store in batches, every
//! [`FLUSH_INTERVAL`], and once more when the coordinator stops (see the registry's module docs).
//! A failed flush is logged and retried at the next tick; the state stays in memory meanwhile.
//! On a shared database each tick also pulls the other replicas' changes ([`Registry::sync`]).

use super::{FLUSH_INTERVAL, Registry};
use std::sync::Arc;
use tokio::sync::watch;

/// Flushes `registry` every [`FLUSH_INTERVAL`] until `stop` turns true, then flushes a last
/// time. Each flush runs on the blocking pool: it waits for the disk.
pub async fn run(registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(FLUSH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let stopping = tokio::select! {
            _ = ticker.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let flushing = registry.clone();
        // Then the other replicas' changes are pulled in (a shared store only; see
        // `replication.rs`): after the flush, so that what this replica wrote is read back as
        // it merged.
        let flushed = tokio::task::spawn_blocking(move || {
            let flushed = flushing.flush();
            if let Err(e) = flushing.sync() {
                tracing::warn!(error = %e, "registry sync with the shared database failed; retried at the next tick");
            }
            flushed
        });
        match flushed.await {
            Ok(Ok(written)) => {
                if failing {
                    tracing::info!(jobs = written, "registry flush succeeded again");
                    failing = false;
                } else if written > 0 {
                    tracing::trace!(jobs = written, "registry flushed");
                }
            }
            Ok(Err(e)) => {
                // Logged once per failing stretch at error level, then quietly retried.
                if failing {
                    tracing::debug!(error = %e, "registry flush failed again; retrying");
                } else {
                    tracing::error!(
                        error = %e,
                        dirty_jobs = registry.dirty_jobs(),
                        "registry flush failed: subtask states stay in memory and are retried"
                    );
                    failing = true;
                }
            }
            Err(e) => tracing::error!(error = %e, "registry flush panicked"),
        }
        if stopping {
            return;
        }
    }
}
