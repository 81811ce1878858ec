//! The GoTrue operations: sign-up (email or anonymous), password and refresh-token grants with
//! rotation and reuse detection, the current user, sign-out, recovery, verification, and admin user
//! management. Each takes the env's own database; every change of one operation commits together.

use std::time::Duration;

use protocol::EnvId;
use protocol::auth::{AuthSettings, OutboxMail};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use store::{Conn, Value};

use crate::error::{AuthError, Result};
use crate::jwt::{Claims, SigningKey};
use crate::users::{self, User, exec, query};
use crate::{Auth, Client, EnvStore, EventKind, Limit, mail, password, timestamp};

/// A rotated-out refresh token still answers within this interval (a client's concurrent refreshes).
pub const REUSE_INTERVAL: Duration = Duration::from_secs(10);
/// How long confirmation and recovery tokens stay valid.
pub const OTP_EXPIRY: Duration = Duration::from_secs(3600);

/// `POST /signup`.
#[derive(Debug, Default, Deserialize)]
pub struct SignupRequest {
    pub email: Option<String>,
    pub password: Option<String>,
    /// User metadata.
    pub data: Option<Json>,
    /// PKCE (`flowType: 'pkce'`): the mail link then answers with `?code=` for `/token?grant_type=pkce`.
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    /// Where the confirmation link sends the browser (from the `redirect_to` query parameter).
    #[serde(skip)]
    pub redirect_to: Option<String>,
}

/// `POST /resend`: another confirmation mail.
#[derive(Debug, Default, Deserialize)]
pub struct ResendRequest {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub email: Option<String>,
    #[serde(skip)]
    pub redirect_to: Option<String>,
}

/// `POST /token?grant_type=password`.
#[derive(Debug, Default, Deserialize)]
pub struct PasswordGrant {
    pub email: Option<String>,
    pub password: Option<String>,
}

/// `POST /token?grant_type=refresh_token`.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshGrant {
    pub refresh_token: Option<String>,
}

/// `POST /token?grant_type=pkce`.
#[derive(Debug, Default, Deserialize)]
pub struct PkceGrant {
    pub auth_code: Option<String>,
    pub code_verifier: Option<String>,
}

/// How long a PKCE flow may take from the mail to the code exchange.
pub const FLOW_STATE_EXPIRY: Duration = Duration::from_secs(3600);

/// A validated PKCE challenge: (challenge, method `s256` or `plain`).
type Challenge = Option<(String, String)>;

fn pkce_challenge(challenge: Option<String>, method: Option<String>) -> Result<Challenge> {
    match (challenge.filter(|c| !c.is_empty()), method.filter(|m| !m.is_empty())) {
        (None, None) => Ok(None),
        (Some(c), Some(m)) => {
            let m = m.to_lowercase();
            if !matches!(m.as_str(), "s256" | "plain") {
                return Err(AuthError::validation("code_challenge_method must be s256 or plain"));
            }
            let ok_char = |ch: char| ch.is_ascii_alphanumeric() || "-._~".contains(ch);
            if !(43..=128).contains(&c.len()) || !c.chars().all(ok_char) {
                return Err(AuthError::validation("code_challenge must be 43 to 128 unreserved characters"));
            }
            Ok(Some((c, m)))
        }
        _ => Err(AuthError::validation("PKCE flow requires code_challenge_method and code_challenge")),
    }
}

/// Records a PKCE flow for the mail link whose token hash is `token_hash`.
fn save_flow_state(
    c: &mut dyn Conn,
    challenge: &Challenge,
    user_id: &str,
    auth_method: &str,
    token_hash: &str,
    now: &str,
) -> Result<()> {
    let Some((code_challenge, method)) = challenge else { return Ok(()) };
    exec(
        c,
        "INSERT INTO auth.flow_state (id, user_id, auth_code, code_challenge, code_challenge_method, \
         authentication_method, token_hash, created_at) VALUES ($1::text::uuid, $2::text::uuid, $3, $4, $5, $6, $7, \
         $8::text::timestamptz)",
        &[
            users::new_uuid().into(),
            user_id.into(),
            users::new_uuid().into(),
            code_challenge.as_str().into(),
            method.as_str().into(),
            auth_method.into(),
            token_hash.into(),
            now.into(),
        ],
    )?;
    Ok(())
}

/// What a verification produced: a session, or (a mail link of a PKCE flow) the code to exchange.
#[derive(Debug)]
pub enum Verified {
    Session(Json),
    Code(String),
}

/// `PUT /user`.
#[derive(Debug, Default, Deserialize)]
pub struct UserUpdate {
    pub email: Option<String>,
    pub password: Option<String>,
    pub data: Option<Json>,
}

/// `POST /recover`.
#[derive(Debug, Default, Deserialize)]
pub struct RecoverRequest {
    pub email: Option<String>,
    /// PKCE (`flowType: 'pkce'`): the mail link then answers with `?code=` for `/token?grant_type=pkce`.
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    #[serde(skip)]
    pub redirect_to: Option<String>,
}

/// `POST /verify` (and the query of `GET /verify`).
#[derive(Debug, Default, Deserialize)]
pub struct VerifyRequest {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub token: Option<String>,
    pub token_hash: Option<String>,
    pub email: Option<String>,
    pub redirect_to: Option<String>,
}

/// `POST /admin/users` and `PUT /admin/users/{id}`.
#[derive(Debug, Default, Deserialize)]
pub struct AdminUser {
    pub email: Option<String>,
    pub password: Option<String>,
    pub email_confirm: Option<bool>,
    pub user_metadata: Option<Json>,
    pub app_metadata: Option<Json>,
    /// `none`, or a duration such as `24h`, `30m`, `90s`.
    pub ban_duration: Option<String>,
}

/// `POST /logout?scope=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutScope {
    /// This session.
    Local,
    /// Every session of the user.
    Global,
    /// Every session but this one.
    Others,
}

impl LogoutScope {
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s.unwrap_or("global") {
            "local" => Ok(Self::Local),
            "global" => Ok(Self::Global),
            "others" => Ok(Self::Others),
            other => Err(AuthError::BadRequest("validation_failed", format!("unsupported logout scope {other:?}"))),
        }
    }
}

/// What a verification confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtpKind {
    /// A sign-up, invite or email-change confirmation.
    Signup,
    /// A password recovery.
    Recovery,
    /// GoTrue's `email` type: a confirmation or a recovery code.
    Email,
}

impl OtpKind {
    /// The token columns a verification of this kind may match, in order.
    fn columns(self) -> &'static [(&'static str, &'static str)] {
        const CONFIRMATION: (&str, &str) = ("confirmation_token", "confirmation_sent_at");
        const RECOVERY: (&str, &str) = ("recovery_token", "recovery_sent_at");
        match self {
            Self::Signup => &[CONFIRMATION],
            Self::Recovery => &[RECOVERY],
            Self::Email => &[CONFIRMATION, RECOVERY],
        }
    }
}

