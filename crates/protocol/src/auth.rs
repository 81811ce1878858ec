//! Bodies of the `/v1` routes that manage an env's end-user auth (`/v1/envs/{env}/auth/…`). The GoTrue
//! wire format of `/env/{env}/auth/v1` itself is GoTrue's and lives with the auth service.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An env's auth settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuthSettings {
    /// Lifetime of access tokens (JWTs), in seconds.
    #[schema(minimum = 30, maximum = 604_800)]
    pub access_token_ttl_seconds: i64,
    /// Email sign-ups must confirm their address (by link or code) before they can sign in.
    pub email_confirmation: bool,
    /// `POST /signup` without email and password creates an anonymous user.
    pub anonymous_sign_ins: bool,
    /// New sign-ups are refused (admins can still create users).
    pub disable_signup: bool,
    #[schema(minimum = 6, maximum = 72)]
    pub password_min_length: i64,
    /// Where verification links send the browser by default (empty: the env's site).
    #[schema(max_length = 2000)]
    pub site_url: String,
    /// Further URL prefixes a `redirect_to` may start with.
    #[schema(max_items = 50)]
    pub additional_redirect_urls: Vec<String>,
    /// Sign-ups, sign-ins, verifications and recoveries per client address per 5 minutes.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_ip: i64,
    /// Token refreshes per client address per 5 minutes.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_refresh_per_ip: i64,
    /// Password sign-ins and code verifications per email address per 5 minutes (from any address).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_email: i64,
    /// Least seconds between two emails to one address.
    #[schema(minimum = 0, maximum = 86_400)]
    pub email_interval_seconds: i64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            access_token_ttl_seconds: 3600,
            email_confirmation: false,
            anonymous_sign_ins: false,
            disable_signup: false,
            password_min_length: 6,
            site_url: String::new(),
            additional_redirect_urls: Vec::new(),
            rate_limit_per_ip: 30,
            rate_limit_refresh_per_ip: 150,
            rate_limit_per_email: 30,
            email_interval_seconds: 60,
        }
    }
}

/// A change to an env's auth settings: fields left out keep their value.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSettingsPatch {
    #[schema(minimum = 30, maximum = 604_800)]
    pub access_token_ttl_seconds: Option<i64>,
    pub email_confirmation: Option<bool>,
    pub anonymous_sign_ins: Option<bool>,
    pub disable_signup: Option<bool>,
    #[schema(minimum = 6, maximum = 72)]
    pub password_min_length: Option<i64>,
    #[schema(max_length = 2000)]
    pub site_url: Option<String>,
    #[schema(max_items = 50)]
    pub additional_redirect_urls: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_ip: Option<i64>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_refresh_per_ip: Option<i64>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_email: Option<i64>,
    #[schema(minimum = 0, maximum = 86_400)]
    pub email_interval_seconds: Option<i64>,
}

/// A mail the auth service would have sent, kept because no SMTP server is configured.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutboxMail {
    pub id: i64,
    /// `confirmation` or `recovery`.
    pub kind: String,
    pub to: String,
    pub subject: String,
    pub body: String,
    /// RFC 3339.
    pub created_at: String,
}
