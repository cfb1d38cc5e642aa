//! The pipeline file's JSON Schema (draft 2020-12), for editors and other
//! tools: `braid schema` prints it, and `docs/pipeline.schema.json` is its
//! committed copy.
//!
//! Most of it is derived ([`schemars::JsonSchema`]) from the structs the
//! loader deserializes (the `spec` module), so a key added there, with its
//! doc comment, shows up here. What cannot be derived is written here, and
//! unit tests compare its keys with the loader's lists of keys:
//!
//! - `value` and `cache` of an agent, and `cache` of `defaults`: the loader
//!   reads them from the YAML node by hand (`value` is any JSON, `cache` is
//!   `false` or a mapping), before serde sees the rest.
//! - the keys of a group (`kind: pipeline`: `agents`, `path`, `outputs`,
//!   `carry`, `repeat`), also taken out by hand.
//! - the keys of `builtin` and `input` agents, which the loader keeps as
//!   untyped settings for their kind to check.
//! - the keys of kinds outside the core (`http`, `llm`, `sql`): each crate
//!   that adds a kind describes its keys as a [`KindSchema`], passed to
//!   [`pipeline_schema_with`].
//!
//! An agent's keys depend on its `kind`: the schema has one closed object
//! per kind (`$defs/<kind>Agent`, unknown keys refused) chosen by an
//! `if`/`then` on `kind`, so an editor completes and checks the keys of the
//! kind being written.
//!
//! The schema checks shape only: whether reads resolve, durations parse or
//! CEL conditions compile is for `braid validate`.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::spec::{
    AGENT_DEF, AgentSpec, COMMON_AGENT_KEYS, PipelineSpec, RepeatSpec, agents_schema, cache_schema,
    core_kind_keys,
};

/// The keys of one agent kind, besides those every agent has, for the
/// pipeline file's schema.
///
/// ```
/// use braid_core::schema::KindSchema;
/// use serde_json::json;
///
/// let echo = KindSchema::new("echo", "Writes its `text` to its one write.")
///     .required_key("text", "What it writes.", json!({"type": "string"}));
/// let schema = braid_core::schema::pipeline_schema_with(&[echo]);
/// assert!(schema["$defs"]["echoAgent"]["properties"]["text"].is_object());
/// ```
#[derive(Debug, Clone)]
pub struct KindSchema {
    name: String,
    description: String,
    keys: Map<String, Value>,
    required: Vec<String>,
    /// Common keys the kind does not take.
    without: Vec<&'static str>,
}

