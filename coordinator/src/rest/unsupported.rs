//! The rest of Flink's REST API: paths flamegrid knows about but does not serve, because they
//! act on Flink jobs it does not run (jars, savepoints, stop-with-savepoint, rescaling and its
//! history, cluster datasets, checkpoint triggers and per-subtask checkpoint statistics, cluster
//! shutdown, Flink's async-profiler).
//!
//! Each answers a JSON error that says so, with the status Flink's router gives a route that is
//! not registered (404, for every method), rather than a plain-text page or a hang.

use super::error::ApiError;
use super::state::AppState;
use axum::routing::any;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

fn unsupported(what: &'static str) -> ApiError {
    ApiError::not_found(format!(
        "flamegrid does not support {what}: it profiles running native processes and runs no Flink jobs. \
         See the README's REST API section for what it serves."
    ))
}

/// Routes for every unsupported Flink path, any method (undocumented: they are not part of
/// this API), and the documented [`checkpoint_trigger`].
pub fn routes() -> OpenApiRouter<AppState> {
    let table: &[(&str, &'static str)] = &[
        ("/jars", "jar uploads"),
        ("/jars/upload", "jar uploads"),
        ("/jars/{jarid}", "jar uploads"),
        ("/jars/{jarid}/plan", "jar uploads"),
        ("/jars/{jarid}/run", "running jars"),
        ("/jobs/{jobid}/savepoints", "savepoints"),
        ("/jobs/{jobid}/savepoints/{triggerid}", "savepoints"),
        ("/savepoint-disposal", "savepoints"),
        ("/savepoint-disposal/{triggerid}", "savepoints"),
        (
            "/jobs/{jobid}/stop",
            "stop-with-savepoint (cancel with PATCH /jobs/:jobid instead)",
        ),
        ("/jobs/{jobid}/rescaling", "rescaling"),
        ("/jobs/{jobid}/rescaling/{triggerid}", "rescaling"),
        (
            "/jobs/{jobid}/resource-requirements",
            "resource requirements",
        ),
        ("/jobs/{jobid}/clientHeartbeat", "client heartbeats"),
        (
            "/jobs/{jobid}/checkpoints/{triggerid}",
            "checkpoint triggers",
        ),
        (
            "/jobs/{jobid}/checkpoints/details/{checkpointid}/subtasks/{vertexid}",
            "checkpoint statistics per subtask (flamegrid takes no checkpoints)",
        ),
        // Flink 2.3's rescale history of the adaptive scheduler.
        ("/jobs/{jobid}/rescales/config", "rescale history"),
        ("/jobs/{jobid}/rescales/overview", "rescale history"),
        ("/jobs/{jobid}/rescales/history", "rescale history"),
        ("/jobs/{jobid}/rescales/summary", "rescale history"),
        (
            "/jobs/{jobid}/rescales/details/{rescaleuuid}",
            "rescale history",
        ),
        (
            "/jobs/{jobid}/vertices/{vertexid}/jm-operator-metrics",
            "operator coordinator metrics",
        ),
        ("/datasets", "cluster datasets"),
        ("/datasets/{datasetid}", "cluster datasets"),
        ("/datasets/delete/{triggerid}", "cluster datasets"),
        ("/cluster", "cluster shutdown"),
        (
            "/jobmanager/profiler",
            "Flink's profiler (use the flame graph endpoints)",
        ),
        (
            "/jobmanager/profiler/{filename}",
            "Flink's profiler (use the flame graph endpoints)",
        ),
        (
            "/taskmanagers/{tmid}/profiler",
            "Flink's profiler (use the flame graph endpoints)",
        ),
        (
            "/taskmanagers/{tmid}/profiler/{filename}",
            "Flink's profiler (use the flame graph endpoints)",
        ),
        (
            "/taskmanagers/{tmid}/profilers",
            "Flink's profiler (use the flame graph endpoints)",
        ),
        (
            "/jobs/{jobid}/yarn-cancel",
            "YARN cancellation (cancel with PATCH /jobs/:jobid)",
        ),
        (
            "/jobs/{jobid}/yarn-stop",
            "YARN stop (cancel with PATCH /jobs/:jobid)",
        ),
        ("/jobs/{jobid}/jobmanager/log-url", "log URLs"),
        ("/jobs/{jobid}/taskmanagers/{tmid}/log-url", "log URLs"),
        ("/applications", "applications"),
        ("/applications/overview", "applications"),
        ("/applications/{applicationid}", "applications"),
        ("/applications/{applicationid}/cancel", "applications"),
    ];
    let mut router = OpenApiRouter::new().routes(routes!(checkpoint_trigger));
    for (path, what) in table {
        let what: &'static str = what;
        router = router.route(path, any(move || async move { unsupported(what) }));
    }
    router
}

/// The handler for a method that is unsupported on a path that flamegrid otherwise serves
/// (`POST /jobs/:jobid/checkpoints` triggers a checkpoint in Flink).
#[utoipa::path(post, path = "/jobs/{jobid}/checkpoints", tag = "jobs",
    params(super::params::JobPath),
    security(("bearer" = [])),
    responses(
        (status = 401, description = "A bearer token is required (--rest-token-file)", body = super::error::ErrorBody),
        (status = 403, description = "The coordinator is read-only", body = super::error::ErrorBody),
        (status = 404, description = "flamegrid takes no checkpoints", body = super::error::ErrorBody),
    ))]
pub async fn checkpoint_trigger() -> ApiError {
    unsupported("checkpoint triggers")
}
