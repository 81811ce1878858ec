//! End-user auth for every environment, with GoTrue's semantics (what `@supabase/supabase-js` speaks).
//!
//! Users, sessions, refresh tokens and the mail outbox live in the env's own database (tables of the
//! `auth` schema, see [`sql`]), so app tables can reference `auth.users(id)`; the operations here take
//! that database as an [`EnvStore`] (the env's SQLite file or PostgreSQL database, through
//! [`appdb`]). Per-env settings and the env's ES256 signing keys live in the
//! platform store. Access tokens are verified with [`Auth::verify_access_token`], which the data API
//! uses for row-level security.

pub mod error;
pub mod flows;
pub mod jwt;
pub mod limits;
pub mod mail;
pub mod password;
pub mod sql;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use platform::Platform;
use protocol::EnvId;
use protocol::auth::{AuthSettings, AuthSettingsPatch};
use store::{Conn, Db, Value};

pub use error::{AuthError, Result};
pub use jwt::{Claims, PublicKey, SigningKey, VerifiedClaims};
pub use mail::SmtpConfig;
pub use password::HashCost;
pub use sql::schema_ddl;

/// An env's own database as the auth flows use it: transactions as the env's owner role, through
/// [`appdb::AppDbs`] (the env's SQLite file, or its PostgreSQL database), where the `auth` tables are
/// created by the schema hook made of [`schema_ddl`].
#[derive(Clone)]
pub struct EnvStore {
    dbs: appdb::AppDbs,
    env: EnvId,
}

impl EnvStore {
    pub fn new(dbs: appdb::AppDbs, env: EnvId) -> Self {
        Self { dbs, env }
    }

    /// Which SQL dialect the env's database speaks.
    pub fn dialect(&self) -> store::Dialect {
        self.dbs.dialect()
    }

    /// Runs `f` in one transaction on the env's database (created on first use).
    pub async fn tx<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T> + Send + 'static,
    {
        self.dbs.with_conn(&self.env, appdb::Role::Owner, f).await
    }
}

/// The DDL of the auth tables for every env database, in both dialects (register it with
/// [`appdb::AppDbs::register_schema`] before serving).
pub fn schema_hook() -> appdb::SchemaHook {
    appdb::SchemaHook {
        name: "auth".to_owned(),
        sqlite: schema_ddl(store::Dialect::Sqlite).to_owned(),
        postgres: schema_ddl(store::Dialect::Postgres).to_owned(),
    }
}

/// How the auth service runs (process-wide; per-env settings are [`AuthSettings`]).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The SMTP relay; `None` keeps mail in each env's outbox.
    pub smtp: Option<SmtpConfig>,
    /// argon2id cost of new password hashes.
    pub hash_cost: HashCost,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { smtp: None, hash_cost: HashCost::OWASP }
    }
}

/// The auth service. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    platform: Platform,
    config: AuthConfig,
    platform_tables: tokio::sync::OnceCell<()>,
    windows: limits::Windows,
    /// Recently used envs' public keys, so verifying a token (every data-API request) costs no query.
    public_keys: std::sync::Mutex<std::collections::HashMap<String, (i64, Vec<jwt::PublicKey>)>>,
}

/// How long a cached set of public keys is used before it is read again.
const PUBLIC_KEY_TTL_MS: i64 = 60_000;
/// The cache is emptied when it holds more envs than this (idle envs cost nothing for long).
const PUBLIC_KEY_CACHE_MAX: usize = 10_000;

/// The client a request came from, for rate limits.
#[derive(Debug, Clone)]
pub struct Client {
    /// Source address (or `unknown`).
    pub ip: String,
}

