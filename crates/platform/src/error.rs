//! The platform's error type. Each variant has a stable code; the HTTP edge maps variants to statuses
//! and to each surface's error shape.

use std::time::Duration;

/// Why a platform operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The request is well-formed but conflicts with existing state (e.g. an env id already taken).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request's content is invalid (bad id, bad policy, out-of-range value).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// No credential, or one that is malformed, unknown, revoked or expired.
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    /// A valid credential that may not do this.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// A hard quota is used up for the current period.
    #[error("quota exceeded: {meter} ({used} of {limit} this {period})")]
    QuotaExceeded { meter: String, used: i64, limit: i64, period: &'static str },
    /// The env's request rate limit is exceeded.
    #[error("rate limit exceeded")]
    RateLimited { retry_after: Duration },
    /// The metadata database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The object store failed.
    #[error(transparent)]
    Blob(#[from] store::BlobError),
    /// A filesystem operation on the data dir failed.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl PlatformError {
    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> String {
        match self {
            Self::NotFound { what } => format!("{}_not_found", what.replace(' ', "_")),
            Self::Conflict { code, .. }
            | Self::Invalid { code, .. }
            | Self::Unauthenticated { code, .. }
            | Self::Forbidden { code, .. } => (*code).to_owned(),
            Self::QuotaExceeded { meter, .. } => format!("quota_exceeded_{meter}"),
            Self::RateLimited { .. } => "rate_limited".to_owned(),
            Self::Store(store::StoreError::Conflict) => "conflict".to_owned(),
            Self::Store(_) | Self::Blob(_) | Self::Io { .. } => "internal".to_owned(),
        }
    }

    /// True for failures that are the platform's fault, not the caller's; only these are logged as errors.
    pub fn is_internal(&self) -> bool {
        match self {
            Self::Store(store::StoreError::Conflict) => false,
            Self::Store(_) | Self::Blob(_) | Self::Io { .. } => true,
            _ => false,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden { code, message: message.into() }
    }

    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::Unauthenticated { code, message: message.into() }
    }
}

pub type Result<T, E = PlatformError> = std::result::Result<T, E>;
