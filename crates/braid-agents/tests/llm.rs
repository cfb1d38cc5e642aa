//! The `llm` agent against a local stub of an OpenAI-compatible endpoint.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use braid_core::event::{EventKind, EventLevel, EventSink};
use braid_core::{AgentStatus, Pipeline, RunOptions};
use serde_json::{Value, json};

mod model;
use model::{completion, stub, tool_calls};

fn pipeline(endpoint: &str, agent: &str) -> Pipeline {
    let yaml = format!(
        "pipeline: p\ninputs: {{ topic: {{ type: string }} }}\nagents:\n  ask: {{ kind: llm, endpoint: '{endpoint}', model: tiny, {agent} }}\n"
    );
    Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds()).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(pipeline: &Pipeline, options: RunOptions) -> braid_core::RunReport {
    let input = pipeline.check_input(&json!({"topic": "costs"})).unwrap();
    pipeline.run(input, options).await
}

#[tokio::test]
async fn a_text_answer_goes_to_the_write_and_tokens_are_counted() {
    let (endpoint, requests) = stub(|_, body| {
        let prompt = body["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        completion(&format!("answer to: {prompt}"))
    })
    .await;
    let p = pipeline(
        &endpoint,
        "system: 'Be brief.', prompt: 'Tell me about {{ topic }}', temperature: 0.1, max_tokens: 50, reads: [topic], writes: [answer]",
    );
    let report = run(&p, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(
        *report.state["answer"],
        json!("answer to: Tell me about costs")
    );
    let tokens = report.agents["ask"].tokens.unwrap();
    assert_eq!((tokens.prompt, tokens.completion), (12, 5));
    assert_eq!(report.tokens.unwrap().prompt, 12);
    let sent = &requests.lock().unwrap()[0];
    assert_eq!(sent["model"], "tiny");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(sent["temperature"], 0.1);
    assert_eq!(sent["max_tokens"], 50);
}

const SCHEMA: &str =
    "schema: { type: object, required: [summary], properties: { summary: { type: string } } }";

#[tokio::test]
async fn a_schema_miss_is_asked_again_once() {
    let (endpoint, requests) = stub(|n, _| {
        if n == 1 {
            completion("{\"summary\": 5}")
        } else {
            completion("```json\n{\"summary\": \"spend is up\"}\n```")
        }
    })
    .await;
    let p = pipeline(
        &endpoint,
        &format!(
            "prompt: 'Summarise {{{{ topic }}}}', output: json, {SCHEMA}, reads: [topic], writes: [summary]"
        ),
    );
    let report = run(&p, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["summary"], json!({"summary": "spend is up"}));
    let requests = requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    let reask = requests[1]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reask.contains("does not match the schema"), "{reask}");
    assert_eq!(
        requests[0]["response_format"],
        json!({"type": "json_object"})
    );
}

#[tokio::test]
async fn a_second_miss_fails_with_the_models_answer() {
    let (endpoint, _) = stub(|_, _| completion("I think the summary is: costs.")).await;
    let p = pipeline(
        &endpoint,
        &format!("prompt: 'Summarise', output: json, {SCHEMA}, writes: [summary]"),
    );
    let report = run(&p, RunOptions::default()).await;
    let agent = &report.agents["ask"];
    assert_eq!(agent.status, AgentStatus::Failed);
    let error = agent.error.as_deref().unwrap();
    assert!(
        error.contains("not JSON") && error.contains("I think the summary is: costs."),
        "{error}"
    );
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried() {
    let (endpoint, requests) = stub(|n, _| match n {
        1 => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response(),
        2 => (StatusCode::BAD_GATEWAY, "upstream").into_response(),
        _ => completion("fine"),
    })
    .await;
    let p = pipeline(
        &endpoint,
        "prompt: hi, requests_per_minute: 600, writes: [answer]",
    );
    let report = run(&p, RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn with_full_events_the_answer_streams_into_the_event_stream() {
    let (endpoint, _) = stub(|_, body| {
        assert_eq!(body["stream"], true);
        let mut sse = String::new();
        for word in ["spend ", "is\nd", "own\n", "and", " up"] {
            sse.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [{"delta": {"content": word}}]})
            ));
        }
        sse.push_str(&format!(
            "data: {}\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3}})
        ));
        sse.push_str("data: [DONE]\n\n");
        ([("content-type", "text/event-stream")], sse).into_response()
    })
    .await;
    let p = pipeline(&endpoint, "prompt: hi, writes: [answer]");
    let (sink, mut events) = EventSink::channel(EventLevel::Full);
    let report = run(
        &p,
        RunOptions {
            events: Some(sink),
            ..Default::default()
        },
    )
    .await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*report.state["answer"], json!("spend is\ndown\nand up"));
    assert_eq!(report.agents["ask"].tokens.unwrap().completion, 3);
    let mut pieces = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let EventKind::AgentLog { line, partial, .. } = event.kind {
            assert!(partial, "a streamed piece continues into the next");
            pieces.push(line);
        }
    }
    // Each event carries the new text only, never the answer so far.
    assert_eq!(pieces, ["spend ", "is\nd", "own\n", "and", " up"]);
}