/// What an auth event is, for the `auth_events` meter's `kind` dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Signup,
    AnonymousSignin,
    Signin,
    Refresh,
    Logout,
    UserUpdate,
    Recover,
    Verify,
    AdminCreate,
    AdminUpdate,
    AdminDelete,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Signup => "signup",
            Self::AnonymousSignin => "anonymous_signin",
            Self::Signin => "signin",
            Self::Refresh => "refresh",
            Self::Logout => "logout",
            Self::UserUpdate => "user_update",
            Self::Recover => "recover",
            Self::Verify => "verify",
            Self::AdminCreate => "admin_create",
            Self::AdminUpdate => "admin_update",
            Self::AdminDelete => "admin_delete",
        }
    }
}

/// Which rate limit an endpoint counts against.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// Sign-ups, sign-ins, verification, recovery.
    Sensitive,
    /// Token refreshes.
    Refresh,
}

const FIVE_MINUTES: Duration = Duration::from_secs(300);

impl Auth {
    pub fn new(platform: Platform, config: AuthConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                platform,
                config,
                platform_tables: tokio::sync::OnceCell::new(),
                windows: limits::Windows::default(),
                public_keys: std::sync::Mutex::default(),
            }),
        }
    }

    pub fn platform(&self) -> &Platform {
        &self.inner.platform
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.inner.platform.clock().now_ms()
    }

    /// The platform database, with the auth tables created on first use.
    async fn platform_db(&self) -> Result<&Db> {
        let db = self.inner.platform.db();
        self.inner
            .platform_tables
            .get_or_try_init(|| async {
                db.tx(|c: &mut dyn Conn| c.batch(sql::PLATFORM_DDL)).await?;
                Ok::<_, AuthError>(())
            })
            .await?;
        Ok(db)
    }

    /// The env's auth settings (defaults until set).
    pub async fn settings(&self, env: &EnvId) -> Result<AuthSettings> {
        let db = self.platform_db().await?;
        let id = env.to_string();
        let row = db
            .tx(move |c: &mut dyn Conn| {
                c.query_opt("SELECT settings FROM auth_settings WHERE env_id = $1", &[id.into()])
            })
            .await?;
        Ok(match row {
            Some(r) => serde_json::from_str(&r.text(0)?).unwrap_or_default(),
            None => AuthSettings::default(),
        })
    }

    /// Applies `patch` to the env's settings after validating every field; the change and its audit
    /// row (`auth:SetSettings`) commit together.
    pub async fn update_settings(
        &self,
        actor: &platform::Actor,
        env: &EnvId,
        patch: AuthSettingsPatch,
    ) -> Result<AuthSettings> {
        let mut s = self.settings(env).await?;
        let range = |name: &str, v: i64, lo: i64, hi: i64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(AuthError::BadRequest("invalid_settings", format!("{name} must be {lo}..={hi}")))
            }
        };
        if let Some(v) = patch.access_token_ttl_seconds {
            s.access_token_ttl_seconds = range("access_token_ttl_seconds", v, 30, 604_800)?;
        }
        if let Some(v) = patch.password_min_length {
            s.password_min_length = range("password_min_length", v, 6, 72)?;
        }
        if let Some(v) = patch.rate_limit_per_ip {
            s.rate_limit_per_ip = range("rate_limit_per_ip", v, 1, 1_000_000)?;
        }
        if let Some(v) = patch.rate_limit_refresh_per_ip {
            s.rate_limit_refresh_per_ip = range("rate_limit_refresh_per_ip", v, 1, 1_000_000)?;
        }
        if let Some(v) = patch.rate_limit_per_email {
            s.rate_limit_per_email = range("rate_limit_per_email", v, 1, 1_000_000)?;
        }
        if let Some(v) = patch.email_interval_seconds {
            s.email_interval_seconds = range("email_interval_seconds", v, 0, 86_400)?;
        }
        if let Some(v) = patch.email_confirmation {
            s.email_confirmation = v;
        }
        if let Some(v) = patch.anonymous_sign_ins {
            s.anonymous_sign_ins = v;
        }
        if let Some(v) = patch.disable_signup {
            s.disable_signup = v;
        }
        let url_ok = |u: &str| {
            u.len() <= 2000
                && (u.starts_with("http://") || u.starts_with("https://"))
                && !u.chars().any(char::is_control)
        };
        if let Some(v) = patch.site_url {
            if !v.is_empty() && !url_ok(&v) {
                return Err(AuthError::BadRequest("invalid_settings", "site_url must be an http(s) URL".into()));
            }
            s.site_url = v;
        }
        if let Some(v) = patch.additional_redirect_urls {
            if v.len() > 50 || !v.iter().all(|u| url_ok(u)) {
                return Err(AuthError::BadRequest(
                    "invalid_settings",
                    "additional_redirect_urls: at most 50 http(s) URLs".into(),
                ));
            }
            s.additional_redirect_urls = v;
        }
        let db = self.platform_db().await?;
        let (id, text, now) = (env.to_string(), serde_json::to_string(&s).unwrap_or_default(), self.now_ms());
        let actor = actor.clone();
        db.tx(move |c: &mut dyn Conn| {
            let n = c.execute(
                "UPDATE auth_settings SET settings = $2, updated_at = $3 WHERE env_id = $1",
                &[id.clone().into(), text.clone().into(), now.into()],
            )?;
            if n == 0 {
                c.execute(
                    "INSERT INTO auth_settings (env_id, settings, updated_at) VALUES ($1, $2, $3)",
                    &[id.clone().into(), text.into(), now.into()],
                )?;
            }
            let record = platform::audit::Record {
                actor: &actor,
                action: "auth:SetSettings",
                env: Some(&id),
                target: None,
                result: "ok",
            };
            platform::audit::write(c, now, &record).map_err(|e| match e {
                platform::PlatformError::Store(s) => AuthError::Store(s),
                other => AuthError::Key(other.to_string()),
            })?;
            Ok::<_, AuthError>(())
        })
        .await?;
        Ok(s)
    }

    /// The env's signing keys, newest first; the first call for an env generates one.
    pub async fn signing_keys(&self, env: &EnvId) -> Result<Vec<SigningKey>> {
        let db = self.platform_db().await?;
        let id = env.to_string();
        let load = |db: Db, id: String| async move {
            db.tx(move |c: &mut dyn Conn| {
                c.query(
                    "SELECT kid, private_pkcs8 FROM auth_signing_keys WHERE env_id = $1 ORDER BY created_at DESC, kid",
                    &[id.into()],
                )
            })
            .await
        };
        let mut rows = load(db.clone(), id.clone()).await?;
        if rows.is_empty() {
            let key = SigningKey::generate(self.inner.platform.random_id(16))?;
            let (kid, pkcs8, x, y, now) =
                (key.kid.clone(), key.pkcs8_base64(), key.x.clone(), key.y.clone(), self.now_ms());
            let env_id = id.clone();
            db.tx(move |c: &mut dyn Conn| {
                c.execute(
                    "INSERT INTO auth_signing_keys (env_id, kid, private_pkcs8, public_x, public_y, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[env_id.into(), kid.into(), pkcs8.into(), x.into(), y.into(), now.into()],
                )
            })
            .await?;
            rows = load(db.clone(), id).await?;
        }
        rows.iter().map(|r| SigningKey::from_pkcs8(r.text(0)?, SigningKey::pkcs8_from_base64(&r.text(1)?)?)).collect()
    }

    /// The env's public keys as a JWKS document.
    pub async fn jwks(&self, env: &EnvId) -> Result<serde_json::Value> {
        let keys = self.signing_keys(env).await?;
        Ok(serde_json::json!({"keys": keys.iter().map(SigningKey::jwk).collect::<Vec<_>>()}))
    }

    /// Verifies an access token of `env` and returns its claims (for the data API and `/user`).
    pub async fn verify_access_token(&self, env: &EnvId, token: &str) -> Result<VerifiedClaims> {
        let now = self.now_ms();
        let cached = {
            let cache = self.inner.public_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            cache.get(env.as_str()).filter(|(at, _)| now - at < PUBLIC_KEY_TTL_MS).map(|(_, k)| k.clone())
        };
        let keys = match cached {
            Some(k) => k,
            None => {
                let keys: Vec<jwt::PublicKey> = self.signing_keys(env).await?.iter().map(Into::into).collect();
                let mut cache = self.inner.public_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= PUBLIC_KEY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(env.to_string(), (now, keys.clone()));
                keys
            }
        };
        jwt::verify(token, &keys, env.as_str(), now / 1000)
    }

    /// Removes everything the env has in the platform store (its database goes with the env).
    pub async fn forget_env(&self, env: &EnvId) -> Result<()> {
        self.inner.public_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(env.as_str());
        let db = self.platform_db().await?;
        let id = env.to_string();
        db.tx(move |c: &mut dyn Conn| {
            c.execute("DELETE FROM auth_signing_keys WHERE env_id = $1", &[Value::from(id.as_str())])?;
            c.execute("DELETE FROM auth_settings WHERE env_id = $1", &[Value::from(id.as_str())])?;
            Ok::<_, AuthError>(())
        })
        .await
    }

    /// Counts a request against the client's limit; 429 `over_request_rate_limit` when over it.
    pub fn check_rate(&self, env: &EnvId, client: &Client, limit: Limit, settings: &AuthSettings) -> Result<()> {
        let (name, max) = match limit {
            Limit::Sensitive => ("sensitive", settings.rate_limit_per_ip),
            Limit::Refresh => ("refresh", settings.rate_limit_refresh_per_ip),
        };
        let key = format!("{env}\u{0}ip\u{0}{name}\u{0}{}", client.ip);
        self.inner
            .windows
            .hit(&key, u32::try_from(max).unwrap_or(u32::MAX), FIVE_MINUTES, self.now_ms())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })
    }

    /// Counts a sign-in or code attempt for `email`, from any address; 429 `over_request_rate_limit`.
    pub(crate) fn check_email_attempts(&self, env: &EnvId, email: &str, settings: &AuthSettings) -> Result<()> {
        let key = format!("{env}\u{0}attempts\u{0}{}", email.trim().to_lowercase());
        let max = u32::try_from(settings.rate_limit_per_email).unwrap_or(u32::MAX);
        self.inner
            .windows
            .hit(&key, max, FIVE_MINUTES, self.now_ms())
            .map_err(|retry_after| AuthError::RateLimited { retry_after })
    }

    /// Counts a mail to `email`; 429 `over_email_send_rate_limit` within the env's interval.
    pub(crate) fn check_email_rate(&self, env: &EnvId, email: &str, settings: &AuthSettings) -> Result<()> {
        if settings.email_interval_seconds <= 0 {
            return Ok(());
        }
        let key = format!("{env}\u{0}email\u{0}{}", email.to_lowercase());
        let window = Duration::from_secs(settings.email_interval_seconds.unsigned_abs());
        self.inner
            .windows
            .hit(&key, 1, window, self.now_ms())
            .map_err(|retry_after| AuthError::EmailRateLimited { retry_after })
    }

    /// Records one `auth_events` event. Metering never fails the request it counts.
    pub(crate) async fn meter(&self, env: &EnvId, kind: EventKind) {
        let input = protocol::api::UsageEventInput {
            meter: protocol::Meter::AuthEvents.name().to_owned(),
            quantity: 1,
            source: "auth".to_owned(),
            event_id: self.inner.platform.random_id(24),
            at: None,
            dimensions: [("kind".to_owned(), kind.name().to_owned())].into_iter().collect(),
        };
        if let Err(e) = self.inner.platform.record_usage(env, input).await {
            tracing::warn!(error = %e, env = %env, "could not record an auth event");
        }
    }
}

/// `ms` as the timestamp text both databases store (`2026-01-02T03:04:05.123000Z`).
pub fn timestamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Milliseconds of a stored timestamp.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}
