//! The `storage` schema in every env database (an appdb schema hook): Supabase Storage's tables with
//! its column names, row-level security on, and the helper functions policies call. On SQLite the
//! helpers are connection functions (`storage_foldername`, …) appdb's translator maps the names to.

use store::Dialect;

/// The DDL for `dialect` (idempotent).
pub fn schema_ddl(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => POSTGRES_DDL,
        Dialect::Sqlite => SQLITE_DDL,
    }
}

const POSTGRES_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS storage;
CREATE TABLE IF NOT EXISTS storage.buckets (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    owner uuid,
    owner_id text,
    public boolean NOT NULL DEFAULT false,
    file_size_limit bigint,
    allowed_mime_types text[],
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS storage.objects (
    id uuid PRIMARY KEY,
    bucket_id text NOT NULL REFERENCES storage.buckets (id),
    name text NOT NULL,
    owner uuid,
    owner_id text,
    metadata jsonb,
    user_metadata jsonb,
    version text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_accessed_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket_id, name)
);
ALTER TABLE storage.buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, UPDATE, DELETE ON storage.buckets, storage.objects TO anon, authenticated, service_role;
CREATE OR REPLACE FUNCTION storage.foldername(name text) RETURNS text[] LANGUAGE sql IMMUTABLE AS
$$ SELECT (string_to_array(name, '/'))[1:greatest(coalesce(array_length(string_to_array(name, '/'), 1), 0) - 1, 0)] $$;
CREATE OR REPLACE FUNCTION storage.filename(name text) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT (string_to_array(name, '/'))[array_length(string_to_array(name, '/'), 1)] $$;
CREATE OR REPLACE FUNCTION storage.extension(name text) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT reverse(split_part(reverse(storage.filename(name)), '.', 1)) $$;
GRANT EXECUTE ON FUNCTION storage.foldername(text), storage.filename(text), storage.extension(text) TO anon, authenticated, service_role;
"#;

const SQLITE_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS "storage.buckets" (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    owner TEXT,
    owner_id TEXT,
    public INTEGER NOT NULL DEFAULT 0,
    file_size_limit INTEGER,
    allowed_mime_types TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS "storage.objects" (
    id TEXT PRIMARY KEY,
    bucket_id TEXT NOT NULL REFERENCES "storage.buckets" (id),
    name TEXT NOT NULL,
    owner TEXT,
    owner_id TEXT,
    metadata TEXT,
    user_metadata TEXT,
    version TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_accessed_at TEXT NOT NULL,
    UNIQUE (bucket_id, name)
);
INSERT INTO _vb_rls (table_name) VALUES ('storage.buckets') ON CONFLICT DO NOTHING;
INSERT INTO _vb_rls (table_name) VALUES ('storage.objects') ON CONFLICT DO NOTHING;
"#;
