//! Flame graph exports for other tools (pprof, speedscope). Filled in by the exports work.

use super::state::AppState;
use axum::Router;

/// Routes of the export views.
pub fn routes() -> Router<AppState> {
    Router::new()
}
