//! The `details` column of `braid_agent_runs`: what an agent's report says
//! beyond its own columns (kept log lines, failed attempts, tokens, tool
//! calls and the model conversation), as one JSON object, NULL when there
//! is nothing to say.

use braid_core::AgentReport;
use braid_core::report::{AttemptFailure, ToolCallReport};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Serialize, Deserialize, Default)]
struct Details {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    logs: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    logs_dropped: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    failures: Vec<AttemptFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tokens: Option<braid_core::TokenUsage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    transcript: Option<Vec<Value>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The column's value for `report`: `None` when it has nothing to add.
pub(crate) fn to_column(report: &AgentReport) -> Option<String> {
    if report.logs.is_empty()
        && report.logs_dropped == 0
        && report.failures.is_empty()
        && report.tokens.is_none()
        && report.tool_calls.is_empty()
        && report.transcript.is_none()
    {
        return None;
    }
    let details = DetailsRef {
        logs: &report.logs,
        logs_dropped: report.logs_dropped,
        failures: &report.failures,
        tokens: report.tokens,
        tool_calls: &report.tool_calls,
        transcript: report.transcript.as_deref(),
    };
    serde_json::to_string(&details).ok()
}

/// Fills `report` from the column; a value this version cannot read (a
/// newer braid's) is left out rather than failing the whole run's read.
pub(crate) fn from_column(column: Option<String>, report: &mut AgentReport) {
    let Some(text) = column else { return };
    match serde_json::from_str::<Details>(&text) {
        Ok(details) => {
            report.logs = details.logs;
            report.logs_dropped = details.logs_dropped;
            report.failures = details.failures;
            report.tokens = report.tokens.or(details.tokens);
            report.tool_calls = details.tool_calls;
            report.transcript = details.transcript;
        }
        Err(error) => tracing::warn!(%error, "an agent record's details do not parse; left out"),
    }
}

#[derive(Serialize)]
struct DetailsRef<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    logs: &'a [String],
    #[serde(skip_serializing_if = "is_zero")]
    logs_dropped: u64,
    #[serde(skip_serializing_if = "<[AttemptFailure]>::is_empty")]
    failures: &'a [AttemptFailure],
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<braid_core::TokenUsage>,
    #[serde(skip_serializing_if = "<[ToolCallReport]>::is_empty")]
    tool_calls: &'a [ToolCallReport],
    #[serde(skip_serializing_if = "Option::is_none")]
    transcript: Option<&'a [Value]>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_core::AgentStatus;

    #[test]
    fn round_trips_and_stays_null_when_empty() {
        let plain = AgentReport::new(AgentStatus::Completed);
        assert_eq!(to_column(&plain), None);
        let mut report = AgentReport::new(AgentStatus::Failed);
        report.logs = vec!["a".into(), "b".into()];
        report.logs_dropped = 3;
        report.failures = vec![AttemptFailure {
            attempt: 1,
            error: "boom".into(),
            duration_ms: 1.5,
        }];
        report.tool_calls = vec![ToolCallReport {
            name: "ask.tool#1:search".into(),
            tool: "search".into(),
            status: AgentStatus::Completed,
            arguments: serde_json::json!({"q": "x"}),
            attempts: 1,
            start_ms: 2.0,
            duration_ms: Some(3.0),
            result: Some(serde_json::json!({"hits": []})),
            error: None,
            call_id: Some("call_1".into()),
            resumed: false,
            cached: false,
        }];
        report.transcript = Some(vec![serde_json::json!({"role": "user", "content": "hi"})]);
        let column = to_column(&report);
        let mut back = AgentReport::new(AgentStatus::Failed);
        from_column(column, &mut back);
        assert_eq!(back.logs, report.logs);
        assert_eq!(back.logs_dropped, 3);
        assert_eq!(back.failures, report.failures);
        assert_eq!(back.tool_calls, report.tool_calls);
        assert_eq!(back.transcript, report.transcript);
        let mut garbled = AgentReport::new(AgentStatus::Failed);
        from_column(Some("{not json".into()), &mut garbled);
        assert!(garbled.logs.is_empty());
    }
}
