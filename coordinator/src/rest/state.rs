//! The state every REST handler shares.

use crate::config::CoordinatorConfig;
use crate::flamegraph::FlameGraphService;
use crate::registry::Registry;
use std::sync::Arc;

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Jobs and task managers.
    pub registry: Arc<Registry>,
    /// Flame graph cache and runs.
    pub flamegraphs: Arc<FlameGraphService>,
    /// Effective settings.
    pub config: Arc<CoordinatorConfig>,
    /// The shared database of replicated coordinators (`--database-url`), or `None` with the
    /// embedded SQLite registry.
    pub database: Option<crate::database::Database>,
}
