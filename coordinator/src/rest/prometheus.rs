//! `GET /metrics`: the coordinator's own health in Prometheus' text format, for the operator of
//! a fleet (not to be confused with [`super::metrics`], Flink's metric query protocol).
//!
//! Read-only and computed at scrape time from what the coordinator already keeps, so a scrape
//! costs a walk over the task managers and jobs and never waits for a run: the run counters and
//! durations of the flame graph service, the registry's task managers (alive, and how long ago
//! each last heartbeat arrived) and jobs, the flame graph cache's estimated bytes. Like every
//! read it is open (see [`super::auth`]); it is served bare and under `/v1`, and declared in
//! the OpenAPI document as `text/plain`.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `flamegrid_coordinator_flamegraph_runs_started_total` | counter | sampling runs started (fan-outs sent) |
//! | `flamegrid_coordinator_flamegraph_runs_completed_total` | counter | runs whose graph was stored |
//! | `flamegrid_coordinator_flamegraph_runs_failed_total` | counter | runs in which no subtask delivered |
//! | `flamegrid_coordinator_flamegraph_run_duration_seconds` | histogram | fan-out to stored graph |
//! | `flamegrid_coordinator_flamegraph_runs_in_flight` | gauge | started − completed − failed |
//! | `flamegrid_coordinator_flamegraph_last_run_dispatch_spread_seconds` | gauge | the last finished run's first to last request sent |
//! | `flamegrid_coordinator_flamegraph_last_run_after_answers_seconds` | gauge | the last finished run's time from its last answer taken in to its stored graph |
//! | `flamegrid_coordinator_flamegraph_cache_bytes` | gauge | estimated bytes the cache holds |
//! | `flamegrid_coordinator_flamegraph_cache_entries` | gauge | cached keys (vertices, subtasks) |
//! | `flamegrid_coordinator_agents` | gauge | live agents (task managers) |
//! | `flamegrid_coordinator_heartbeat_lag_max_seconds` | gauge | oldest last heartbeat of a live agent |
//! | `flamegrid_coordinator_heartbeat_lag_avg_seconds` | gauge | mean age of the agents' last heartbeats |
//! | `flamegrid_coordinator_jobs{status}` | gauge | registered jobs by Flink job status |
//! | `flamegrid_coordinator_subtasks{state}` | gauge | subtasks of registered jobs by execution state |
//! | `flamegrid_coordinator_store_rows_written_total{table}` | counter | rows the registry's flushes wrote to its store (`jobs`: runtimes; `taskmanagers`: heartbeat times, shared database only) |
//! | `flamegrid_coordinator_database_pool_max_connections` | gauge | `--database-pool-size` (with `--database-url` only, like the three below) |
//! | `flamegrid_coordinator_database_pool_open_connections` | gauge | connections to the shared database open now |
//! | `flamegrid_coordinator_database_pool_in_use_connections` | gauge | of those, handed out to work now |
//! | `flamegrid_coordinator_database_pool_waiting` | gauge | pieces of work waiting for a connection now |

use super::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use flamegrid_proto::prometheus::{CONTENT_TYPE, Kind, TextWriter};
use std::collections::BTreeMap;
use std::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(prometheus_metrics))
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "cluster",
    responses((status = 200, description = "The coordinator's metrics in Prometheus' text format (version 0.0.4)", body = String, content_type = "text/plain")))]
pub async fn prometheus_metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&state)).into_response()
}

