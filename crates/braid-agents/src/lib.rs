//! Agent kinds that reach the network, kept out of the engine core.
//!
//! [`kinds`] returns the standard kinds plus `http` and `llm` (any
//! OpenAI-compatible chat endpoint). Every HTTP agent of
//! the process shares one client ([`client`]): connections are pooled per
//! host and kept alive, never opened per call.
//!
//! ```yaml
//! agents:
//!   score:
//!     kind: http
//!     url: https://scoring.internal/v1/score      # POSTed {"agent", "run_id", "attempt", "state"}
//!     headers: { Authorization: "Bearer ${SCORING_TOKEN}" }   # from the environment, at load
//!     reads: [request]
//!     writes: [score]                               # the JSON object it answers with
//! ```

pub mod http;
pub mod llm;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use braid_core::AgentKinds;

/// The standard kinds plus `http` and `llm`.
pub fn kinds() -> AgentKinds {
    let mut kinds = AgentKinds::standard();
    register(&mut kinds);
    kinds
}

/// Adds `http` and `llm` to `kinds`.
pub fn register(kinds: &mut AgentKinds) {
    kinds.kind("http", Arc::new(http::build));
    kinds.kind("llm", Arc::new(llm::build));
}

/// Limits of the process-wide HTTP client.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Most requests in flight to one host. HTTP/1.1 carries one request per
    /// connection at a time, so this also bounds the connections in use; the
    /// pool takes a connection back a moment after its response is read, so
    /// a request starting in that moment may open one more.
    pub max_connections_per_host: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(5),
            max_connections_per_host: 32,
        }
    }
}

/// The one HTTP client every agent of this process shares (built on first
/// use with [`ClientSettings::default`]).
pub fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        install_tls_provider();
        let settings = ClientSettings::default();
        reqwest::Client::builder()
            .pool_max_idle_per_host(settings.max_idle_per_host)
            .pool_idle_timeout(settings.idle_timeout)
            .connect_timeout(settings.connect_timeout)
            .tcp_nodelay(true)
            // Counts the connections the pool opens: with requests and
            // in-flight, it shows how well connections are reused.
            .connector_layer(tower::util::MapResponseLayer::new(|connection| {
                metrics::counter!("braid_http_connections_opened_total").increment(1);
                connection
            }))
            .user_agent(concat!("braid/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client's settings are valid")
    })
}

/// Makes rustls's `ring` provider the process default, for HTTPS clients
/// built with reqwest's `rustls-no-provider` (ours, and the OTLP exporter's
/// in `braid-cli`). A provider another part of the program installed first
/// is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A request's slot on its host (see
/// [`ClientSettings::max_connections_per_host`]). Releasing it (dropping)
/// updates `braid_http_in_flight`.
pub(crate) struct HostSlot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    semaphore: Arc<tokio::sync::Semaphore>,
    host: String,
}

impl HostSlot {
    fn report_in_flight(&self) {
        let limit = ClientSettings::default().max_connections_per_host;
        metrics::gauge!("braid_http_in_flight", "host" => self.host.clone())
            .set(limit.saturating_sub(self.semaphore.available_permits()) as f64);
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.report_in_flight();
    }
}

/// Waits for a slot to send one request to `host`.
pub(crate) async fn host_slot(host: &str) -> HostSlot {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static HOSTS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>> = OnceLock::new();
    let semaphore = HOSTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(host.to_owned())
        .or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(
                ClientSettings::default().max_connections_per_host,
            ))
        })
        .clone();
    if semaphore.available_permits() == 0 {
        metrics::counter!("braid_http_pool_waits_total").increment(1);
    }
    let permit = semaphore
        .clone()
        .acquire_owned()
        .await
        .expect("host semaphores are never closed");
    metrics::counter!("braid_http_requests_total").increment(1);
    let slot = HostSlot {
        permit: Some(permit),
        semaphore,
        host: host.to_owned(),
    };
    slot.report_in_flight();
    slot
}
