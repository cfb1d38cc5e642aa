//! The pipeline file as written: YAML (or JSON) parsed into plain structs
//! that remember where each value came from.
//!
//! This module only checks shape (known keys, types, required keys). What the
//! values mean (do the reads resolve, is there a cycle) is checked by the
//! `compile` module, which turns a [`PipelineSpec`] into a runnable
//! [`crate::Pipeline`].
//!
//! The same structs derive [`schemars::JsonSchema`]: their doc comments on
//! the keys a file may have are the descriptions in the file's JSON Schema
//! (see the `schema` module, which adds what serde does not read: `value`,
//! `cache`, the groups' keys and each kind's own keys).

use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node, Span};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Diagnostics, Location};
use crate::limits::LoadLimits;

/// A value together with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Located<T> {
    pub(crate) value: T,
    pub(crate) at: Option<Location>,
}

/// The schema of a value as the value's own (a [`Located`] is only its value
/// in the file).
impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        T::json_schema(generator)
    }
}

/// The whole file, shape-checked.
///
/// Read key by key by hand (not by serde), so its schema's required keys
/// (`pipeline`, `agents`) are set by the `schema` module.
#[derive(Debug, Default, JsonSchema)]
#[schemars(
    title = "braid pipeline",
    description = "A braid pipeline file: agents that read and write named fields of a shared state; the dependency graph is derived from their reads and writes.",
    deny_unknown_fields
)]
pub(crate) struct PipelineSpec {
    /// The pipeline's name, shown in reports, the run history and the API.
    #[schemars(rename = "pipeline", length(min = 1))]
    pub(crate) name: Option<Located<String>>,
    /// What the pipeline does, for people reading the file.
    pub(crate) description: Option<String>,
    /// The run's input: each input field with the JSON Schema its value
    /// must match (e.g. `request: { type: string }`). A run's input is
    /// checked against these before anything runs.
    #[schemars(schema_with = "inputs_schema")]
    pub(crate) inputs: IndexMap<String, Located<Value>>,
    /// Timeout, retries, backoff and cache settings every agent inherits
    /// unless it sets its own.
    pub(crate) defaults: DefaultsSpec,
    /// How many agents may run at once (at least 1; default: no limit
    /// beyond the graph's own).
    #[schemars(range(min = 1))]
    pub(crate) concurrency: Option<Located<usize>>,
    /// What a failed agent does to the run: `fail` (default) stops it,
    /// `continue` lets the agents that do not depend on it go on.
    #[schemars(extend("enum" = ["fail", "continue"]))]
    pub(crate) on_failure: Option<Located<String>>,
    /// What is recorded while the run goes: `none`, `end` (the final
    /// report) or `agent` (after every agent, so a run can be resumed).
    #[schemars(extend("enum" = ["none", "end", "agent"]))]
    pub(crate) checkpoint: Option<Located<String>>,
    /// The field a person wants to see at the end of a run (e.g.
    /// `output: report`); shown by `braid run` and the web view.
    pub(crate) output: Option<Located<String>>,
    /// Settings of state fields by name: how concurrent writes to a
    /// field are merged, and what it holds.
    pub(crate) fields: IndexMap<String, Located<FieldSpec>>,
    /// The agents by name. Each has a `kind` and declares the fields it
    /// `reads` and `writes`; an agent starts the moment what it reads is
    /// written.
    #[schemars(schema_with = "agents_schema")]
    pub(crate) agents: IndexMap<String, Located<AgentSpec>>,
    /// Where the `agents` key is, for errors about the section as a whole.
    #[schemars(skip)]
    pub(crate) agents_at: Option<Location>,
    /// Agents whose shape was wrong (reported), left out of `agents`.
    #[schemars(skip)]
    pub(crate) broken_agents: std::collections::HashSet<String>,
    /// Fields those agents declare they write: reading them is not
    /// reported as reading a field nobody writes.
    #[schemars(skip)]
    pub(crate) broken_writes: std::collections::HashSet<String>,
}

/// `defaults:`: retry and timeout settings that agents inherit.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "Timeout, retries, backoff and cache settings every agent inherits unless it sets its own."
)]
pub(crate) struct DefaultsSpec {
    /// How long one attempt of an agent may take, a duration like 200ms,
    /// 30s or 2m.
    #[schemars(with = "Option<String>")]
    pub(crate) timeout: Option<marked_yaml::Spanned<String>>,
    /// How many times a failed agent is tried again.
    #[schemars(with = "Option<u32>")]
    pub(crate) retries: Option<marked_yaml::Spanned<u32>>,
    /// The first wait before a retry (doubled each time, with jitter), a
    /// duration like 100ms or 2s.
    #[schemars(with = "Option<String>")]
    pub(crate) backoff: Option<marked_yaml::Spanned<String>>,
    /// `cache:`, read from the node by hand ([`parse_cache`]) before the
    /// rest is deserialized; declared here so that an unknown key's
    /// message lists it.
    #[serde(default, deserialize_with = "read_by_hand")]
    #[schemars(schema_with = "cache_schema")]
    pub(crate) cache: Option<Located<CacheSpec>>,
}

/// The name of an agent's definition in the schema's `$defs`.
pub(crate) const AGENT_DEF: &str = "Agent";

/// `inputs:`: each input field's JSON Schema.
pub(crate) fn inputs_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": ["object", "boolean"],
            "description": "The JSON Schema the field's value must match, e.g. `{ type: string }`.",
        },
    })
}

