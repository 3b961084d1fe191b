-- Sampling leases and the results of flame graph runs, shared by replicated coordinators
-- (flamegraph/shared.rs). Applied once, in order, by database.rs.

-- One row per key (`job/vertex` or `job/vertex/subtask`) being sampled: the replica that runs
-- it and until when (database clock, ms). Taken by insert, or by update once expired.
CREATE TABLE flamegraph_leases (
    key        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- Run ids of replicated coordinators: ordered across replicas.
CREATE SEQUENCE flamegraph_run_ids;

-- Runs that delivered, the last --flamegraph-history per key. `body` is the snapshot as JSON,
-- deflated; `delivered` the subtasks it holds (a vertex run serves them too).
CREATE TABLE flamegraph_runs (
    run_id     BIGINT PRIMARY KEY,
    key        TEXT NOT NULL,
    vertex_key TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    delivered  INTEGER[] NOT NULL,
    end_ms     BIGINT NOT NULL,
    stored_ms  BIGINT NOT NULL,
    body       BYTEA NOT NULL
);
CREATE INDEX flamegraph_runs_by_key ON flamegraph_runs (key, run_id DESC);
CREATE INDEX flamegraph_runs_by_vertex ON flamegraph_runs (vertex_key, stored_ms);
