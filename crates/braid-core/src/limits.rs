//! Bounds on what a pipeline file may ask of the loader.
//!
//! Every byte of a pipeline file may come from outside (a request to
//! `braid serve`, a file someone else wrote), so loading is bounded in size,
//! nesting depth, agent count, condition size and compile time. A pipeline
//! over a limit is refused with a [`crate::Diagnostic`] that names the limit
//! and where it was exceeded; the process never recurses without bound on
//! what it was given.
//!
//! ```
//! use braid_core::{AgentKinds, LoadLimits, Pipeline};
//!
//! let limits = LoadLimits { max_agents: 2, ..LoadLimits::default() };
//! let text = "pipeline: p\nagents:\n  a: { kind: sleep, ms: 1 }\n  b: { kind: sleep, ms: 1 }\n  c: { kind: sleep, ms: 1 }\n";
//! let err = Pipeline::from_yaml_str_limited(text, &AgentKinds::standard(), &limits).unwrap_err();
//! assert!(err.to_string().contains("agents"));
//! ```

use std::time::Duration;

/// Limits applied while a pipeline is parsed and compiled.
///
/// The defaults suit files an operator wrote; a server facing untrusted
/// clients may lower them (`braid serve --max-agents`, and so on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadLimits {
    /// The largest pipeline text, in bytes (default 8 MiB: a load peaks at
    /// roughly 100 times the text's size in memory).
    pub max_bytes: usize,
    /// The deepest nesting of mappings and sequences in the file (and in
    /// any value in it; the top-level mapping is level 1), checked while
    /// parsing, before any tree is built. The default, 64, keeps values
    /// well under serde_json's 128-level limit when stores read them back.
    pub max_depth: usize,
    /// The most agents a pipeline may declare, checked before compiling.
    pub max_agents: usize,
    /// The longest `when:` condition, in bytes.
    pub max_condition_bytes: usize,
    /// The deepest nesting of a `when:` condition's expression, checked
    /// before CEL parses it: an upper bound of its syntax tree's depth,
    /// counting each bracket, operator and member access (see
    /// [`crate::Condition::parse`]).
    pub max_condition_depth: usize,
    /// The most diagnostics reported; the rest are summarised as
    /// "and K more".
    pub max_diagnostics: usize,
    /// How long compiling may take before it gives up with an error
    /// (checked between agents and between batches of the race check).
    pub compile_budget: Duration,
    /// Whether loading may start programs: a tool source's server over
    /// stdio (`mcp: { command: ... }`). A server gives pipelines that
    /// clients register `false` unless it allows `command` agents.
    pub allow_tool_processes: bool,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            max_depth: 64,
            max_agents: 100_000,
            max_condition_bytes: 4 * 1024,
            max_condition_depth: 32,
            max_diagnostics: 100,
            compile_budget: Duration::from_secs(10),
            allow_tool_processes: true,
        }
    }
}
