//! Request and response bodies of the `/v1` platform API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::EnvId;

/// The `/v1` error body. `code` is stable and machine-readable; `message` is for people.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// One page of a listing. `next_cursor` is absent on the last page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Lifecycle state of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnvStatus {
    /// Serving requests.
    Active,
    /// Kept intact but refusing data-plane traffic until resumed.
    Suspended,
    /// Being deleted: refusing all traffic; a repeated delete finishes the job.
    Deleting,
}

impl EnvStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "deleting" => Some(Self::Deleting),
            _ => None,
        }
    }
}

/// `POST /v1/envs`. Without an id, the platform picks one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvRequest {
    #[serde(default)]
    pub id: Option<EnvId>,
    /// Free-form label for people, at most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub name: Option<String>,
}

/// Where an environment's surfaces answer (design.md, "Addresses").
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvUrls {
    /// Data-plane base URL; works as-is as supabase-js's URL.
    pub api: String,
    /// The published site, in host form (what a browser opens).
    pub site: String,
    pub llm: String,
    pub e2b_api: String,
    pub e2b_sandbox: String,
    pub mcp: String,
}

/// The env keys. `secret` is present only in the response that created or rotated it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvKeys {
    pub publishable: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// An environment as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvRecord {
    pub id: EnvId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: EnvStatus,
    /// RFC 3339.
    pub created_at: String,
    pub urls: EnvUrls,
    pub keys: EnvKeys,
}

/// The kinds of credential the platform issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The platform admin key.
    Admin,
    /// An env's secret key (service role).
    Secret,
    /// An env's publishable key (anon role).
    Publishable,
    /// A short-lived token minted for a sandbox or function invocation.
    Minted,
    /// A sub-account's key; its power is its policies.
    Principal,
}

impl KeyKind {
    pub const ALL: [KeyKind; 5] = [Self::Admin, Self::Secret, Self::Publishable, Self::Minted, Self::Principal];

    /// The short tag inside a key string, e.g. `sk` in `vb_sk_…`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Secret => "sk",
            Self::Publishable => "pk",
            Self::Minted => "tok",
            Self::Principal => "sa",
        }
    }

    pub fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Secret => "secret",
            Self::Publishable => "publishable",
            Self::Minted => "minted",
            Self::Principal => "principal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A key's metadata; never its secret part.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct KeyRecord {
    pub id: String,
    pub kind: KeyKind,
    /// The first characters of the key, enough to recognise it in a leak report.
    pub hint: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// Publishable keys only: the key itself (not secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The env keys that rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotatableKey {
    Secret,
    Publishable,
}

impl From<RotatableKey> for KeyKind {
    fn from(k: RotatableKey) -> Self {
        match k {
            RotatableKey::Secret => Self::Secret,
            RotatableKey::Publishable => Self::Publishable,
        }
    }
}

/// The longest overlap a rotation may keep the old key alive: 30 days.
pub const MAX_OVERLAP_SECONDS: u64 = 30 * 24 * 3600;
/// The longest lifetime of a minted token: one day.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 24 * 3600;

/// `POST /v1/envs/{env}/keys/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    pub kind: RotatableKey,
    /// How long the replaced key keeps working, in seconds (0 = revoke now). At most 30 days.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2592000)]
    pub overlap_seconds: u64,
}

/// The answer to a rotation: the new key in full (shown once for secrets) and its record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RotatedKey {
    pub key: String,
    pub record: KeyRecord,
}

/// `POST /v1/envs/{env}/tokens`: mint a short-lived token for the hands.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintTokenRequest {
    /// Lifetime in seconds, 1..=86400.
    #[schema(minimum = 1, maximum = 86400)]
    pub ttl_seconds: u64,
    /// Bind the token to an agent session: its usage is billed to that session.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub session: Option<String>,
    /// Actions the token may perform (CAM action patterns such as `db:*`). Empty = every data-plane action.
    #[serde(default)]
    #[schema(max_items = 100, inline, schema_with = action_patterns_schema)]
    pub actions: Vec<String>,
    /// Who the token's holder is, for the audit log and metering (`sandbox`, `function`, …).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub holder: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MintedToken {
    pub id: String,
    pub token: String,
    pub expires_at: String,
}

/// A sub-account (CAM-style principal) and its policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PrincipalRecord {
    pub id: String,
    pub name: String,
    /// The CAM policy document (`{"version":"2.0","statement":[…]}`).
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    pub created_at: String,
    /// Present only in the response that created the principal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `POST /v1/principals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrincipalRequest {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// A CAM policy document.
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
}

/// `PUT /v1/principals/{principal}/policy`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyRequest {
    /// A CAM policy document.
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
}

/// `POST /v1/policies/owner`: the standard "owner of environment X" policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerPolicyRequest {
    pub env: EnvId,
}

/// One row of the audit log: a control-plane mutation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    /// Who: `admin`, `principal:<id>`, `secret:<key id>`, …
    pub actor: String,
    /// What: the CAM action, e.g. `env:Create`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The object acted on, when it is not the env itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `ok` or the error code.
    pub result: String,
    pub request_id: String,
}