/// `agents:` (of the pipeline or of a group): agents by name.
pub(crate) fn agents_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"$ref": format!("#/$defs/{AGENT_DEF}")},
    })
}

/// `cache:` (of an agent or of `defaults`): `false` or `{ ttl: DURATION }`.
pub(crate) fn cache_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "oneOf": [
            {"const": false, "description": "Not cached, whatever `defaults` say."},
            {
                "type": "object",
                "properties": {
                    "ttl": {"type": "string", "description": "How long a result is reused, a duration like 30s, 1h or 7days."},
                },
                "required": ["ttl"],
                "additionalProperties": false,
            },
        ],
    })
}

/// For keys taken out of a mapping before serde sees it: never called.
fn read_by_hand<'de, D: serde::Deserializer<'de>, T>(_: D) -> Result<Option<T>, D::Error> {
    Err(serde::de::Error::custom("read by hand"))
}

/// An agent's `cache:` (or `defaults.cache`), as written.
#[derive(Debug, Clone)]
pub(crate) enum CacheSpec {
    /// `cache: false`: not cached, whatever `defaults` say.
    Off,
    /// `cache: { ttl: 1h }`.
    On {
        /// The `ttl` duration, checked by the compiler.
        ttl: marked_yaml::Spanned<String>,
    },
}

/// One entry of the top-level `fields:` section.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "A state field's settings.")]
pub(crate) struct FieldSpec {
    /// How writes to this field from several agents (or fan-out items)
    /// are combined: `append` (lists), `merge` (objects), `sum`, `max` or
    /// `min`. Without it, one agent alone may write the field.
    #[schemars(with = "Option<String>", extend("enum" = crate::merge::MergeRule::NAMES))]
    pub(crate) merge: Option<marked_yaml::Spanned<String>>,
    /// What the field holds, for people reading the file.
    #[allow(dead_code)] // documentation for people reading the file
    pub(crate) description: Option<String>,
}

/// One agent, as written. Kind-specific keys are all optional here; the
/// pipeline compiler checks that each kind gets the keys it needs.
///
/// Its derived schema gives the keys serde reads; the `schema` module adds
/// `value` and `cache` (read by hand) and splits the keys by kind.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentSpec {
    /// What the agent is: its kind decides which other keys it takes.
    #[schemars(with = "String")]
    pub(crate) kind: marked_yaml::Spanned<String>,
    /// What the agent does, for people reading the file.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// The state fields the agent reads; it starts once they are written.
    /// A name ending in `?` is optional: the agent runs without it if it
    /// is never written.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) reads: Vec<marked_yaml::Spanned<String>>,
    /// The state fields the agent writes. A name ending in `?` may be left
    /// out of its output (agents reading it are then skipped).
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) writes: Vec<marked_yaml::Spanned<String>>,
    /// Agents that must finish first, although nothing they write is read
    /// by this one.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub(crate) after: Vec<marked_yaml::Spanned<String>>,
    /// A CEL condition over the agent's reads (e.g. `route == "refund"`);
    /// when false, the agent is skipped.
    #[schemars(with = "Option<String>")]
    pub(crate) when: Option<marked_yaml::Spanned<String>>,
    /// How long one attempt may take, a duration like 200ms, 30s or 2m
    /// (for `kind: input`, how long it waits for an answer).
    #[schemars(with = "Option<String>")]
    pub(crate) timeout: Option<marked_yaml::Spanned<String>>,
    /// How many times a failed attempt is tried again.
    #[schemars(with = "Option<u32>")]
    pub(crate) retries: Option<marked_yaml::Spanned<u32>>,
    /// The first wait before a retry (doubled each time, with jitter), a
    /// duration like 100ms or 2s.
    #[schemars(with = "Option<String>")]
    pub(crate) backoff: Option<marked_yaml::Spanned<String>>,
    /// How long the agent usually takes, a duration: `braid explain`'s
    /// estimate of the critical path uses it.
    #[schemars(with = "Option<String>")]
    pub(crate) expected: Option<marked_yaml::Spanned<String>>,
    /// Where the agent runs when its run dispatches agents to workers
    /// (`braid serve --nats`): the worker queue, like `gpu` or `eu`
    /// (default `default`). On a group, the queue of its agents that name
    /// none. Ignored when agents run in-process.
    #[schemars(with = "Option<String>", regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub(crate) queue: Option<marked_yaml::Spanned<String>>,
    /// `cache:`, read by hand ([`parse_cache`]).
    #[serde(skip)]
    pub(crate) cache: Option<Located<CacheSpec>>,
    /// `tool:`, read by hand (any JSON): the agent is a tool a model
    /// calls, `{ description, parameters }`, not a step of the pipeline.
    #[serde(skip)]
    pub(crate) tool: Option<Located<Value>>,
    /// `tools:`, read by hand: the tools the agent's model may call, each
    /// entry with where it is written.
    #[serde(skip)]
    pub(crate) tools: Option<Located<Vec<Located<Value>>>>,
    /// The most tool calls one attempt may make.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub(crate) max_tool_calls: Option<marked_yaml::Spanned<u32>>,
    // fan-out
    /// Fan-out: a read field holding a list; the agent runs once per item,
    /// and its writes are assembled into lists in item order.
    #[schemars(with = "Option<String>")]
    pub(crate) foreach: Option<marked_yaml::Spanned<String>>,
    /// Fan-out: the name each item is read under (default `item`).
    #[serde(rename = "as")]
    #[schemars(with = "Option<String>")]
    pub(crate) item_as: Option<marked_yaml::Spanned<String>>,
    /// Fan-out: how many items run at once.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub(crate) concurrency: Option<marked_yaml::Spanned<u64>>,
    /// Fan-out: what a failed item does: `fail` (default) fails the
    /// agent, `skip` leaves the item out.
    #[schemars(with = "Option<String>", extend("enum" = ["fail", "skip"]))]
    pub(crate) on_item_failure: Option<marked_yaml::Spanned<String>>,
    /// Fan-out: how many items there usually are, for `braid explain`'s
    /// estimate.
    #[schemars(with = "Option<u64>")]
    pub(crate) expected_items: Option<marked_yaml::Spanned<u64>>,
    // kind: sleep
    /// `kind: sleep`: how many milliseconds it waits.
    #[schemars(with = "Option<u64>")]
    pub(crate) ms: Option<marked_yaml::Spanned<u64>>,
    /// Filled from the raw node (any JSON), not by serde.
    #[serde(skip)]
    pub(crate) value: Option<Located<Value>>,
    // kind: command
    /// `kind: command`: the program and its arguments (relative to the
    /// pipeline file's folder). It gets its reads as JSON on stdin and
    /// prints a JSON object of its writes on stdout.
    #[schemars(with = "Option<Vec<String>>", length(min = 1))]
    pub(crate) run: Option<Vec<marked_yaml::Spanned<String>>>,
    /// `kind: command`: environment variables set for the program.
    #[serde(default)]
    pub(crate) env: IndexMap<String, String>,
    /// `kind: command`: keep this many warm processes that answer one
    /// request per line, instead of one process per call.
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub(crate) pool: Option<marked_yaml::Spanned<u32>>,
    /// For `kind: pipeline`: the group's own agents and how it runs.
    #[serde(skip)]
    pub(crate) group: Option<Box<GroupSpec>>,
    /// Every other key, for kinds the core does not build itself.
    #[serde(skip)]
    pub(crate) settings: IndexMap<String, Located<Value>>,
}

