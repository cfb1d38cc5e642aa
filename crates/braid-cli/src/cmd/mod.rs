//! One module per subcommand; small ones live here.

pub(crate) mod bench;
pub(crate) mod cache;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod serve;
pub(crate) mod timeline;

use std::path::Path;
use std::process::ExitCode;

use braid_core::{LoadError, Pipeline};

use crate::{ExplainFormat, exit};

/// Loads a pipeline, or prints every problem with it to stderr.
pub(crate) fn load(file: &Path) -> Result<Pipeline, ExitCode> {
    Pipeline::from_file_with(file, &crate::kinds()).map_err(|err| {
        print_load_error(&err);
        ExitCode::from(exit::INVALID)
    })
}

fn print_load_error(err: &LoadError) {
    let diagnostics = err.diagnostics();
    for d in &diagnostics {
        eprintln!("error: {d}");
    }
    if diagnostics.len() > 1 {
        eprintln!("{} errors", diagnostics.len());
    }
}

pub(crate) fn explain(file: &Path, format: ExplainFormat) -> anyhow::Result<ExitCode> {
    let pipeline = match load(file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let explanation = pipeline.explain();
    match format {
        ExplainFormat::Text => print!("{}", explanation.to_text()),
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
        ExplainFormat::Dot => print!("{}", explanation.to_dot()),
        ExplainFormat::Mermaid => print!("{}", explanation.to_mermaid()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The pipeline file's JSON Schema with every kind of [`crate::kinds`].
pub(crate) fn pipeline_schema() -> serde_json::Value {
    let mut kinds = braid_agents::kind_schemas();
    kinds.push(braid_store::sql::schema());
    braid_core::schema::pipeline_schema_with(&kinds)
}

/// Prints `value` as indented JSON and a newline (a closed pipe is not an
/// error: `braid schema | head` is fine).
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn validate(file: &Path) -> anyhow::Result<ExitCode> {
    let pipeline = match load(file) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let graph = pipeline.graph();
    println!(
        "ok: {} ({}): {} agents, {} edges, {} stages",
        pipeline.name(),
        file.display(),
        pipeline.agents().len(),
        graph.edges().count(),
        graph.stages().len()
    );
    Ok(ExitCode::SUCCESS)
}
