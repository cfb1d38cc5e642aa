-- Issue 12: people in the loop, forks, cached agents, retention.
--
-- A fork records the run it came from and the agent it re-ran from; the
-- agents it kept point at the run whose deltas hold their writes
-- (`source_run`), so a fork copies no delta. Pruning keeps a run while a
-- fork's agents still point at it.
ALTER TABLE braid_runs ADD COLUMN parent_id TEXT;
ALTER TABLE braid_runs ADD COLUMN forked_from TEXT;
CREATE INDEX braid_runs_by_parent ON braid_runs (parent_id);
CREATE INDEX braid_runs_by_status ON braid_runs (status, created_at_ms);
ALTER TABLE braid_agent_runs ADD COLUMN source_run TEXT;
CREATE INDEX braid_agent_runs_by_source ON braid_agent_runs (source_run);
-- An `input` agent waiting for an answer: when its wait times out (ms since
-- the Unix epoch), so that a server that restarts applies the timeout on time.
ALTER TABLE braid_agent_runs ADD COLUMN deadline_ms BIGINT;
-- Cached agents' writes, by key (a hash of the agent's definition and the
-- values it read), shared by every braid on the store. `writes` is a JSON
-- object, field to value.
CREATE TABLE braid_cache (
    key            TEXT PRIMARY KEY,
    agent          TEXT NOT NULL,
    writes         TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
CREATE INDEX braid_cache_by_expiry ON braid_cache (expires_at_ms);