/// A group (`kind: pipeline`), as written: its agents (a sub-pipeline of
/// their own, `spec.agents`) and the keys that say how it runs.
#[derive(Debug, Default)]
pub(crate) struct GroupSpec {
    /// The group's agents (only `agents` and `agents_at` are filled).
    pub(crate) spec: PipelineSpec,
    /// Parent field it writes → the group field it takes the value from.
    pub(crate) outputs: IndexMap<String, Located<String>>,
    /// Next round's field → this round's field it takes its value from.
    pub(crate) carry: IndexMap<String, Located<String>>,
    pub(crate) repeat: Option<RepeatSpec>,
    /// `path:`: the group's agents are a pipeline file's (relative to the
    /// pipeline's folder), instead of `agents:`.
    pub(crate) path: Option<Located<String>>,
    /// The group's writes: its `outputs` keys, each optional (`name?`),
    /// positioned at the key.
    pub(crate) writes: Vec<marked_yaml::Spanned<String>>,
}

/// `repeat:` of a group: run it again until `until` holds, at most `max` rounds.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    description = "Run the group again, round after round, until `until` holds or `max` rounds have run."
)]
pub(crate) struct RepeatSpec {
    /// A CEL condition over the group's fields after a round; the loop
    /// ends when it holds.
    #[schemars(with = "String")]
    pub(crate) until: marked_yaml::Spanned<String>,
    /// The most rounds run.
    #[schemars(with = "Option<u64>", range(min = 1))]
    pub(crate) max: Option<marked_yaml::Spanned<u64>>,
    /// What happens when `max` rounds ran and `until` still does not
    /// hold: `fail` (default) or `continue` with the last round's outputs.
    #[schemars(with = "Option<String>", extend("enum" = ["fail", "continue"]))]
    pub(crate) on_max: Option<marked_yaml::Spanned<String>>,
    /// How many rounds it usually takes, for `explain`'s estimate.
    #[schemars(with = "Option<u32>")]
    pub(crate) expected_rounds: Option<marked_yaml::Spanned<u32>>,
}

/// Keys every agent may have, whatever its kind.
pub(crate) const COMMON_AGENT_KEYS: &[&str] = &[
    "kind",
    "description",
    "reads",
    "writes",
    "after",
    "when",
    "timeout",
    "retries",
    "backoff",
    "expected",
    "cache",
    "queue",
    "tool",
    "tools",
    "max_tool_calls",
    "foreach",
    "as",
    "concurrency",
    "on_item_failure",
    "expected_items",
];
/// Keys of the `sleep` and `command` kinds: typed here whatever the
/// agent's kind, and refused on agents of other kinds.
pub(crate) const CORE_KIND_KEYS: &[&str] = &["ms", "value", "run", "env", "pool"];

/// The [`CORE_KIND_KEYS`] a kind takes, by its name: `sleep`'s and
/// `command`'s, whether the core's or a replacement.
pub(crate) fn core_kind_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "sleep" => &["ms", "value"],
        "command" => &["run", "env", "pool"],
        _ => &[],
    }
}

