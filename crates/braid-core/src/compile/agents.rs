//! Building each [`AgentDef`]: its reads, condition and `after` (through
//! `edges.rs`), its timeout and retry policy, its writes, and its runner,
//! built by its kind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Compiler, Stop};
use crate::agent::Agent;
use crate::agent::command::{CommandAgent, resolve_program};
use crate::agent::pool::PooledCommandAgent;
use crate::agent::sleep::SleepAgent;
use crate::condition::{Condition, ConditionError};
use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::graph::AgentId;
use crate::kinds::AgentConfig;
use crate::pipeline::{AgentDef, AgentKind, FieldWrite, MAX_RETRIES, MIN_BACKOFF, RetryPolicy};
use crate::spec::{AgentSpec, CORE_KIND_KEYS, Located, Source};

impl Compiler<'_> {
    /// `defaults:`, which every agent's policy starts from.
    pub(super) fn default_policy(&mut self) -> RetryPolicy {
        let defaults = &self.spec.defaults;
        let (source, errors) = (&self.source, &mut self.errors);
        RetryPolicy {
            timeout: duration(&defaults.timeout, "defaults.timeout", source, errors),
            retries: retries(&defaults.retries, "defaults.retries", source, errors).unwrap_or(0),
            backoff: backoff(&defaults.backoff, "defaults.backoff", source, errors)
                .unwrap_or(RetryPolicy::default().backoff),
        }
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
        let built = self.build(name, agent, &who, at.clone(), &writes);
        let (fields, field_ids) = (&self.fields, &self.field_ids);
        self.own_definitions
            .push(crate::definition::own(name, agent, self.dir, |f| {
                field_ids.get(f).and_then(|&f| fields[f].merge)
            }));
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
            });
        }
        Ok(())
    }

    /// An agent's timeout and retry policy (over `defaults`), and its
    /// `expected` duration.
    fn policy(
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
    fn build(
        &mut self,
        name: &str,
        agent: &AgentSpec,
        who: &str,
        at: Option<Location>,
        writes: &Arc<[FieldWrite]>,
    ) -> Option<(AgentKind, Arc<dyn Agent>)> {
        let (source, errors, kinds, dir) = (&self.source, &mut self.errors, self.kinds, self.dir);
        let kind_at = source.at(agent.kind.span());
        let misplaced = |key: &str, present: bool, kind: &str, errors: &mut Diagnostics| {
            if present {
                errors.push(Diagnostic::new(
                    at.clone(),
                    format!("{who}: `{key}` does not apply to a `{kind}` agent"),
                ));
            }
        };
        match agent.kind.as_str() {
            "sleep" => {
                misplaced("run", agent.run.is_some(), "sleep", errors);
                misplaced("pool", agent.pool.is_some(), "sleep", errors);
                misplaced("env", !agent.env.is_empty(), "sleep", errors);
                let duration = Duration::from_millis(agent.ms.as_ref().map_or(0, |ms| **ms));
                let value = agent
                    .value
                    .as_ref()
                    .map_or(Value::Bool(true), |v: &Located<Value>| v.value.clone());
                let names: Arc<[Arc<str>]> = writes.iter().map(|w| w.name.clone()).collect();
                Some((
                    AgentKind::Sleep { duration },
                    Arc::new(SleepAgent::new(duration, value, names)),
                ))
            }
            "command" => {
                misplaced("ms", agent.ms.is_some(), "command", errors);
                misplaced("value", agent.value.is_some(), "command", errors);
                command(agent, who, at.clone(), dir, source, errors)
            }
            "builtin" => {
                misplaced_core_keys(agent, who, "builtin", at.clone(), errors);
                let function = agent.settings.get("function");
                match function.and_then(|f| f.value.as_str()) {
                    Some(function) => match kinds.builtin_named(function) {
                        Some(runner) => Some((
                            AgentKind::Builtin {
                                function: function.to_owned(),
                            },
                            runner,
                        )),
                        None => {
                            let known = kinds.builtin_names();
                            errors.push(Diagnostic::new(
                                function_at(agent, &at),
                                format!(
                                    "{who}: no builtin agent `{function}` is registered{}",
                                    if known.is_empty() {
                                        " (register Rust agents with AgentKinds::builtin)"
                                            .to_owned()
                                    } else {
                                        format!("; registered: {}", known.join(", "))
                                    }
                                ),
                            ));
                            None
                        }
                    },
                    None => {
                        errors.push(Diagnostic::new(
                            at.clone(),
                            format!("{who}: a `builtin` agent needs `function: NAME`"),
                        ));
                        None
                    }
                }
            }
            other => match kinds.factory(other) {
                Some(factory) => {
                    misplaced_core_keys(agent, who, other, at.clone(), errors);
                    let settings: serde_json::Map<String, Value> = agent
                        .settings
                        .iter()
                        .map(|(k, v)| (k.clone(), v.value.clone()))
                        .collect();
                    let config = AgentConfig {
                        name,
                        kind: other,
                        settings: &settings,
                        dir,
                        reads: agent.reads.iter().map(|r| r.to_string()).collect(),
                        writes: agent.writes.iter().map(|w| w.to_string()).collect(),
                    };
                    match factory(&config) {
                        Ok(runner) => Some((
                            AgentKind::Other {
                                kind: other.to_owned(),
                            },
                            runner,
                        )),
                        Err(message) => {
                            errors.push(Diagnostic::new(at.clone(), format!("{who}: {message}")));
                            None
                        }
                    }
                }
                None => {
                    errors.push(Diagnostic::new(
                        kind_at,
                        format!(
                            "{who}: unknown kind `{other}`; expected one of: {}",
                            kinds.names().join(", ")
                        ),
                    ));
                    None
                }
            },
        }
    }
}

