-- Runs, agents' records, and agents' writes (deltas). The state of a run at
-- any point is its input plus the deltas of its completed agents.
-- Portable SQL: the same file serves SQLite and PostgreSQL.

CREATE TABLE braid_runs (
    id             TEXT PRIMARY KEY,
    pipeline       TEXT NOT NULL,
    pipeline_hash  TEXT NOT NULL,
    pipeline_path  TEXT,
    checkpoint     TEXT NOT NULL,
    status         TEXT NOT NULL,
    input          TEXT NOT NULL,
    error          TEXT,
    makespan_ms    DOUBLE PRECISION,
    owner          TEXT,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);

CREATE INDEX braid_runs_by_time ON braid_runs (created_at_ms);
CREATE INDEX braid_runs_by_pipeline ON braid_runs (pipeline, created_at_ms);

CREATE TABLE braid_agent_runs (
    run_id       TEXT NOT NULL,
    agent        TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     BIGINT NOT NULL,
    start_ms     DOUBLE PRECISION,
    duration_ms  DOUBLE PRECISION,
    queue_ms     DOUBLE PRECISION,
    error        TEXT,
    reason       TEXT,
    PRIMARY KEY (run_id, agent)
);

CREATE TABLE braid_deltas (
    run_id  TEXT NOT NULL,
    agent   TEXT NOT NULL,
    field   TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (run_id, agent, field)
);
