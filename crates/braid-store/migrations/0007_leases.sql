-- Issue 14: runs owned by leases, so that several braid processes can share
-- one database and take over each other's runs.
--
-- `epoch` counts the takeovers of a run: each claim adds one, and every
-- checkpoint write of the run checks it holds the stored epoch, so a
-- deposed owner's late writes are refused. `lease_until_ms` (ms since the
-- Unix epoch) is how long the owner's claim lasts unless renewed; a
-- `running` run past it is abandoned and may be claimed. NULL for rows from
-- before leases (their owner's liveness is judged by its pid, as before).
ALTER TABLE braid_runs ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE braid_runs ADD COLUMN lease_until_ms BIGINT;
CREATE INDEX braid_runs_by_lease ON braid_runs (status, lease_until_ms);
