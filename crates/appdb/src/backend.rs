//! The two engines behind an env database: a SQLite file, or a database on the platform's PostgreSQL
//! cluster. Both are driven synchronously on blocking threads, like `store`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use platform::Platform;
use postgres::types::Type;
use store::{Dialect, Row, StoreError, Value};

use crate::{AppDbError, RequestAuth, SchemaHook, quote_ident};

/// Whom a transaction runs as.
#[derive(Debug, Clone)]
pub enum Role {
    /// The env's owner: migrations and trusted platform code (e.g. the `auth` crate). Not subject to RLS.
    Owner,
    /// A data-API request: `anon`, `authenticated` or `service_role`, with its claims.
    Request(RequestAuth),
}

/// A database error in the terms PostgREST reports: SQLSTATE, message, detail, hint.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlError {
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl SqlError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), details: None, hint: None }
    }

    fn from_sqlite(e: &rusqlite::Error) -> Self {
        let msg = e.to_string();
        let code = match e {
            rusqlite::Error::SqliteFailure(f, m) => {
                let m = m.as_deref().unwrap_or("");
                match f.extended_code {
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "23505",
                    rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "23503",
                    rusqlite::ffi::SQLITE_CONSTRAINT_CHECK => "23514",
                    rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL => "23502",
                    _ if m.starts_with("no such table") => "42P01",
                    _ if m.starts_with("no such column") || m.contains("has no column named") => "42703",
                    _ if m.starts_with("no such function") => "42883",
                    _ if m.contains("syntax error") => "42601",
                    _ if m.contains("already exists") => "42P07",
                    _ if m.contains("datatype mismatch") => "22P02",
                    _ if m.contains("JSON") => "22P02",
                    _ if m.contains("integer overflow") => "22003",
                    _ if m.contains("too many SQL variables") || m.contains("too many arguments") => "54023",
                    _ if m.contains("too large") || m.contains("too complex") || m.contains("stack overflow") => {
                        "54001"
                    }
                    _ => "XX000",
                }
            }
            _ => "XX000",
        };
        Self::new(code, msg)
    }

    fn from_pg(e: &postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => Self {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                details: db.detail().map(str::to_owned),
                hint: db.hint().map(str::to_owned),
            },
            None => Self::new("08006", e.to_string()),
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// A parameter of generated SQL. On PostgreSQL every parameter is sent as text (the SQL casts it).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Param {
    fn as_pg_text(&self) -> Option<String> {
        match self {
            Self::Null => None,
            Self::Int(v) => Some(v.to_string()),
            Self::Real(v) => Some(v.to_string()),
            Self::Text(s) => Some(s.clone()),
        }
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Self::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Self::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Self::Real(v) => ToSqlOutput::Borrowed(ValueRef::Real(*v)),
            Self::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// An open env database.
pub enum EnvDb {
    Sqlite { conn: Mutex<rusqlite::Connection>, auth: Arc<Mutex<RequestAuth>> },
    Postgres(Box<store::PgPool>),
}

/// One transaction on an env database.
pub struct Tx<'a> {
    kind: TxKind<'a>,
}

enum TxKind<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Pg(postgres::Transaction<'a>),
}

const SQLITE_BASE: &str = "
CREATE TABLE IF NOT EXISTS _vb_migrations (version INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, statements TEXT NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _vb_schema_hooks (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS _vb_rls (table_name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS _vb_policies (table_name TEXT NOT NULL, name TEXT NOT NULL, command TEXT NOT NULL, roles TEXT NOT NULL, permissive INTEGER NOT NULL, using_sql TEXT, check_sql TEXT, PRIMARY KEY (table_name, name));
";

/// The functions SQLite env databases offer in place of PostgreSQL's (see `migrate` for the mapping).
fn register_sqlite_functions(conn: &rusqlite::Connection, auth: &Arc<Mutex<RequestAuth>>) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_INNOCUOUS;
    let claim = |key: &'static str| {
        let auth = auth.clone();
        move |_: &rusqlite::functions::Context<'_>| -> rusqlite::Result<Option<String>> {
            let a = auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(match a.claims.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(v.to_string()),
            })
        }
    };
    conn.create_scalar_function("auth_uid", 0, flags, claim("sub"))?;
    conn.create_scalar_function("auth_email", 0, flags, claim("email"))?;
    let role_auth = auth.clone();
    conn.create_scalar_function("auth_role", 0, flags, move |_| {
        let a = role_auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(a.claims.get("role").and_then(|v| v.as_str()).unwrap_or(a.role.name()).to_owned())
    })?;
    let jwt_auth = auth.clone();
    conn.create_scalar_function("auth_jwt", 0, flags, move |_| {
        let a = jwt_auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(a.claims.to_string())
    })?;
    conn.create_scalar_function("gen_random_uuid", 0, flags, |_| Ok(random_uuid()))?;
    // Supabase Storage's helpers (`storage.foldername(name)` is a text[]: here a JSON array).
    let deterministic = flags | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("storage_foldername", 1, deterministic, |ctx| {
        let name: Option<String> = ctx.get(0)?;
        Ok(name.map(|n| {
            let parts: Vec<&str> = n.split('/').collect();
            serde_json::Value::from(parts[..parts.len().saturating_sub(1)].to_vec()).to_string()
        }))
    })?;
    conn.create_scalar_function("storage_filename", 1, deterministic, |ctx| {
        let name: Option<String> = ctx.get(0)?;
        Ok(name.map(|n| n.rsplit('/').next().unwrap_or("").to_owned()))
    })?;
    conn.create_scalar_function("storage_extension", 1, deterministic, |ctx| {
        let name: Option<String> = ctx.get(0)?;
        Ok(name.map(|n| {
            let file = n.rsplit('/').next().unwrap_or("");
            file.rsplit('.').next().unwrap_or("").to_owned()
        }))
    })?;
    // `arr[i]` on a JSON array, 1-based as PostgreSQL's arrays; NULL out of range.
    conn.create_scalar_function("vb_array_at", 2, deterministic, |ctx| {
        let arr: Option<String> = ctx.get(0)?;
        let i: Option<i64> = ctx.get(1)?;
        let (Some(arr), Some(i)) = (arr, i) else { return Ok(None) };
        let v: serde_json::Value = serde_json::from_str(&arr).unwrap_or(serde_json::Value::Null);
        let item = usize::try_from(i - 1).ok().and_then(|i| v.get(i).cloned());
        Ok(match item {
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        })
    })?;
    conn.create_scalar_function("vb_now", 0, flags, |_| Ok(now_rfc3339()))?;
    Ok(())
}