/// The exposition text.
pub fn render(state: &AppState) -> String {
    let mut w = TextWriter::new();
    let flamegraphs = &state.flamegraphs;
    let (started, completed, failed) = flamegraphs.runs();
    let p = "flamegrid_coordinator_flamegraph";
    w.single(
        &format!("{p}_runs_started_total"),
        Kind::Counter,
        "Flame graph sampling runs started (fan-outs sent to agents).",
        started as f64,
    );
    w.single(
        &format!("{p}_runs_completed_total"),
        Kind::Counter,
        "Flame graph runs whose graph was stored.",
        completed as f64,
    );
    w.single(
        &format!("{p}_runs_failed_total"),
        Kind::Counter,
        "Flame graph runs in which no subtask delivered samples.",
        failed as f64,
    );
    w.single(
        &format!("{p}_runs_in_flight"),
        Kind::Gauge,
        "Flame graph runs started and not finished yet.",
        started.saturating_sub(completed + failed) as f64,
    );
    w.histogram(
        &format!("{p}_run_duration_seconds"),
        "Duration of finished flame graph runs, from the fan-out to the stored graph.",
        flamegraphs.run_durations(),
    );
    let (spread, after_answers) = flamegraphs.last_run_timing();
    w.single(
        &format!("{p}_last_run_dispatch_spread_seconds"),
        Kind::Gauge,
        "The last finished flame graph run: from its first request sent to an agent to its last.",
        spread.as_secs_f64(),
    );
    w.single(
        &format!("{p}_last_run_after_answers_seconds"),
        Kind::Gauge,
        "The last finished flame graph run: from its last agent's answer taken in to its graph stored.",
        after_answers.as_secs_f64(),
    );
    let (entries, bytes) = flamegraphs.cache().usage();
    w.single(
        &format!("{p}_cache_bytes"),
        Kind::Gauge,
        "Estimated bytes held by the flame graph cache (history and JSON memos included).",
        bytes as f64,
    );
    w.single(
        &format!("{p}_cache_entries"),
        Kind::Gauge,
        "Keys (vertices and subtasks) in the flame graph cache.",
        entries as f64,
    );

    let now = Instant::now();
    let lags: Vec<f64> = state
        .registry
        .taskmanagers()
        .iter()
        .map(|tm| {
            now.saturating_duration_since(tm.last_heartbeat)
                .as_secs_f64()
        })
        .collect();
    w.single(
        "flamegrid_coordinator_agents",
        Kind::Gauge,
        "Live agents (task managers) registered.",
        lags.len() as f64,
    );
    let max = lags.iter().copied().fold(0.0, f64::max);
    let avg = if lags.is_empty() {
        0.0
    } else {
        lags.iter().sum::<f64>() / lags.len() as f64
    };
    w.single(
        "flamegrid_coordinator_heartbeat_lag_max_seconds",
        Kind::Gauge,
        "Seconds since the oldest last heartbeat of a live agent (0 without agents).",
        max,
    );
    w.single(
        "flamegrid_coordinator_heartbeat_lag_avg_seconds",
        Kind::Gauge,
        "Mean seconds since the live agents' last heartbeats (0 without agents).",
        avg,
    );

    let mut jobs: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut subtasks: BTreeMap<&'static str, u64> = BTreeMap::new();
    for job in state.registry.jobs() {
        *jobs.entry(job.runtime.status.name()).or_default() += 1;
        for s in job.runtime.subtasks.iter().flatten() {
            *subtasks.entry(s.status.name()).or_default() += 1;
        }
    }
    w.family(
        "flamegrid_coordinator_jobs",
        Kind::Gauge,
        "Registered jobs by status (Flink's job status names).",
    );
    for (&status, n) in &jobs {
        w.sample(
            "flamegrid_coordinator_jobs",
            &[("status", status)],
            *n as f64,
        );
    }
    w.family(
        "flamegrid_coordinator_subtasks",
        Kind::Gauge,
        "Subtasks of registered jobs by execution state (Flink's names).",
    );
    for (&state, n) in &subtasks {
        w.sample(
            "flamegrid_coordinator_subtasks",
            &[("state", state)],
            *n as f64,
        );
    }
    let written = state.registry.store_writes();
    let rows = "flamegrid_coordinator_store_rows_written_total";
    w.family(
        rows,
        Kind::Counter,
        "Rows the registry's flushes wrote to its store: job runtimes, and agents' heartbeat \
         times (a shared database only, in batches).",
    );
    w.sample(rows, &[("table", "jobs")], written.job_rows as f64);
    w.sample(
        rows,
        &[("table", "taskmanagers")],
        written.taskmanager_rows as f64,
    );
    if let Some(db) = &state.database {
        let pool = db.pool_status();
        let p = "flamegrid_coordinator_database_pool";
        for (name, help, value) in [
            (
                "max_connections",
                "Connections to the shared database this coordinator may open (--database-pool-size).",
                pool.max_size,
            ),
            (
                "open_connections",
                "Connections to the shared database open now.",
                pool.open,
            ),
            (
                "in_use_connections",
                "Connections to the shared database handed out to work now.",
                pool.in_use,
            ),
            (
                "waiting",
                "Pieces of work waiting for a connection to the shared database now.",
                pool.waiting,
            ),
        ] {
            w.single(&format!("{p}_{name}"), Kind::Gauge, help, value as f64);
        }
    }
    w.finish()
}
