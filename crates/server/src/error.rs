//! The one error shape of every HTTP answer: `{"error": {"code", "message", "field"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered to a client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.body.field = field;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
    }
}

impl From<spec::SpecError> for ApiError {
    fn from(e: spec::SpecError) -> Self {
        let status = match e.kind {
            spec::SpecErrorKind::Invalid => StatusCode::BAD_REQUEST,
            spec::SpecErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        };
        ApiError::new(status, e.kind.code(), e.message).with_field(e.field)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            // `code` and `message` also at the top level: the official SDKs
            // read them there when they log a failed request.
            axum::Json(serde_json::json!({
                "error": self.body,
                "code": self.body.code,
                "message": self.body.message,
            })),
        )
            .into_response()
    }
}
