//! A run's timeline as SVG: per agent, its queue wait and its execution as
//! bars on one time axis, coloured by status, with the critical path (the
//! chain of dependencies that set the makespan) outlined. A `foreach`
//! agent is one bar with its progress: `3 of 4` (instances completed of
//! its elements), and how many failed or were cancelled, if any. A group
//! (`kind: pipeline`) is one bar too, its members and rounds nested in its
//! report; a `repeat` group's name says how many rounds it ran.

use std::fmt::Write as _;
use std::sync::Arc;

use braid_core::{AgentReport, AgentStatus, Pipeline};

fn colour(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Completed => "#188038",
        AgentStatus::Failed => "#d93025",
        AgentStatus::Skipped => "#f9ab00",
        AgentStatus::Cancelled => "#5f6368",
        AgentStatus::Running => "#1a73e8",
        AgentStatus::Pending => "#9aa0a6",
        AgentStatus::Waiting => "#a142f4",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A `foreach` agent's progress, from its instances' counts: `3 of 4`,
/// then `, 1 failed` and `, 2 cancelled` when there are any. `None` for
/// other agents.
pub(crate) fn progress(agent: &AgentReport) -> Option<String> {
    let items = agent.items?;
    let mut label = format!("{} of {}", items.completed, items.total);
    for (n, what) in [(items.failed, "failed"), (items.cancelled, "cancelled")] {
        if n > 0 {
            let _ = write!(label, ", {n} {what}");
        }
    }
    Some(label)
}

/// How many rounds a `repeat` group ran, from the names of its nested
/// members and rounds (`refine#2.draft`, `refine#2`): the latest round's
/// number plus one. `None` for other agents.
pub(crate) fn rounds(name: &str, agent: &AgentReport) -> Option<u64> {
    agent
        .instances
        .as_ref()?
        .keys()
        .filter_map(|path| {
            let round = path.strip_prefix(name)?.strip_prefix('#')?;
            let digits = round
                .find(['.', '[', '#'])
                .map_or(round, |end| &round[..end]);
            digits.parse::<u64>().ok()
        })
        .max()
        .map(|last| last + 1)
}

/// The agents on the critical path of the run as it happened (see
/// [`Pipeline::run_critical_path`]: the same path `braid explain`, the API
/// and the console show for the run). Needs the pipeline's graph; empty
/// without it.
pub(crate) fn critical_path(
    pipeline: Option<&Pipeline>,
    agents: &[(String, AgentReport)],
) -> Vec<String> {
    let Some(pipeline) = pipeline else {
        return Vec::new();
    };
    let by_name: braid_core::report::ByName<AgentReport> = agents
        .iter()
        .map(|(name, report)| (Arc::from(name.as_str()), report.clone()))
        .collect();
    pipeline.run_critical_path(&by_name)
}

/// A round step for about five ticks over `end` ms: 1, 2 or 5 times a
/// power of ten.
fn tick_step(end: f64) -> f64 {
    let rough = (end / 5.0).max(1e-3);
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= rough)
        .unwrap_or(10.0 * power)
}