/// A random (version 4) UUID in its text form.
pub fn random_uuid() -> String {
    use rand::{RngCore as _, SeedableRng as _};
    let mut b = [0u8; 16];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl EnvDb {
    /// Opens (creating if needed) an env's SQLite file.
    pub fn open_sqlite(path: &Path, hooks: &[SchemaHook]) -> Result<Self, AppDbError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AppDbError::io(format!("create {}", dir.display()), e))?;
        }
        let mut conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000; PRAGMA trusted_schema=OFF;",
        )?;
        let auth = Arc::new(Mutex::new(RequestAuth::service_role()));
        register_sqlite_functions(&conn, &auth)?;
        let tx = conn.transaction()?;
        tx.execute_batch(SQLITE_BASE)?;
        for hook in hooks {
            let done: Option<i64> = tx
                .query_row("SELECT 1 FROM _vb_schema_hooks WHERE name = ?1", [&hook.name], |r| r.get(0))
                .map(Some)
                .or_else(|e| if matches!(e, rusqlite::Error::QueryReturnedNoRows) { Ok(None) } else { Err(e) })?;
            if done.is_none() {
                tx.execute_batch(&hook.sqlite)?;
                tx.execute("INSERT INTO _vb_schema_hooks (name) VALUES (?1)", [&hook.name])?;
            }
        }
        tx.commit()?;
        Ok(Self::Sqlite { conn: Mutex::new(conn), auth })
    }

    pub(crate) fn open_postgres(cluster: &PgCluster, base: &str, hooks: &[SchemaHook]) -> Result<Self, AppDbError> {
        cluster.ensure_database(base, hooks)
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite { .. } => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs `f` in one transaction as `role`: committed if it returns `Ok`, rolled back if not.
    pub fn tx<T, E, F>(&self, role: &Role, f: F) -> Result<T, E>
    where
        E: From<AppDbError>,
        F: FnOnce(&mut Tx<'_>) -> Result<T, E>,
    {
        match self {
            Self::Sqlite { conn, auth } => {
                let mut guard = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                *auth.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = match role {
                    Role::Owner => RequestAuth::service_role(),
                    Role::Request(a) => a.clone(),
                };
                let tx = guard.transaction().map_err(AppDbError::from)?;
                let mut tx = Tx { kind: TxKind::Sqlite(tx) };
                let out = f(&mut tx)?;
                match tx.kind {
                    TxKind::Sqlite(t) => t.commit().map_err(AppDbError::from)?,
                    TxKind::Pg(_) => {}
                }
                Ok(out)
            }
            Self::Postgres(pg) => {
                let mut client = pg.take().map_err(AppDbError::from)?;
                let result = (|| {
                    let mut t = client.transaction().map_err(AppDbError::from)?;
                    if let Role::Request(a) = role {
                        let claims = a.claims.to_string();
                        let sub = a.sub().unwrap_or("").to_owned();
                        t.execute(
                            "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true), \
                             set_config('request.jwt.claim.sub', $3, true), set_config('request.jwt.claim.role', $1, true)",
                            &[&a.role.name(), &claims, &sub],
                        )
                        .map_err(AppDbError::from)?;
                    }
                    let mut tx = Tx { kind: TxKind::Pg(t) };
                    let out = f(&mut tx)?;
                    match tx.kind {
                        TxKind::Pg(t) => t.commit().map_err(AppDbError::from)?,
                        TxKind::Sqlite(_) => {}
                    }
                    Ok(out)
                })();
                pg.give_back(client);
                result
            }
        }
    }

    /// Size of the database in bytes (for the `db_bytes` meter and the size quota).
    pub fn size_bytes(&self) -> Result<i64, AppDbError> {
        self.tx(&Role::Owner, |tx| {
            let sql = match tx.dialect() {
                Dialect::Sqlite => {
                    "SELECT CAST(page_count * page_size AS TEXT) FROM pragma_page_count(), pragma_page_size()"
                }
                Dialect::Postgres => "SELECT pg_database_size(current_database())::text",
            };
            let rows = tx.rows(sql, &[]).map_err(|e| AppDbError::Task(e.to_string()))?;
            Ok(rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0))
        })
    }
}

