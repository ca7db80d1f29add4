//! Errors in the OpenAI API's form: `{"error":{"message","type","param","code"}}` with the
//! status the official SDKs turn into their own exception types.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::bridge::BridgeError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    param: Option<&'static str>,
    message: String,
}

impl ApiError {
    /// A request the client must change (400).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// A request field that is missing or wrong (400), named in `param`.
    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::invalid(message)
        }
    }

    /// An error with its own status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            param: None,
            message: message.into(),
        }
    }

    /// The body of an error, also sent as a server-sent event when a stream fails midway.
    pub fn body(&self) -> serde_json::Value {
        let kind = match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

impl From<BridgeError> for ApiError {
    fn from(e: BridgeError) -> Self {
        let message = e.to_string();
        match &e {
            BridgeError::NotRunning { .. } | BridgeError::NoService { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_not_running",
                message,
            ),
            BridgeError::Lost { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_lost", message)
            }
            BridgeError::UnknownModel { .. } => Self {
                param: Some("model"),
                ..Self::new(StatusCode::NOT_FOUND, "model_not_found", message)
            },
            BridgeError::Remote { code, .. } => {
                let (status, code) = match code.as_str() {
                    "invalid_request" => (StatusCode::BAD_REQUEST, "invalid_request"),
                    "not_found" => (StatusCode::NOT_FOUND, "not_found"),
                    "too_large" => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
                    "busy" => (StatusCode::TOO_MANY_REQUESTS, "busy"),
                    "unavailable" => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    "cancelled" => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
                };
                Self::new(status, code, message)
            }
            BridgeError::Internal(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}