#[test]
fn settings_are_checked_when_the_pipeline_loads() {
    let err = Pipeline::from_yaml_str_with(
        "pipeline: p
agents:
  a: { kind: llm, endpoint: 'http://x/v1', prompt: hi, writes: [x] }
  b: { kind: llm, endpoint: 'http://x/v1', model: m, prompt: '{{ unclosed', writes: [y] }
  c: { kind: llm, endpoint: 'http://x/v1', model: m, prompt: hi, writes: [z, w] }
  d: { kind: llm, endpoint: 'http://x/v1', model: m, prompt: hi, api_key_env: BRAID_NO_SUCH_KEY, writes: [v] }
",
        &braid_agents::kinds(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("agent `a`: an `llm` agent needs `model: NAME`"),
        "{err}"
    );
    assert!(
        err.contains("agent `b`: `prompt` is not a valid template"),
        "{err}"
    );
    assert!(
        err.contains("agent `c`: with `output: text` an `llm` agent writes exactly one field"),
        "{err}"
    );
    assert!(
        err.contains(
            "agent `d`: `api_key_env: BRAID_NO_SUCH_KEY`, but BRAID_NO_SUCH_KEY is not set"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn streamed_tokens_reach_the_event_stream_before_the_answer_ends() {
    // The stub sends the first token, then holds the rest until the test
    // has seen that token as an event: only real streaming gets past this.
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let (endpoint, _) = stub(move |_, _| {
        let gate = gate.clone();
        let chunks = async_stream(gate);
        (
            [("content-type", "text/event-stream")],
            axum::body::Body::from_stream(chunks),
        )
            .into_response()
    })
    .await;
    let p = Arc::new(pipeline(&endpoint, "prompt: hi, writes: [answer]"));
    let (sink, mut events) = EventSink::channel(EventLevel::Full);
    let running = tokio::spawn({
        let p = p.clone();
        async move {
            run(
                &p,
                RunOptions {
                    events: Some(sink),
                    ..Default::default()
                },
            )
            .await
        }
    });
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let event = events.recv().await.unwrap();
            if let EventKind::AgentLog { line, .. } = event.kind {
                return line;
            }
        }
    })
    .await
    .expect("the first token never arrived while the answer was still streaming");
    assert_eq!(first, "first ");
    release.notify_one();
    let report = running.await.unwrap();
    assert_eq!(*report.state["answer"], json!("first second"));
}

/// `data:` lines: one token, a pause until `gate` is notified, the rest.
fn async_stream(
    gate: Arc<tokio::sync::Notify>,
) -> impl tokio_stream::Stream<Item = Result<String, std::convert::Infallible>> {
    let first = format!(
        "data: {}\n\n",
        json!({"choices": [{"delta": {"content": "first "}}]})
    );
    let rest = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        json!({"choices": [{"delta": {"content": "second"}}]})
    );
    tokio_stream::iter(vec![Ok(first)]).chain(tokio_stream::once(()).then(move |()| {
        let gate = gate.clone();
        let rest = rest.clone();
        async move {
            gate.notified().await;
            Ok(rest)
        }
    }))
}

