//! `braid init [DIR]`: writes a small pipeline with a Python command agent
//! that runs at once, as a starting point.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::exit;

const PIPELINE: &str = include_str!("init/pipeline.yaml");
const WORDS_PY: &str = include_str!("init/words.py");

/// Writes `DIR/pipeline.yaml` and `DIR/agents/words.py`; refuses to
/// overwrite either.
pub(crate) fn init(dir: &Path) -> anyhow::Result<ExitCode> {
    let pipeline = dir.join("pipeline.yaml");
    let agent = dir.join("agents").join("words.py");
    for path in [&pipeline, &agent] {
        if path.exists() {
            eprintln!(
                "error: {} already exists; braid init writes only new files (pick another folder)",
                path.display()
            );
            return Ok(ExitCode::from(exit::INVALID));
        }
    }
    std::fs::create_dir_all(dir.join("agents"))
        .with_context(|| format!("cannot create {}", dir.join("agents").display()))?;
    std::fs::write(&pipeline, PIPELINE)
        .with_context(|| format!("cannot write {}", pipeline.display()))?;
    std::fs::write(&agent, WORDS_PY)
        .with_context(|| format!("cannot write {}", agent.display()))?;
    println!("wrote {} and {}", pipeline.display(), agent.display());
    println!("run it:  braid run {}", pipeline.display());
    println!("graph:   braid explain {}", pipeline.display());
    Ok(ExitCode::SUCCESS)
}
