//! Flame graph history and differential graphs. Filled in by the history work.

use super::state::AppState;
use axum::Router;

/// Routes of the history and diff views.
pub fn routes() -> Router<AppState> {
    Router::new()
}