#[tokio::test]
async fn answers_longer_than_max_response_bytes_fail_naming_the_limit() {
    let long = "y".repeat(3000);
    let (endpoint, _) = stub({
        let long = long.clone();
        move |_, body| {
            if body["stream"] == true {
                let mut sse = String::new();
                for _ in 0..10 {
                    sse.push_str(&format!(
                        "data: {}\n\n",
                        json!({"choices": [{"delta": {"content": "z".repeat(300)}}]})
                    ));
                }
                sse.push_str("data: [DONE]\n\n");
                ([("content-type", "text/event-stream")], sse).into_response()
            } else {
                completion(&long)
            }
        }
    })
    .await;
    let p = pipeline(
        &endpoint,
        "prompt: hi, max_response_bytes: 2000, writes: [answer]",
    );
    let report = run(&p, RunOptions::default()).await;
    let error = report.agents["ask"].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("is longer than max_response_bytes (2000 bytes)"),
        "{error}"
    );
    // Streamed, the limit counts every byte received.
    let (sink, _events) = EventSink::channel(EventLevel::Full);
    let streamed = run(
        &p,
        RunOptions {
            events: Some(sink),
            ..Default::default()
        },
    )
    .await;
    let error = streamed.agents["ask"].error.as_deref().unwrap_or_default();
    assert!(
        error.contains("is longer than max_response_bytes (2000 bytes)"),
        "{error}"
    );
    // Within the limit, the same answer is taken.
    let roomy = pipeline(&endpoint, "prompt: hi, writes: [answer]");
    let report = run(&roomy, RunOptions::default()).await;
    assert_eq!(*report.state["answer"], json!(long));
}

#[tokio::test]
async fn one_rate_limit_per_endpoint_whatever_each_agent_declares() {
    // Two agents on one endpoint, declaring 1 and 1000 requests a minute:
    // the endpoint allows one request a minute, so the second agent, which
    // runs after the first, waits longer than its timeout.
    let (endpoint, requests) = stub(|_, _| completion("ok")).await;
    let yaml = format!(
        "pipeline: p
agents:
  first: {{ kind: llm, endpoint: '{endpoint}', model: a, prompt: hi, requests_per_minute: 1, writes: [x] }}
  second: {{ kind: llm, endpoint: '{endpoint}', model: b, prompt: hi, requests_per_minute: 1000, timeout: 1s, after: [first], writes: [y] }}
"
    );
    let p = Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds()).unwrap();
    let report = run_empty(&p).await;
    assert_eq!(report.agents["first"].status, AgentStatus::Completed);
    assert_eq!(report.agents["second"].status, AgentStatus::Failed);
    let error = report.agents["second"].error.as_deref().unwrap_or_default();
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(requests.lock().unwrap().len(), 1);
}

async fn run_empty(pipeline: &Pipeline) -> braid_core::RunReport {
    let input = pipeline.check_input(&json!({})).unwrap();
    pipeline.run(input, RunOptions::default()).await
}

use tokio_stream::StreamExt as _;

// Tool calling (issue 15): the model calls tool agents of the pipeline.