impl KindSchema {
    /// A kind named `name` (as written after `kind:`), with no keys of its
    /// own yet.
    pub fn new(name: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            keys: Map::new(),
            required: Vec::new(),
            without: Vec::new(),
        }
    }

    /// Adds an optional key: `schema` is its JSON Schema, to which
    /// `description` is added.
    pub fn key(mut self, name: &str, description: &str, schema: Value) -> Self {
        let mut schema = match schema {
            Value::Object(map) => map,
            Value::Bool(true) => Map::new(),
            other => panic!("the schema of key `{name}` must be an object, found {other}"),
        };
        schema.insert("description".into(), description.into());
        self.keys.insert(name.to_owned(), Value::Object(schema));
        self
    }

    /// Adds a key every agent of the kind must have.
    pub fn required_key(mut self, name: &str, description: &str, schema: Value) -> Self {
        self.required.push(name.to_owned());
        self.key(name, description, schema)
    }

    /// The kind's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind's own keys, in the order they were added.
    pub fn key_names(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    fn without(mut self, keys: &[&'static str]) -> Self {
        self.without.extend_from_slice(keys);
        self
    }
}

/// The schema of a pipeline file with the core's kinds only (`sleep`,
/// `command`, `builtin`, `input` and groups, `pipeline`).
pub fn pipeline_schema() -> Value {
    pipeline_schema_with(&[])
}

/// The schema of a pipeline file whose agents may also be of the `extra`
/// kinds (a kind named like a core one replaces its keys).
pub fn pipeline_schema_with(extra: &[KindSchema]) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let cache = cache_schema(&mut generator).to_value();
    generator.subschema_for::<AgentSpec>();
    let repeat = generator.subschema_for::<RepeatSpec>().to_value();
    let mut root = generator.root_schema_for::<PipelineSpec>().to_value();
    drop_null(&mut root);

    let defs = root["$defs"].as_object_mut().expect("the root has $defs");
    let derived = defs
        .shift_remove("AgentSpec")
        .expect("AgentSpec's schema is a definition");
    let mut properties = derived["properties"]
        .as_object()
        .cloned()
        .expect("AgentSpec's schema has properties");
    properties.insert(
        "cache".into(),
        with_description(
            cache,
            "Reuse the agent's results for the same reads: `{ ttl: 1h }` keeps each for that long, `false` turns off the cache `defaults` set.",
        ),
    );
    properties.insert(
        "tool".into(),
        json!({
            "description": "Makes the agent a tool that models call with arguments (not a step of the pipeline): `{ description, parameters }`, `parameters` being the JSON Schema of its arguments (an object). Its writes are the call's result.",
            "type": "object",
            "properties": {
                "description": {"type": "string", "description": "What the tool does, for the model."},
                "parameters": {"type": "object", "description": "The JSON Schema of its arguments (`type: object`)."}
            },
            "required": ["description"],
            "additionalProperties": false
        }),
    );
    properties.insert(
        "tools".into(),
        json!({
            "description": "The tools the agent's model may call: `- agent: NAME` (a tool agent of the pipeline) or a tool source's entry (`- mcp: {...}`).",
            "type": "array",
            "items": {"type": "object", "minProperties": 1, "maxProperties": 1}
        }),
    );
    properties.insert(
        "value".into(),
        json!({"description": "`kind: sleep`: what it writes to each of its writes (any JSON; default `true`)."}),
    );
    let mut common = Map::new();
    for key in COMMON_AGENT_KEYS {
        let schema = properties
            .get(*key)
            .cloned()
            .unwrap_or_else(|| panic!("the common agent key `{key}` has a schema"));
        common.insert((*key).to_owned(), schema);
    }

    let mut kinds = core_kinds(&properties, &repeat);
    for kind in extra {
        match kinds.iter_mut().find(|k| k.name == kind.name) {
            Some(same) => *same = kind.clone(),
            None => kinds.push(kind.clone()),
        }
    }

    let names: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
    let kind_list: Vec<String> = kinds
        .iter()
        .map(|k| format!("`{}`: {}", k.name, k.description))
        .collect();
    let mut outer = common.clone();
    outer.insert(
        "kind".into(),
        json!({
            "description": format!("What the agent is; its kind decides which other keys it takes. {}", kind_list.join(" ")),
            "enum": names,
        }),
    );
    let mut dispatch = Vec::new();
    for kind in &kinds {
        let def = format!("{}Agent", kind.name);
        let mut props = Map::new();
        props.insert(
            "kind".into(),
            json!({"const": kind.name, "description": kind.description}),
        );
        for (key, schema) in &common {
            if !kind.without.contains(&key.as_str()) {
                props.insert(key.clone(), schema.clone());
            }
        }
        props.extend(kind.keys.clone());
        let mut required = vec!["kind".to_owned()];
        required.extend(kind.required.iter().cloned());
        defs.insert(
            def.clone(),
            json!({
                "description": format!("An agent of kind `{}`: {}", kind.name, kind.description),
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": false,
            }),
        );
        dispatch.push(json!({
            "if": {"properties": {"kind": {"const": kind.name}}, "required": ["kind"]},
            "then": {"$ref": format!("#/$defs/{def}")},
        }));
    }
    defs.insert(
        AGENT_DEF.into(),
        json!({
            "description": "One agent: its `kind`, the fields it `reads` and `writes`, and its kind's own keys.",
            "type": "object",
            "properties": outer,
            "required": ["kind"],
            "allOf": dispatch,
        }),
    );
    root["required"] = json!(["pipeline", "agents"]);
    root
}

