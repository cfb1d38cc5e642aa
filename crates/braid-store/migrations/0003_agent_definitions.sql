-- Each agent record's definition hash (see braid_core::AgentDef::definition_hash):
-- a resumed run reuses an agent's stored writes only if the agent's
-- definition, and every upstream one, is unchanged. NULL (records written
-- before this column existed) never matches, so those agents run again.
ALTER TABLE braid_agent_runs ADD COLUMN definition_hash TEXT;
