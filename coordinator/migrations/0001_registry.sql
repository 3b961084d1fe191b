-- The registry of replicated coordinators (registry/postgres.rs). Applied once, in order, by
-- database.rs; never edit a released migration: add the next one.
CREATE TABLE jobs (
    seq        BIGSERIAL PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    runtime    TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
