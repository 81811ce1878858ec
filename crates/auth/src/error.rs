//! Errors of the auth service, each with GoTrue's HTTP status and `error_code`.

use std::time::Duration;

/// What can go wrong in an auth operation. The server renders it in GoTrue's shape
/// (`{code, error_code, msg}`) with [`AuthError::status`] and [`AuthError::code`].
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Email or password did not match a user (or the user has no password).
    #[error("Invalid login credentials")]
    InvalidCredentials,
    /// A sign-up or email change named an email another user already has.
    #[error("User already registered")]
    UserAlreadyExists,
    /// Password sign-in before the email was confirmed (confirmation on).
    #[error("Email not confirmed")]
    EmailNotConfirmed,
    /// The password is shorter than the env's minimum.
    #[error("Password should be at least {min} characters.")]
    WeakPassword { min: usize },
    /// An admin or user update named an email another user already has.
    #[error("A user with this email address has already been registered")]
    EmailExists,
    /// The email address is not a plausible address.
    #[error("Unable to validate email address: invalid format")]
    InvalidEmail,
    /// A refresh token that was never issued (or whose session is gone).
    #[error("Invalid Refresh Token: Refresh Token Not Found")]
    RefreshTokenNotFound,
    /// A rotated-out refresh token used after the reuse interval: its whole family is revoked.
    #[error("Invalid Refresh Token: Already Used")]
    RefreshTokenAlreadyUsed,
    /// The access token's session was signed out or deleted.
    #[error("Session from session_id claim in JWT does not exist")]
    SessionNotFound,
    /// No bearer token where a user's access token is required.
    #[error("This endpoint requires a valid Bearer token")]
    NoAuthorization,
    /// The access token is malformed, wrongly signed, of another env, or uses another algorithm.
    #[error("invalid JWT: unable to parse or verify signature, {0}")]
    BadJwt(&'static str),
    /// The access token has expired.
    #[error("invalid JWT: unable to parse or verify signature, token has expired")]
    JwtExpired,
    /// The user the token or path names does not exist (any more).
    #[error("User not found")]
    UserNotFound,
    /// The user is banned.
    #[error("User is banned")]
    UserBanned,
    /// A confirmation or recovery token that does not exist or has expired.
    #[error("Email link is invalid or has expired")]
    OtpExpired,
    /// Sign-ups of this kind are off for the env.
    #[error("{0}")]
    SignupDisabled(&'static str),
    /// A PKCE code that was never issued or was already exchanged.
    #[error("invalid flow state, no valid flow state found")]
    FlowStateNotFound,
    /// A PKCE code older than the flow's lifetime.
    #[error("invalid flow state, flow state has expired")]
    FlowStateExpired,
    /// The PKCE verifier does not match the flow's challenge.
    #[error("code challenge does not match previously saved code verifier")]
    BadCodeVerifier,
    /// Anonymous sign-ins are off for the env.
    #[error("Anonymous sign-ins are disabled")]
    AnonymousDisabled,
    /// Too many requests from one address or for one email.
    #[error("Request rate limit reached")]
    RateLimited { retry_after: Duration },
    /// Too many emails to one address.
    #[error("For security purposes, you can only request this after {} seconds.", retry_after.as_secs().max(1))]
    EmailRateLimited { retry_after: Duration },
    /// The request is missing a field or has a wrong one.
    #[error("{1}")]
    Validation(&'static str, String),
    /// The operation is not allowed in this state (e.g. the grant type).
    #[error("{1}")]
    BadRequest(&'static str, String),
    /// Sending a mail failed.
    #[error("Error sending {0} email")]
    Mail(&'static str, #[source] crate::mail::MailError),
    /// The env database or the platform store failed.
    #[error("database error: {0}")]
    Store(#[from] store::StoreError),
    /// The env's database could not be opened or created.
    #[error("env database: {0}")]
    EnvDb(#[from] appdb::AppDbError),
    /// Key material could not be generated, parsed or used.
    #[error("signing key error: {0}")]
    Key(String),
}

impl AuthError {
    /// GoTrue's HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidCredentials
            | Self::EmailNotConfirmed
            | Self::InvalidEmail
            | Self::RefreshTokenNotFound
            | Self::RefreshTokenAlreadyUsed
            | Self::BadRequest(..)
            | Self::Validation(..)
            | Self::UserBanned => 400,
            Self::UserAlreadyExists
            | Self::EmailExists
            | Self::WeakPassword { .. }
            | Self::SignupDisabled(_)
            | Self::AnonymousDisabled => 422,
            Self::NoAuthorization => 401,
            Self::BadJwt(_) | Self::JwtExpired | Self::SessionNotFound | Self::OtpExpired => 403,
            Self::UserNotFound | Self::FlowStateNotFound => 404,
            Self::FlowStateExpired => 422,
            Self::BadCodeVerifier => 403,
            Self::RateLimited { .. } | Self::EmailRateLimited { .. } => 429,
            Self::Mail(..) | Self::Store(_) | Self::EnvDb(_) | Self::Key(_) => 500,
        }
    }

    /// GoTrue's `error_code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidCredentials => "invalid_credentials",
            Self::UserAlreadyExists => "user_already_exists",
            Self::EmailNotConfirmed => "email_not_confirmed",
            Self::WeakPassword { .. } => "weak_password",
            Self::InvalidEmail => "email_address_invalid",
            Self::EmailExists => "email_exists",
            Self::RefreshTokenNotFound => "refresh_token_not_found",
            Self::RefreshTokenAlreadyUsed => "refresh_token_already_used",
            Self::SessionNotFound => "session_not_found",
            Self::NoAuthorization => "no_authorization",
            Self::BadJwt(_) => "bad_jwt",
            Self::JwtExpired => "bad_jwt",
            Self::UserNotFound => "user_not_found",
            Self::UserBanned => "user_banned",
            Self::OtpExpired => "otp_expired",
            Self::SignupDisabled(_) => "signup_disabled",
            Self::FlowStateNotFound => "flow_state_not_found",
            Self::FlowStateExpired => "flow_state_expired",
            Self::BadCodeVerifier => "bad_code_verifier",
            Self::AnonymousDisabled => "anonymous_provider_disabled",
            Self::RateLimited { .. } => "over_request_rate_limit",
            Self::EmailRateLimited { .. } => "over_email_send_rate_limit",
            Self::Validation(code, _) | Self::BadRequest(code, _) => code,
            Self::Mail(..) | Self::Store(_) | Self::EnvDb(_) | Self::Key(_) => "unexpected_failure",
        }
    }

    /// How long a rate-limited caller should wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::EmailRateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::validation_failed(message)
    }

    /// A 400 `validation_failed` with this message.
    pub fn validation_failed(message: impl Into<String>) -> Self {
        Self::Validation("validation_failed", message.into())
    }
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;
