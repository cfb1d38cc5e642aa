//! Building each [`AgentDef`]: its reads, condition and `after` (through
//! `edges.rs`), its timeout and retry policy, its writes, and its runner,
//! built by its kind.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{Compiler, Stop};
use crate::cache::{CachePolicy, MAX_CACHE_TTL, MIN_CACHE_TTL};
use crate::condition::{Condition, ConditionError};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::graph::AgentId;
use crate::kinds::{AgentConfig, Built};
use crate::pipeline::{AgentDef, MAX_RETRIES, MIN_BACKOFF, RetryPolicy};
use crate::spec::{AgentSpec, CORE_KIND_KEYS, CacheSpec, Located, Source, core_kind_keys};

/// The kind of agent that waits for an answer from outside the run
/// (issue 12): never cached, since its answer is not a function of its reads.
const INPUT_KIND: &str = "input";

impl Compiler<'_> {
    /// `defaults:`, which every agent's policy starts from.
    /// A group's agents start from the pipeline's around it, and a group
    /// file's own `defaults:` override those.
    pub(super) fn default_policy(&mut self) -> RetryPolicy {
        let inherited = self.nested.as_ref().map(|n| n.defaults);
        let defaults = &self.spec.defaults;
        let (source, errors) = (&self.source, &mut self.errors);
        let timeout = duration(&defaults.timeout, "defaults.timeout", source, errors);
        RetryPolicy {
            timeout: timeout.or(inherited.and_then(|d| d.timeout)),
            retries: retries(&defaults.retries, "defaults.retries", source, errors)
                .or(inherited.map(|d| d.retries))
                .unwrap_or(0),
            backoff: backoff(&defaults.backoff, "defaults.backoff", source, errors)
                .or(inherited.map(|d| d.backoff))
                .unwrap_or(RetryPolicy::default().backoff),
        }
    }

    /// `defaults.cache`: `cache: false` there turns off what a group's
    /// agents would inherit from the pipeline around it.
    pub(super) fn default_cache(&mut self) -> Option<CachePolicy> {
        let inherited = self.nested.as_ref().and_then(|n| n.cache);
        match &self.spec.defaults.cache {
            None => inherited,
            Some(spec) => self.cache_policy(spec, "defaults.cache"),
        }
    }

    /// An agent's cache policy: its own `cache:`, or `defaults.cache`.
    /// Defaults do not apply to groups (a cached group would skip its
    /// members, a `cache: false` one among them: a group is cached only
    /// when it says so) nor to `input` agents. An `input` agent, or a
    /// group holding one, that asks to be cached is refused.
    pub(super) fn cache(
        &mut self,
        agent: &AgentSpec,
        who: &str,
        group: Option<&crate::Pipeline>,
    ) -> Option<CachePolicy> {
        let waits = agent.kind.as_str() == INPUT_KIND || group.is_some_and(waits_for_input);
        let Some(spec) = &agent.cache else {
            return self
                .cache_default
                .filter(|_| agent.group.is_none() && !waits);
        };
        let policy = self.cache_policy(spec, &format!("{who}: `cache`"))?;
        if waits {
            let why = if group.is_some() {
                "a group with an `input` agent cannot be cached: a hit would skip the question"
            } else {
                "an `input` agent cannot be cached: its answer comes from outside the run"
            };
            self.error(spec.at.clone(), format!("{who}: {why}; remove `cache`"));
            return None;
        }
        Some(policy)
    }

    /// A `cache:` value: `None` for `false`, or its `ttl` once checked
    /// (a duration between [`MIN_CACHE_TTL`] and [`MAX_CACHE_TTL`]).
    fn cache_policy(&mut self, spec: &Located<CacheSpec>, what: &str) -> Option<CachePolicy> {
        let CacheSpec::On { ttl } = &spec.value else {
            return None;
        };
        let (source, errors) = (&self.source, &mut self.errors);
        let what = format!("{what}: `ttl`");
        let parsed = duration(&Some(ttl.clone()), &what, source, errors)?;
        if !(MIN_CACHE_TTL..=MAX_CACHE_TTL).contains(&parsed) {
            errors.push(Diagnostic::new(
                source.at(ttl.span()),
                format!(
                    "{what}: `{}` is out of bounds; a ttl is between {} and {}days",
                    ttl.as_str(),
                    humantime::format_duration(MIN_CACHE_TTL),
                    MAX_CACHE_TTL.as_secs() / 86_400,
                ),
            ));
            return None;
        }
        Some(CachePolicy { ttl: parsed })
    }

    /// Every agent's `when`, compiled together on one parser thread (see
    /// `condition`), in agent order.
    pub(super) fn conditions(
        &mut self,
    ) -> Result<impl Iterator<Item = Result<Condition, ConditionError>> + use<>, Stop> {
        self.budget("compiling conditions")?;
        let when_sources: Vec<&str> = self
            .drafts
            .iter()
            .filter_map(|d| d.spec.when.as_ref().map(|w| w.as_str()))
            .collect();
        let deadline = self.deadline;
        let compiled =
            Condition::parse_many(&when_sources, self.limits, &|| deadline.check("").is_err());
        self.budget("compiling conditions")?;
        Ok(compiled.into_iter())
    }

    /// Agent `id`: its reads, condition and `after` (with the edges they
    /// imply), policy, writes and runner. The agent is kept only when its
    /// kind built it.
    pub(super) fn agent(
        &mut self,
        id: AgentId,
        defaults: &RetryPolicy,
        conditions: &mut impl Iterator<Item = Result<Condition, ConditionError>>,
    ) -> Result<(), Stop> {
        self.budget("resolving reads")?;
        self.check_dependencies(id)?;
        let (name, agent, at) = {
            let draft = &self.drafts[id];
            (draft.name, draft.spec, draft.at.clone())
        };
        let who = format!("agent `{name}`");
        let mut foreach = self.foreach(id, &who);
        let reads = self.reads(id, &who, foreach.as_deref_mut());
        let (when, condition_fields) = self.condition(id, &who, conditions);
        self.after(id, &who);
        let (policy, expected) = self.policy(agent, &who, defaults);
        let writes = self.resolved_writes(agent);
        let input = self.input(id, &who);
        let queue = self.queue(agent, &who);
        let tool_list = self.agent_tools(agent, &who);
        let mut built = if agent.group.is_some() {
            Some(super::group::group_kind())
        } else if agent.kind.as_str() == "input" {
            self.misplaced_keys(agent, &who, at.clone());
            input.as_ref().map(|_| super::input::input_kind())
        } else {
            let reads = agent.reads.iter().map(|r| r.to_string()).collect();
            let listed = tool_list.as_ref().map_or(&[][..], |t| &t.tools[..]);
            self.build(name, agent, &who, at.clone(), reads, listed)
        };
        let tools = match tool_list {
            Some(list) if built.is_some() => Some(self.finish_tools(name, &who, list)),
            _ => None,
        };
        let (fields, field_ids) = (&self.fields, &self.field_ids);
        let mut own = crate::definition::own(name, agent, self.dir, |f| {
            field_ids.get(f).and_then(|&f| fields[f].merge)
        });
        if let Some(tools) = &agent.tools {
            // Its tools are part of what it does: a changed tool agent
            // changes the hash of every agent calling it. (Only agents with
            // tools get the key, so other hashes stay as they were.)
            let entries: Vec<&Value> = tools.value.iter().map(|e| &e.value).collect();
            let tool_agents: Vec<Value> = entries
                .iter()
                .filter_map(|e| e.get("agent").and_then(Value::as_str))
                .filter_map(|t| self.spec.agents.get(t).map(|a| (t, a)))
                .map(|(t, a)| {
                    let mut def = crate::definition::own(t, &a.value, self.dir, |_| None);
                    def["tool"] = a
                        .value
                        .tool
                        .as_ref()
                        .map(|t| t.value.clone())
                        .unwrap_or_default();
                    def
                })
                .collect();
            own["tools"] = serde_json::json!({
                "entries": entries,
                "max_tool_calls": agent.max_tool_calls.as_ref().map(|m| **m),
                "tool_agents": tool_agents,
            });
        }
        self.own_definitions.push(own);
        let group = self.group(id, &who, defaults)?;
        if agent.group.is_some() && group.is_none() {
            built = None;
        }
        let cache = self.cache(agent, &who, group.as_deref().map(|g| &*g.pipeline));
        if group.is_some()
            && let Some(foreach) = foreach.as_deref_mut()
        {
            // The group's agents read the element and its index.
            foreach.reads_item = true;
            foreach.reads_index = true;
        }
        if let Some((kind, runner)) = built {
            self.agents.push(AgentDef {
                name: Arc::from(name),
                description: agent.description.clone(),
                kind,
                runner,
                reads,
                writes,
                when,
                condition_fields,
                policy,
                expected,
                location: at,
                definition: Arc::from(""),
                foreach,
                group,
                input,
                cache,
                queue,
                tools,
            });
        }
        Ok(())
    }

    /// `queue:`: a worker queue's name, one NATS subject token (letters,
    /// digits, `_` and `-`, at most 64). An `input` agent waits where its
    /// run is, so it takes none.
    fn queue(&mut self, agent: &AgentSpec, who: &str) -> Option<Arc<str>> {
        let queue = agent.queue.as_ref()?;
        let at = self.source.at(queue.span());
        if agent.kind.as_str() == "input" {
            self.error(
                at,
                format!(
                    "{who}: `queue` does not apply to an `input` agent: it waits where its run is"
                ),
            );
            return None;
        }
        let name = queue.as_str();
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            self.error(
                at,
                format!(
                    "{who}: `queue: {name}` is not a queue name; expected 1 to 64 letters, digits,                      `_` or `-` (like `gpu` or `eu-west`)"
                ),
            );
            return None;
        }
        Some(Arc::from(name))
    }

    /// An agent's timeout and retry policy (over `defaults`), and its
    /// `expected` duration.
    pub(super) fn policy(
        &mut self,
        agent: &AgentSpec,
        who: &str,
        defaults: &RetryPolicy,
    ) -> (RetryPolicy, Option<Duration>) {
        let (source, errors) = (&self.source, &mut self.errors);
        let timeout = duration(&agent.timeout, &format!("{who}: `timeout`"), source, errors);
        if let (Some(t), Some(at)) = (timeout, &agent.timeout)
            && t.is_zero()
        {
            errors.push(Diagnostic::new(
                source.at(at.span()),
                format!("{who}: `timeout` must be longer than zero (leave it out for no timeout)"),
            ));
        }
        let policy = RetryPolicy {
            timeout: timeout.or(defaults.timeout),
            retries: retries(&agent.retries, &format!("{who}: `retries`"), source, errors)
                .unwrap_or(defaults.retries),
            backoff: backoff(&agent.backoff, &format!("{who}: `backoff`"), source, errors)
                .unwrap_or(defaults.backoff),
        };
        let expected = duration(
            &agent.expected,
            &format!("{who}: `expected`"),
            source,
            errors,
        );
        (policy, expected)
    }

    /// The agent's kind and runner, built by its kind; `None` (reported)
    /// when the kind is unknown or refuses the agent's settings.
    pub(super) fn build(
        &mut self,
        name: &str,
        agent: &AgentSpec,
        who: &str,
        at: Option<Location>,
        reads: Vec<String>,
        tools: &[Arc<crate::agent::tool::Tool>],
    ) -> Option<Built> {
        let kind_name = agent.kind.as_str();
        let Some(kind) = self.kinds.get(kind_name) else {
            let names = self.kinds.names();
            let hint = crate::diagnostic::did_you_mean(kind_name, names.iter().map(String::as_str));
            let known = names.join(", ");
            self.error(
                self.source.at(agent.kind.span()),
                format!("{who}: unknown kind `{kind_name}`{hint}; expected one of: {known}"),
            );
            return None;
        };
        self.misplaced_keys(agent, who, at.clone());
        let mut settings: Map<String, Value> = agent
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        for key in core_kind_keys(kind_name) {
            if let Some(setting) = agent.core_setting(key, &self.source) {
                settings.insert((*key).to_owned(), setting.value);
            }
        }
        let config = AgentConfig {
            name,
            kind: kind_name,
            settings: &settings,
            dir: self.dir,
            reads,
            // Names only: whether a write is optional is the scheduler's
            // business (an agent may leave `name?` out).
            writes: agent
                .writes
                .iter()
                .map(|w| w.strip_suffix('?').unwrap_or(w.as_str()).to_owned())
                .collect(),
            tools,
            calls_tools: agent.tools.is_some(),
        };
        match kind.build(&config, self.kinds) {
            Ok(built) => Some(built),
            Err(e) => {
                let setting_at = e.setting.and_then(|key| match agent.settings.get(key) {
                    Some(setting) => setting.at.clone(),
                    None => agent.core_setting(key, &self.source)?.at,
                });
                self.error(setting_at.or(at), format!("{who}: {}", e.message));
                None
            }
        }
    }

    /// The `sleep` and `command` keys an agent has but its kind does not
    /// take, each reported at the agent.
    fn misplaced_keys(&mut self, agent: &AgentSpec, who: &str, at: Option<Location>) {
        let kind = agent.kind.as_str();
        // In the order they have always been reported in.
        let checked: &[&str] = match kind {
            "sleep" => &["run", "pool", "env"],
            _ => CORE_KIND_KEYS,
        };
        let own = core_kind_keys(kind);
        for key in checked.iter().filter(|k| !own.contains(k)) {
            let present = match *key {
                "ms" => agent.ms.is_some(),
                "value" => agent.value.is_some(),
                "run" => agent.run.is_some(),
                "env" => !agent.env.is_empty(),
                _ => agent.pool.is_some(),
            };
            if present {
                self.error(
                    at.clone(),
                    format!("{who}: `{key}` does not apply to a `{kind}` agent"),
                );
            }
        }
    }
}