/// A search service for the `search` tool agent: it takes 150 ms and
/// answers with one hit naming the query. Returns its URL and the queries
/// it was asked, in order.
async fn search_service() -> (String, Arc<Mutex<Vec<String>>>) {
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = |State(asked): State<Arc<Mutex<Vec<String>>>>, Json(call): Json<Value>| async move {
        let q = call["state"]["q"].as_str().unwrap_or("").to_owned();
        asked.lock().unwrap().push(q.clone());
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        Json(json!({"hits": [format!("doc about {q}")]}))
    };
    let app = axum::Router::new()
        .route("/search", post(handler))
        .with_state(asked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/search", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

/// A pipeline whose `researcher` may call the `search` tool agent.
fn researcher(endpoint: &str, search: &str, extra: &str) -> Pipeline {
    let yaml = format!(
        r#"
pipeline: research
inputs: {{ question: {{ type: string }} }}
agents:
  search:
    kind: http
    url: "{search}"
    tool: {{ description: "Search the wiki", parameters: {{ type: object, properties: {{ q: {{ type: string }} }}, required: [q] }} }}
    writes: [hits]
  researcher:
    kind: llm
    endpoint: "{endpoint}"
    model: tiny
    prompt: "Answer: {{{{ question }}}}"
    tools: [{{ agent: search }}]
    reads: [question]
    writes: [answer]
    {extra}
"#
    );
    Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds()).unwrap_or_else(|e| panic!("{e}"))
}

async fn ask(pipeline: &Pipeline, options: RunOptions) -> braid_core::RunReport {
    let input = pipeline
        .check_input(&json!({"question": "why are costs up?"}))
        .unwrap();
    pipeline.run(input, options).await
}

#[tokio::test]
async fn the_models_tool_calls_run_concurrently_as_steps_and_their_results_reach_it() {
    let (search, asked) = search_service().await;
    let (endpoint, requests) = stub(|n, _| match n {
        1 => tool_calls(&[
            ("call_a", "search", r#"{"q": "cloud"}"#),
            ("call_b", "search", r#"{"q": "payroll"}"#),
        ]),
        2 => tool_calls(&[("call_c", "search", r#"{"q": "travel"}"#)]),
        _ => completion("Costs rose with cloud spend [doc about cloud]."),
    })
    .await;
    let pipeline = researcher(&endpoint, &search, "");
    // The tool agent is not a step of the graph.
    let names: Vec<&str> = pipeline.agents().iter().map(|a| a.name()).collect();
    assert_eq!(names, ["researcher"]);
    assert_eq!(pipeline.tool_agents()[0].name(), "search");

    let (sink, mut events) = EventSink::channel(EventLevel::Summary);
    let report = ask(
        &pipeline,
        RunOptions {
            events: Some(sink),
            ..RunOptions::default()
        },
    )
    .await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(
        *report.state["answer"],
        json!("Costs rose with cloud spend [doc about cloud].")
    );
    assert_eq!(asked.lock().unwrap().len(), 3);

    // The model was offered the tool, then got each result under its call's id.
    let requests = requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0]["tools"][0]["function"]["name"], "search");
    assert_eq!(
        requests[0]["tools"][0]["function"]["parameters"]["required"],
        json!(["q"])
    );
    let tool_messages: Vec<&Value> = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_messages.len(), 2);
    for (id, q) in [("call_a", "cloud"), ("call_b", "payroll")] {
        let message = tool_messages
            .iter()
            .find(|m| m["tool_call_id"] == id)
            .unwrap_or_else(|| panic!("no result for {id}: {tool_messages:?}"));
        let result: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
        assert_eq!(result, json!({"hits": [format!("doc about {q}")]}));
    }
    let last = requests[2]["messages"].as_array().unwrap().last().unwrap();
    assert_eq!(last["tool_call_id"], "call_c");

    // Both calls of the first turn started before either finished.
    let mut order = Vec::new();
    while let Some(event) = events.recv().await {
        match event.kind {
            EventKind::ToolCalled { call, .. } => order.push(format!("called {call}")),
            EventKind::ToolFinished { call, error, .. } => {
                assert_eq!(error, None);
                order.push(format!("finished {call}"));
            }
            _ => {}
        }
    }
    assert_eq!(order.len(), 6, "{order:?}");
    assert!(
        order[0].starts_with("called") && order[1].starts_with("called"),
        "{order:?}"
    );

    // Each call is a step in the agent's report, and so is the conversation.
    let agent = &report.agents["researcher"];
    let calls: Vec<(&str, &str, AgentStatus, u32)> = agent
        .tool_calls
        .iter()
        .map(|c| (c.name.as_str(), c.tool.as_str(), c.status, c.attempts))
        .collect();
    assert_eq!(calls.len(), 3);
    let mut names: Vec<&str> = calls.iter().map(|c| c.0).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "researcher.tool#1:search",
            "researcher.tool#2:search",
            "researcher.tool#3:search"
        ]
    );
    assert!(
        calls
            .iter()
            .all(|c| c.2 == AgentStatus::Completed && c.3 == 1),
        "{calls:?}"
    );
    assert!(
        agent
            .tool_calls
            .iter()
            .all(|c| c.duration_ms.unwrap() >= 150.0)
    );
    let transcript = agent.transcript.as_ref().expect("a transcript");
    let roles: Vec<&str> = transcript
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "tool",
            "assistant"
        ]
    );
}