/// A usage total for one meter in one minute bucket.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UsageBucket {
    pub env: String,
    pub meter: String,
    /// Start of the minute, RFC 3339.
    pub minute: String,
    pub quantity: i64,
}

/// A usage total per env and meter over a time range.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct UsageTotal {
    pub env: String,
    pub meter: String,
    pub quantity: i64,
}

/// `GET …/usage` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: String,
    pub to: String,
    pub totals: Vec<UsageTotal>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<UsageBucket>,
}

/// `POST /v1/envs/{env}/usage/events`: report usage (trusted emitters only: admin or the env's secret key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageEventInput {
    /// A meter of the catalogue (`GET /v1/meters`).
    #[schema(schema_with = meter_name_schema)]
    pub meter: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub quantity: i64,
    /// The emitter; with `event_id` it forms the idempotency key.
    #[schema(min_length = 1, max_length = 200)]
    pub source: String,
    #[schema(min_length = 1, max_length = 200)]
    pub event_id: String,
    /// RFC 3339; defaults to now.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub at: Option<String>,
    #[serde(default)]
    #[schema(schema_with = dimensions_schema)]
    pub dimensions: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageEventAccepted {
    /// False when the same (env, source, event id) was already recorded.
    pub recorded: bool,
}

/// When a quota's counter starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Minute,
    Hour,
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Minute, Self::Hour, Self::Day, Self::Month].into_iter().find(|p| p.as_str() == s)
    }
}

/// A quota on one meter of one env. Over `hard_limit` requests fail with 402; crossing `soft_limit`
/// records an alert (and fires the `quota.alert` webhook) once per period.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[schema(schema_with = meter_name_schema)]
    pub meter: String,
    pub period: QuotaPeriod,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub hard_limit: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 0)]
    pub soft_limit: Option<i64>,
}

/// `PUT /v1/envs/{env}/limits`: quotas and the request rate limit of one env.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvLimits {
    #[serde(default)]
    #[schema(max_items = 50)]
    pub quotas: Vec<Quota>,
    /// Sustained requests per second across all surfaces; absent = the platform default.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_per_second: Option<u32>,
    /// Burst size; absent = twice the rate.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub rate_limit_burst: Option<u32>,
}

/// A soft-limit crossing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuotaAlert {
    pub env: String,
    pub meter: String,
    pub period_start: String,
    pub soft_limit: i64,
    pub observed: i64,
    pub at: String,
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `http` or `https` URL receiving `POST`ed JSON events.
    #[schema(max_length = 2048, pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")]
    pub url: String,
    /// Event types to receive (`env.created`, `quota.alert`, …; `*` = all).
    #[schema(schema_with = event_types_schema)]
    pub events: Vec<String>,
    /// Only events of this env; absent = all envs.
    #[serde(default)]
    pub env: Option<EnvId>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    pub created_at: String,
    /// The signing secret; present only in the response that created the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One attempt log entry of a webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook: String,
    pub event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// `pending`, `delivered` or `failed` (retries exhausted).
    pub status: String,
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

/// A meter of the catalogue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeterInfo {
    pub name: String,
    pub unit: String,
    pub emitted_by: String,
    pub dimensions: Vec<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// Event types the platform core emits (later capabilities add theirs).
pub const EVENT_TYPES: &[&str] = &[
    "env.created",
    "env.suspended",
    "env.resumed",
    "env.deleted",
    "quota.alert",
    "deployment.created",
    "deployment.published",
    "deployment.rolled_back",
    "session.run_finished",
    "session.run_failed",
];

fn string_enum(values: impl IntoIterator<Item = String>) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .build()
}

fn meter_name_schema() -> utoipa::openapi::Object {
    string_enum(crate::Meter::ALL.iter().map(|m| m.name().to_owned()))
}

fn event_types_schema() -> utoipa::openapi::Array {
    let items = string_enum(std::iter::once("*".to_owned()).chain(EVENT_TYPES.iter().map(|e| (*e).to_owned())));
    utoipa::openapi::ArrayBuilder::new().items(items).min_items(Some(1)).max_items(Some(50)).build()
}

fn action_patterns_schema() -> utoipa::openapi::Array {
    let item = utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^(\\*|[a-z][a-z0-9_-]*:[A-Za-z0-9*?]+)$"))
        .max_length(Some(256));
    utoipa::openapi::ArrayBuilder::new().items(item).max_items(Some(100)).build()
}

fn dimensions_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Object)
        .additional_properties(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .max_length(Some(200)),
        ))
        .max_properties(Some(16))
        .build()
}

/// `POST /v1/envs/{env}/sql`: a migration in the PostgreSQL dialect, run in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlRequest {
    /// One or more SQL statements (schema changes, policies, seed data), at most 100,000 characters.
    #[schema(min_length = 1, max_length = 100000)]
    pub query: String,
}

/// A migration that was applied.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SqlResult {
    /// Its number in the env's migration history.
    pub version: i64,
    /// How many statements it ran.
    pub statements: u64,
}
