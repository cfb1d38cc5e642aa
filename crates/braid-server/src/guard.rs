//! Request guards, run on every request before routing: who may call, from
//! which site, and with what kind of body.
//!
//! In order:
//! 1. **Host.** Without a token the server listens on loopback only and
//!    answers only requests addressed to `localhost`, `127.0.0.1` or
//!    `[::1]`, on every route, so a page elsewhere cannot reach it through
//!    DNS rebinding. The address is the request's authority (HTTP/2's
//!    `:authority`, or an absolute URI) and its `Host` header: each one
//!    present must name loopback.
//! 2. **Origin.** A request to the API (`/v1/…`, `/mcp`, `/metrics`) that carries
//!    an `Origin` (browsers send one cross-site, and on every WebSocket)
//!    must come from the server's own origin or one of `--allow-origin`.
//! 3. **Token.** The API needs `Authorization: Bearer TOKEN`, compared in
//!    constant time. `?token=` is taken only on the two stream routes
//!    (`GET /v1/runs/{id}/events` and `/ws`), whose browser clients cannot
//!    set headers; never on anything that changes state. `/metrics` needs
//!    the token unless `--public-metrics`.
//! 4. **Content type.** Every request to the API that may change state
//!    (`POST`, `PUT`, `PATCH`, `DELETE`), body or not, must say
//!    `Content-Type: application/json` or `application/yaml`: no other
//!    site's page can send those without the browser asking this server
//!    first (a CORS preflight, which it never grants).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// The media types the API takes (parameters such as `charset` aside).
pub const ALLOWED_CONTENT_TYPES: [&str; 2] = ["application/json", "application/yaml"];

/// Runs the guards (see the module docs) on every request.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match check(&state, &request) {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

fn check(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let config = &state.inner.config;
    let token = config.token.as_deref().filter(|t| !t.is_empty());
    if token.is_none() {
        check_loopback_host(request)?;
    }
    let path = request.uri().path();
    // `/mcp` (MCP tools, `ServerConfig::mcp`) is the API by another protocol.
    let api = path == "/v1" || path.starts_with("/v1/") || path == "/mcp";
    let metrics = path == "/metrics";
    if !api && !metrics {
        return Ok(());
    }
    check_origin(request, &config.http.allow_origins)?;
    if let Some(expected) = token
        && !(metrics && config.http.public_metrics)
    {
        check_token(request, expected)?;
    }
    if api && changes_state(request.method()) {
        check_content_type(request.headers())?;
    }
    Ok(())
}

fn changes_state(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The addresses a request names: its URI's authority (HTTP/2's
/// `:authority`, or an absolute-form HTTP/1 target) and its `Host` header.
fn named_hosts(request: &Request) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(authority) = request.uri().authority() {
        names.push(authority.as_str().to_owned());
    }
    for value in request.headers().get_all(header::HOST) {
        names.push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    names
}

/// `host[:port]` without the port, lowercased.
fn host_name(authority: &str) -> String {
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => authority,
    };
    name.to_ascii_lowercase()
}

fn check_loopback_host(request: &Request) -> Result<(), ApiError> {
    // A request naming no host at all comes from no browser (they always
    // send one), so it cannot be a rebinding attack.
    for named in named_hosts(request) {
        let name = host_name(&named);
        if !matches!(name.as_str(), "localhost" | "127.0.0.1" | "[::1]") {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_host",
                format!(
                    "without a token this server answers only requests to localhost, \
                     127.0.0.1 or [::1], not to `{named}`"
                ),
            ));
        }
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL-shaped origin, with the default port
/// left out; `None` for anything that is not an http(s) origin.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

fn check_origin(request: &Request, allowed: &[String]) -> Result<(), ApiError> {
    let Some(origin) = request.headers().get(header::ORIGIN) else {
        // Only browsers send an Origin; everything else is judged by the
        // token alone.
        return Ok(());
    };
    let origin = String::from_utf8_lossy(origin.as_bytes());
    if let Some(normal) = normalize_origin(&origin) {
        let url = url::Url::parse(&normal).ok();
        let own = url.as_ref().is_some_and(|url| {
            let port = url.port_or_known_default();
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let names = named_hosts(request);
            !names.is_empty()
                && names.iter().all(|named| {
                    let named_port = named
                        .rsplit_once(':')
                        .and_then(|(_, p)| p.parse::<u16>().ok())
                        .or(port);
                    host_name(named) == host && named_port == port
                })
        });
        if own
            || allowed
                .iter()
                .any(|a| normalize_origin(a).is_some_and(|a| a == normal))
        {
            return Ok(());
        }
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        format!(
            "requests from pages at `{origin}` are not allowed; the server takes its own origin \
             and those given with --allow-origin"
        ),
    ))
}

/// Is this one of the two stream routes, the only ones that take
/// `?token=` (browsers' EventSource and WebSocket cannot set headers)?
fn is_stream_route(request: &Request) -> bool {
    if request.method() != Method::GET {
        return false;
    }
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "v1", "runs", id, "events" | "ws"] if !id.is_empty()
    )
}

fn check_token(request: &Request, expected: &str) -> Result<(), ApiError> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let from_query = || {
        request.uri().query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
    };
    let presented = match from_header {
        Some(token) => Some(token),
        None if is_stream_route(request) => from_query(),
        None => None,
    }
    .unwrap_or_default();
    if !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer TOKEN; \
             ?token= is taken only by the event streams)",
        ))
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let kind = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let media = kind.as_deref().map(|k| {
        k.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if media
        .as_deref()
        .is_some_and(|m| ALLOWED_CONTENT_TYPES.contains(&m))
    {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!(
            "requests that change something must be sent as application/json or \
             application/yaml (even without a body), not {}",
            kind.map_or("without a Content-Type".to_owned(), |k| format!("`{k}`"))
        ),
    ))
}