/// A tick's label: ms below 10 s (decimals only when the step has them),
/// seconds above.
fn tick_label(ms: f64, step: f64) -> String {
    if step >= 1000.0 {
        let s = ms / 1000.0;
        if (s - s.round()).abs() < 1e-9 {
            format!("{s:.0} s")
        } else {
            format!("{s:.1} s")
        }
    } else if step >= 1.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// The SVG document.
pub(crate) fn svg(title: &str, agents: &[(String, AgentReport)], critical: &[String]) -> String {
    const LABEL: f64 = 160.0;
    const WIDTH: f64 = 720.0;
    const ROW: f64 = 26.0;
    let end = agents
        .iter()
        .map(|(_, a)| a.start_ms.unwrap_or(0.0) + a.duration_ms.unwrap_or(0.0))
        .fold(1.0f64, f64::max);
    let x = |ms: f64| LABEL + ms / end * WIDTH;
    let height = 70.0 + agents.len() as f64 * ROW;
    // Room right of the bars for the duration, and a fan-out's progress.
    let tail = if agents.iter().any(|(_, a)| a.items.is_some()) {
        240.0
    } else {
        90.0
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="12">"#,
        w = LABEL + WIDTH + tail
    );
    let _ = writeln!(
        out,
        r#"<text x="8" y="20" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        out,
        r##"<text x="8" y="38" fill="#555">queue wait: light bar; execution: solid bar; critical path: red outline</text>"##
    );
    // The time axis: round ticks (1, 2 or 5 times a power of ten).
    let step = tick_step(end);
    let mut ms = 0.0;
    while ms <= end + step * 1e-9 {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="48" x2="{0:.1}" y2="{1:.1}" stroke="#eee"/><text class="tick" x="{0:.1}" y="{2:.1}" fill="#777" text-anchor="middle">{3}</text>"##,
            x(ms),
            height - 14.0,
            height - 2.0,
            tick_label(ms, step)
        );
        ms += step;
    }
    for (i, (name, agent)) in agents.iter().enumerate() {
        let y = 52.0 + i as f64 * ROW;
        let on_path = critical.iter().any(|c| c == name);
        // A fan-out's name says how many instances it stands for, a
        // repeat group's how many rounds it ran.
        let mut times = agent
            .items
            .map(|i| format!(r##" <tspan fill="#555">×{}</tspan>"##, i.total))
            .unwrap_or_default();
        if let Some(n) = rounds(name, agent) {
            let s = if n == 1 { "" } else { "s" };
            let _ = write!(
                times,
                r##" <tspan class="rounds" fill="#555">{n} round{s}</tspan>"##
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="8" y="{:.1}"{}>{}{times}</text>"#,
            y + 15.0,
            if on_path {
                r##" fill="#d93025" font-weight="bold""##
            } else {
                ""
            },
            escape(name)
        );
        let Some(start) = agent.start_ms else {
            // Never ran: say why on its row (skipped, cancelled, pending).
            let why = agent
                .reason
                .as_deref()
                .or(agent.error.as_deref())
                .unwrap_or("");
            let _ = writeln!(
                out,
                r#"<text class="not-run" data-agent="{}" data-status="{}" x="{LABEL:.1}" y="{:.1}" fill="{}" font-style="italic">{}{}</text>"#,
                escape(name),
                agent.status,
                y + 15.0,
                colour(agent.status),
                agent.status,
                if why.is_empty() {
                    String::new()
                } else {
                    escape(&format!(": {}", why.lines().next().unwrap_or("")))
                }
            );
            continue;
        };
        let queue = agent.queue_ms.unwrap_or(0.0);
        let duration = agent.duration_ms.unwrap_or(0.0);
        let fill = colour(agent.status);
        if queue > 0.0 {
            let _ = writeln!(
                out,
                r#"<rect class="queue" data-agent="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="{fill}" fill-opacity="0.25"/>"#,
                escape(name),
                x(start - queue),
                y + 3.0,
                (x(start) - x(start - queue)).max(1.0)
            );
        }
        let stroke = if on_path {
            r##" stroke="#d93025" stroke-width="2""##
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<rect class="run" data-agent="{}" data-status="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="{fill}"{stroke}/>"#,
            escape(name),
            agent.status,
            x(start),
            y + 3.0,
            (x(start + duration) - x(start)).max(1.0)
        );
        // Failed attempts before the one that ended it, from the bar's
        // start: each as long as it ran (the backoff between them is not
        // drawn), hatched in red.
        let mut at = start;
        let retried = agent
            .failures
            .len()
            .saturating_sub(usize::from(agent.status == AgentStatus::Failed));
        for failure in agent.failures.iter().take(retried) {
            let _ = writeln!(
                out,
                r##"<rect class="failed-attempt" data-agent="{}" data-attempt="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="6" fill="#d93025"><title>attempt {} failed: {}</title></rect>"##,
                escape(name),
                failure.attempt,
                x(at),
                y + 13.0,
                (x(at + failure.duration_ms) - x(at)).max(2.0),
                failure.attempt,
                escape(failure.error.lines().next().unwrap_or(""))
            );
            at += failure.duration_ms;
        }
        let attempts = if agent.attempts > 1 {
            format!(" · {} attempts", agent.attempts)
        } else {
            String::new()
        };
        let progress = progress(agent)
            .map(|p| format!(r#" · <tspan class="progress">{p}</tspan>"#))
            .unwrap_or_default()
            + &attempts;
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#555">{duration:.1} ms{progress}</text>"##,
            x(start + duration) + 4.0,
            y + 15.0
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_labelled_in_their_unit() {
        assert_eq!(tick_step(5293.0), 2000.0);
        assert_eq!(tick_step(2647.0), 1000.0);
        assert_eq!(tick_step(240.0), 50.0);
        assert_eq!(tick_step(7.0), 2.0);
        assert_eq!(tick_label(3000.0, 1000.0), "3 s");
        assert_eq!(tick_label(150.0, 50.0), "150 ms");
        assert_eq!(tick_label(0.5, 0.5), "0.5 ms");
    }
}
