//! REST API (to be written). For now: a placeholder server so the demo command runs.

pub mod flamegraph;
pub mod state;

use crate::config::CoordinatorConfig;
use axum::{Json, Router, routing::get};

/// Serves the REST API until Ctrl-C.
pub async fn serve(config: CoordinatorConfig) -> anyhow::Result<()> {
    let refresh = config.refresh_interval_ms;
    let app = Router::new().route("/config", get(move || async move { Json(serde_json::json!({"refresh-interval": refresh})) }));
    let listener = tokio::net::TcpListener::bind(config.rest_addr).await?;
    println!("flamegrid dashboard: http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
