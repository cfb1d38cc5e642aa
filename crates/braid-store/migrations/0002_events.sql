-- A run's event stream (for runs that asked for events and are checkpointed),
-- so a finished run's events can be replayed. One row an event, in order.
CREATE TABLE braid_events (
    run_id  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    event   TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