fn duration(
    value: &Option<marked_yaml::Spanned<String>>,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<Duration> {
    let value = value.as_ref()?;
    match humantime::parse_duration(value.trim()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(Diagnostic::new(
                source.at(value.span()),
                format!(
                    "{what}: bad duration `{}` ({e}); expected a number with a unit, like 200ms, 30s or 2m",
                    value.as_str()
                ),
            ));
            None
        }
    }
}

/// A `retries` count, refused (at its place) above [`MAX_RETRIES`].
fn retries(
    value: &Option<marked_yaml::Spanned<u32>>,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<u32> {
    let value = value.as_ref()?;
    if **value > MAX_RETRIES {
        errors.push(Diagnostic::new(
            source.at(value.span()),
            format!(
                "{what}: {} is too many; at most {MAX_RETRIES} retries are allowed",
                **value
            ),
        ));
        return None;
    }
    Some(**value)
}

/// A `backoff` duration, refused (at its place) below [`MIN_BACKOFF`].
fn backoff(
    value: &Option<marked_yaml::Spanned<String>>,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<Duration> {
    let parsed = duration(value, what, source, errors)?;
    if parsed < MIN_BACKOFF {
        errors.push(Diagnostic::new(
            value.as_ref().and_then(|v| source.at(v.span())),
            format!(
                "{what}: `{}` is too short; the shortest backoff is {}",
                value.as_ref().map_or("", |v| v.as_str()),
                humantime::format_duration(MIN_BACKOFF)
            ),
        ));
        return None;
    }
    Some(parsed)
}

/// Whether `pipeline` (a group's) has an `input` agent, at any depth.
fn waits_for_input(pipeline: &crate::Pipeline) -> bool {
    pipeline
        .agents()
        .iter()
        .any(|a| a.kind().name() == INPUT_KIND || a.group_pipeline().is_some_and(waits_for_input))
}