impl Tx<'_> {
    pub fn dialect(&self) -> Dialect {
        match self.kind {
            TxKind::Sqlite(_) => Dialect::Sqlite,
            TxKind::Pg(_) => Dialect::Postgres,
        }
    }

    /// The transaction as the store's connection interface.
    pub fn as_conn(&mut self) -> &mut dyn store::Conn {
        self
    }

    /// Runs generated SQL and returns every column of every row as text (NULL as `None`).
    pub(crate) fn rows(&mut self, sql: &str, params: &[Param]) -> Result<Vec<Vec<Option<String>>>, SqlError> {
        match &mut self.kind {
            TxKind::Sqlite(t) => {
                let mut stmt = t.prepare(sql).map_err(|e| SqlError::from_sqlite(&e))?;
                let width = stmt.column_count();
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(params.iter())).map_err(|e| SqlError::from_sqlite(&e))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(|e| SqlError::from_sqlite(&e))? {
                    let mut vals = Vec::with_capacity(width);
                    for i in 0..width {
                        use rusqlite::types::ValueRef;
                        vals.push(match row.get_ref(i).map_err(|e| SqlError::from_sqlite(&e))? {
                            ValueRef::Null => None,
                            ValueRef::Integer(v) => Some(v.to_string()),
                            ValueRef::Real(v) => Some(v.to_string()),
                            ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
                        });
                    }
                    out.push(vals);
                }
                Ok(out)
            }
            TxKind::Pg(t) => {
                let texts: Vec<Option<String>> = params.iter().map(Param::as_pg_text).collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    texts.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
                let rows = t.query(sql, &refs).map_err(|e| SqlError::from_pg(&e))?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| {
                                let ty = row.columns()[i].type_();
                                let v = if *ty == Type::INT8 {
                                    row.try_get::<_, Option<i64>>(i).map(|v| v.map(|v| v.to_string()))
                                } else if *ty == Type::INT4 {
                                    row.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| v.to_string()))
                                } else if *ty == Type::BOOL {
                                    row.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| v.to_string()))
                                } else {
                                    row.try_get::<_, Option<String>>(i)
                                };
                                v.map_err(|e| SqlError::new("XX000", e.to_string()))
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// Runs generated SQL; returns the rows changed.
    pub(crate) fn exec(&mut self, sql: &str, params: &[Param]) -> Result<u64, SqlError> {
        match &mut self.kind {
            TxKind::Sqlite(t) => {
                let mut stmt = t.prepare(sql).map_err(|e| SqlError::from_sqlite(&e))?;
                stmt.execute(rusqlite::params_from_iter(params.iter()))
                    .map(|n| n as u64)
                    .map_err(|e| SqlError::from_sqlite(&e))
            }
            TxKind::Pg(t) => {
                let texts: Vec<Option<String>> = params.iter().map(Param::as_pg_text).collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    texts.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
                t.execute(sql, &refs).map_err(|e| SqlError::from_pg(&e))
            }
        }
    }

    /// Runs statements without parameters.
    pub(crate) fn batch_sql(&mut self, sql: &str) -> Result<(), SqlError> {
        match &mut self.kind {
            TxKind::Sqlite(t) => t.execute_batch(sql).map_err(|e| SqlError::from_sqlite(&e)),
            TxKind::Pg(t) => t.batch_execute(sql).map_err(|e| SqlError::from_pg(&e)),
        }
    }
}

