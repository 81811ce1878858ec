//! One SQL interface over SQLite and PostgreSQL.
//!
//! Both backends are driven synchronously on tokio's blocking pool, so the data-access code above is
//! written once: a closure receives a `&mut dyn Conn` inside a transaction. SQL is written in the common
//! subset of both dialects with PostgreSQL's `$1`-style parameters; for SQLite they become `?1`, which
//! binds by number too. Columns use only BIGINT and TEXT, so a [`Value`] maps to both without
//! conversion tables.

use std::sync::{Arc, Mutex};

use postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// What can go wrong talking to the metadata database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL reported an error or the connection failed.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
    /// A row violated a unique constraint (e.g. an id already taken).
    #[error("unique constraint violated")]
    Conflict,
    /// A column held a value of another type than the code expects: a schema/code mismatch.
    #[error("column {0} has an unexpected type")]
    Type(usize),
    /// The URL given with `--database-url` is not a PostgreSQL URL.
    #[error("unsupported database url (expected postgres://…)")]
    BadUrl,
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
    /// The schema in the database is newer than this binary knows.
    #[error("database schema version {found} is newer than this binary's {known}")]
    SchemaTooNew { found: i64, known: i64 },
}

/// A SQL value: the two column types the platform schema uses, plus NULL.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(i64::from(v))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// One result row.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    /// A row of these values (for other implementations of [`Conn`]).
    pub fn from_values(values: Vec<Value>) -> Self {
        Self(values)
    }
    pub fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Value::Int(v)) => Ok(*v),
            _ => Err(StoreError::Type(i)),
        }
    }
    pub fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Value::Text(v)) => Ok(v.clone()),
            _ => Err(StoreError::Type(i)),
        }
    }
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.0.get(i) {
            Some(Value::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// A connection inside a transaction.
pub trait Conn {
    /// Runs a statement; returns the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError>;
    /// Runs a query; returns all rows.
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), StoreError>;
    /// Which dialect this is, for the rare statement that differs.
    fn dialect(&self) -> Dialect;

    /// The first row of a query, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Env-database SQL written once in PostgreSQL's form (schema-qualified tables, `::type` casts, times
/// read through `auth.vb_ts(…)`), turned into SQLite's: the given `schema.table` names quoted as the
/// one-word table names SQLite env databases use, casts and the time formatter dropped. The SQL text
/// is always the platform's own, never input.
pub fn sqlite_form(sql: &str, tables: &[&str]) -> String {
    let mut s = sql.replace("auth.vb_ts(", "(");
    for name in tables {
        s = s.replace(name, &format!("\"{name}\""));
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '[' || *c == ']') {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The metadata database: a handle that is cheap to clone.
#[derive(Clone)]
pub struct Db {
    backend: Arc<Backend>,
}

enum Backend {
    /// One connection: SQLite serialises writers anyway, and WAL keeps each commit cheap.
    Sqlite(Mutex<rusqlite::Connection>),
    Postgres(Box<PgPool>),
}

impl Db {
    /// Opens (creating if needed) a SQLite database file.
    pub fn open_sqlite(path: &std::path::Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )?;
        Ok(Self { backend: Arc::new(Backend::Sqlite(Mutex::new(conn))) })
    }

    /// Connects to PostgreSQL (`postgres://…`; `options=-csearch_path%3D…` selects a schema).
    pub async fn connect_postgres(url: &str) -> Result<Self, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::BadUrl);
        }
        let config: postgres::Config = url.parse()?;
        // Bounded, so that a burst of requests queues for connections instead of exhausting the
        // server's connection slots.
        let pool = PgPool::new(config, 48, 16);
        // The synchronous client runs its own small runtime, so it is only ever created, used and
        // dropped on blocking threads. Connecting once now makes a bad URL fail at start.
        tokio::task::spawn_blocking(move || {
            let client = pool.take()?;
            pool.give_back(client);
            Ok(Self { backend: Arc::new(Backend::Postgres(Box::new(pool))) })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// The connection settings when this is PostgreSQL (env databases live on the same cluster).
    pub fn postgres_config(&self) -> Option<&postgres::Config> {
        match &*self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(pool) => Some(pool.config()),
        }
    }

    pub fn dialect(&self) -> Dialect {
        match &*self.backend {
            Backend::Sqlite(_) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Deletes every row of `env` from `tables` (each has an `env_id` column) in one transaction: what a
    /// capability's env-delete hook does with its platform tables.
    pub async fn delete_env_rows(&self, env: &str, tables: &'static [&'static str]) -> Result<(), StoreError> {
        let env = env.to_owned();
        self.tx(move |c: &mut dyn Conn| {
            for table in tables {
                c.execute(&format!("DELETE FROM {table} WHERE env_id = $1"), &[env.as_str().into()])?;
            }
            Ok(())
        })
        .await
    }

    /// Runs `f` in one transaction on the blocking pool: committed if it returns `Ok`, rolled back if not.
    pub async fn tx<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.tx_blocking(f))
            .await
            .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }

    /// [`Db::tx`] for callers already on a blocking thread.
    pub fn tx_blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut dyn Conn) -> Result<T, E>,
    {
        match &*self.backend {
            Backend::Sqlite(conn) => {
                let mut guard = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let tx = guard.transaction().map_err(StoreError::from)?;
                let mut conn = SqliteConn(tx);
                let out = f(&mut conn)?;
                conn.0.commit().map_err(StoreError::from)?;
                Ok(out)
            }
            Backend::Postgres(pool) => {
                let mut client = pool.take().map_err(StoreError::from)?;
                let result = (|| {
                    let tx = client.transaction().map_err(StoreError::from)?;
                    let mut conn = PgConn(tx);
                    let out = f(&mut conn)?;
                    conn.0.commit().map_err(StoreError::from)?;
                    Ok(out)
                })();
                pool.give_back(client);
                result
            }
        }
    }
}

