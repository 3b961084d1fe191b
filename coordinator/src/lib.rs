//! flamegrid's coordinator.
//!
//! * [`config`]: flags, environment, config file.
//! * [`registry`]: task managers (registration, heartbeats, liveness) and jobs (embedded store).
//! * [`fanout`]: one sampling RPC per agent, deadlines, partial results.
//! * [`flamegraph`]: Flink's tree algorithm over the samples, the cache with coalescing, views.
//! * [`rest`]: one module per REST resource; handlers only translate between HTTP and the domain.
//! * [`dashboard`]: the embedded web page.
//!
//! Arrows point one way: rest → flamegraph/registry → fanout → proto.

pub mod config;
pub mod dashboard;
pub mod fanout;
pub mod flamegraph;
pub mod registry;
pub mod rest;

use config::CoordinatorConfig;

/// Runs the coordinator until SIGINT/SIGTERM.
pub fn run(config: CoordinatorConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(rest::serve(config))
}