#[tokio::test]
async fn a_malformed_call_is_answered_with_its_error_and_counted() {
    let (search, asked) = search_service().await;
    let (endpoint, requests) = stub(|n, _| match n {
        1 => tool_calls(&[
            ("bad_json", "search", r#"{"q": "#),
            ("no_q", "search", r#"{"query": "cloud"}"#),
            ("no_tool", "browse", r#"{"url": "x"}"#),
        ]),
        _ => completion("I could not search."),
    })
    .await;
    let report = ask(&researcher(&endpoint, &search, ""), RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert!(
        asked.lock().unwrap().is_empty(),
        "no bad call reached the tool"
    );
    let requests = requests.lock().unwrap().clone();
    let answers: Vec<(String, String)> = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(answers.len(), 3);
    assert!(
        answers[0]
            .1
            .starts_with("error: `search`: the arguments are not JSON"),
        "{answers:?}"
    );
    assert!(
        answers[1].1.contains("\"q\" is a required property"),
        "{answers:?}"
    );
    assert!(
        answers[2]
            .1
            .contains("there is no tool `browse`; the tools are: search"),
        "{answers:?}"
    );
    let calls = &report.agents["researcher"].tool_calls;
    assert_eq!(calls.len(), 3);
    assert!(
        calls
            .iter()
            .all(|c| c.status == AgentStatus::Failed && c.attempts == 0),
        "{calls:?}"
    );
}

#[tokio::test]
async fn past_max_tool_calls_the_agent_fails_with_the_transcript() {
    let (search, asked) = search_service().await;
    let (endpoint, _) = stub(|n, _| {
        // A model that never stops searching.
        tool_calls(&[(
            &format!("call_{n}"),
            "search",
            &format!(r#"{{"q": "round {n}"}}"#),
        )])
    })
    .await;
    let report = ask(
        &researcher(&endpoint, &search, "max_tool_calls: 2"),
        RunOptions::default(),
    )
    .await;
    assert!(!report.status.is_success());
    let agent = &report.agents["researcher"];
    assert_eq!(agent.status, AgentStatus::Failed);
    let error = agent.error.as_deref().unwrap();
    assert!(
        error.contains("already made 2 tool calls, its limit (max_tool_calls)"),
        "{error}"
    );
    assert!(
        error.contains("doc about round 2"),
        "the transcript so far: {error}"
    );
    assert_eq!(asked.lock().unwrap().len(), 2);
    assert_eq!(agent.tool_calls.len(), 2);
    assert!(agent.transcript.as_ref().unwrap().len() >= 5);
}

#[tokio::test]
async fn streamed_tool_calls_are_assembled_from_their_pieces() {
    let (search, asked) = search_service().await;
    let (endpoint, _) = stub(|n, _| {
        let chunks: Vec<Value> = if n == 1 {
            vec![
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_x", "type": "function", "function": {"name": "search", "arguments": ""}}]}}]}),
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"q\": "}}]}}]}),
                json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"gpu\"}"}}]}}]}),
            ]
        } else {
            vec![json!({"choices": [{"delta": {"content": "GPUs."}}]})]
        };
        let body: String = chunks
            .iter()
            .map(|c| format!("data: {c}\n\n"))
            .chain(["data: [DONE]\n\n".to_owned()])
            .collect();
        ([("content-type", "text/event-stream")], body).into_response()
    })
    .await;
    let (sink, _events) = EventSink::channel(EventLevel::Full);
    let report = ask(
        &researcher(&endpoint, &search, ""),
        RunOptions {
            events: Some(sink),
            ..RunOptions::default()
        },
    )
    .await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*asked.lock().unwrap(), ["gpu"]);
    assert_eq!(*report.state["answer"], json!("GPUs."));
}

