//! The gateway's error: an HTTP status and a stable code, rendered by the server in the shape of the
//! protocol the caller speaks (OpenAI or Anthropic), or inside a stream once it has started.

use std::time::Duration;

/// A refused or failed model call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct GatewayError {
    /// HTTP status to answer with.
    pub status: u16,
    /// Stable machine-readable code (`model_not_found`, `budget_exceeded_env_tokens_in`, …).
    pub code: String,
    /// What happened, for people; never contains credentials or upstream internals.
    pub message: String,
    /// For 429: when to come back.
    pub retry_after: Option<Duration>,
}

impl GatewayError {
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into(), retry_after: None }
    }

    /// 400 with `code`.
    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// The upstream could not serve the call (after retries and fallbacks).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(502, "upstream_unavailable", message)
    }

    /// A platform error (rate limit, store) met on the way.
    pub fn from_platform(e: platform::PlatformError) -> Self {
        let code = e.code();
        match e {
            platform::PlatformError::RateLimited { retry_after } => {
                Self { status: 429, code, message: "rate limit exceeded".to_owned(), retry_after: Some(retry_after) }
            }
            platform::PlatformError::QuotaExceeded { .. } => Self::new(402, code, e.to_string()),
            platform::PlatformError::NotFound { .. } => Self::new(404, code, e.to_string()),
            platform::PlatformError::Invalid { .. } => Self::new(400, code, e.to_string()),
            other => {
                tracing::error!(error = ?other, "gateway: platform error");
                Self::new(500, "internal_error", "internal error")
            }
        }
    }
}

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
