//! Flame graph endpoints (to be written).

use super::state::AppState;
use axum::Router;

/// Routes of `/jobs/:jobid/vertices/:vertexid/flamegraph*` and `/taskmanagers/:tmid/thread-dump`.
pub fn routes() -> Router<AppState> {
    Router::new()
}
