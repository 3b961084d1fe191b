//! Flame graphs (to be written).

use crate::config::CoordinatorConfig;

/// The flame graph service: cache, coalescing, runs (stub).
#[derive(Debug)]
pub struct FlameGraphService {
    _private: (),
}

impl FlameGraphService {
    /// A service configured by the `--flamegraph-*` flags.
    pub fn new(_config: &CoordinatorConfig) -> Self {
        FlameGraphService { _private: () }
    }
}
