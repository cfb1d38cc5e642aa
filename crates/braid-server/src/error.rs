//! The API's one error type: every failure becomes
//! `{"error": {"code", "message"}}` with the right status. Internal details
//! are logged (through `tracing`), not sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error: status, a stable machine-readable code, a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<serde_json::Value>,
}

impl ApiError {
    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 422 with a list of problems (a pipeline's diagnostics, an input's errors).
    pub fn invalid(code: &'static str, message: impl Into<String>, problems: Vec<String>) -> Self {
        Self {
            details: Some(json!(problems)),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
        }
    }

    /// 500: the cause is logged; the client sees only that it happened.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server's log",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = self.details {
            error["problems"] = details;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<braid_store::StoreError> for ApiError {
    fn from(err: braid_store::StoreError) -> Self {
        ApiError::internal(err)
    }
}
