-- Process groups of command agents in flight, per run (runs checkpointed
-- per agent only): when the run's owner dies, whoever resumes the run kills
-- what the owner left running on its host before running anything again.
-- A row is deleted when its agent's group is killed, and with the run's end.
CREATE TABLE braid_agent_processes (
    run_id  TEXT NOT NULL,
    pgid    BIGINT NOT NULL,
    agent   TEXT NOT NULL,
    owner   TEXT NOT NULL,
    PRIMARY KEY (run_id, pgid)
);
