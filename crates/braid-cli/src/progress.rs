//! The live progress display of `braid run` on a terminal (indicatif): one
//! line per agent for small pipelines, one bar for large ones.

use std::collections::HashMap;
use std::time::Duration;

use braid_core::event::EventKind;
use braid_core::event::EventReceiver;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Above this many agents, one overall bar replaces per-agent lines.
const MAX_LINES: usize = 24;

/// Renders events until the run finishes (or the sender goes away).
pub(crate) async fn show(agents: Vec<String>, mut events: EventReceiver) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let width = agents.iter().map(String::len).max().unwrap_or(0);
    let style = ProgressStyle::with_template("{spinner} {prefix} {msg}")
        .expect("a valid template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓");
    let lines: HashMap<String, ProgressBar> = if agents.len() <= MAX_LINES {
        agents
            .iter()
            .map(|name| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("{name:<width$}"));
                bar.set_message("pending");
                (name.clone(), bar)
            })
            .collect()
    } else {
        HashMap::new()
    };
    let overall = (agents.len() > MAX_LINES).then(|| {
        let bar = multi.add(ProgressBar::new(agents.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} agents done {msg}")
                .expect("a valid template"),
        );
        bar
    });
    let line = |agent: &str| lines.get(agent);
    // Instances of `foreach` agents (`agent[i]`) count on their agent's line.
    let mut items: HashMap<String, (u64, u64)> = HashMap::new();
    let mut logs = LogLines::default();
    while let Some(event) = events.recv().await {
        if let EventKind::AgentLog {
            agent,
            line,
            partial,
        } = &event.kind
        {
            // Instances' and members' lines too, under their own names.
            if let Some(text) = logs.take(agent, line, *partial) {
                multi.suspend(|| eprintln!("{text}"));
            }
            continue;
        }
        if let Some(agent) = event.kind.agent()
            && braid_core::report::top_agent(agent) != &**agent
        {
            // An instance (`work[3]`) or a group's member (`per_doc[3].a`,
            // `refine#2.draft`): counted on its top-level agent's line.
            let parent = braid_core::report::top_agent(agent);
            let (done, failed) = items.entry(parent.to_owned()).or_default();
            match &event.kind {
                EventKind::AgentCompleted { .. } => *done += 1,
                EventKind::AgentFailed { .. } => *failed += 1,
                _ => continue,
            }
            if let Some(bar) = line(parent) {
                let failed = if *failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                };
                bar.set_message(format!("running: {done} items done{failed}"));
            }
            continue;
        }
        match &event.kind {
            EventKind::AgentStarted { agent, .. } => {
                if let Some(bar) = line(agent) {
                    bar.set_message("running");
                    bar.enable_steady_tick(Duration::from_millis(100));
                }
            }
            EventKind::AgentRetrying { agent, attempt, .. } => {
                if let Some(bar) = line(agent) {
                    bar.set_message(format!("retrying (attempt {} failed)", attempt));
                }
            }
            EventKind::AgentCompleted {
                agent,
                duration_ms,
                cached,
            } => {
                if let Some(bar) = line(agent) {
                    bar.finish_with_message(if *cached {
                        format!("cached (looked up in {duration_ms:.1} ms)")
                    } else {
                        format!("completed in {duration_ms:.1} ms")
                    });
                }
                if let Some(bar) = &overall {
                    bar.inc(1);
                }
            }
            EventKind::AgentFailed { agent, error } => {
                if let Some(bar) = line(agent) {
                    let first = error.lines().next().unwrap_or("");
                    bar.abandon_with_message(format!("failed: {first}"));
                }
                if let Some(bar) = &overall {
                    bar.inc(1);
                }
            }
            EventKind::AgentSkipped { agent, reason } => {
                if let Some(bar) = line(agent) {
                    bar.finish_with_message(format!("skipped: {reason}"));
                }
                if let Some(bar) = &overall {
                    bar.inc(1);
                }
            }
            EventKind::ToolCalled { agent, call, .. } => {
                if let Some(bar) = line(agent) {
                    let step = call
                        .strip_prefix(&**agent)
                        .unwrap_or(call)
                        .trim_start_matches('.');
                    bar.set_message(format!("running: calling {step}"));
                }
            }
            EventKind::ToolFinished {
                agent, call, error, ..
            } => {
                if let Some(bar) = line(agent) {
                    let step = call
                        .strip_prefix(&**agent)
                        .unwrap_or(call)
                        .trim_start_matches('.');
                    let how = if error.is_some() { "failed" } else { "done" };
                    bar.set_message(format!("running: {step} {how}"));
                }
            }
            EventKind::AgentWaiting { agent, prompt, .. } => {
                if let Some(bar) = line(agent) {
                    let first = prompt.lines().next().unwrap_or("");
                    bar.set_message(format!("waiting for an answer: {first}"));
                }
            }
            EventKind::RunFinished { status, .. } => {
                for text in logs.rest() {
                    multi.suspend(|| eprintln!("{text}"));
                }
                for bar in lines.values() {
                    if !bar.is_finished() {
                        bar.abandon_with_message(status.to_string());
                    }
                }
                if let Some(bar) = &overall {
                    bar.finish_with_message(status.to_string());
                }
                break;
            }
            _ => {}
        }
    }
    let _ = multi.clear();
}

/// Prints agents' log lines on stderr until the run finishes (`--verbose`
/// without a terminal's progress display).
pub(crate) async fn print_logs(mut events: EventReceiver) {
    let mut logs = LogLines::default();
    while let Some(event) = events.recv().await {
        match &event.kind {
            EventKind::AgentLog {
                agent,
                line,
                partial,
            } => {
                if let Some(text) = logs.take(agent, line, *partial) {
                    eprintln!("{text}");
                }
            }
            EventKind::RunFinished { .. } => break,
            _ => {}
        }
    }
    for text in logs.rest() {
        eprintln!("{text}");
    }
}

/// Agents' log lines as printed, `agent | line`: streamed pieces (an LLM's
/// answer as it arrives) are held until their line ends.
#[derive(Default)]
struct LogLines {
    open: HashMap<std::sync::Arc<str>, String>,
}

impl LogLines {
    /// What to print for this piece of `agent`'s log, if a line is done.
    fn take(&mut self, agent: &std::sync::Arc<str>, text: &str, partial: bool) -> Option<String> {
        if partial {
            let open = self.open.entry(agent.clone()).or_default();
            open.push_str(text);
            let (done, rest) = open.rsplit_once('\n')?;
            let done = done.replace('\n', &format!("\n{agent} | "));
            let rest = rest.to_owned();
            *open = rest;
            return Some(format!("{agent} | {done}"));
        }
        let before = self.open.remove(agent).unwrap_or_default();
        Some(format!("{agent} | {before}{text}"))
    }

    /// Lines still open when the run ended.
    fn rest(&mut self) -> Vec<String> {
        self.open
            .drain()
            .filter(|(_, text)| !text.is_empty())
            .map(|(agent, text)| format!("{agent} | {text}"))
            .collect()
    }
}