impl store::Conn for Tx<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        match &mut self.kind {
            TxKind::Sqlite(t) => {
                let sql = sqlite_placeholders(sql);
                let mut stmt = t.prepare_cached(&sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter())).map_err(store_sqlite_error)? as u64)
            }
            TxKind::Pg(t) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
                t.execute(sql, &refs).map_err(store_pg_error)
            }
        }
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        // Rows are built through the public constructor-free path: collect values, then convert.
        let values: Vec<Vec<Value>> = match &mut self.kind {
            TxKind::Sqlite(t) => {
                let sql = sqlite_placeholders(sql);
                let mut stmt = t.prepare_cached(&sql)?;
                let width = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(store_sqlite_error)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(store_sqlite_error)? {
                    let mut vals = Vec::with_capacity(width);
                    for i in 0..width {
                        use rusqlite::types::ValueRef;
                        vals.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(v) => Value::Int(v),
                            ValueRef::Real(v) => Value::Text(v.to_string()),
                            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Blob(_) => return Err(StoreError::Type(i)),
                        });
                    }
                    out.push(vals);
                }
                out
            }
            TxKind::Pg(t) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as &(dyn postgres::types::ToSql + Sync)).collect();
                let rows = t.query(sql, &refs).map_err(store_pg_error)?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    let mut vals = Vec::with_capacity(row.len());
                    for i in 0..row.len() {
                        let ty = row.columns()[i].type_();
                        vals.push(if *ty == Type::INT8 {
                            row.try_get::<_, Option<i64>>(i)?.map_or(Value::Null, Value::Int)
                        } else if *ty == Type::INT4 {
                            row.try_get::<_, Option<i32>>(i)?.map_or(Value::Null, |v| Value::Int(v.into()))
                        } else if *ty == Type::INT2 {
                            row.try_get::<_, Option<i16>>(i)?.map_or(Value::Null, |v| Value::Int(v.into()))
                        } else if *ty == Type::BOOL {
                            row.try_get::<_, Option<bool>>(i)?.map_or(Value::Null, |v| Value::Int(v.into()))
                        } else if *ty == Type::TEXT || *ty == Type::VARCHAR || *ty == Type::NAME {
                            row.try_get::<_, Option<String>>(i)?.map_or(Value::Null, Value::Text)
                        } else {
                            return Err(StoreError::Type(i));
                        });
                    }
                    out.push(vals);
                }
                out
            }
        };
        Ok(values.into_iter().map(Row::from_values).collect())
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match &mut self.kind {
            TxKind::Sqlite(t) => Ok(t.execute_batch(sql)?),
            TxKind::Pg(t) => Ok(t.batch_execute(sql)?),
        }
    }

    fn dialect(&self) -> Dialect {
        Tx::dialect(self)
    }
}

