//! Loading: a pipeline's text (from a file, at most `max_bytes`, UTF-8)
//! parsed within the limits, compiled, and stamped with its content hash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Deadline, compile};
use crate::diagnostic::{Diagnostic, Diagnostics, LoadError, Location};
use crate::kinds::{AgentKinds, Kind};
use crate::limits::LoadLimits;
use crate::pipeline::Pipeline;
use crate::spec::{self, Source};

impl Pipeline {
    /// Loads and validates a pipeline file (YAML or JSON). Command agents
    /// run from the file's folder.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, LoadError> {
        Self::from_file_with(path, &AgentKinds::standard())
    }

    /// Loads a pipeline file whose agents may use `kinds`' builtin agents
    /// and extra kinds.
    pub fn from_file_with(path: impl AsRef<Path>, kinds: &AgentKinds) -> Result<Self, LoadError> {
        Self::from_file_limited(path, kinds, &LoadLimits::default())
    }

    /// Loads a pipeline file under `limits` (size, nesting depth, agent
    /// count, condition size, compile time).
    pub fn from_file_limited(
        path: impl AsRef<Path>,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let read_error = |source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = read_text(path, limits)?;
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut pipeline = Self::load(&text, Some(path), &dir, kinds, limits)?;
        // Absolute, so a stored run can find its file from anywhere.
        pipeline.source = Some(absolute);
        Ok(pipeline)
    }

    /// Loads and validates a pipeline from text. Command agents run from the
    /// current directory.
    pub fn from_yaml_str(text: &str) -> Result<Self, LoadError> {
        Self::from_yaml_str_with(text, &AgentKinds::standard())
    }

    /// Loads a pipeline from text whose agents may use `kinds`' builtin
    /// agents and extra kinds.
    pub fn from_yaml_str_with(text: &str, kinds: &AgentKinds) -> Result<Self, LoadError> {
        Self::from_yaml_str_limited(text, kinds, &LoadLimits::default())
    }

    /// Loads a pipeline from text under `limits` (size, nesting depth,
    /// agent count, condition size, compile time): what a server uses for
    /// pipelines its clients send.
    pub fn from_yaml_str_limited(
        text: &str,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::load(text, None, &dir, kinds, limits)
    }

    fn load(
        text: &str,
        file: Option<&Path>,
        dir: &Path,
        kinds: &AgentKinds,
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let source = Source {
            file: file.map(Arc::from),
        };
        // In file order, as a reader goes through the file, at most
        // `max_diagnostics` of them.
        let invalid = |diagnostics: Diagnostics| LoadError::Invalid {
            diagnostics: diagnostics.finish(),
        };
        if text.len() > limits.max_bytes {
            let mut errors = Diagnostics::new(1);
            errors.push(Diagnostic::new(
                source.start(),
                format!(
                    "the pipeline is {} bytes long; the limit is {} bytes (max_bytes)",
                    text.len(),
                    limits.max_bytes
                ),
            ));
            return Err(invalid(errors));
        }
        // A byte-order mark is not part of the document (editors on Windows
        // write one); the hash still covers the text as given.
        let body = text.strip_prefix('\u{feff}').unwrap_or(text);
        let deadline = Deadline::after(limits.compile_budget);
        let checks_keys = |kind: &str| kinds.get(kind).is_some_and(Kind::checks_keys);
        let (spec, shape_errors) =
            spec::parse_tolerant(body, &source, limits, &checks_keys).map_err(invalid)?;
        let declared = spec.agents.len() + spec.broken_agents.len();
        if declared > limits.max_agents {
            let mut errors = Diagnostics::new(1);
            errors.push(Diagnostic::new(
                spec.agents_at.clone(),
                format!(
                    "the pipeline declares {} agents; the limit is {} (max_agents)",
                    declared, limits.max_agents
                ),
            ));
            return Err(invalid(errors));
        }
        // Shape errors and the compile's are reported together.
        let mut pipeline =
            compile(&spec, dir, kinds, limits, &deadline, shape_errors).map_err(invalid)?;
        pipeline.content_hash = Arc::from(content_hash(text));
        Ok(pipeline)
    }
}

/// Reads a pipeline file of at most `limits.max_bytes` bytes as UTF-8,
/// reporting invalid UTF-8 at its line and column.
pub(super) fn read_text(path: &Path, limits: &LoadLimits) -> Result<String, LoadError> {
    use std::io::Read;
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(limits.max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    file.take(cap).read_to_end(&mut bytes).map_err(read_error)?;
    let at = |line: usize, column: usize| {
        Some(Location {
            file: Some(Arc::from(path)),
            line,
            column,
        })
    };
    if bytes.len() > limits.max_bytes {
        return Err(LoadError::Invalid {
            diagnostics: vec![Diagnostic::new(
                at(1, 1),
                format!(
                    "the pipeline file is larger than the limit of {} bytes (max_bytes)",
                    limits.max_bytes
                ),
            )],
        });
    }
    String::from_utf8(bytes).map_err(|err| {
        let bytes = err.as_bytes();
        let good = err.utf8_error().valid_up_to();
        let valid = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = valid.matches('\n').count() + 1;
        let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        LoadError::Invalid {
            diagnostics: vec![Diagnostic::new(
                at(line, column),
                format!(
                    "invalid UTF-8 (byte 0x{:02x}); pipeline files must be UTF-8 text",
                    bytes[good]
                ),
            )],
        }
    })
}

fn content_hash(text: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
