-- Sampling leases and the results of flame graph runs, shared by replicated coordinators
-- (flamegraph/shared.rs). Applied once, in order, by database.rs.
CREATE TABLE flamegraph_leases (
    key        TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
