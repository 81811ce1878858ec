//! Errors at the HTTP edge. A handler returns [`ApiError`]; its response carries the error as an
//! extension, and the outermost middleware renders it in the surface's shape with the request id.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use platform::PlatformError;

/// An error on its way to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<PlatformError> for ApiError {
    fn from(e: PlatformError) -> Self {
        let code = e.code();
        let (status, message) = match &e {
            PlatformError::NotFound { .. } => (StatusCode::NOT_FOUND, e.to_string()),
            PlatformError::Conflict { .. } => (StatusCode::CONFLICT, e.to_string()),
            PlatformError::Invalid { .. } => (StatusCode::BAD_REQUEST, e.to_string()),
            PlatformError::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, e.to_string()),
            PlatformError::Forbidden { .. } => (StatusCode::FORBIDDEN, e.to_string()),
            PlatformError::QuotaExceeded { .. } => (StatusCode::PAYMENT_REQUIRED, e.to_string()),
            PlatformError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            PlatformError::Store(store::StoreError::Conflict) => {
                (StatusCode::CONFLICT, "conflicting change".to_owned())
            }
            PlatformError::Store(_) | PlatformError::Blob(_) | PlatformError::Io { .. } => {
                // Logged here, where it is handled; the client learns only that it was our fault.
                tracing::error!(error = ?e, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        let retry_after = match e {
            PlatformError::RateLimited { retry_after } => Some(retry_after),
            _ => None,
        };
        Self { status, code, message, retry_after }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = http::HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        response.extensions_mut().insert(self);
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