/// What sign-up answers: a session (no confirmation needed) or the user (confirmation sent).
#[derive(Debug)]
pub enum SignupOutcome {
    Session(Json),
    User(Json),
}

/// What a signing operation needs before it enters its transaction.
struct Issuer {
    key: SigningKey,
    iss: String,
    ttl: i64,
    now_ms: i64,
}

impl Issuer {
    /// Creates a session and its first refresh token; returns GoTrue's session JSON.
    fn new_session(&self, c: &mut dyn Conn, user: &User, method: &str) -> Result<Json> {
        let session_id = users::new_uuid();
        let now = timestamp(self.now_ms);
        exec(
            c,
            "INSERT INTO auth.sessions (id, user_id, method, created_at, updated_at) \
             VALUES ($1::text::uuid, $2::text::uuid, $3, $4::text::timestamptz, $4::text::timestamptz)",
            &[session_id.as_str().into(), user.id.as_str().into(), method.into(), now.as_str().into()],
        )?;
        let refresh = insert_refresh_token(c, &user.id, &session_id, None, &now)?;
        exec(
            c,
            "UPDATE auth.users SET last_sign_in_at = $2::text::timestamptz WHERE id = $1::text::uuid",
            &[user.id.as_str().into(), now.as_str().into()],
        )?;
        let user = users::by_id(c, &user.id)?.ok_or(AuthError::UserNotFound)?;
        self.session_json(&user, &session_id, method, self.now_ms / 1000, &refresh)
    }

    fn session_json(&self, user: &User, session_id: &str, method: &str, auth_time: i64, refresh: &str) -> Result<Json> {
        let iat = self.now_ms / 1000;
        let exp = iat + self.ttl;
        let claims = Claims {
            iss: self.iss.clone(),
            sub: user.id.clone(),
            aud: user.aud.clone(),
            exp,
            iat,
            email: user.email.clone().unwrap_or_default(),
            phone: String::new(),
            app_metadata: user.app_metadata.clone(),
            user_metadata: user.user_metadata.clone(),
            role: user.role.clone(),
            aal: "aal1".to_owned(),
            amr: json!([{"method": method, "timestamp": auth_time}]),
            session_id: session_id.to_owned(),
            is_anonymous: user.is_anonymous,
        };
        Ok(json!({
            "access_token": self.key.sign(&claims)?,
            "token_type": "bearer",
            "expires_in": self.ttl,
            "expires_at": exp,
            "refresh_token": refresh,
            "user": user.to_json(),
        }))
    }
}

fn insert_refresh_token(
    c: &mut dyn Conn,
    user_id: &str,
    session_id: &str,
    parent: Option<&str>,
    now: &str,
) -> Result<String> {
    let token = random_token(32);
    exec(
        c,
        "INSERT INTO auth.refresh_tokens (token, user_id, session_id, parent, revoked, created_at, updated_at) \
         VALUES ($1, $2::text::uuid, $3::text::uuid, $4, $5::int4::boolean, $6::text::timestamptz, $6::text::timestamptz)",
        &[token.as_str().into(), user_id.into(), session_id.into(), parent.into(), 0i64.into(), now.into()],
    )?;
    Ok(token)
}

/// A random string of `len` characters from `[A-Za-z0-9]`.
fn random_token(len: usize) -> String {
    use rand::{Rng as _, SeedableRng as _};
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::StdRng::from_os_rng();
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// A six-digit one-time code.
fn random_otp() -> String {
    use rand::{Rng as _, SeedableRng as _};
    format!("{:06}", rand::rngs::StdRng::from_os_rng().random_range(0..1_000_000u32))
}

/// The token hash of a mailed code, as the link carries it and the database stores it. GoTrue hashes
/// the address and the code alone, so anyone who knows an address can compute the hashes of all
/// million codes offline and try them through the link; here the hash is keyed with the env's secret
/// key material (HMAC-SHA-256, 56 hex digits like GoTrue's), so only the mail's own link works.
pub fn token_hash(key: &SigningKey, email: &str, otp: &str) -> Result<String> {
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.secret_bytes())
        .map_err(|_| AuthError::Key("unusable key for token hashes".into()))?;
    mac.update(format!("{}:{otp}", email.to_lowercase()).as_bytes());
    Ok(mac.finalize().into_bytes().iter().take(28).map(|b| format!("{b:02x}")).collect())
}

/// A plausible email address, lower-cased.
fn valid_email(email: Option<&str>) -> Result<String> {
    let e = email.map(str::trim).unwrap_or_default();
    if e.is_empty() {
        return Err(AuthError::validation("An email address is required"));
    }
    let ok = e.len() <= 255
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;\"()[]\\".contains(c));
    if ok { Ok(e.to_lowercase()) } else { Err(AuthError::InvalidEmail) }
}

fn check_password(password: &str, settings: &AuthSettings) -> Result<()> {
    let min = usize::try_from(settings.password_min_length).unwrap_or(6);
    if password.chars().count() < min {
        return Err(AuthError::WeakPassword { min });
    }
    if password.len() > 1024 {
        return Err(AuthError::validation("Password is too long"));
    }
    Ok(())
}

fn object_or_empty(v: Option<Json>, what: &str) -> Result<Json> {
    match v {
        None | Some(Json::Null) => Ok(json!({})),
        Some(o @ Json::Object(_)) => Ok(o),
        Some(_) => Err(AuthError::validation(format!("{what} must be a JSON object"))),
    }
}

