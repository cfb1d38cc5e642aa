//! braid as a library: Rust agents, a pipeline built in code (no YAML), a
//! run with live events, and the report.
//!
//!     cargo run -p braid-core --example library
use std::time::Duration;

use braid_core::agent::{Agent, AgentError, AgentInput, Writes};
use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{Pipeline, RunOptions};
use serde_json::json;

/// An agent as a type: it could hold a client, a model, a connection pool.
struct Classify;

#[async_trait::async_trait]
impl Agent for Classify {
    async fn call(&self, input: &AgentInput) -> Result<Writes, AgentError> {
        let request = input
            .reads
            .get("request")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let route = if request.contains("latency") {
            "latency"
        } else {
            "cost"
        };
        let mut out = Writes::new();
        out.insert("route".into(), json!(route));
        Ok(out)
    }
}

/// An agent that waits like I/O would, then writes one number.
fn analysis(
    field: &'static str,
    ms: u64,
    value: f64,
) -> impl Fn(
    braid_core::agent::Reads,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Writes, AgentError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |_reads| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let mut out = Writes::new();
            out.insert(field.into(), json!(value));
            Ok(out)
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Pipeline::builder("library-demo");
    builder.input("request", json!({"type": "string"}));
    builder
        .agent("triage", std::sync::Arc::new(Classify))
        .reads(["request"])
        .writes(["route"]);
    builder
        .agent_fn("spend", analysis("spend_usd", 40, 1234.5))
        .reads(["route"])
        .writes(["spend_usd"]);
    builder
        .agent_fn("p95", analysis("p95_ms", 60, 840.0))
        .reads(["route"])
        .writes(["p95_ms"]);
    builder
        .agent_fn("report", |reads| async move {
            let spend = reads
                .get("spend_usd")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            let p95 = reads.get("p95_ms").and_then(|v| v.as_f64()).unwrap_or(0.0);
            let mut out = Writes::new();
            out.insert(
                "report".into(),
                json!(format!("spend ${spend:.2}, p95 {p95:.0} ms")),
            );
            Ok::<_, AgentError>(out)
        })
        .reads(["spend_usd", "p95_ms"])
        .writes(["report"])
        .timeout(Duration::from_secs(5));
    let pipeline = builder.build()?;

    let (events, mut receiver) = EventSink::channel(EventLevel::Summary);
    let input = pipeline.check_input(&json!({"request": "cut our LLM spend"}))?;
    let run = pipeline.run(
        input,
        RunOptions {
            events: Some(events),
            ..Default::default()
        },
    );
    let printer = async {
        while let Some(event) = receiver.recv().await {
            if let EventKind::AgentCompleted {
                agent, duration_ms, ..
            } = &event.kind
            {
                println!(
                    "{:>7.1} ms  {agent} completed in {duration_ms:.1} ms",
                    event.at_ms
                );
            }
        }
    };
    let (report, ()) = tokio::join!(run, printer);
    println!(
        "{} in {:.1} ms: {}",
        report.status, report.makespan_ms, report.state["report"]
    );
    Ok(())
}