/// A pipeline file's text as the JSON its schema describes, read the way
/// the loader reads it (YAML 1.2 core schema, quoted scalars stay strings,
/// `limits.max_depth` and no anchors): for checking a file against
/// [`pipeline_schema`] with any JSON Schema validator.
///
/// ```
/// let json = braid_core::schema::pipeline_json(
///     "pipeline: p\nagents:\n  a: { kind: sleep, ms: 5, writes: [x] }\n",
///     &braid_core::LoadLimits::default(),
/// ).unwrap();
/// assert_eq!(json["agents"]["a"]["ms"], 5);
/// ```
pub fn pipeline_json(text: &str, limits: &crate::LoadLimits) -> Result<Value, crate::LoadError> {
    let source = crate::spec::Source { file: None };
    if text.len() > limits.max_bytes {
        return Err(crate::LoadError::Invalid {
            diagnostics: vec![crate::Diagnostic::new(
                source.start(),
                format!(
                    "the pipeline is {} bytes long; the limit is {} bytes (max_bytes)",
                    text.len(),
                    limits.max_bytes
                ),
            )],
        });
    }
    crate::spec::text_to_json(text, &source, limits).map_err(|d| crate::LoadError::Invalid {
        diagnostics: vec![d],
    })
}

/// The core's kinds: `sleep` and `command` with their keys from the
/// derived `AgentSpec` schema (`properties`), the others written here.
fn core_kinds(properties: &Map<String, Value>, repeat: &Value) -> Vec<KindSchema> {
    let derived = |kind: &str, description: &str| {
        let mut schema = KindSchema::new(kind, description);
        for key in core_kind_keys(kind) {
            let value = properties
                .get(*key)
                .cloned()
                .unwrap_or_else(|| panic!("`{key}` of `{kind}` has a schema"));
            schema.keys.insert((*key).to_owned(), value);
        }
        schema
    };
    let mut command = derived(
        "command",
        "Runs a program: its reads as JSON on stdin, a JSON object of its writes on stdout.",
    );
    command.required.push("run".into());
    let agents = agents_schema(&mut SchemaGenerator::default()).to_value();
    let fields_to_fields = |what: &str| {
        json!({
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": what,
        })
    };
    vec![
        derived("sleep", "Waits `ms` milliseconds, then writes `value` to each of its writes."),
        command,
        KindSchema::new(
            "builtin",
            "Calls a Rust function registered with the library (`AgentKinds::builtin`).",
        )
        .required_key(
            "function",
            "The name the Rust agent was registered under.",
            json!({"type": "string"}),
        ),
        KindSchema::new(
            "input",
            "Waits for an answer from outside the run (a person or another system), which it writes to its one write.",
        )
        .required_key(
            "prompt",
            "The question asked.",
            json!({"type": "string", "maxLength": crate::pipeline::MAX_PROMPT_BYTES}),
        )
        .key(
            "schema",
            "The JSON Schema the answer must match.",
            json!({"type": "object"}),
        )
        .key(
            "default",
            "The answer taken when `timeout` passes with none (it must match `schema`).",
            json!({}),
        )
        .without(&["foreach", "as", "on_item_failure", "expected_items"]),
        KindSchema::new(
            "pipeline",
            "A group: a sub-pipeline of its own agents run as one agent, once or in a loop (`repeat`).",
        )
        .key(
            "agents",
            "The group's own agents (or `path:`); they see the fields the group reads, and write fields of the group's own.",
            agents,
        )
        .key(
            "path",
            "A pipeline file (relative to this file's folder) whose agents are the group's, instead of `agents:`.",
            json!({"type": "string"}),
        )
        .required_key(
            "outputs",
            "The fields the group writes: parent field → the group's field it takes its value from.",
            fields_to_fields(""),
        )
        .key(
            "carry",
            "For `repeat`: next round's field → this round's field it takes its value from.",
            fields_to_fields(""),
        )
        .key("repeat", "", repeat.clone())
        .without(&["writes"]),
    ]
    .into_iter()
    .map(|mut kind| {
        // Keys given a description of "" keep their schema's own.
        for schema in kind.keys.values_mut() {
            if schema.get("description").and_then(Value::as_str) == Some("") {
                schema.as_object_mut().map(|s| s.remove("description"));
            }
        }
        kind
    })
    .collect()
}