/// GoTrue's metadata merge: top-level keys replace, `null` removes.
fn merge(base: &Json, patch: &Json) -> Json {
    let mut out = base.as_object().cloned().unwrap_or_default();
    if let Some(p) = patch.as_object() {
        for (k, v) in p {
            if v.is_null() {
                out.remove(k);
            } else {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Json::Object(out)
}

/// A Go-style duration (`24h`, `30m`, `90s`, `1h30m`).
fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            let n: u64 = num.parse().ok()?;
            num.clear();
            total = total.checked_add(n.checked_mul(match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            })?)?;
        }
    }
    (num.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

async fn hash_password(auth: &Auth, password: String) -> Result<String> {
    let cost = auth.config().hash_cost;
    let mut salt = [0u8; 16];
    {
        use rand::{RngCore as _, SeedableRng as _};
        rand::rngs::StdRng::from_os_rng().fill_bytes(&mut salt);
    }
    tokio::task::spawn_blocking(move || password::hash(&password, cost, salt))
        .await
        .map_err(|e| AuthError::Key(format!("hashing task: {e}")))?
}

async fn verify_password(password: String, stored: String) -> bool {
    tokio::task::spawn_blocking(move || password::verify(&password, &stored)).await.unwrap_or(false)
}

impl Auth {
    /// The env's current signing key (which also keys mailed token hashes).
    async fn current_key(&self, env: &EnvId) -> Result<SigningKey> {
        self.signing_keys(env).await?.into_iter().next().ok_or_else(|| AuthError::Key("no key".into()))
    }

    async fn issuer(&self, env: &EnvId, settings: &AuthSettings) -> Result<Issuer> {
        let key = self.current_key(env).await?;
        Ok(Issuer {
            key,
            iss: crate::jwt::issuer(&self.platform().config().public_url, env.as_str()),
            ttl: settings.access_token_ttl_seconds,
            now_ms: self.now_ms(),
        })
    }

    /// Sends a mail through SMTP, or keeps it in the env's outbox when no relay is configured.
    async fn deliver(&self, db: &EnvStore, kind: &'static str, message: mail::Message) -> Result<()> {
        match &self.config().smtp {
            Some(smtp) => {
                let domain = smtp.from.rsplit_once('@').map_or("localhost", |(_, d)| d);
                let id = format!("{}@{domain}", random_token(24));
                let date = time::OffsetDateTime::from_unix_timestamp(self.now_ms() / 1000)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc2822).ok())
                    .unwrap_or_default();
                mail::send(smtp, &message, &id, &date).await.map_err(|e| {
                    tracing::error!(error = %e, "could not send an auth email");
                    AuthError::Mail(kind, e)
                })
            }
            None => {
                let now = timestamp(self.now_ms());
                db.tx(move |c: &mut dyn Conn| {
                    exec(
                        c,
                        "INSERT INTO auth.mail_outbox (kind, recipient, subject, body, created_at) \
                         VALUES ($1, $2, $3, $4, $5::text::timestamptz)",
                        &[kind.into(), message.to.into(), message.subject.into(), message.body.into(), now.into()],
                    )
                })
                .await?;
                Ok(())
            }
        }
    }

    fn verify_link(
        &self,
        env: &EnvId,
        hash: &str,
        kind: &str,
        settings: &AuthSettings,
        redirect_to: Option<&str>,
    ) -> String {
        let base = crate::jwt::issuer(&self.platform().config().public_url, env.as_str());
        let redirect = self.redirect_target(env, settings, redirect_to);
        format!("{base}/verify?token={hash}&type={kind}&redirect_to={}", percent_encode(&redirect))
    }

    /// Where verified browsers go by default: the env's site URL, else its published site.
    pub fn site_url(&self, env: &EnvId, settings: &AuthSettings) -> String {
        if settings.site_url.is_empty() {
            format!("{}/env/{env}/site/", self.platform().config().public_url.trim_end_matches('/'))
        } else {
            settings.site_url.clone()
        }
    }

    /// `redirect_to` if it is allowed for the env, else its site URL (no open redirects).
    pub fn redirect_target(&self, env: &EnvId, settings: &AuthSettings, redirect_to: Option<&str>) -> String {
        let site = self.site_url(env, settings);
        match redirect_to {
            Some(r)
                if !r.chars().any(char::is_control)
                    && (r.starts_with(&site) || settings.additional_redirect_urls.iter().any(|u| r.starts_with(u))) =>
            {
                r.to_owned()
            }
            _ => site,
        }
    }

    /// `POST /signup`: an email user (with a session, or a confirmation mail), or an anonymous user.
    pub async fn signup(
        &self,
        env: &EnvId,
        db: &EnvStore,
        req: SignupRequest,
        client: &Client,
    ) -> Result<SignupOutcome> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        let data = object_or_empty(req.data, "data")?;
        let redirect_to = req.redirect_to;
        let challenge = pkce_challenge(req.code_challenge, req.code_challenge_method)?;
        if req.email.is_none() && req.password.is_none() {
            if !settings.anonymous_sign_ins {
                return Err(AuthError::AnonymousDisabled);
            }
            let issuer = self.issuer(env, &settings).await?;
            let session = db
                .tx(move |c: &mut dyn Conn| {
                    let id = users::new_uuid();
                    let now = timestamp(issuer.now_ms);
                    exec(
                        c,
                        "INSERT INTO auth.users (id, raw_app_meta_data, raw_user_meta_data, is_anonymous, created_at, updated_at) \
                         VALUES ($1::text::uuid, $2::text::jsonb, $3::text::jsonb, true, $4::text::timestamptz, $4::text::timestamptz)",
                        &[id.as_str().into(), "{}".into(), data.to_string().into(), now.into()],
                    )?;
                    let user = users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)?;
                    issuer.new_session(c, &user, "anonymous")
                })
                .await?;
            self.meter(env, EventKind::AnonymousSignin).await;
            return Ok(SignupOutcome::Session(session));
        }
        if settings.disable_signup {
            return Err(AuthError::SignupDisabled("Signups not allowed for this instance"));
        }
        let email = valid_email(req.email.as_deref())?;
        let password = req.password.unwrap_or_default();
        if password.is_empty() {
            return Err(AuthError::validation("Signup requires a valid password"));
        }
        check_password(&password, &settings)?;
        let hash = hash_password(self, password).await?;
        let confirm = settings.email_confirmation;
        let otp = random_otp();
        let token_hash = token_hash(&self.current_key(env).await?, &email, &otp)?;
        if confirm {
            self.check_email_rate(env, &email, &settings)?;
        }
        let issuer = self.issuer(env, &settings).await?;
        let (em, th) = (email.clone(), token_hash.clone());
        let outcome = db
            .tx(move |c: &mut dyn Conn| {
                let now = timestamp(issuer.now_ms);
                if let Some(existing) = users::by_email(c, &em)? {
                    if !confirm || existing.email_confirmed_at.is_some() {
                        // A confirmed address: without confirmation GoTrue says so; with it, it answers
                        // like a fresh sign-up so that sign-up cannot be used to find accounts.
                        return if confirm { Ok(Err(obfuscated_user(&em, &now))) } else { Err(AuthError::UserAlreadyExists) };
                    }
                    // Unconfirmed: send a fresh confirmation.
                    exec(
                        c,
                        "UPDATE auth.users SET confirmation_token = $2, confirmation_sent_at = $3::text::timestamptz, \
                         updated_at = $3::text::timestamptz WHERE id = $1::text::uuid",
                        &[existing.id.as_str().into(), th.as_str().into(), now.as_str().into()],
                    )?;
                    save_flow_state(c, &challenge, &existing.id, "email/signup", &th, &now)?;
                    let user = users::by_id(c, &existing.id)?.ok_or(AuthError::UserNotFound)?;
                    return Ok(Ok((user, None)));
                }
                let id = users::new_uuid();
                let confirmed: Value = if confirm { Value::Null } else { now.as_str().into() };
                let (token, sent): (Value, Value) =
                    if confirm { (th.as_str().into(), now.as_str().into()) } else { (Value::Null, Value::Null) };
                exec(
                    c,
                    "INSERT INTO auth.users (id, email, encrypted_password, email_confirmed_at, confirmation_token, \
                     confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_anonymous, created_at, updated_at) \
                     VALUES ($1::text::uuid, $2, $3, $4::text::timestamptz, $5, $6::text::timestamptz, $7::text::jsonb, \
                     $8::text::jsonb, false, $9::text::timestamptz, $9::text::timestamptz)",
                    &[
                        id.as_str().into(),
                        em.as_str().into(),
                        hash.into(),
                        confirmed,
                        token,
                        sent,
                        json!({"provider": "email", "providers": ["email"]}).to_string().into(),
                        data.to_string().into(),
                        now.as_str().into(),
                    ],
                )
                .map_err(|e| match e {
                    AuthError::Store(store::StoreError::Conflict) => AuthError::UserAlreadyExists,
                    e => e,
                })?;
                let user = users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)?;
                if confirm {
                    save_flow_state(c, &challenge, &id, "email/signup", &th, &now)?;
                    Ok(Ok((user, None)))
                } else {
                    let session = issuer.new_session(c, &user, "password")?;
                    Ok(Ok((user, Some(session))))
                }
            })
            .await?;
        match outcome {
            Err(fake) => Ok(SignupOutcome::User(fake)),
            Ok((_, Some(session))) => {
                self.meter(env, EventKind::Signup).await;
                Ok(SignupOutcome::Session(session))
            }
            Ok((user, None)) => {
                let link = self.verify_link(env, &token_hash, "signup", &settings, redirect_to.as_deref());
                let message = mail::Message {
                    to: email,
                    subject: "Confirm your signup".to_owned(),
                    body: format!(
                        "Follow this link to confirm your email address:\n\n{link}\n\nOr enter this code: {otp}\n"
                    ),
                };
                self.deliver(db, "confirmation", message).await?;
                self.meter(env, EventKind::Signup).await;
                Ok(SignupOutcome::User(user.to_json()))
            }
        }
    }

    /// `POST /token?grant_type=password`.
    pub async fn password_grant(
        &self,
        env: &EnvId,
        db: &EnvStore,
        req: PasswordGrant,
        client: &Client,
    ) -> Result<Json> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        let (Some(email), Some(password)) = (req.email, req.password) else {
            return Err(AuthError::InvalidCredentials);
        };
        self.check_email_attempts(env, &email, &settings)?;
        let lookup = email.trim().to_owned();
        let user = db.tx(move |c: &mut dyn Conn| users::by_email(c, &lookup)).await?;
        // Hash something even for unknown users, so timing does not tell which addresses exist.
        let stored = user.as_ref().and_then(|u| u.encrypted_password.clone()).unwrap_or_else(|| DUMMY_HASH.to_owned());
        let ok = verify_password(password, stored).await;
        let user = match user {
            Some(u) if ok && u.encrypted_password.is_some() => u,
            _ => return Err(AuthError::InvalidCredentials),
        };
        if user.email_confirmed_at.is_none() && settings.email_confirmation {
            return Err(AuthError::EmailNotConfirmed);
        }
        self.check_not_banned(&user)?;
        let issuer = self.issuer(env, &settings).await?;
        let session = db.tx(move |c: &mut dyn Conn| issuer.new_session(c, &user, "password")).await?;
        self.meter(env, EventKind::Signin).await;
        Ok(session)
    }

    fn check_not_banned(&self, user: &User) -> Result<()> {
        match user.banned_until.as_deref().and_then(crate::parse_timestamp) {
            Some(until) if until > self.now_ms() => Err(AuthError::UserBanned),
            _ => Ok(()),
        }
    }

    /// `POST /token?grant_type=refresh_token`: rotates the token. A rotated-out token used within
    /// [`REUSE_INTERVAL`] of its rotation answers with its active descendant; used later, it revokes the
    /// whole family (every token of the session) and fails with `refresh_token_already_used`.
    pub async fn refresh_grant(&self, env: &EnvId, db: &EnvStore, req: RefreshGrant, client: &Client) -> Result<Json> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Refresh, &settings)?;
        let token =
            req.refresh_token.filter(|t| !t.is_empty() && t.len() <= 256).ok_or(AuthError::RefreshTokenNotFound)?;
        let issuer = self.issuer(env, &settings).await?;
        let now_ms = self.now_ms();
        enum Outcome {
            Session(Json),
            FamilyRevoked,
        }
        let outcome = db
            .tx(move |c: &mut dyn Conn| {
                let rows = query(
                    c,
                    "SELECT id, user_id::text, session_id::text, revoked, auth.vb_ts(updated_at) \
                     FROM auth.refresh_tokens WHERE token = $1",
                    &[token.as_str().into()],
                )?;
                let row = rows.first().ok_or(AuthError::RefreshTokenNotFound)?;
                let (id, user_id, session_id) = (row.int(0)?, row.text(1)?, row.text(2)?);
                let revoked = row.int(3)? != 0;
                let revoked_at = crate::parse_timestamp(&row.text(4)?).unwrap_or(0);
                let now = timestamp(now_ms);
                let user = users::by_id(c, &user_id)?.ok_or(AuthError::RefreshTokenNotFound)?;
                let session = query(
                    c,
                    "SELECT method, auth.vb_ts(created_at) FROM auth.sessions WHERE id = $1::text::uuid",
                    &[session_id.as_str().into()],
                )?;
                let session = session.first().ok_or(AuthError::SessionNotFound)?;
                let method = session.text(0)?;
                let auth_time = crate::parse_timestamp(&session.text(1)?).unwrap_or(now_ms) / 1000;
                let rotated = !revoked
                    && exec(
                        c,
                        "UPDATE auth.refresh_tokens SET revoked = true, updated_at = $2::text::timestamptz \
                         WHERE id = $1 AND revoked = false",
                        &[id.into(), now.as_str().into()],
                    )? == 1;
                let refresh = if rotated {
                    insert_refresh_token(c, &user_id, &session_id, Some(&token), &now)?
                } else {
                    // Rotated out before, or just now by a concurrent refresh (PostgreSQL's UPDATE waited
                    // for it): when, is what the row says now.
                    let revoked_at = if revoked {
                        revoked_at
                    } else {
                        query(c, "SELECT auth.vb_ts(updated_at) FROM auth.refresh_tokens WHERE id = $1", &[id.into()])?
                            .first()
                            .map(|r| r.text(0))
                            .transpose()?
                            .as_deref()
                            .and_then(crate::parse_timestamp)
                            .unwrap_or(now_ms)
                    };
                    let within = now_ms - revoked_at <= REUSE_INTERVAL.as_millis() as i64;
                    match within.then(|| active_descendant(c, &token)).transpose()?.flatten() {
                        Some(active) => active,
                        None => {
                            exec(
                                c,
                                "UPDATE auth.refresh_tokens SET revoked = true, updated_at = $2::text::timestamptz \
                                 WHERE session_id = $1::text::uuid AND revoked = false",
                                &[session_id.as_str().into(), now.as_str().into()],
                            )?;
                            return Ok(Outcome::FamilyRevoked);
                        }
                    }
                };
                exec(
                    c,
                    "UPDATE auth.sessions SET updated_at = $2::text::timestamptz WHERE id = $1::text::uuid",
                    &[session_id.as_str().into(), now.as_str().into()],
                )?;
                if user.banned_until.as_deref().and_then(crate::parse_timestamp).is_some_and(|t| t > now_ms) {
                    return Err(AuthError::UserBanned);
                }
                Ok(Outcome::Session(issuer.session_json(&user, &session_id, &method, auth_time, &refresh)?))
            })
            .await?;
        match outcome {
            Outcome::Session(s) => {
                self.meter(env, EventKind::Refresh).await;
                Ok(s)
            }
            Outcome::FamilyRevoked => Err(AuthError::RefreshTokenAlreadyUsed),
        }
    }

    /// The user and session of an access token; the session must still exist.
    async fn current(&self, env: &EnvId, db: &EnvStore, bearer: Option<&str>) -> Result<(User, Claims)> {
        let token = bearer.filter(|t| !t.is_empty()).ok_or(AuthError::NoAuthorization)?;
        let claims = self.verify_access_token(env, token).await?.claims;
        let (sub, sid) = (claims.sub.clone(), claims.session_id.clone());
        let user = db
            .tx(move |c: &mut dyn Conn| {
                if !users::is_uuid(&sid)
                    || query(c, "SELECT 1 FROM auth.sessions WHERE id = $1::text::uuid", &[sid.as_str().into()])?
                        .is_empty()
                {
                    return Err(AuthError::SessionNotFound);
                }
                users::by_id(c, &sub)?.ok_or(AuthError::UserNotFound)
            })
            .await?;
        Ok((user, claims))
    }

    /// `GET /user`.
    pub async fn get_user(&self, env: &EnvId, db: &EnvStore, bearer: Option<&str>) -> Result<Json> {
        Ok(self.current(env, db, bearer).await?.0.to_json())
    }

    /// `PUT /user`: metadata (merged), password, email.
    pub async fn update_user(&self, env: &EnvId, db: &EnvStore, bearer: Option<&str>, req: UserUpdate) -> Result<Json> {
        let (user, _) = self.current(env, db, bearer).await?;
        let settings = self.settings(env).await?;
        let data = match req.data {
            None | Some(Json::Null) => None,
            Some(d @ Json::Object(_)) => Some(merge(&user.user_metadata, &d)),
            Some(_) => return Err(AuthError::validation("data must be a JSON object")),
        };
        let hash = match req.password {
            Some(p) => {
                check_password(&p, &settings)?;
                Some(hash_password(self, p).await?)
            }
            None => None,
        };
        let email = match req.email {
            Some(e) => {
                let e = valid_email(Some(&e))?;
                (Some(e.as_str()) != user.email.as_deref()).then_some(e)
            }
            None => None,
        };
        let confirm = settings.email_confirmation && email.is_some();
        let otp = random_otp();
        let key = self.current_key(env).await?;
        let th = email.as_deref().map(|e| token_hash(&key, e, &otp)).transpose()?;
        if let (true, Some(e)) = (confirm, &email) {
            self.check_email_rate(env, e, &settings)?;
        }
        let now = timestamp(self.now_ms());
        let (id, em, thc) = (user.id.clone(), email.clone(), th.clone());
        let updated = db
            .tx(move |c: &mut dyn Conn| {
                if let Some(d) = data {
                    exec(
                        c,
                        "UPDATE auth.users SET raw_user_meta_data = $2::text::jsonb WHERE id = $1::text::uuid",
                        &[id.as_str().into(), d.to_string().into()],
                    )?;
                }
                if let Some(h) = hash {
                    exec(
                        c,
                        "UPDATE auth.users SET encrypted_password = $2 WHERE id = $1::text::uuid",
                        &[id.as_str().into(), h.into()],
                    )?;
                }
                if let Some(e) = em {
                    // With confirmation on, the new address must be confirmed before the next password
                    // sign-in; the mail goes to the new address.
                    let (confirmed, token, sent): (Value, Value, Value) = if confirm {
                        (Value::Null, thc.into(), now.as_str().into())
                    } else {
                        (now.as_str().into(), Value::Null, Value::Null)
                    };
                    let app = json!({"provider": "email", "providers": ["email"]}).to_string();
                    exec(
                        c,
                        "UPDATE auth.users SET email = $2, email_confirmed_at = $3::text::timestamptz, \
                         confirmation_token = $4, confirmation_sent_at = $5::text::timestamptz, is_anonymous = false, \
                         raw_app_meta_data = CASE WHEN is_anonymous THEN $6::text::jsonb ELSE raw_app_meta_data END \
                         WHERE id = $1::text::uuid",
                        &[id.as_str().into(), e.into(), confirmed, token, sent, app.into()],
                    )
                    .map_err(|e| match e {
                        AuthError::Store(store::StoreError::Conflict) => AuthError::EmailExists,
                        e => e,
                    })?;
                }
                exec(
                    c,
                    "UPDATE auth.users SET updated_at = $2::text::timestamptz WHERE id = $1::text::uuid",
                    &[id.as_str().into(), now.as_str().into()],
                )?;
                users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)
            })
            .await?;
        if let (true, Some(e), Some(h)) = (confirm, email, th) {
            let link = self.verify_link(env, &h, "email_change", &settings, None);
            let message = mail::Message {
                to: e,
                subject: "Confirm your new email address".to_owned(),
                body: format!(
                    "Follow this link to confirm your new email address:\n\n{link}\n\nOr enter this code: {otp}\n"
                ),
            };
            self.deliver(db, "confirmation", message).await?;
        }
        self.meter(env, EventKind::UserUpdate).await;
        Ok(updated.to_json())
    }

    /// `POST /logout`: ends this session, every session of the user, or all others.
    pub async fn logout(&self, env: &EnvId, db: &EnvStore, bearer: Option<&str>, scope: LogoutScope) -> Result<()> {
        let token = bearer.filter(|t| !t.is_empty()).ok_or(AuthError::NoAuthorization)?;
        let claims = self.verify_access_token(env, token).await?.claims;
        let (sub, sid) = (claims.sub, claims.session_id);
        if !users::is_uuid(&sub) || !users::is_uuid(&sid) {
            return Err(AuthError::BadJwt("malformed claims"));
        }
        db.tx(move |c: &mut dyn Conn| {
            let (token_cond, cond, params): (&str, &str, Vec<Value>) = match scope {
                LogoutScope::Local => ("session_id = $1::text::uuid", "id = $1::text::uuid", vec![sid.as_str().into()]),
                LogoutScope::Global => {
                    ("user_id = $1::text::uuid", "user_id = $1::text::uuid", vec![sub.as_str().into()])
                }
                LogoutScope::Others => (
                    "user_id = $1::text::uuid AND session_id <> $2::text::uuid",
                    "user_id = $1::text::uuid AND id <> $2::text::uuid",
                    vec![sub.as_str().into(), sid.as_str().into()],
                ),
            };
            exec(c, &format!("DELETE FROM auth.refresh_tokens WHERE {token_cond}"), &params)?;
            exec(c, &format!("DELETE FROM auth.sessions WHERE {cond}"), &params)?;
            Ok::<_, AuthError>(())
        })
        .await?;
        self.meter(env, EventKind::Logout).await;
        Ok(())
    }

    /// `POST /recover`: mails a recovery link and code if the address belongs to a user. Answers the
    /// same either way, so it cannot be used to find accounts.
    pub async fn recover(&self, env: &EnvId, db: &EnvStore, req: RecoverRequest, client: &Client) -> Result<()> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        let email = valid_email(req.email.as_deref())?;
        self.check_email_rate(env, &email, &settings)?;
        let otp = random_otp();
        let hash = token_hash(&self.current_key(env).await?, &email, &otp)?;
        let (em, h, now) = (email.clone(), hash.clone(), timestamp(self.now_ms()));
        let challenge = pkce_challenge(req.code_challenge, req.code_challenge_method)?;
        let found = db
            .tx(move |c: &mut dyn Conn| {
                let Some(user) = users::by_email(c, &em)? else { return Ok(false) };
                exec(
                    c,
                    "UPDATE auth.users SET recovery_token = $2, recovery_sent_at = $3::text::timestamptz \
                     WHERE id = $1::text::uuid",
                    &[user.id.as_str().into(), h.as_str().into(), now.as_str().into()],
                )?;
                save_flow_state(c, &challenge, &user.id, "recovery", &h, &now)?;
                Ok::<_, AuthError>(true)
            })
            .await?;
        if found {
            let link = self.verify_link(env, &hash, "recovery", &settings, req.redirect_to.as_deref());
            let message = mail::Message {
                to: email,
                subject: "Reset your password".to_owned(),
                body: format!("Follow this link to reset your password:\n\n{link}\n\nOr enter this code: {otp}\n"),
            };
            self.deliver(db, "recovery", message).await?;
        }
        self.meter(env, EventKind::Recover).await;
        Ok(())
    }

    /// `POST /verify` and `GET /verify`: consumes a confirmation or recovery token (by its hash, or by
    /// email and code), confirms the address, and signs the user in. A mail `link` of a PKCE flow
    /// answers with the code to exchange (`/token?grant_type=pkce`) instead of a session.
    pub async fn verify(
        &self,
        env: &EnvId,
        db: &EnvStore,
        req: &VerifyRequest,
        link: bool,
        client: &Client,
    ) -> Result<(Verified, OtpKind)> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        let kind = match req.kind.as_deref() {
            Some("signup" | "invite" | "email_change") => OtpKind::Signup,
            Some("email") => OtpKind::Email,
            Some("recovery") => OtpKind::Recovery,
            Some(other) => {
                return Err(AuthError::validation(format!("Verify requires a verification type, not {other:?}")));
            }
            None => return Err(AuthError::validation("Verify requires a verification type")),
        };
        let hash = match (&req.token_hash, &req.token, &req.email) {
            (Some(h), _, _) if !h.is_empty() => h.to_lowercase(),
            (_, Some(t), Some(e)) if !t.is_empty() => {
                let email = valid_email(Some(e))?;
                self.check_email_attempts(env, &email, &settings)?;
                token_hash(&self.current_key(env).await?, &email, t.trim())?
            }
            _ => return Err(AuthError::validation("Verify requires a token_hash, or a token and an email")),
        };
        let issuer = self.issuer(env, &settings).await?;
        let expiry_ms = OTP_EXPIRY.as_millis() as i64;
        let verified = db
            .tx(move |c: &mut dyn Conn| {
                let mut found = None;
                for &(column, sent) in kind.columns() {
                    let rows = query(
                        c,
                        &format!("SELECT id::text, auth.vb_ts({sent}) FROM auth.users WHERE {column} = $1"),
                        &[hash.as_str().into()],
                    )?;
                    if let Some(row) = rows.first() {
                        found = Some((column, row.text(0)?, row.opt_text(1)?));
                        break;
                    }
                }
                let (column, id, sent_at) = found.ok_or(AuthError::OtpExpired)?;
                let sent_ms = sent_at.as_deref().and_then(crate::parse_timestamp).unwrap_or(0);
                if issuer.now_ms - sent_ms > expiry_ms {
                    return Err(AuthError::OtpExpired);
                }
                let now = timestamp(issuer.now_ms);
                exec(
                    c,
                    &format!(
                        "UPDATE auth.users SET {column} = NULL, \
                         email_confirmed_at = COALESCE(email_confirmed_at, $2::text::timestamptz), \
                         updated_at = $2::text::timestamptz WHERE id = $1::text::uuid"
                    ),
                    &[id.as_str().into(), now.into()],
                )?;
                if link {
                    let flow = query(
                        c,
                        "SELECT auth_code FROM auth.flow_state WHERE token_hash = $1 AND user_id = $2::text::uuid",
                        &[hash.as_str().into(), id.as_str().into()],
                    )?;
                    if let Some(row) = flow.first() {
                        return Ok(Verified::Code(row.text(0)?));
                    }
                }
                let user = users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)?;
                Ok(Verified::Session(issuer.new_session(c, &user, "otp")?))
            })
            .await?;
        self.meter(env, EventKind::Verify).await;
        Ok((verified, kind))
    }

    /// `POST /token?grant_type=pkce`: the code a PKCE mail link answered with, and the verifier whose
    /// challenge started the flow, for a session. A code works once.
    pub async fn pkce_grant(&self, env: &EnvId, db: &EnvStore, req: PkceGrant, client: &Client) -> Result<Json> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        let (Some(code), Some(verifier)) = (req.auth_code.filter(|c| !c.is_empty()), req.code_verifier) else {
            return Err(AuthError::validation("invalid request: both auth code and code verifier should be non-empty"));
        };
        let issuer = self.issuer(env, &settings).await?;
        let expiry_ms = FLOW_STATE_EXPIRY.as_millis() as i64;
        let session = db
            .tx(move |c: &mut dyn Conn| {
                let rows = query(
                    c,
                    "SELECT id::text, user_id::text, code_challenge, code_challenge_method, auth.vb_ts(created_at) \
                     FROM auth.flow_state WHERE auth_code = $1",
                    &[code.as_str().into()],
                )?;
                let row = rows.first().ok_or(AuthError::FlowStateNotFound)?;
                let (id, user_id, challenge, method) = (row.text(0)?, row.text(1)?, row.text(2)?, row.text(3)?);
                let created = crate::parse_timestamp(&row.text(4)?).unwrap_or(0);
                if issuer.now_ms - created > expiry_ms {
                    exec(c, "DELETE FROM auth.flow_state WHERE id = $1::text::uuid", &[id.as_str().into()])?;
                    return Ok(Err(AuthError::FlowStateExpired));
                }
                let computed = if method == "s256" {
                    use base64::Engine as _;
                    use sha2::Digest as _;
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
                } else {
                    verifier.clone()
                };
                if !constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
                    return Err(AuthError::BadCodeVerifier);
                }
                exec(c, "DELETE FROM auth.flow_state WHERE id = $1::text::uuid", &[id.as_str().into()])?;
                let user = users::by_id(c, &user_id)?.ok_or(AuthError::UserNotFound)?;
                Ok(Ok(issuer.new_session(c, &user, "otp")?))
            })
            .await??;
        self.meter(env, EventKind::Signin).await;
        Ok(session)
    }

    /// `POST /resend` (`type: signup`): a fresh confirmation mail to an unconfirmed user. Answers `{}`
    /// whether or not the address belongs to one.
    pub async fn resend(&self, env: &EnvId, db: &EnvStore, req: ResendRequest, client: &Client) -> Result<()> {
        let settings = self.settings(env).await?;
        self.check_rate(env, client, Limit::Sensitive, &settings)?;
        match req.kind.as_deref() {
            Some("signup") => {}
            other => {
                return Err(AuthError::validation(format!("Unsupported resend type {:?}", other.unwrap_or(""))));
            }
        }
        let email = valid_email(req.email.as_deref())?;
        self.check_email_rate(env, &email, &settings)?;
        let otp = random_otp();
        let hash = token_hash(&self.current_key(env).await?, &email, &otp)?;
        let (em, h, now) = (email.clone(), hash.clone(), timestamp(self.now_ms()));
        let pending = db
            .tx(move |c: &mut dyn Conn| {
                let Some(user) = users::by_email(c, &em)?.filter(|u| u.email_confirmed_at.is_none()) else {
                    return Ok(false);
                };
                exec(
                    c,
                    "UPDATE auth.users SET confirmation_token = $2, confirmation_sent_at = $3::text::timestamptz \
                     WHERE id = $1::text::uuid",
                    &[user.id.as_str().into(), h.into(), now.into()],
                )?;
                Ok::<_, AuthError>(true)
            })
            .await?;
        if pending {
            let link = self.verify_link(env, &hash, "signup", &settings, req.redirect_to.as_deref());
            let message = mail::Message {
                to: email,
                subject: "Confirm your signup".to_owned(),
                body: format!(
                    "Follow this link to confirm your email address:\n\n{link}\n\nOr enter this code: {otp}\n"
                ),
            };
            self.deliver(db, "confirmation", message).await?;
        }
        Ok(())
    }

    /// `GET /admin/users?page=&per_page=`: a page of users, newest first, and the total.
    pub async fn admin_list(&self, db: &EnvStore, page: i64, per_page: i64) -> Result<(Vec<Json>, i64)> {
        let (page, per_page) = (page.max(1), per_page.clamp(1, 1000));
        let offset = (page - 1).saturating_mul(per_page);
        db.tx(move |c: &mut dyn Conn| {
            let total = query(c, "SELECT CAST(COUNT(*) AS BIGINT) FROM auth.users", &[])?
                .first()
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(0);
            let list = users::select(
                c,
                "true ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
                &[per_page.into(), offset.into()],
            )?;
            Ok((list.iter().map(User::to_json).collect(), total))
        })
        .await
    }

    /// `GET /admin/users/{id}`.
    pub async fn admin_get(&self, db: &EnvStore, id: &str) -> Result<Json> {
        let id = id.to_owned();
        Ok(db.tx(move |c: &mut dyn Conn| users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)).await?.to_json())
    }

    /// `POST /admin/users`.
    pub async fn admin_create(&self, env: &EnvId, db: &EnvStore, req: AdminUser) -> Result<Json> {
        let settings = self.settings(env).await?;
        let email = valid_email(req.email.as_deref())?;
        let hash = match req.password {
            Some(p) => {
                check_password(&p, &settings)?;
                Some(hash_password(self, p).await?)
            }
            None => None,
        };
        let user_meta = object_or_empty(req.user_metadata, "user_metadata")?;
        let app_meta = merge(
            &json!({"provider": "email", "providers": ["email"]}),
            &object_or_empty(req.app_metadata, "app_metadata")?,
        );
        let banned = self.ban_until(req.ban_duration.as_deref())?;
        let now = timestamp(self.now_ms());
        let confirmed: Value = if req.email_confirm.unwrap_or(false) { now.as_str().into() } else { Value::Null };
        let user = db
            .tx(move |c: &mut dyn Conn| {
                let id = users::new_uuid();
                exec(
                    c,
                    "INSERT INTO auth.users (id, email, encrypted_password, email_confirmed_at, raw_app_meta_data, \
                     raw_user_meta_data, is_anonymous, banned_until, created_at, updated_at) \
                     VALUES ($1::text::uuid, $2, $3, $4::text::timestamptz, $5::text::jsonb, $6::text::jsonb, false, \
                     $7::text::timestamptz, $8::text::timestamptz, $8::text::timestamptz)",
                    &[
                        id.as_str().into(),
                        email.into(),
                        hash.into(),
                        confirmed,
                        app_meta.to_string().into(),
                        user_meta.to_string().into(),
                        banned.flatten().into(),
                        now.into(),
                    ],
                )
                .map_err(|e| match e {
                    AuthError::Store(store::StoreError::Conflict) => AuthError::EmailExists,
                    e => e,
                })?;
                users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)
            })
            .await?;
        self.meter(env, EventKind::AdminCreate).await;
        Ok(user.to_json())
    }

    /// `Some(None)` lifts a ban, `Some(Some(t))` bans until `t`, `None` leaves it.
    fn ban_until(&self, ban: Option<&str>) -> Result<Option<Option<String>>> {
        match ban {
            None => Ok(None),
            Some("none") => Ok(Some(None)),
            Some(d) => {
                let d = parse_duration(d)
                    .ok_or_else(|| AuthError::validation("ban_duration must be \"none\" or a duration such as 24h"))?;
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2).min(100 * 365 * 86_400_000);
                Ok(Some(Some(timestamp(self.now_ms() + ms))))
            }
        }
    }

    /// `PUT /admin/users/{id}`.
    pub async fn admin_update(&self, env: &EnvId, db: &EnvStore, id: &str, req: AdminUser) -> Result<Json> {
        let settings = self.settings(env).await?;
        let email = req.email.as_deref().map(|e| valid_email(Some(e))).transpose()?;
        let hash = match req.password {
            Some(p) => {
                check_password(&p, &settings)?;
                Some(hash_password(self, p).await?)
            }
            None => None,
        };
        for (name, v) in [("user_metadata", &req.user_metadata), ("app_metadata", &req.app_metadata)] {
            if v.as_ref().is_some_and(|v| !v.is_object() && !v.is_null()) {
                return Err(AuthError::validation(format!("{name} must be a JSON object")));
            }
        }
        let ban = self.ban_until(req.ban_duration.as_deref())?;
        let now = timestamp(self.now_ms());
        let id = id.to_owned();
        let (user_meta, app_meta, confirm) = (req.user_metadata, req.app_metadata, req.email_confirm);
        let user = db
            .tx(move |c: &mut dyn Conn| {
                let user = users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)?;
                let set = |c: &mut dyn Conn, assignment: &str, v: Value| {
                    exec(
                        c,
                        &format!("UPDATE auth.users SET {assignment} WHERE id = $1::text::uuid"),
                        &[id.as_str().into(), v],
                    )
                };
                if let Some(e) = email {
                    set(c, "email = $2", e.into()).map_err(|e| match e {
                        AuthError::Store(store::StoreError::Conflict) => AuthError::EmailExists,
                        e => e,
                    })?;
                }
                if let Some(h) = hash {
                    set(c, "encrypted_password = $2", h.into())?;
                }
                if let Some(m) = user_meta.filter(Json::is_object) {
                    set(c, "raw_user_meta_data = $2::text::jsonb", merge(&user.user_metadata, &m).to_string().into())?;
                }
                if let Some(m) = app_meta.filter(Json::is_object) {
                    set(c, "raw_app_meta_data = $2::text::jsonb", merge(&user.app_metadata, &m).to_string().into())?;
                }
                match confirm {
                    Some(true) => set(
                        c,
                        "email_confirmed_at = COALESCE(email_confirmed_at, $2::text::timestamptz)",
                        now.as_str().into(),
                    )?,
                    Some(false) => set(c, "email_confirmed_at = NULL, confirmation_token = $2", Value::Null)?,
                    None => 0,
                };
                if let Some(until) = ban {
                    let banned = until.is_some();
                    set(c, "banned_until = $2::text::timestamptz", until.into())?;
                    if banned {
                        exec(c, "DELETE FROM auth.sessions WHERE user_id = $1::text::uuid", &[id.as_str().into()])?;
                    }
                }
                set(c, "updated_at = $2::text::timestamptz", now.as_str().into())?;
                users::by_id(c, &id)?.ok_or(AuthError::UserNotFound)
            })
            .await?;
        self.meter(env, EventKind::AdminUpdate).await;
        Ok(user.to_json())
    }

    /// `DELETE /admin/users/{id}`: the user, their sessions and refresh tokens.
    pub async fn admin_delete(&self, env: &EnvId, db: &EnvStore, id: &str) -> Result<()> {
        let id = id.to_owned();
        db.tx(move |c: &mut dyn Conn| {
            if users::by_id(c, &id)?.is_none() {
                return Err(AuthError::UserNotFound);
            }
            exec(c, "DELETE FROM auth.refresh_tokens WHERE user_id = $1::text::uuid", &[id.as_str().into()])?;
            exec(c, "DELETE FROM auth.sessions WHERE user_id = $1::text::uuid", &[id.as_str().into()])?;
            exec(c, "DELETE FROM auth.users WHERE id = $1::text::uuid", &[id.as_str().into()])?;
            Ok(())
        })
        .await?;
        self.meter(env, EventKind::AdminDelete).await;
        Ok(())
    }

    /// The env's outbox, newest first (at most `limit` mails).
    pub async fn outbox(&self, db: &EnvStore, limit: i64) -> Result<Vec<OutboxMail>> {
        db.tx(move |c: &mut dyn Conn| {
            query(
                c,
                "SELECT id, kind, recipient, subject, body, auth.vb_ts(created_at) FROM auth.mail_outbox \
                 ORDER BY id DESC LIMIT $1",
                &[limit.clamp(1, 1000).into()],
            )?
            .iter()
            .map(|r| {
                Ok(OutboxMail {
                    id: r.int(0)?,
                    kind: r.text(1)?,
                    to: r.text(2)?,
                    subject: r.text(3)?,
                    body: r.text(4)?,
                    created_at: r.text(5)?,
                })
            })
            .collect()
        })
        .await
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The newest unrevoked token descending from `token` (following the rotation chain).
fn active_descendant(c: &mut dyn Conn, token: &str) -> Result<Option<String>> {
    let mut current = token.to_owned();
    for _ in 0..1000 {
        let rows = query(
            c,
            "SELECT token, revoked FROM auth.refresh_tokens WHERE parent = $1 ORDER BY id DESC",
            &[current.as_str().into()],
        )?;
        let Some(child) = rows.first() else { return Ok(None) };
        let (t, revoked) = (child.text(0)?, child.int(1)? != 0);
        if !revoked {
            return Ok(Some(t));
        }
        current = t;
    }
    Ok(None)
}

/// What sign-up answers for an address that is already confirmed, when confirmation is on: a user
/// that looks new and has no identities (GoTrue does the same).
fn obfuscated_user(email: &str, now: &str) -> Json {
    json!({
        "id": users::new_uuid(), "aud": "authenticated", "role": "authenticated", "email": email, "phone": "",
        "confirmation_sent_at": now, "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {}, "identities": [], "created_at": now, "updated_at": now, "is_anonymous": false,
    })
}

/// An argon2id hash of a random string, verified against for unknown users (equal timing).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3hBpxOUhGfP0hJ4FsCvxG6A9TdD1H2LKpEhO2bF0o1c";

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_emails_and_merges() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5"), None);
        assert!(valid_email(Some("A@Example.com")).is_ok_and(|e| e == "a@example.com"));
        for bad in ["", "a", "a@b", "a b@c.d", "a@b.c\r\nx", "<a@b.c>"] {
            assert!(valid_email(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(merge(&json!({"a": 1, "b": 2}), &json!({"b": null, "c": 3})), json!({"a": 1, "c": 3}));
        let key = SigningKey::generate("k".into()).unwrap();
        assert_eq!(token_hash(&key, "a@b.c", "123456").unwrap().len(), 56);
        assert_eq!(token_hash(&key, "A@b.c", "123456").unwrap(), token_hash(&key, "a@b.c", "123456").unwrap());
        assert_ne!(
            token_hash(&key, "a@b.c", "123456").unwrap(),
            token_hash(&SigningKey::generate("k".into()).unwrap(), "a@b.c", "123456").unwrap()
        );
    }

    proptest::proptest! {
        /// Untrusted strings: the duration and email parsers never panic, and an accepted address
        /// has nothing that could break out of a mail header or SMTP command.
        #[test]
        fn parsers_never_panic(s in "(?s).{0,80}") {
            let _ = parse_duration(&s);
            if let Ok(e) = valid_email(Some(&s)) {
                proptest::prop_assert!(!e.contains(['\r', '\n', '<', '>', ' ']));
            }
        }
    }
}