impl AgentSpec {
    /// One of the [`CORE_KIND_KEYS`] as JSON, with where its value was
    /// written (`env` has no place of its own).
    pub(crate) fn core_setting(&self, key: &str, source: &Source) -> Option<Located<Value>> {
        let (value, at) = match key {
            "ms" => self
                .ms
                .as_ref()
                .map(|ms| (Value::from(**ms), source.at(ms.span())))?,
            "value" => self
                .value
                .as_ref()
                .map(|v| (v.value.clone(), v.at.clone()))?,
            "run" => self.run.as_ref().map(|run| {
                let argv: Vec<Value> = run.iter().map(|a| Value::from(a.as_str())).collect();
                (
                    Value::Array(argv),
                    run.first().and_then(|a| source.at(a.span())),
                )
            })?,
            "env" if !self.env.is_empty() => {
                let env = self
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::from(v.as_str())));
                (Value::Object(env.collect()), None)
            }
            "pool" => self
                .pool
                .as_ref()
                .map(|p| (Value::from(**p), source.at(p.span())))?,
            _ => return None,
        };
        Some(Located { value, at })
    }
}

/// Context for turning marked-yaml positions into [`Location`]s.
#[derive(Clone)]
pub(crate) struct Source {
    pub(crate) file: Option<Arc<Path>>,
}

impl Source {
    pub(crate) fn at(&self, span: &Span) -> Option<Location> {
        span.start().map(|m| Location {
            file: self.file.clone(),
            line: m.line(),
            column: m.column(),
        })
    }

    /// The start of the text (line 1, column 1), for problems with the
    /// whole of it.
    pub(crate) fn start(&self) -> Option<Location> {
        Some(Location {
            file: self.file.clone(),
            line: 1,
            column: 1,
        })
    }

    fn whole_file(&self) -> Option<Location> {
        self.file.as_ref().map(|f| Location {
            file: Some(f.clone()),
            line: 1,
            column: 1,
        })
    }
}

/// The keys a pipeline file may have at its top level.
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "pipeline",
    "description",
    "inputs",
    "defaults",
    "concurrency",
    "on_failure",
    "checkpoint",
    "output",
    "fields",
    "agents",
];

/// Duplicate keys are errors, and quoted scalars stay strings.
fn loader_options() -> LoaderOptions {
    LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true)
        .toplevel_mapping()
}

/// The text of a pipeline file as JSON, the way the loader reads it (the
/// same depth limit, no anchors, no duplicate keys, quoted scalars stay
/// strings), for checking it against the file's JSON Schema.
pub(crate) fn text_to_json(
    text: &str,
    source: &Source,
    limits: &LoadLimits,
) -> Result<Value, Diagnostic> {
    check_depth(text, limits.max_depth, source)?;
    marked_yaml::parse_yaml_with_options(0, text, loader_options())
        .map(|root| to_json(&root))
        .map_err(|err| yaml_error(err, source))
}

/// Parses the text of a pipeline file. Returns every shape error found (up
/// to `limits.max_diagnostics`).
///
/// The text is first scanned as a stream of YAML events, without building
/// anything, to refuse nesting deeper than `limits.max_depth` and anchors:
/// the tree builder, serde and `Drop` all recurse once per level, so an
/// unbounded depth would overflow the stack.
pub(crate) fn parse(
    text: &str,
    source: &Source,
    limits: &LoadLimits,
    checks_keys: &dyn Fn(&str) -> bool,
) -> Result<PipelineSpec, Diagnostics> {
    let (spec, errors) = parse_tolerant(text, source, limits, checks_keys)?;
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(errors)
    }
}

/// Like [`parse`], but a shape error in one agent or one setting does not
/// stop it: that agent is left out (its declared writes are noted in
/// [`PipelineSpec::broken_writes`], so that its readers are not reported
/// too), and the spec comes back with the errors, for the compile to add
/// its own and report them all at once. `Err` only when nothing usable is
/// left (the YAML does not parse, is too deep, has no `pipeline:` name).
pub(crate) fn parse_tolerant(
    text: &str,
    source: &Source,
    limits: &LoadLimits,
    checks_keys: &dyn Fn(&str) -> bool,
) -> Result<(PipelineSpec, Diagnostics), Diagnostics> {
    let mut errors = Diagnostics::new(limits.max_diagnostics);
    if let Err(d) = check_depth(text, limits.max_depth, source) {
        errors.push(d);
        return Err(errors);
    }
    let mut root = match marked_yaml::parse_yaml_with_options(0, text, loader_options()) {
        Ok(root) => root,
        Err(err) => {
            errors.push(yaml_error(err, source));
            return Err(errors);
        }
    };
    let Some(top) = root.as_mapping_mut() else {
        errors.push(Diagnostic::new(
            source.whole_file(),
            "expected a mapping with `pipeline` and `agents` at the top level",
        ));
        return Err(errors);
    };

    let mut spec = PipelineSpec::default();
    for (key, value) in top.iter_mut() {
        let key_at = source.at(key.span());
        // Agents are taken out of the tree (no copy); the rest is read.
        if key.as_str() == "agents" {
            spec.agents_at = key_at.clone();
            match value.as_mapping_mut() {
                Some(map) => parse_agents(map, source, checks_keys, &mut spec, &mut errors),
                None => errors.push(Diagnostic::new(
                    source.at(value.span()),
                    "`agents` must map agent names to agents, e.g. `triage: { kind: sleep, ms: 50, writes: [route] }`",
                )),
            }
            continue;
        }
        top_level_key(key.as_str(), key_at, value, source, &mut spec, &mut errors);
    }
    if spec.name.is_none() {
        errors.push(Diagnostic::new(
            source.whole_file(),
            "missing `pipeline: NAME` at the top level",
        ));
        return Err(errors);
    }
    Ok((spec, errors))
}