#[test]
fn tools_are_checked_when_the_pipeline_loads() {
    let load = |agents: &str| {
        let yaml = format!("pipeline: p\ninputs: {{ q: {{ type: string }} }}\nagents:\n{agents}");
        Pipeline::from_yaml_str_with(&yaml, &braid_agents::kinds())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let llm = "  ask: { kind: llm, endpoint: 'http://127.0.0.1:9/v1', model: m, prompt: p, reads: [q], writes: [a]";
    let tool = "  look: { kind: sleep, writes: [r], tool: { description: Looks, parameters: { type: object, properties: { x: { type: string } } } } }\n";
    let cases = [
        (
            format!("{tool}{llm}, tools: [{{ agent: lok }}] }}\n"),
            "no tool agent `lok` (did you mean `look`?)",
        ),
        (
            format!(
                "  plain: {{ kind: sleep, reads: [q], writes: [r] }}\n{llm}, tools: [{{ agent: plain }}] }}\n"
            ),
            "agent `plain` is not a tool",
        ),
        (
            format!("{tool}{llm}, tools: [{{ agnt: look }}] }}\n"),
            "unknown tool source `agnt` (did you mean `agent`?)",
        ),
        (
            format!("{tool}  s: {{ kind: sleep, writes: [z], tools: [{{ agent: look }}] }}\n"),
            "a `sleep` agent cannot call tools",
        ),
        (
            format!("{tool}{llm}, tools: [{{ agent: look }}], max_tool_calls: 0 }}\n"),
            "`max_tool_calls` must be between 1 and 1000",
        ),
        (
            format!("{llm}, max_tool_calls: 3 }}\n"),
            "`max_tool_calls` needs `tools`",
        ),
        (
            format!(
                "  look: {{ kind: sleep, reads: [q], writes: [r], tool: {{ description: Looks }} }}\n{llm} }}\n"
            ),
            "a tool agent takes no `reads`",
        ),
        (
            format!(
                "  look: {{ kind: sleep, writes: [r], tool: {{ parameters: {{ type: object }} }} }}\n{llm} }}\n"
            ),
            "`tool` needs a `description`",
        ),
        (
            format!(
                "  look: {{ kind: sleep, writes: [r], tool: {{ description: d, parameters: {{ type: string }} }} }}\n{llm} }}\n"
            ),
            "must be the JSON Schema of an object",
        ),
        (
            format!(
                "{tool}  h: {{ kind: http, url: 'http://127.0.0.1:9/x', writes: [z], tools: [{{ agent: look }}] }}\n"
            ),
            "an `http` agent cannot call tools",
        ),
        (
            format!("{tool}{llm} }}\n  reader: {{ kind: sleep, reads: [r], writes: [z] }}\n"),
            "`r`",
        ),
    ];
    for (agents, expected) in cases {
        let error = load(&agents);
        assert!(
            error.contains(expected),
            "expected `{expected}` in:\n{error}\nfor:\n{agents}"
        );
    }
}

#[tokio::test]
async fn a_model_that_reuses_call_ids_gets_each_calls_own_result() {
    // Some servers number calls per turn: `call_0` every time.
    let (search, asked) = search_service().await;
    let (endpoint, requests) = stub(|n, _| match n {
        1 => tool_calls(&[("call_0", "search", r#"{"q": "cloud"}"#)]),
        2 => tool_calls(&[("call_0", "search", r#"{"q": "payroll"}"#)]),
        _ => completion("done"),
    })
    .await;
    let report = ask(&researcher(&endpoint, &search, ""), RunOptions::default()).await;
    assert!(report.status.is_success(), "{report:#?}");
    assert_eq!(*asked.lock().unwrap(), ["cloud", "payroll"]);
    let last = requests.lock().unwrap()[2]["messages"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert!(
        last["content"]
            .as_str()
            .unwrap()
            .contains("doc about payroll"),
        "{last}"
    );
}
