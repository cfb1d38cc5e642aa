//! Live event routes: Server-Sent Events and WebSocket, both resumable
//! after a sequence number, from a run in memory or replayed from the store.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::{Event, KeepAlive, Sse};
use braid_core::event::RunEvent;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio_stream::StreamExt as _;

use super::query_error;
use crate::AppState;
use crate::error::ApiError;
use crate::events::{self, Delivery, EventLog};

#[derive(Debug, Deserialize)]
pub(super) struct AfterQuery {
    #[serde(default)]
    after: Option<u64>,
}

/// The run's event log: live, or replayed from the store for a run that
/// finished earlier (when its events were kept).
async fn stream_of(state: &AppState, id: &str) -> Result<Arc<EventLog>, ApiError> {
    if let Some(run) = state.inner.runs.get(id) {
        return Ok(run.events.clone());
    }
    if let Some(store) = &state.inner.store {
        let stored = store.load_events(id).await?;
        if !stored.is_empty() {
            return EventLog::replay(stored).map_err(ApiError::internal);
        }
    }
    Err(ApiError::not_found(format!(
        "no events of run {id}: unknown, run with events off, or not checkpointed"
    )))
}

/// Server-Sent Events, resumable with `Last-Event-ID` (or `?after=SEQ`).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/events",
    tag = "events",
    summary = "The run's events as Server-Sent Events (replayed from the store for a finished run).",
    params(
        ("id" = String, Path, description = "The run's id."),
        ("after" = Option<u64>, Query, description = "Only events after this sequence number (a reconnecting client's last)."),
        ("token" = Option<String>, Query, description = "The bearer token, for clients that cannot set headers (EventSource, browsers' WebSocket)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "An event stream: one `data:` JSON event each, named by its type.", content_type = "text/event-stream", body = crate::routes::openapi::SseEvent),
        (status = 400, description = "The query string is malformed.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No such run, or its events were not kept.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn sse_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AfterQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let log = stream_of(&state, &id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .or(query.after)
        .unwrap_or(0);
    let deliveries = events::subscribe(log, after, 64);
    let stream = tokio_stream::wrappers::ReceiverStream::new(deliveries).map(|delivery| {
        Ok(match delivery {
            Delivery::Event(e) => Event::default()
                .id(e.seq.to_string())
                .event(event_type(&e.event))
                .data(e.to_json()),
            Delivery::Lagged(missed) => Event::default()
                .event("lagged")
                .data(json!({"type": "lagged", "missed": missed}).to_string()),
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn event_type(event: &RunEvent) -> String {
    serde_json::to_value(&event.kind)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".to_owned())
}

/// WebSocket, resumable with `?after=SEQ`: one JSON text message per event.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/ws",
    tag = "events",
    summary = "The run's events over a WebSocket (one JSON text message each).",
    params(
        ("id" = String, Path, description = "The run's id."),
        ("after" = Option<u64>, Query, description = "Only events after this sequence number (a reconnecting client's last)."),
        ("token" = Option<String>, Query, description = "The bearer token, for clients that cannot set headers (EventSource, browsers' WebSocket)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade request, or a malformed query string.", body = crate::routes::openapi::ErrorBody),
        (status = 404, description = "No such run, or its events were not kept.", body = crate::routes::openapi::ErrorBody),
        (status = 426, description = "The connection cannot be upgraded.", body = crate::routes::openapi::ErrorBody),
        (status = 401, description = "No valid bearer token.", body = crate::routes::openapi::ErrorBody),
        (status = 403, description = "The request's Origin (or, without a token, its Host) is not allowed.", body = crate::routes::openapi::ErrorBody),
    ),
)]
pub(super) async fn ws_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<AfterQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let upgrade =
        upgrade.map_err(|r| ApiError::new(r.status(), "websocket_required", r.body_text()))?;
    let log = stream_of(&state, &id).await?;
    let after = query.after.unwrap_or(0);
    let idle = state.inner.config.http.idle_timeout;
    Ok(crate::conn::limit_websocket(upgrade)
        .on_upgrade(move |socket| stream_ws(socket, log, after, idle)))
}

/// Streams the run's events until the last is sent, then closes. Pings the
/// client and drops it when it has answered nothing for `idle`, or when a
/// send has been stuck that long (a client that stopped reading).
async fn stream_ws(mut socket: WebSocket, log: Arc<EventLog>, after: u64, idle: Duration) {
    let mut deliveries = events::subscribe(log, after, 64);
    let every = crate::conn::ws_ping_interval(idle);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            delivery = deliveries.recv() => {
                let Some(delivery) = delivery else { break };
                let text = match delivery {
                    Delivery::Event(e) => e.to_json(),
                    Delivery::Lagged(missed) => json!({"type": "lagged", "missed": missed}).to_string(),
                };
                let sent = tokio::time::timeout(idle, socket.send(Message::Text(text.into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return; // the client went away, or stopped reading
                }
            }
            incoming = socket.recv() => match incoming {
                // An error includes a message over the size limit.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() >= idle {
                    tracing::debug!("dropping a WebSocket client that answers no pings");
                    return;
                }
                let sent = tokio::time::timeout(idle, socket.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(idle, socket.send(Message::Close(None))).await;
}