fn with_description(mut schema: Value, description: &str) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("description".into(), description.into());
    }
    schema
}

/// Removes `null` from the types schemars gives `Option`s: a key that is
/// not wanted is left out of the file, and the loader refuses `null`.
fn drop_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get("anyOf")
                && any.len() == 2
                && any.iter().any(|s| s == &json!({"type": "null"}))
            {
                let keep = any
                    .iter()
                    .find(|s| *s != &json!({"type": "null"}))
                    .cloned()
                    .unwrap_or_default();
                map.remove("anyOf");
                if let Value::Object(keep) = keep {
                    for (k, v) in keep {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::TOP_LEVEL_KEYS;

    fn keys(schema: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    fn sorted<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        let mut keys: Vec<&str> = keys.into_iter().collect();
        keys.sort_unstable();
        keys
    }

    #[test]
    fn the_top_level_keys_are_the_loaders() {
        let schema = pipeline_schema();
        assert_eq!(keys(&schema), sorted(TOP_LEVEL_KEYS.iter().copied()));
        assert_eq!(schema["additionalProperties"], json!(false));
    }

    #[test]
    fn each_core_kind_takes_the_common_keys_and_its_own() {
        let schema = pipeline_schema();
        let defs = &schema["$defs"];
        for kind in ["sleep", "command"] {
            let expected = COMMON_AGENT_KEYS
                .iter()
                .chain(core_kind_keys(kind))
                .copied();
            assert_eq!(
                keys(&defs[format!("{kind}Agent")]),
                sorted(expected),
                "{kind}"
            );
        }
        let input = COMMON_AGENT_KEYS
            .iter()
            .copied()
            .filter(|k| !["foreach", "as", "on_item_failure", "expected_items"].contains(k))
            .chain(crate::compile::INPUT_KEYS.iter().copied());
        assert_eq!(keys(&defs["inputAgent"]), sorted(input));
        let group = COMMON_AGENT_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "writes")
            .chain(["agents", "path", "outputs", "carry", "repeat"]);
        assert_eq!(keys(&defs["pipelineAgent"]), sorted(group));
    }

    #[test]
    fn every_property_has_a_description() {
        fn walk(path: &str, value: &Value, missing: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::Object(props)) = map.get("properties") {
                        for (key, schema) in props {
                            let described =
                                schema.get("description").is_some() || schema.get("$ref").is_some();
                            if !described {
                                missing.push(format!("{path}/{key}"));
                            }
                        }
                    }
                    for (k, v) in map.iter().filter(|(k, _)| *k != "if") {
                        walk(&format!("{path}/{k}"), v, missing);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(&format!("{path}/{i}"), v, missing);
                    }
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk("#", &pipeline_schema(), &mut missing);
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn an_extra_kind_gets_a_closed_definition() {
        let extra = KindSchema::new("echo", "Echoes.").required_key(
            "text",
            "What it writes.",
            json!({"type": "string"}),
        );
        let schema = pipeline_schema_with(&[extra]);
        let echo = &schema["$defs"]["echoAgent"];
        assert_eq!(echo["required"], json!(["kind", "text"]));
        assert_eq!(echo["additionalProperties"], json!(false));
        assert!(
            schema["$defs"]["Agent"]["properties"]["kind"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("echo"))
        );
    }
}