/// A `command` agent.
fn command(
    agent: &AgentSpec,
    who: &str,
    at: Option<Location>,
    dir: &Path,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<(AgentKind, Arc<dyn Agent>)> {
    match &agent.run {
        Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
            let argv: Vec<String> = argv.iter().map(|a| a.to_string()).collect();
            let env = agent
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let runner: Arc<dyn Agent> = match agent.pool.as_ref().map(|p| **p) {
                None => Arc::new(CommandAgent::new(&argv, dir, env)),
                Some(0) => {
                    errors.push(Diagnostic::new(
                        agent.pool.as_ref().and_then(|p| source.at(p.span())),
                        format!("{who}: `pool` must be at least 1"),
                    ));
                    Arc::new(CommandAgent::new(&argv, dir, env))
                }
                Some(size) => Arc::new(PooledCommandAgent::new(
                    resolve_program(&argv[0], dir),
                    argv[1..].to_vec(),
                    dir.to_path_buf(),
                    env,
                    size as usize,
                )),
            };
            Some((AgentKind::Command { argv }, runner))
        }
        _ => {
            errors.push(Diagnostic::new(
                at,
                format!("{who}: a `command` agent needs `run: [PROGRAM, ARGS...]`"),
            ));
            None
        }
    }
}

/// `sleep` and `command` keys on an agent of another kind.
fn misplaced_core_keys(
    agent: &AgentSpec,
    who: &str,
    kind: &str,
    at: Option<Location>,
    errors: &mut Diagnostics,
) {
    let present = [
        ("ms", agent.ms.is_some()),
        ("value", agent.value.is_some()),
        ("run", agent.run.is_some()),
        ("env", !agent.env.is_empty()),
        ("pool", agent.pool.is_some()),
    ];
    for (key, is_there) in present {
        if is_there && CORE_KIND_KEYS.contains(&key) {
            errors.push(Diagnostic::new(
                at.clone(),
                format!("{who}: `{key}` does not apply to a `{kind}` agent"),
            ));
        }
    }
}

fn function_at(agent: &AgentSpec, fallback: &Option<Location>) -> Option<Location> {
    agent
        .settings
        .get("function")
        .and_then(|f| f.at.clone())
        .or_else(|| fallback.clone())
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
