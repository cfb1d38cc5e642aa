//! One module per subcommand; small ones live here.

pub(crate) mod bench;
pub(crate) mod cache;
pub(crate) mod init;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod serve;
pub(crate) mod timeline;
pub(crate) mod worker;

use std::path::{Path, PathBuf};
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
        ExplainFormat::Svg => print!("{}", graph_svg(&explanation)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The graph drawn in layers, left to right, by layout-rs (a Sugiyama
/// layout: layers, crossing reduction, edges routed around boxes). The
/// critical path is drawn in red, as in the DOT output.
fn graph_svg(explanation: &braid_core::explain::Explanation) -> String {
    use layout::backends::svg::SVGWriter;
    use layout::core::base::Orientation;
    use layout::core::geometry::Point;
    use layout::core::style::StyleAttr;
    use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
    use layout::topo::layout::VisualGraph;

    let mut graph = VisualGraph::new(Orientation::LeftToRight);
    let mut handles = std::collections::HashMap::new();
    for agent in &explanation.agents {
        let label = match &agent.foreach {
            Some(f) => format!("{}\n{} foreach {}", agent.name, agent.kind, f.field),
            None => format!("{}\n{}", agent.name, agent.kind),
        };
        let critical = explanation.critical_path.contains(&agent.name);
        let look = if critical {
            StyleAttr::new(layout::core::color::Color::fast("red"), 2, None, 5, 14)
        } else {
            StyleAttr::new(layout::core::color::Color::fast("black"), 1, None, 5, 14)
        };
        let width = 20.0 + 8.0 * agent.name.len().max(agent.kind.len() + 2) as f64;
        let element = Element::create(
            ShapeKind::new_box(&label),
            look,
            Orientation::LeftToRight,
            Point::new(width.min(400.0), 50.0),
        );
        handles.insert(agent.name.clone(), graph.add_node(element));
    }
    for [from, to] in &explanation.edges {
        if let (Some(&a), Some(&b)) = (handles.get(from), handles.get(to)) {
            graph.add_edge(Arrow::simple(""), a, b);
        }
    }
    let mut svg = SVGWriter::new();
    graph.do_it(false, false, false, &mut svg);
    svg.finalize()
}

/// Checks each file and reports every problem in each; exit 2 if any
/// file has one.
pub(crate) fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut invalid = 0;
    for file in files {
        let pipeline = match Pipeline::from_file_with(file, &crate::kinds()) {
            Ok(p) => p,
            Err(err) => {
                print_load_error(&err);
                invalid += 1;
                continue;
            }
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
    }
    if invalid > 0 {
        if files.len() > 1 {
            eprintln!("{invalid} of {} files are invalid", files.len());
        }
        return Ok(ExitCode::from(exit::INVALID));
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
