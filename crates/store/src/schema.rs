//! The platform's own schema, versioned and migrated on start. Each migration runs in one transaction;
//! `{seq}` stands for an auto-increment primary key, the one construct the two dialects spell differently.

use crate::db::{Conn, Db, Dialect, StoreError};

/// (version, SQL). Append only: never edit a migration that has shipped.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE envs (
    id TEXT PRIMARY KEY,
    name TEXT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE principals (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    policy TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    env_id TEXT,
    principal_id TEXT,
    hash TEXT NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    value TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    session TEXT,
    holder TEXT,
    actions TEXT
);
CREATE INDEX keys_env ON keys (env_id);
CREATE INDEX keys_principal ON keys (principal_id);
CREATE TABLE audit (
    seq {seq},
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    env_id TEXT,
    target TEXT,
    result TEXT NOT NULL,
    request_id TEXT NOT NULL
);
CREATE INDEX audit_env ON audit (env_id, seq);
CREATE TABLE usage_events (
    env_id TEXT NOT NULL,
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    at BIGINT NOT NULL,
    dimensions TEXT NOT NULL,
    PRIMARY KEY (env_id, source, event_id)
);
CREATE TABLE usage_minutes (
    env_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    minute BIGINT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (env_id, meter, minute)
);
CREATE INDEX usage_minutes_minute ON usage_minutes (minute);
CREATE TABLE env_limits (
    env_id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE quota_alerts (
    env_id TEXT NOT NULL,
    meter TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    soft_limit BIGINT NOT NULL,
    observed BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (env_id, meter, period_start)
);
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    env_id TEXT,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    env_id TEXT,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_status_code BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    next_attempt_at BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, created_at);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE site_files (
    env_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    encodings TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, sha256)
);
CREATE TABLE site_deployments (
    env_id TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    manifest TEXT NOT NULL,
    config TEXT,
    file_count BIGINT NOT NULL,
    total_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, id)
);
CREATE INDEX site_deployments_created ON site_deployments (env_id, created_at);
CREATE TABLE site_aliases (
    env_id TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE functions (
    env_id TEXT NOT NULL,
    name TEXT NOT NULL,
    active_version BIGINT NOT NULL,
    schedule TEXT,
    next_run_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, name)
);
CREATE INDEX functions_due ON functions (next_run_at);
CREATE TABLE function_versions (
    env_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    entrypoint TEXT NOT NULL,
    dependencies BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    concurrency BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, name, version)
);
CREATE TABLE function_secrets (
    env_id TEXT NOT NULL,
    name TEXT NOT NULL,
    var TEXT NOT NULL,
    sealed TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, name, var)
);
CREATE TABLE function_logs (
    id TEXT PRIMARY KEY,
    env_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    trigger_kind TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    error TEXT
);
CREATE INDEX function_logs_by_time ON function_logs (env_id, name, started_at);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE custom_domains (
    env_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    verified_at BIGINT,
    PRIMARY KEY (env_id, domain)
);
CREATE UNIQUE INDEX custom_domains_verified ON custom_domains (domain) WHERE verified_at IS NOT NULL;
CREATE TABLE tls_certificates (
    domain TEXT PRIMARY KEY,
    env_id TEXT NOT NULL,
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE acme_accounts (
    directory TEXT PRIMARY KEY,
    credentials TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE acme_challenges (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
"#,
    ),
    (
        5,
        r#"
CREATE TABLE agent_sessions (
    env_id TEXT NOT NULL,
    id TEXT NOT NULL,
    title TEXT,
    model TEXT,
    status TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    run_id TEXT,
    lease_holder TEXT,
    lease_until BIGINT,
    interrupt_requested BIGINT NOT NULL,
    sandbox_id TEXT,
    workspace_snapshot TEXT,
    max_turns BIGINT,
    max_tokens BIGINT,
    max_cost BIGINT,
    approval_tools TEXT NOT NULL,
    always_allowed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, id)
);
CREATE INDEX agent_sessions_by_lease ON agent_sessions (status, lease_until);
CREATE TABLE agent_events (
    env_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (env_id, session_id, seq)
);
CREATE TABLE agent_approvals (
    env_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    decision TEXT NOT NULL,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, session_id, call_id)
);
"#,
    ),
    (
        6,
        r#"
CREATE TABLE storage_uploads (
    env_id TEXT NOT NULL,
    id TEXT NOT NULL,
    holder TEXT NOT NULL,
    bucket_id TEXT NOT NULL,
    name TEXT NOT NULL,
    upload_length BIGINT NOT NULL,
    upload_offset BIGINT NOT NULL,
    parts TEXT NOT NULL,
    options TEXT NOT NULL,
    completing_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, id)
);
CREATE INDEX storage_uploads_expiry ON storage_uploads (expires_at);
"#,
    ),
    (
        7,
        r#"
CREATE TABLE apps (
    env_id TEXT NOT NULL,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    port BIGINT NOT NULL,
    env_names TEXT NOT NULL,
    env_sealed TEXT,
    health_path TEXT NOT NULL,
    health_interval_ms BIGINT NOT NULL,
    idle_timeout_ms BIGINT NOT NULL,
    memory_mb BIGINT NOT NULL,
    blob_key TEXT,
    sha256 TEXT,
    size_bytes BIGINT,
    dependencies BIGINT,
    uploaded_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, name)
);
"#,
    ),
    (
        8,
        r#"
CREATE TABLE agent_hands (
    env_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    hand TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, session_id, hand)
);
"#,
    ),
    (
        9,
        r#"
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    env_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT,
    content_type TEXT,
    body TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX idempotency_keys_env ON idempotency_keys (env_id);
"#,
    ),
];

/// The schema version this binary writes.
pub fn current_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Brings the schema up to [`current_version`]. Safe to run on every start and from several processes:
/// on PostgreSQL an advisory lock serialises concurrent starters.
pub async fn migrate(db: &Db) -> Result<i64, StoreError> {
    db.tx(|conn: &mut dyn Conn| {
        if conn.dialect() == Dialect::Postgres {
            conn.batch("SELECT pg_advisory_xact_lock(7273350000001)")?;
        }
        conn.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        let found = conn
            .query_opt("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations", &[])?
            .map(|r| r.int(0))
            .transpose()?
            .unwrap_or(0);
        if found > current_version() {
            return Err(StoreError::SchemaTooNew { found, known: current_version() });
        }
        let seq = match conn.dialect() {
            Dialect::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        };
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            conn.batch(&sql.replace("{seq}", seq))?;
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[(*version).into(), 0i64.into()],
            )?;
        }
        Ok(current_version())
    })
    .await
}
