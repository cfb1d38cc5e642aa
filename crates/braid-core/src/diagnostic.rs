//! Load-time errors that point at the pipeline file.
//!
//! Every problem found while loading a pipeline becomes a [`Diagnostic`]: a
//! message plus, where one applies, the [`Location`] (file, line, column) of
//! the key or value at fault. Loading collects as many diagnostics as it can
//! before giving up, so `braid validate` reports every error in one go.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where in a pipeline file something was written (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, or `None` for a pipeline loaded from a string.
    pub file: Option<Arc<Path>>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}:{}:{}", file.display(), self.line, self.column),
            None => write!(f, "<pipeline>:{}:{}", self.line, self.column),
        }
    }
}

/// One problem found in a pipeline definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where the problem is, when it can be pinned to a place in the file.
    pub location: Option<Location>,
    /// What was expected and what was found, naming agents and fields.
    pub message: String,
}

impl Diagnostic {
    pub(crate) fn new(location: Option<Location>, message: impl Into<String>) -> Self {
        Self {
            location,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but the pipeline in it is not valid.
    #[error("{}", render(diagnostics))]
    Invalid {
        /// Every problem found, in file order where possible.
        diagnostics: Vec<Diagnostic>,
    },
}

impl LoadError {
    /// The individual problems (one for a read error).
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        match self {
            LoadError::Read { .. } => vec![Diagnostic::new(None, self.to_string())],
            LoadError::Invalid { diagnostics } => diagnostics.clone(),
        }
    }
}

fn render(diagnostics: &[Diagnostic]) -> String {
    let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Collects diagnostics while loading, keeping at most a fixed number
/// ([`crate::LoadLimits::max_diagnostics`]) and counting the rest, so a file
/// with a million mistakes costs memory for the first few only.
#[derive(Debug)]
pub(crate) struct Diagnostics {
    kept: Vec<Diagnostic>,
    limit: usize,
    dropped: usize,
}

impl Diagnostics {
    /// An empty collection that keeps at most `limit` diagnostics (at least one).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            kept: Vec::new(),
            limit: limit.max(1),
            dropped: 0,
        }
    }

    /// Records one diagnostic, or counts it when the limit is reached.
    pub(crate) fn push(&mut self, diagnostic: Diagnostic) {
        if self.kept.len() < self.limit {
            self.kept.push(diagnostic);
        } else {
            self.dropped += 1;
        }
    }

    /// Whether another diagnostic would still be kept: costly extras (such
    /// as "did you mean" suggestions) are only worked out while it would.
    pub(crate) fn has_room(&self) -> bool {
        self.kept.len() < self.limit
    }

    /// How many were found (kept or counted).
    pub(crate) fn len(&self) -> usize {
        self.kept.len() + self.dropped
    }

    /// No problem was found.
    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.dropped == 0
    }

    /// The kept diagnostics in file order, then a line saying how many more
    /// there were.
    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        self.kept
            .sort_by_key(|d| d.location.as_ref().map(|l| (l.line, l.column)));
        if self.dropped > 0 {
            self.kept.push(Diagnostic::new(
                None,
                format!(
                    "and {} more problems (only the first {} are reported: max_diagnostics)",
                    self.dropped, self.limit
                ),
            ));
        }
        self.kept
    }
}

impl Diagnostics {
    /// Takes in another collection's diagnostics (a group's), each message
    /// prefixed with `prefix`, counting what it dropped.
    pub(crate) fn absorb(&mut self, other: Diagnostics, prefix: &str) {
        for mut d in other.kept {
            d.message = format!("{prefix}{}", d.message);
            self.push(d);
        }
        self.dropped += other.dropped;
    }
}

impl Extend<Diagnostic> for Diagnostics {
    fn extend<I: IntoIterator<Item = Diagnostic>>(&mut self, iter: I) {
        for d in iter {
            self.push(d);
        }
    }
}

/// ` (did you mean `x`?)` when one of the `known` names is one or two
/// edits away from `wanted` (the closest; none for names over 64 bytes).
pub(crate) fn did_you_mean<'n>(wanted: &str, known: impl Iterator<Item = &'n str>) -> String {
    if wanted.len() > 64 {
        return String::new();
    }
    known
        .filter(|k| k.len().abs_diff(wanted.len()) <= 2)
        .take(10_000)
        .map(|k| (edit_distance(wanted, k), k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// How a JSON value is described in an error: `a string`, `a list`, `null`…
pub(crate) fn json_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