/// The names in a list of scalars (`writes: [a, b?]`), read leniently from
/// an agent that does not parse: what it would write, without the `?`.
fn lenient_names(fields: &MarkedMappingNode, key: &str) -> Vec<String> {
    fields
        .get_node(key)
        .and_then(Node::as_sequence)
        .map(|items| {
            items
                .iter()
                .filter_map(Node::as_scalar)
                .map(|s| s.as_str().trim_end_matches('?').to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// One top-level key other than `agents`, read into `spec`.
fn top_level_key(
    key: &str,
    key_at: Option<Location>,
    value: &Node,
    source: &Source,
    spec: &mut PipelineSpec,
    errors: &mut Diagnostics,
) {
    match key {
        "pipeline" => match scalar(value) {
            Some(name) => {
                spec.name = Some(Located {
                    value: name.to_owned(),
                    at: key_at,
                })
            }
            None => errors.push(Diagnostic::new(
                source.at(value.span()),
                "`pipeline` must be a name (a string)",
            )),
        },
        "description" => spec.description = scalar(value).map(str::to_owned),
        "inputs" => match value.as_mapping() {
            Some(map) => {
                for (name, schema) in map.iter() {
                    spec.inputs.insert(
                        name.as_str().to_owned(),
                        Located {
                            value: to_json(schema),
                            at: source.at(name.span()),
                        },
                    );
                }
            }
            None => errors.push(Diagnostic::new(
                source.at(value.span()),
                "`inputs` must map each input field to a JSON Schema, e.g. `request: { type: string }`",
            )),
        },
        "defaults" => {
            // `cache` is read by hand (it is `false` or a mapping).
            let mut value = value.clone();
            let cache = value
                .as_mapping_mut()
                .and_then(|map| map.remove("cache"))
                .and_then(|node| parse_cache(&node, "defaults.cache", source, errors));
            match deserialize::<DefaultsSpec>(&value, "defaults", source, key_at) {
                Ok(d) => spec.defaults = DefaultsSpec { cache, ..d },
                Err(d) => errors.push(d),
            }
        }
        "concurrency" => match scalar(value).map(str::parse::<usize>) {
            Some(Ok(n)) if n > 0 => {
                spec.concurrency = Some(Located {
                    value: n,
                    at: key_at,
                })
            }
            _ => errors.push(Diagnostic::new(
                source.at(value.span()),
                format!(
                    "`concurrency` must be a whole number of at least 1, found `{}`",
                    describe(value)
                ),
            )),
        },
        "on_failure" => {
            spec.on_failure = located_scalar(
                value,
                source,
                "`on_failure` must be `fail` or `continue`",
                errors,
            )
        }
        "output" => {
            spec.output = located_scalar(
                value,
                source,
                "`output` must name the field a person wants to see (e.g. `output: report`)",
                errors,
            )
        }
        "checkpoint" => {
            spec.checkpoint = located_scalar(
                value,
                source,
                "`checkpoint` must be `none`, `end` or `agent`",
                errors,
            )
        }
        "fields" => match value.as_mapping() {
            Some(map) => {
                for (name, field) in map.iter() {
                    let at = source.at(name.span());
                    let context = format!("field `{}`", name.as_str());
                    match deserialize::<FieldSpec>(field, &context, source, at.clone()) {
                        Ok(f) => {
                            spec.fields
                                .insert(name.as_str().to_owned(), Located { value: f, at });
                        }
                        Err(d) => errors.push(d),
                    }
                }
            }
            None => errors.push(Diagnostic::new(
                source.at(value.span()),
                "`fields` must map field names to settings, e.g. `findings: { merge: append }`",
            )),
        },
        other => errors.push(Diagnostic::new(
            key_at,
            format!(
                "unknown top-level key `{other}`; expected one of: {}",
                TOP_LEVEL_KEYS.join(", ")
            ),
        )),
    }
}

/// The agents; `checks_keys` says which kinds refuse keys not theirs
/// (the core's `sleep` and `command`).
fn parse_agents(
    map: &mut MarkedMappingNode,
    source: &Source,
    checks_keys: &dyn Fn(&str) -> bool,
    spec: &mut PipelineSpec,
    errors: &mut Diagnostics,
) {
    for (name, node) in map.iter_mut() {
        let node = std::mem::replace(
            node,
            Node::from(MarkedMappingNode::new_empty(Span::new_blank())),
        );
        let at = source.at(name.span());
        let context = format!("agent `{}`", name.as_str());
        // `value` is free-form JSON, which serde cannot take from marked-yaml's
        // untyped scalars; convert it by hand and deserialize the rest.
        let mut value = None;
        let mut cache = None;
        let (mut tool, mut tools) = (None, None);
        let mut settings = IndexMap::new();
        let mut group = None;
        let mut declared_writes = Vec::new();
        let parsed = match node {
            Node::Mapping(mut fields) => {
                declared_writes = lenient_names(&fields, "writes");
                group = match fields.get_scalar("kind").map(|k| k.as_str()) {
                    Some("pipeline") => Some(Box::new(parse_group(
                        &mut fields,
                        at.clone(),
                        source,
                        checks_keys,
                        &context,
                        errors,
                    ))),
                    _ => None,
                };
                if let Some(v) = fields.remove("value") {
                    value = Some(Located {
                        value: to_json(&v),
                        at: source.at(v.span()),
                    });
                }
                cache = fields.remove("cache").and_then(|node| {
                    parse_cache(&node, &format!("{context}: `cache`"), source, errors)
                });
                if let Some(node) = fields.remove("tool") {
                    tool = Some(Located {
                        value: to_json(&node),
                        at: source.at(node.span()),
                    });
                }
                if let Some(node) = fields.remove("tools") {
                    tools = parse_tools(&node, &context, source, errors);
                }
                // Keys the core does not know go to the kind's own factory.
                let other: Vec<(String, Option<Location>)> = fields
                    .keys()
                    .filter(|k| {
                        !COMMON_AGENT_KEYS.contains(&k.as_str())
                            && !CORE_KIND_KEYS.contains(&k.as_str())
                    })
                    .map(|k| (k.as_str().to_owned(), source.at(k.span())))
                    .collect();
                for (key, at) in other {
                    if let Some(v) = fields.remove(key.as_str()) {
                        settings.insert(
                            key,
                            Located {
                                value: to_json(&v),
                                at,
                            },
                        );
                    }
                }
                // The core's `sleep` and `command` take no other keys: say so
                // now, with the other shape errors.
                let own: &[&str] = match fields.get_scalar("kind").map(|k| k.as_str()) {
                    Some(kind) if checks_keys(kind) => core_kind_keys(kind),
                    _ => &[],
                };
                if !own.is_empty() {
                    for (key, value) in std::mem::take(&mut settings) {
                        let expected: Vec<&str> =
                            COMMON_AGENT_KEYS.iter().chain(own).copied().collect();
                        let hint = crate::diagnostic::did_you_mean(&key, expected.iter().copied());
                        errors.push(Diagnostic::new(
                            value.at,
                            format!(
                                "{context}: unknown key `{key}`{hint}; expected one of: {}",
                                expected.join(", ")
                            ),
                        ));
                    }
                }
                deserialize::<AgentSpec>(&Node::Mapping(fields), &context, source, at.clone())
            }
            other => Err(Diagnostic::new(
                source.at(other.span()),
                format!(
                    "{context} must be a mapping with at least `kind`, found `{}`",
                    describe(&other)
                ),
            )),
        };
        match parsed {
            Ok(mut agent) => {
                agent.value = value;
                agent.cache = cache;
                agent.tool = tool;
                agent.tools = tools;
                agent.settings = settings;
                if let Some(mut group) = group {
                    group.spec.name = Some(Located {
                        value: name.as_str().to_owned(),
                        at: at.clone(),
                    });
                    // A group writes its outputs (each one may be left
                    // out: the field it names may not be written inside).
                    agent.writes.extend(group.writes.iter().cloned());
                    agent.group = Some(group);
                }
                spec.agents
                    .insert(name.as_str().to_owned(), Located { value: agent, at });
            }
            Err(d) => {
                errors.push(d);
                spec.broken_agents.insert(name.as_str().to_owned());
                spec.broken_writes.extend(declared_writes);
            }
        }
    }
}

/// Takes a group's own keys (`agents`, `outputs`, `carry`, `repeat`) out
/// of its mapping; its agents are parsed like a pipeline's.
fn parse_group(
    fields: &mut MarkedMappingNode,
    at: Option<Location>,
    source: &Source,
    checks_keys: &dyn Fn(&str) -> bool,
    context: &str,
    errors: &mut Diagnostics,
) -> GroupSpec {
    let mut group = GroupSpec::default();
    if let Some(writes) = fields.get_node("writes") {
        errors.push(Diagnostic::new(
            source.at(writes.span()),
            format!("{context}: a group's writes are the keys of its `outputs`; remove `writes`"),
        ));
    }
    if let Some(path) = fields.remove("path") {
        match scalar(&path) {
            Some(file) => {
                group.path = Some(Located {
                    value: file.to_owned(),
                    at: source.at(path.span()),
                })
            }
            None => errors.push(Diagnostic::new(
                source.at(path.span()),
                format!("{context}: `path` must name a pipeline file, e.g. `path: per_doc.yaml`"),
            )),
        }
    }
    match (fields.remove("agents"), &group.path) {
        (Some(Node::Mapping(mut map)), None) => {
            group.spec.agents_at = source.at(map.span());
            parse_agents(&mut map, source, checks_keys, &mut group.spec, errors);
        }
        (Some(other), Some(_)) => errors.push(Diagnostic::new(
            source.at(other.span()),
            format!("{context}: a group has either `agents:` or `path:`, not both"),
        )),
        (Some(other), None) => errors.push(Diagnostic::new(
            source.at(other.span()),
            format!("{context}: `agents` must map agent names to agents"),
        )),
        (None, Some(_)) => {}
        (None, None) => errors.push(Diagnostic::new(
            at.clone(),
            format!("{context}: a group (`kind: pipeline`) needs `agents:` (its own agents) or `path:` (a pipeline file)"),
        )),
    }
    let mut writes = Vec::new();
    for (key, into) in [("outputs", &mut group.outputs), ("carry", &mut group.carry)] {
        match fields.remove(key) {
            None => {}
            Some(Node::Mapping(map)) => {
                for (name, value) in map.iter() {
                    if key == "outputs" {
                        writes.push(marked_yaml::Spanned::new(
                            *name.span(),
                            format!("{}?", name.as_str()),
                        ));
                    }
                    match scalar(value) {
                        Some(inner) => {
                            into.insert(
                                name.as_str().to_owned(),
                                Located {
                                    value: inner.to_owned(),
                                    at: source.at(value.span()),
                                },
                            );
                        }
                        None => errors.push(Diagnostic::new(
                            source.at(value.span()),
                            format!("{context}: `{key}.{}` must name a field of the group", name.as_str()),
                        )),
                    }
                }
            }
            Some(other) => errors.push(Diagnostic::new(
                source.at(other.span()),
                format!("{context}: `{key}` must map fields to fields, e.g. `{key}: {{ summaries: summary }}`"),
            )),
        }
    }
    group.writes = writes;
    if group.outputs.is_empty() {
        errors.push(Diagnostic::new(
            at.clone(),
            format!("{context}: a group needs `outputs:` (parent field: group field), or nothing it does is seen"),
        ));
    }
    if let Some(repeat) = fields.remove("repeat") {
        let what = format!("{context}: `repeat`");
        match deserialize::<RepeatSpec>(&repeat, &what, source, source.at(repeat.span())) {
            Ok(r) => group.repeat = Some(r),
            Err(d) => errors.push(d),
        }
    }
    group
}

/// A `cache:` value: `false`, or a mapping with `ttl` (a duration, checked
/// by the compiler). Anything else is reported at its place (`what` names
/// the key) and gives `None`.
/// `tools:`: a list of entries, each kept as JSON with its position (the
/// compiler resolves them).
fn parse_tools(
    node: &Node,
    context: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<Located<Vec<Located<Value>>>> {
    let at = source.at(node.span());
    let Node::Sequence(entries) = node else {
        errors.push(Diagnostic::new(
            at,
            format!(
                "{context}: `tools` must be a list, e.g. `tools: [{{ agent: search }}]`, found {}",
                describe(node)
            ),
        ));
        return None;
    };
    let value = entries
        .iter()
        .map(|entry| Located {
            value: to_json(entry),
            at: source.at(entry.span()),
        })
        .collect();
    Some(Located { value, at })
}

fn parse_cache(
    node: &Node,
    what: &str,
    source: &Source,
    errors: &mut Diagnostics,
) -> Option<Located<CacheSpec>> {
    let at = source.at(node.span());
    const EXAMPLE: &str = "e.g. `cache: { ttl: 1h }`, or `cache: false` to turn caching off";
    match node {
        Node::Scalar(_) if to_json(node) == Value::Bool(false) => Some(Located {
            value: CacheSpec::Off,
            at,
        }),
        Node::Scalar(_) if to_json(node) == Value::Bool(true) => {
            errors.push(Diagnostic::new(
                at,
                format!("{what}: `true` says nothing of how long results may be reused; give a `ttl`, {EXAMPLE}"),
            ));
            None
        }
        Node::Mapping(map) => {
            let mut ttl = None;
            let mut ok = true;
            for (key, value) in map.iter() {
                match (key.as_str(), value.as_scalar()) {
                    ("ttl", Some(text)) => {
                        ttl = Some(marked_yaml::Spanned::new(
                            *value.span(),
                            text.as_str().to_owned(),
                        ));
                    }
                    ("ttl", None) => {
                        ok = false;
                        errors.push(Diagnostic::new(
                            source.at(value.span()),
                            format!(
                                "{what}: `ttl` must be a duration like 30s, 1h or 7days, found {}",
                                describe(value)
                            ),
                        ));
                    }
                    (other, _) => {
                        ok = false;
                        errors.push(Diagnostic::new(
                            source.at(key.span()),
                            format!("{what}: unknown key `{other}`; expected: ttl"),
                        ));
                    }
                }
            }
            match ttl {
                Some(ttl) if ok => Some(Located {
                    value: CacheSpec::On { ttl },
                    at,
                }),
                None if ok => {
                    errors.push(Diagnostic::new(
                        at,
                        format!("{what}: missing `ttl`, {EXAMPLE}"),
                    ));
                    None
                }
                _ => None,
            }
        }
        other => {
            errors.push(Diagnostic::new(
                at,
                format!(
                    "{what} must be `false` or a mapping with `ttl`, {EXAMPLE}; found `{}`",
                    describe(other)
                ),
            ));
            None
        }
    }
}

fn deserialize<T: serde::de::DeserializeOwned>(
    node: &Node,
    context: &str,
    source: &Source,
    fallback: Option<Location>,
) -> Result<T, Diagnostic> {
    marked_yaml::from_node(node).map_err(|err| {
        let path = err.path().map(str::to_owned);
        let inner = err.into_inner();
        let at = inner
            .start_mark()
            .map(|m| Location {
                file: source.file.clone(),
                line: m.line(),
                column: m.column(),
            })
            .or(fallback);
        let message = match (&inner, path.as_deref()) {
            (marked_yaml::Error::UnknownFieldError(key, expected, _), _) => format!(
                "{context}: unknown key `{key}`{}; expected one of: {}",
                crate::diagnostic::did_you_mean(key, expected.iter().copied()),
                expected.join(", ")
            ),
            (_, Some(path)) if !path.is_empty() && path != "." => {
                format!("{context}: `{path}`: {inner}")
            }
            _ => format!("{context}: {inner}"),
        };
        Diagnostic::new(at, message)
    })
}

/// Refuses nesting deeper than `max_depth` (mappings and sequences, block
/// or flow, the top-level mapping counting as 1) and YAML anchors/aliases,
/// in one pass over the parser's events: no tree is built, nothing recurses.
/// Other malformations are left to the real parse, which reports them.
fn check_depth(text: &str, max_depth: usize, source: &Source) -> Result<(), Diagnostic> {
    use yaml_rust2::parser::{Event, Parser};
    let at = |mark: yaml_rust2::scanner::Marker| {
        Some(Location {
            file: source.file.clone(),
            line: mark.line(),
            column: mark.col() + 1,
        })
    };
    let too_deep = |mark, max_depth: usize| {
        Diagnostic::new(
            at(mark),
            format!(
                "mappings and lists nested deeper than {max_depth} levels; \
                 the limit is {max_depth} (max_depth)"
            ),
        )
    };
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            // The scanner looks ahead through flow collections (`[[[…`) and
            // stops by itself past 255 levels of them.
            Err(e) if e.info() == "recursion limit exceeded" => {
                return Err(too_deep(*e.marker(), max_depth.min(255)));
            }
            // Anything else is reported, the same way, by the real parse.
            Err(_) => return Ok(()),
        };
        match event {
            Event::StreamEnd => return Ok(()),
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                depth += 1;
                if depth > max_depth {
                    return Err(too_deep(mark, max_depth));
                }
                if anchor > 0 {
                    return Err(anchor_error(at(mark)));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            Event::Alias(_) => return Err(anchor_error(at(mark))),
            Event::Scalar(_, _, anchor, _) if anchor > 0 => return Err(anchor_error(at(mark))),
            _ => {}
        }
    }
}

fn anchor_error(at: Option<Location>) -> Diagnostic {
    Diagnostic::new(
        at,
        "YAML anchors and aliases are not supported in pipeline files",
    )
}

fn yaml_error(err: marked_yaml::LoadError, source: &Source) -> Diagnostic {
    use marked_yaml::LoadError as E;
    let (mark, message) = match &err {
        E::TopLevelMustBeMapping(m) => (
            *m,
            "expected a mapping with `pipeline` and `agents` at the top level".to_owned(),
        ),
        E::TopLevelMustBeSequence(m) => (*m, "unexpected top-level sequence".to_owned()),
        E::UnexpectedAnchor(m) => (
            *m,
            "YAML anchors and aliases are not supported in pipeline files".to_owned(),
        ),
        E::MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_owned()),
        E::UnexpectedTag(m) => (
            *m,
            "YAML tags are not supported in pipeline files".to_owned(),
        ),
        E::ScanError(m, scan) => (*m, format!("malformed YAML: {}", scan.info())),
        E::DuplicateKey(dup) => {
            let first = dup
                .prev_key
                .span()
                .start()
                .map(|p| format!(" (first defined at line {})", p.line()))
                .unwrap_or_default();
            let mark = dup
                .key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 1, 1));
            (mark, format!("duplicate key `{}`{first}", dup.key.as_str()))
        }
    };
    Diagnostic::new(
        Some(Location {
            file: source.file.clone(),
            line: mark.line(),
            column: mark.column(),
        }),
        message,
    )
}

/// A top-level key's string value with its position, or `problem` reported
/// at the value.
fn located_scalar(
    value: &Node,
    source: &Source,
    problem: &str,
    errors: &mut Diagnostics,
) -> Option<Located<String>> {
    match scalar(value) {
        Some(s) => Some(Located {
            value: s.to_owned(),
            at: source.at(value.span()),
        }),
        None => {
            errors.push(Diagnostic::new(source.at(value.span()), problem));
            None
        }
    }
}

fn scalar(node: &Node) -> Option<&str> {
    node.as_scalar().map(|s| s.as_str())
}

fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) => s.as_str().to_owned(),
        Node::Mapping(_) => "a mapping".to_owned(),
        Node::Sequence(_) => "a list".to_owned(),
    }
}

