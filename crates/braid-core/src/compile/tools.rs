//! Tool agents (`tool:`) and agents' `tools:` lists (see [`crate::tool`]).
//!
//! Tool agents are compiled first, apart from the graph: they are not
//! steps, their writes are results rather than state fields, and they take
//! their arguments instead of reads. Each agent's `tools:` then resolves
//! against them and against the registered tool sources.

use std::sync::Arc;

use serde_json::Value;

use super::Compiler;
use crate::agent::tool::{AgentTools, DEFAULT_MAX_TOOL_CALLS, MAX_TOOL_CALLS_LIMIT, Tool};
use crate::diagnostic::Location;
use crate::kinds::ToolSourceConfig;
use crate::pipeline::RetryPolicy;
use crate::spec::AgentSpec;

/// Keys a tool agent may not have, with why.
const NOT_FOR_TOOLS: &[(&str, &str)] = &[
    (
        "reads",
        "its input is the arguments the model calls it with",
    ),
    ("after", "it runs when it is called"),
    ("when", "it runs when it is called"),
    ("foreach", "it runs once per call"),
    ("tools", "tool calls do not nest"),
    ("queue", "it runs where the agent calling it runs"),
];

impl Compiler<'_> {
    /// Every agent with `tool:`, built by its kind, by name.
    pub(super) fn tool_agents(&mut self, defaults: &RetryPolicy) {
        let spec = self.spec;
        for (name, located) in &spec.agents {
            let agent = &located.value;
            let Some(tool) = &agent.tool else { continue };
            let who = format!("tool agent `{name}`");
            let at = tool.at.clone().or(located.at.clone());
            if let Some(tool) = self.tool_agent(name, agent, &who, &tool.value, at, defaults) {
                self.tool_agents.insert(name.clone(), Arc::new(tool));
            }
        }
    }

    fn tool_agent(
        &mut self,
        name: &str,
        agent: &AgentSpec,
        who: &str,
        tool: &Value,
        at: Option<Location>,
        defaults: &RetryPolicy,
    ) -> Option<Tool> {
        let present = |key: &str| match key {
            "reads" => !agent.reads.is_empty(),
            "after" => !agent.after.is_empty(),
            "when" => agent.when.is_some(),
            "foreach" => agent.foreach.is_some(),
            "tools" => agent.tools.is_some(),
            _ => agent.queue.is_some(),
        };
        let mut ok = true;
        for (key, why) in NOT_FOR_TOOLS {
            if present(key) {
                self.error(
                    at.clone(),
                    format!("{who}: a tool agent takes no `{key}`: {why}"),
                );
                ok = false;
            }
        }
        if agent.group.is_some() || agent.kind.as_str() == "input" {
            let kind = agent.kind.as_str();
            self.error(
                at.clone(),
                format!(
                    "{who}: a `{kind}` agent cannot be a tool; a tool is an agent that runs code"
                ),
            );
            return None;
        }
        if let Err(e) = crate::agent::tool::check_name(name) {
            self.error(at.clone(), format!("{who}: {e}"));
            ok = false;
        }
        let Some(map) = tool.as_object() else {
            self.error(
                at,
                format!("{who}: `tool` must be a mapping, e.g. `tool: {{ description: ..., parameters: {{ type: object, properties: {{...}} }} }}`"),
            );
            return None;
        };
        if let Some(unknown) = map
            .keys()
            .find(|k| !["description", "parameters"].contains(&k.as_str()))
        {
            self.error(
                at.clone(),
                format!(
                    "{who}: unknown key `{unknown}` in `tool`; expected: description, parameters"
                ),
            );
            ok = false;
        }
        let description = match map.get("description").and_then(Value::as_str) {
            Some(d) if !d.trim().is_empty() => d.to_owned(),
            _ => {
                self.error(
                    at.clone(),
                    format!("{who}: `tool` needs a `description` (the model reads it to decide when to call the tool)"),
                );
                ok = false;
                String::new()
            }
        };
        let parameters = map
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        if agent.writes.is_empty() {
            self.error(
                at.clone(),
                format!(
                    "{who}: a tool agent needs `writes`: the fields of the result it gives back"
                ),
            );
            ok = false;
        }
        let (policy, _) = self.policy(agent, who, defaults);
        // Its arguments stand for its reads, for kinds that look at them.
        let reads: Vec<String> = parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let built = self.build(name, agent, who, at.clone(), reads, &[])?;
        if !ok {
            return None;
        }
        let results: Vec<String> = agent
            .writes
            .iter()
            .map(|w| w.strip_suffix('?').unwrap_or(w.as_str()).to_owned())
            .collect();
        let (kind, runner) = built;
        // `cache:` (or `defaults.cache`): results filed under its own
        // definition and the call's arguments.
        let cache = self.cache(agent, who, None).map(|policy| {
            let mut own = crate::definition::own(name, agent, self.dir, |_| None);
            own["tool"] = tool.clone();
            (policy, crate::definition::tool_hash(&own))
        });
        match Tool::agent(
            name,
            description,
            parameters,
            kind.name(),
            runner,
            policy,
            results,
        ) {
            Ok(tool) => Some(match cache {
                Some((policy, definition)) => tool.cached(policy, definition),
                None => tool,
            }),
            Err(e) => {
                self.error(at, format!("{who}: {e}"));
                None
            }
        }
    }

    /// An agent's `tools:` and `max_tool_calls`, resolved but for tool
    /// sources' entries, which [`Compiler::finish_tools`] resolves once
    /// the agent itself was built (a source may start a server: not for an
    /// agent that cannot run anyway).
    pub(super) fn agent_tools(&mut self, agent: &AgentSpec, who: &str) -> Option<ToolList> {
        let max_at = agent
            .max_tool_calls
            .as_ref()
            .map(|m| self.source.at(m.span()));
        let Some(list) = &agent.tools else {
            if let Some(at) = max_at {
                self.error(at, format!("{who}: `max_tool_calls` needs `tools`"));
            }
            return None;
        };
        let kind = agent.kind.as_str();
        if agent.group.is_some() || ["sleep", "command", "input"].contains(&kind) {
            self.error(
                list.at.clone(),
                format!("{who}: a `{kind}` agent cannot call tools; `tools` is for agents that call a model (`llm`) or Rust agents (`builtin`)"),
            );
            return None;
        }
        let max_calls = match &agent.max_tool_calls {
            None => DEFAULT_MAX_TOOL_CALLS,
            Some(m) if (1..=MAX_TOOL_CALLS_LIMIT).contains(&**m) => **m,
            Some(m) => {
                self.error(
                    self.source.at(m.span()),
                    format!("{who}: `max_tool_calls` must be between 1 and {MAX_TOOL_CALLS_LIMIT}, found {}", **m),
                );
                return None;
            }
        };
        if list.value.is_empty() {
            self.error(list.at.clone(), format!("{who}: `tools` is empty; list tools, e.g. `tools: [{{ agent: search }}]`, or remove it"));
        }
        let mut resolved = ToolList {
            max_calls,
            tools: Vec::new(),
            sources: Vec::new(),
        };
        for entry in &list.value {
            let at = entry.at.clone();
            match self.tool_entry(who, &entry.value, at.clone()) {
                Some(Entry::Agent(tool)) => self.add_tool(&mut resolved.tools, tool, who, &at),
                Some(Entry::Source(source, settings)) => {
                    resolved.sources.push((source, settings, at));
                }
                None => {}
            }
        }
        Some(resolved)
    }

    /// The agent's tools with its tool sources' (servers started, tools
    /// listed), for an agent that was built.
    pub(super) fn finish_tools(
        &mut self,
        name: &str,
        who: &str,
        list: ToolList,
    ) -> Arc<AgentTools> {
        let ToolList {
            max_calls,
            mut tools,
            sources,
        } = list;
        for (source, settings, at) in sources {
            let Some(factory) = self.kinds.get_tool_source(&source).cloned() else {
                continue;
            };
            let config = ToolSourceConfig {
                agent: name,
                settings: &settings,
                dir: self.dir,
                allow_processes: self.limits.allow_tool_processes,
            };
            match factory(&config) {
                Ok(found) => {
                    for tool in found {
                        self.add_tool(&mut tools, tool, who, &at);
                    }
                }
                Err(e) => self.error(at, format!("{who}: `{source}` tools: {e}")),
            }
        }
        Arc::new(AgentTools { tools, max_calls })
    }

    fn add_tool(
        &mut self,
        tools: &mut Vec<Arc<Tool>>,
        tool: Arc<Tool>,
        who: &str,
        at: &Option<Location>,
    ) {
        if tools.iter().any(|t| t.name() == tool.name()) {
            self.error(
                at.clone(),
                format!("{who}: two tools are named `{}`; a model calls tools by name, so each must be unique", tool.name()),
            );
        } else {
            tools.push(tool);
        }
    }

    /// One `tools:` entry: `{ agent: NAME }` (resolved), or a tool
    /// source's `{ SOURCE: SETTINGS }` (checked to be registered).
    fn tool_entry(&mut self, who: &str, entry: &Value, at: Option<Location>) -> Option<Entry> {
        let sources = self.kinds.tool_source_names().join(", ");
        let single = entry.as_object().filter(|m| m.len() == 1);
        let Some((source, settings)) = single.and_then(|m| m.iter().next()) else {
            self.error(
                at,
                format!("{who}: each entry of `tools` is one of `{{ SOURCE: ... }}` with SOURCE one of: {sources} (e.g. `- agent: search`)"),
            );
            return None;
        };
        if source == "agent" {
            let Some(name) = settings.as_str() else {
                self.error(at, format!("{who}: `agent:` in `tools` names a tool agent of the pipeline, e.g. `- agent: search`"));
                return None;
            };
            if let Some(tool) = self.tool_agents.get(name) {
                return Some(Entry::Agent(tool.clone()));
            }
            let message = match self.spec.agents.get(name) {
                Some(a) if a.value.tool.is_some() => return None, // reported where it is defined
                Some(_) => format!(
                    "{who}: agent `{name}` is not a tool; give it `tool: {{ description, parameters }}` to let models call it"
                ),
                None => {
                    let tools = self.tool_agents.keys().map(String::as_str);
                    let hint = crate::diagnostic::did_you_mean(name, tools);
                    let known: Vec<&str> = self.tool_agents.keys().map(String::as_str).collect();
                    format!(
                        "{who}: no tool agent `{name}`{hint}; the pipeline's tool agents are: [{}]",
                        known.join(", ")
                    )
                }
            };
            self.error(at, message);
            return None;
        }
        if self.kinds.get_tool_source(source).is_none() {
            let hint = crate::diagnostic::did_you_mean(
                source,
                self.kinds.tool_source_names().iter().map(String::as_str),
            );
            self.error(
                at,
                format!("{who}: unknown tool source `{source}`{hint}; expected one of: {sources}"),
            );
            return None;
        }
        Some(Entry::Source(source.clone(), settings.clone()))
    }
}

/// An agent's `tools:` before its tool sources are asked for theirs.
pub(super) struct ToolList {
    max_calls: u32,
    /// Its tool agents.
    pub(super) tools: Vec<Arc<Tool>>,
    /// Each tool source's entry, with where it is written.
    sources: Vec<(String, Value, Option<Location>)>,
}

/// One `tools:` entry, resolved.
enum Entry {
    Agent(Arc<Tool>),
    Source(String, Value),
}
