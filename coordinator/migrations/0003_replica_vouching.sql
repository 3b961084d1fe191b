-- Heartbeats of replicated coordinators without a row per agent (issue 16; registry/replication.rs).
--
-- Each replica vouches for the agents heartbeating to it: one row per replica, whose `seen_ms`
-- the replica refreshes at every flush, says "every agent I vouch for heartbeat to me within
-- `vouch_ms` before `seen_ms`". An agent's row names the replica that vouches for it
-- (`vouched_by`), written only when that changes: the agent registers or moves to another
-- replica (claimed), or stops heartbeating (released, with its real last heartbeat time). Its
-- liveness elsewhere is the later of its own `last_heartbeat_ms` and `seen_ms - vouch_ms` of the
-- replica vouching for it; a replica that dies stops refreshing its row, and its agents' times
-- stop with it.
ALTER TABLE registry_taskmanagers ADD COLUMN vouched_by TEXT;

CREATE TABLE registry_replicas (
    id          TEXT PRIMARY KEY,
    seen_ms     BIGINT NOT NULL,
    vouch_ms    BIGINT NOT NULL,
    changed_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX registry_replicas_changed ON registry_replicas (changed_xid);