/// Converts a YAML node to JSON with the YAML 1.2 core schema: plain scalars
/// become null, booleans and numbers where they look like one; quoted
/// scalars stay strings.
pub(crate) fn to_json(node: &Node) -> Value {
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return Value::String(text.to_owned());
            }
            match text {
                "null" | "Null" | "NULL" | "~" | "" => Value::Null,
                "true" | "True" | "TRUE" => Value::Bool(true),
                "false" | "False" | "FALSE" => Value::Bool(false),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        Value::from(i)
                    } else if let Some(f) = text
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .and_then(serde_json::Number::from_f64)
                    {
                        Value::Number(f)
                    } else {
                        Value::String(text.to_owned())
                    }
                }
            }
        }
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(yaml: &str) -> Value {
        let node = marked_yaml::parse_yaml_with_options(0, yaml, loader_options()).unwrap();
        to_json(&node)
    }

    #[test]
    fn yaml_scalars_follow_the_core_schema() {
        assert_eq!(
            json_of("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: text\ng: [1, x]"),
            serde_json::json!({"a": 1, "b": 1.5, "c": true, "d": null, "e": "1", "f": "text", "g": [1, "x"]})
        );
    }

    #[test]
    fn json_documents_load_as_yaml() {
        assert_eq!(
            json_of(r#"{"a": {"b": [1, 2.5, "3", false, null]}}"#),
            serde_json::json!({"a": {"b": [1, 2.5, "3", false, null]}})
        );
    }
}