fn sqlite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn store_sqlite_error(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    {
        return StoreError::Conflict;
    }
    StoreError::Sqlite(e)
}

fn store_pg_error(e: postgres::Error) -> StoreError {
    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict
    } else {
        StoreError::Postgres(e)
    }
}

// ---------------------------------------------------------------------------------------------------
// PostgreSQL

/// The platform's PostgreSQL cluster, as the superuser (or CREATEDB/CREATEROLE) the platform connects
/// with. Creates and drops env databases and their owner roles.
#[derive(Clone)]
pub struct PgCluster {
    inner: Arc<PgClusterInner>,
}

struct PgClusterInner {
    admin: postgres::Config,
    /// Prefix of every database and role name this platform creates (empty in schema `public`).
    namespace: String,
    platform: Platform,
    /// Databases whose per-env setup ran in this process.
    ready: Mutex<HashSet<String>>,
    template_lock: Mutex<()>,
}

/// Bumped when the template's own DDL changes (a new template is then built).
const TEMPLATE_VERSION: &str = "1";

const PG_TEMPLATE_BASE: &str = r#"
CREATE SCHEMA IF NOT EXISTS auth;
CREATE SCHEMA IF NOT EXISTS storage;
CREATE SCHEMA IF NOT EXISTS _vb;
CREATE TABLE IF NOT EXISTS _vb.migrations (version bigserial PRIMARY KEY, name text, statements text NOT NULL, applied_at text NOT NULL);
CREATE TABLE IF NOT EXISTS _vb.schema_hooks (name text PRIMARY KEY);
CREATE OR REPLACE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
  SELECT nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), '')::uuid
$$;
CREATE OR REPLACE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')::text
$$;
CREATE OR REPLACE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS $$
  SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')::text
$$;
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
REVOKE ALL ON SCHEMA _vb FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
"#;

fn is_code(e: &postgres::Error, code: &postgres::error::SqlState) -> bool {
    e.code() == Some(code)
}

/// A database of that name exists already (possibly created concurrently a moment ago).
fn is_duplicate(e: &postgres::Error) -> bool {
    is_code(e, &postgres::error::SqlState::DUPLICATE_DATABASE)
        || is_code(e, &postgres::error::SqlState::UNIQUE_VIOLATION)
}