struct SqliteConn<'a>(rusqlite::Transaction<'a>);

/// PostgreSQL's `$N` placeholders as SQLite's `?N`. (SQLite also reads `$N`, but as a *named*
/// parameter numbered by first appearance, which would silently reorder parameters.)
fn sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Conn for SqliteConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params.iter())).map_err(sqlite_error)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.0.prepare_cached(&sqlite_placeholders(sql))?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params.iter())).map_err(sqlite_error)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(sqlite_error)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                    rusqlite::types::ValueRef::Real(v) => Value::Int(v as i64),
                    rusqlite::types::ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                    rusqlite::types::ValueRef::Blob(_) => return Err(StoreError::Type(i)),
                });
            }
            out.push(Row(values));
        }
        Ok(out)
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            {
                StoreError::Conflict
            } else {
                StoreError::Sqlite(e)
            }
        }
        _ => StoreError::Sqlite(e),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// Synchronous PostgreSQL clients of one configuration, handed out on blocking threads: at most
/// `max_open` at once (callers beyond that wait for one to come back, rather than each opening a
/// connection of its own), of which at most `max_idle` stay open between uses.
pub struct PgPool {
    config: postgres::Config,
    state: Mutex<PoolState>,
    returned: std::sync::Condvar,
    max_open: usize,
    max_idle: usize,
}

struct PoolState {
    idle: Vec<postgres::Client>,
    /// Clients handed out and not yet given back.
    busy: usize,
}

impl PgPool {
    /// A pool of at most `max_open` clients, keeping at most `max_idle` open between uses.
    pub fn new(config: postgres::Config, max_open: usize, max_idle: usize) -> Self {
        Self {
            config,
            state: Mutex::new(PoolState { idle: Vec::new(), busy: 0 }),
            returned: std::sync::Condvar::new(),
            max_open: max_open.max(1),
            max_idle,
        }
    }

    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    /// An idle client, or a new connection; waits while `max_open` are in use. Call on a blocking
    /// thread. Every client taken must be given back (or [`PgPool::forget`] when it broke).
    pub fn take(&self) -> Result<postgres::Client, postgres::Error> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            while let Some(c) = state.idle.pop() {
                if !c.is_closed() {
                    state.busy += 1;
                    return Ok(c);
                }
            }
            if state.busy < self.max_open {
                break;
            }
            state = self.returned.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.busy += 1;
        drop(state);
        self.config.connect(postgres::NoTls).inspect_err(|_| self.forget())
    }

    /// Returns a client taken with [`PgPool::take`].
    pub fn give_back(&self, client: postgres::Client) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.busy = state.busy.saturating_sub(1);
        if !client.is_closed() && state.idle.len() < self.max_idle {
            state.idle.push(client);
        }
        drop(state);
        self.returned.notify_one();
    }

    /// Accounts for a client taken with [`PgPool::take`] that is gone (closed or failed to connect).
    pub fn forget(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.busy = state.busy.saturating_sub(1);
        drop(state);
        self.returned.notify_one();
    }
}

impl Drop for PgPool {
    fn drop(&mut self) {
        // Closing a synchronous client blocks on its runtime, which panics on an async thread; the pool
        // may be dropped anywhere, so its idle clients are closed on a thread of their own.
        let idle = std::mem::take(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).idle);
        if !idle.is_empty() {
            std::thread::spawn(move || drop(idle));
        }
    }
}

struct PgConn<'a>(postgres::Transaction<'a>);

impl Conn for PgConn<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        self.0.execute(sql, &refs).map_err(pg_error)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, StoreError> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self.0.query(sql, &refs).map_err(pg_error)?;
        rows.iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| {
                        let ty = row.columns()[i].type_();
                        Ok(if *ty == Type::INT8 {
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
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
                    .map(Row)
            })
            .collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.0.batch_execute(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}

fn pg_error(e: postgres::Error) -> StoreError {
    if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
        StoreError::Conflict
    } else {
        StoreError::Postgres(e)
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty) || <i32 as ToSql>::accepts(ty) || <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parameters bind by number whatever order they appear in, on SQLite as on PostgreSQL.
    #[tokio::test]
    async fn parameters_bind_by_number_in_any_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open_sqlite(&dir.path().join("t.db")).unwrap();
        let row = db
            .tx(|c| {
                c.batch("CREATE TABLE t (a BIGINT, b TEXT)")?;
                c.execute("INSERT INTO t (b, a) VALUES ($2, $1)", &[7i64.into(), "seven".into()])?;
                c.query_opt("SELECT a, b FROM t WHERE b = $2 AND a = $1", &[7i64.into(), "seven".into()])
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((row.int(0).unwrap(), row.text(1).unwrap()), (7, "seven".to_owned()));
    }
}
