//! The auth tables in an env's own database, and the one place where their SQL differs by dialect.
//!
//! Queries are written once, in PostgreSQL's form: real types in the `auth` schema (`uuid`,
//! `timestamptz`, `jsonb`, `boolean`), parameters cast from text (`$1::text::uuid`), values read back as
//! text (`id::text`, `auth.vb_ts(created_at)`). For SQLite, where the tables are named by the quoted
//! schema-qualified string (`"auth.users"`) and every value is already text or an integer, [`render`]
//! drops the casts and the formatting function. The SQL text is always ours, never input.

use std::borrow::Cow;

use store::Dialect;

/// Tables (and the one helper function) the auth service owns in the `auth` schema.
const NAMES: [&str; 6] = ["users", "sessions", "refresh_tokens", "mail_outbox", "flow_state", "vb_ts"];

/// `sql` (PostgreSQL form) for `dialect`.
pub fn render(dialect: Dialect, sql: &str) -> Cow<'_, str> {
    match dialect {
        Dialect::Postgres => Cow::Borrowed(sql),
        Dialect::Sqlite => Cow::Owned(sqlite(sql)),
    }
}

fn sqlite(sql: &str) -> String {
    store::sqlite_form(sql, &NAMES.map(|n| format!("auth.{n}")).iter().map(String::as_str).collect::<Vec<_>>())
}

/// The DDL that creates the auth tables in a new env database (idempotent). appdb runs it when it
/// creates an env database; until then the server glue runs it when it opens one.
pub fn schema_ddl(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => POSTGRES_DDL,
        Dialect::Sqlite => SQLITE_DDL,
    }
}

const POSTGRES_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS auth;
CREATE TABLE IF NOT EXISTS auth.users (
    id uuid PRIMARY KEY,
    aud text NOT NULL DEFAULT 'authenticated',
    role text NOT NULL DEFAULT 'authenticated',
    email text,
    encrypted_password text,
    email_confirmed_at timestamptz,
    confirmation_token text,
    confirmation_sent_at timestamptz,
    recovery_token text,
    recovery_sent_at timestamptz,
    last_sign_in_at timestamptz,
    raw_app_meta_data jsonb NOT NULL DEFAULT '{}'::jsonb,
    raw_user_meta_data jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_anonymous boolean NOT NULL DEFAULT false,
    banned_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON auth.users (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS users_confirmation_token ON auth.users (confirmation_token);
CREATE INDEX IF NOT EXISTS users_recovery_token ON auth.users (recovery_token);
CREATE TABLE IF NOT EXISTS auth.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    aal text NOT NULL DEFAULT 'aal1',
    method text NOT NULL DEFAULT 'password',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sessions_user ON auth.sessions (user_id);
CREATE TABLE IF NOT EXISTS auth.refresh_tokens (
    id bigserial PRIMARY KEY,
    token text NOT NULL UNIQUE,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    session_id uuid NOT NULL REFERENCES auth.sessions (id) ON DELETE CASCADE,
    parent text,
    revoked boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session ON auth.refresh_tokens (session_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_parent ON auth.refresh_tokens (parent);
CREATE TABLE IF NOT EXISTS auth.mail_outbox (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    recipient text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS auth.flow_state (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    auth_code text NOT NULL UNIQUE,
    code_challenge text NOT NULL,
    code_challenge_method text NOT NULL,
    authentication_method text NOT NULL,
    token_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS flow_state_token_hash ON auth.flow_state (token_hash);
CREATE OR REPLACE FUNCTION auth.vb_ts(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;
"#;

const SQLITE_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS "auth.users" (
    id TEXT PRIMARY KEY,
    aud TEXT NOT NULL DEFAULT 'authenticated',
    role TEXT NOT NULL DEFAULT 'authenticated',
    email TEXT,
    encrypted_password TEXT,
    email_confirmed_at TEXT,
    confirmation_token TEXT,
    confirmation_sent_at TEXT,
    recovery_token TEXT,
    recovery_sent_at TEXT,
    last_sign_in_at TEXT,
    raw_app_meta_data TEXT NOT NULL DEFAULT '{}',
    raw_user_meta_data TEXT NOT NULL DEFAULT '{}',
    is_anonymous INTEGER NOT NULL DEFAULT 0,
    banned_until TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON "auth.users" (lower(email)) WHERE email IS NOT NULL;
CREATE INDEX IF NOT EXISTS users_confirmation_token ON "auth.users" (confirmation_token);
CREATE INDEX IF NOT EXISTS users_recovery_token ON "auth.users" (recovery_token);
CREATE TABLE IF NOT EXISTS "auth.sessions" (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES "auth.users" (id) ON DELETE CASCADE,
    aal TEXT NOT NULL DEFAULT 'aal1',
    method TEXT NOT NULL DEFAULT 'password',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON "auth.sessions" (user_id);
CREATE TABLE IF NOT EXISTS "auth.refresh_tokens" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES "auth.users" (id) ON DELETE CASCADE,
    session_id TEXT NOT NULL REFERENCES "auth.sessions" (id) ON DELETE CASCADE,
    parent TEXT,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refresh_tokens_session ON "auth.refresh_tokens" (session_id);
CREATE INDEX IF NOT EXISTS refresh_tokens_parent ON "auth.refresh_tokens" (parent);
CREATE TABLE IF NOT EXISTS "auth.mail_outbox" (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "auth.flow_state" (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES "auth.users" (id) ON DELETE CASCADE,
    auth_code TEXT NOT NULL UNIQUE,
    code_challenge TEXT NOT NULL,
    code_challenge_method TEXT NOT NULL,
    authentication_method TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flow_state_token_hash ON "auth.flow_state" (token_hash);
"#;

/// Platform-store tables of the auth service: per-env settings and signing keys. They live in the
/// platform database, never in the env's own, so no env SQL can read a private key.
pub const PLATFORM_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS auth_settings (
    env_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_signing_keys (
    env_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    private_pkcs8 TEXT NOT NULL,
    public_x TEXT NOT NULL,
    public_y TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (env_id, kid)
);
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_form_drops_casts_and_quotes_table_names() {
        let pg = "SELECT id::text, auth.vb_ts(created_at) FROM auth.users WHERE id = $1::text::uuid AND x = $2::int4::boolean";
        assert_eq!(sqlite(pg), "SELECT id, (created_at) FROM \"auth.users\" WHERE id = $1 AND x = $2");
        assert_eq!(render(Dialect::Postgres, pg), pg);
    }
}