impl PgCluster {
    pub(crate) fn connect_blocking(platform: &Platform, admin: postgres::Config) -> Result<Self, AppDbError> {
        let platform = platform.clone();
        {
            let mut client = admin.connect(postgres::NoTls)?;
            let schema: String = client.query_one("SELECT current_schema()::text", &[])?.get(0);
            let namespace = if schema == "public" { String::new() } else { format!("{schema}_") };
            // Shared request roles, as on Supabase; concurrent starts may race to create them.
            for (role, extra) in [("anon", ""), ("authenticated", ""), ("service_role", " BYPASSRLS")] {
                let sql = format!(
                    "DO $$ BEGIN CREATE ROLE {role} NOLOGIN NOINHERIT{extra}; \
                     EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                );
                client.batch_execute(&sql)?;
            }
            drop(client);
            Ok(Self {
                inner: Arc::new(PgClusterInner {
                    admin,
                    namespace,
                    platform,
                    ready: Mutex::new(HashSet::new()),
                    template_lock: Mutex::new(()),
                }),
            })
        }
    }

    pub(crate) fn database_name(&self, base: &str) -> String {
        format!("{}{base}", self.inner.namespace)
    }

    fn owner_name(&self, base: &str) -> String {
        format!("{}{base}_owner", self.inner.namespace)
    }

    fn admin_client(&self, dbname: Option<&str>) -> Result<postgres::Client, AppDbError> {
        let mut config = self.inner.admin.clone();
        if let Some(db) = dbname {
            config.dbname(db);
        }
        // The platform's search_path option is for its own schema, not for env databases.
        config.options("");
        Ok(config.connect(postgres::NoTls)?)
    }

    fn database_exists(client: &mut postgres::Client, name: &str) -> Result<bool, AppDbError> {
        Ok(client.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])?.is_some())
    }

    /// The template database for this set of hooks, built if missing.
    fn ensure_template(&self, client: &mut postgres::Client, hooks: &[SchemaHook]) -> Result<String, AppDbError> {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(TEMPLATE_VERSION);
        h.update(PG_TEMPLATE_BASE);
        for hook in hooks {
            h.update(&hook.name);
            h.update(&hook.postgres);
        }
        let digest: String = h.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect();
        // Templates depend only on the DDL, so every platform on the cluster shares them.
        let name = format!("vb_tpl_{digest}");
        let _guard = self.inner.template_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if Self::database_exists(client, &name)? {
            return Ok(name);
        }
        let building = format!("{name}_b{}", self.inner.platform.random_id(6));
        client.batch_execute(&format!("CREATE DATABASE {}", quote_ident(&building)))?;
        let built = (|| {
            let mut c = self.admin_client(Some(&building))?;
            let mut tx = c.transaction()?;
            tx.batch_execute(PG_TEMPLATE_BASE)?;
            for hook in hooks {
                tx.batch_execute(&hook.postgres)?;
                tx.execute("INSERT INTO _vb.schema_hooks (name) VALUES ($1)", &[&hook.name])?;
            }
            tx.commit()?;
            drop(c);
            Ok::<_, AppDbError>(())
        })();
        if let Err(e) = built {
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&building)));
            return Err(e);
        }
        // Publish atomically; another instance may have published the same template meanwhile.
        match client.batch_execute(&format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(&building),
            quote_ident(&name)
        )) {
            Ok(()) => Ok(name),
            // Concurrent publishers race on the catalog's unique index, reported either way.
            Err(e) if is_duplicate(&e) => {
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&building)))?;
                Ok(name)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the env's database and owner if missing, runs the (idempotent) per-env setup once per
    /// process, and returns a pool logging in as the owner.
    fn ensure_database(&self, base: &str, hooks: &[SchemaHook]) -> Result<EnvDb, AppDbError> {
        let db = self.database_name(base);
        let owner = self.owner_name(base);
        let password = self.inner.platform.derive_secret(&format!("appdb-owner:{owner}"));
        let ready = self.inner.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&db);
        if !ready {
            let mut client = self.admin_client(None)?;
            // Another instance may be creating the same env database: one at a time (the lock is the
            // session's, released when `client` goes at the end of this block).
            client.execute("SELECT pg_advisory_lock(hashtext($1))", &[&db])?;
            client.batch_execute(&format!(
                "DO $$ BEGIN CREATE ROLE {o} LOGIN NOINHERIT; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
                 ALTER ROLE {o} WITH LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD '{password}'; \
                 GRANT anon, authenticated, service_role TO {o};",
                o = quote_ident(&owner)
            ))?;
            if !Self::database_exists(&mut client, &db)? {
                let template = self.ensure_template(&mut client, hooks)?;
                let create = format!("CREATE DATABASE {} TEMPLATE {}", quote_ident(&db), quote_ident(&template));
                let mut attempt = 0;
                loop {
                    match client.batch_execute(&create) {
                        Ok(()) => break,
                        Err(e) if is_duplicate(&e) => break,
                        // The template is briefly in use by a concurrent copy.
                        Err(e) if is_code(&e, &postgres::error::SqlState::OBJECT_IN_USE) && attempt < 100 => {
                            attempt += 1;
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let mut c = self.admin_client(Some(&db))?;
            let (d, o) = (quote_ident(&db), quote_ident(&owner));
            let mut tx = c.transaction()?;
            tx.batch_execute(&format!(
                "REVOKE ALL ON DATABASE {d} FROM PUBLIC;
                 GRANT CONNECT, TEMPORARY, CREATE ON DATABASE {d} TO {o};
                 ALTER SCHEMA public OWNER TO {o};
                 GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
                 ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated, service_role;
                 ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
                 ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO anon, authenticated, service_role;
                 GRANT USAGE ON SCHEMA auth, storage, _vb TO {o};
                 GRANT ALL ON ALL TABLES IN SCHEMA auth, storage, _vb TO {o};
                 GRANT ALL ON ALL SEQUENCES IN SCHEMA auth, storage, _vb TO {o};
                 GRANT ALL ON ALL TABLES IN SCHEMA auth, storage TO service_role;"
            ))?;
            for hook in hooks {
                let done = tx.query_opt("SELECT 1 FROM _vb.schema_hooks WHERE name = $1", &[&hook.name])?.is_some();
                if !done {
                    tx.batch_execute(&hook.postgres)?;
                    tx.execute("INSERT INTO _vb.schema_hooks (name) VALUES ($1)", &[&hook.name])?;
                    tx.batch_execute(&format!(
                        "GRANT ALL ON ALL TABLES IN SCHEMA auth, storage TO {o}, service_role;
                         GRANT ALL ON ALL SEQUENCES IN SCHEMA auth, storage TO {o};"
                    ))?;
                }
            }
            // The env's migrations put policies on `storage.objects`/`storage.buckets` (as on Supabase),
            // which PostgreSQL allows only to a table's owner.
            // Role names are ours (derived from env ids), quoted once as a literal and once as an identifier.
            let (owner_name, owner_ident) = (owner.replace('\'', "''"), o.replace('\'', "''"));
            tx.batch_execute(&format!(
                "DO $$ DECLARE t record; BEGIN
                   FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'storage' AND tableowner <> '{owner_name}' LOOP
                     EXECUTE format('ALTER TABLE storage.%I OWNER TO %s', t.tablename, '{owner_ident}');
                   END LOOP;
                 END $$;"
            ))?;
            tx.commit()?;
            drop(c);
            drop(client);
            self.inner.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(db.clone());
        }
        let mut config = self.inner.admin.clone();
        config.dbname(&db).user(&owner).password(password).options("");
        // Env databases are many: each uses at most four connections at once (requests beyond that
        // queue for one, which beats opening a connection per request) and keeps two idle (logged in
        // as the env's owner).
        Ok(EnvDb::Postgres(Box::new(store::PgPool::new(config, 4, 2))))
    }

    /// Whether the env's database exists on the cluster.
    pub(crate) fn exists(&self, base: &str) -> Result<bool, AppDbError> {
        let db = self.database_name(base);
        if self.inner.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&db) {
            return Ok(true);
        }
        let mut client = self.admin_client(None)?;
        Self::database_exists(&mut client, &db)
    }

    /// Drops the env's database (ending its connections) and its owner role.
    pub(crate) fn drop_database(&self, base: &str) -> Result<(), AppDbError> {
        let db = self.database_name(base);
        let owner = self.owner_name(base);
        let mut client = self.admin_client(None)?;
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(&db)))?;
        client.batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(&owner)))?;
        self.inner.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&db);
        Ok(())
    }
}
