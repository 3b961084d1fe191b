-- The registry of replicated coordinators (registry/postgres.rs). Applied once, in order, by
-- database.rs; never edit a released migration: add the next one.
--
-- Every row carries the id of the transaction that last wrote it (`changed_xid`, xid8): a
-- replica's sync step re-reads the rows whose xid is at or above the oldest transaction still
-- running at its previous pull (see registry/replication.rs), so no commit is ever missed,
-- whatever order transactions commit in.
CREATE TABLE registry_jobs (
    seq         BIGSERIAL PRIMARY KEY,
    id          TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    runtime     TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX registry_jobs_changed ON registry_jobs (changed_xid);

-- Jobs removed (expired terminal jobs), for the other replicas to drop them too. Kept for a day.
CREATE TABLE registry_deleted_jobs (
    id          TEXT PRIMARY KEY,
    deleted_ms  BIGINT NOT NULL,
    changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX registry_deleted_jobs_changed ON registry_deleted_jobs (changed_xid);

-- Registered agents (task managers): written at registration, and their last heartbeat in
-- batches by the flusher (only when the stored one is older than a fraction of the timeout).
CREATE TABLE registry_taskmanagers (
    id                TEXT PRIMARY KEY,
    address           TEXT NOT NULL,
    host              TEXT NOT NULL,
    agent_pid         BIGINT NOT NULL,
    registered_ms     BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL,
    peer_ip           TEXT,
    tls_identity      BYTEA,
    changed_xid       xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX registry_taskmanagers_changed ON registry_taskmanagers (changed_xid);
