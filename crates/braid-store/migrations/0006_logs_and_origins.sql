-- Issue 13: what an operator needs to see of a run.
--
-- `details` holds what an agent's report says beyond its columns, as one
-- JSON object: its kept log lines (`logs`, `logs_dropped`), its failed
-- attempts (`failures`) and the tokens its model calls used (`tokens`).
-- NULL when there is nothing to say (most agents).
ALTER TABLE braid_agent_runs ADD COLUMN details TEXT;
-- Who or what started a run: `cli:USER@HOST`, `api`, a client's own name
-- (`started_by` in `POST /v1/runs`), `fork`. Kept from the run's first
-- record: resuming or answering does not change it.
ALTER TABLE braid_runs ADD COLUMN started_by TEXT;
