//! Migrations: SQL in the PostgreSQL dialect as LLMs write it for Supabase, checked statement by
//! statement and run in one transaction, recorded in the env's migration history.
//!
//! On PostgreSQL the checked text runs as the env's owner role. On SQLite each statement is translated
//! (types, defaults, `auth.*` functions, `auth.users` references, policies); a construct that has no
//! translation is rejected with an error naming it. Statements that reach beyond the env (other schemas,
//! file or network functions, roles, settings, extensions other than `pgcrypto`/`uuid-ossp`) are
//! rejected on both.

use std::ops::ControlFlow;

use sqlparser::ast::{
    self, AlterTableOperation, ColumnOption, CreatePolicyCommand, CreatePolicyType, DataType, Expr, Ident, ObjectName,
    ObjectNamePart, ObjectType, Owner, ReferentialAction, Statement, TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::backend::{Role, SqlError, Tx};
use crate::{AppDbError, AppDbs, Dialect, quote_ident};

/// How deep expressions may nest in a migration (the parser refuses deeper input).
const MAX_DEPTH: usize = 64;
/// Most statements in one migration.
const MAX_STATEMENTS: usize = 500;

/// Why a migration was refused or failed. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The text is not valid SQL in the PostgreSQL dialect.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A construct this backend cannot run (named in the message).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A statement reaches beyond the env (other schemas, files, network, roles, settings).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The database refused a statement (SQLSTATE in `code`).
    #[error("statement {index}: {error}")]
    Database { index: usize, error: SqlError },
    /// The migration would leave tables reachable by `anon` or `authenticated` without row-level
    /// security (asked for with [`MigrateOptions::require_rls`]); nothing was applied.
    #[error(
        "row-level security is off on {}: enable it (ALTER TABLE … ENABLE ROW LEVEL SECURITY) and add policies \
         in the same migration",
        .0.join(", ")
    )]
    RlsRequired(Vec<String>),
    /// The env database could not be reached.
    #[error(transparent)]
    AppDb(#[from] AppDbError),
}

/// How a migration is applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateOptions {
    /// Refuse (and roll back) a migration after which a table the data API's `anon` or `authenticated`
    /// roles can reach has row-level security off. The agent loop applies its migrations this way.
    pub require_rls: bool,
}

impl MigrateError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Syntax(_) => "sql_syntax_error",
            Self::Unsupported(_) => "sql_unsupported",
            Self::Forbidden(_) => "sql_forbidden",
            Self::Database { .. } => "sql_error",
            Self::RlsRequired(_) => "rls_required",
            Self::AppDb(_) => "internal",
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    /// Its number in the env's migration history.
    pub version: i64,
    /// How many statements it ran.
    pub statements: usize,
}

/// Parses migration text (PostgreSQL dialect) into statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>, MigrateError> {
    let statements = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| MigrateError::Syntax(e.to_string()))?;
    if statements.is_empty() {
        return Err(MigrateError::Syntax("no statement".to_owned()));
    }
    if statements.len() > MAX_STATEMENTS {
        return Err(MigrateError::Unsupported(format!("more than {MAX_STATEMENTS} statements in one migration")));
    }
    Ok(statements)
}

/// The text with the keyword `setof` (outside quotes) removed.
fn without_setof(sql: &str) -> String {
    let lower = sql.to_ascii_lowercase();
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'\'' || c == b'"' => quote = Some(c),
            None if lower[i..].starts_with("setof")
                && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric() && bytes[i - 1] != b'_')
                && bytes.get(i + 5).is_none_or(|n| !n.is_ascii_alphanumeric() && *n != b'_') =>
            {
                i += 5;
                continue;
            }
            None => {}
        }
        // Copy one UTF-8 character.
        let len = sql[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&sql[i..i + len]);
        i += len;
    }
    out
}

fn unsupported(what: impl std::fmt::Display) -> MigrateError {
    MigrateError::Unsupported(what.to_string())
}

fn short(s: impl std::fmt::Display) -> String {
    let s = s.to_string();
    if s.chars().count() > 80 { format!("{}…", s.chars().take(80).collect::<String>()) } else { s }
}

/// A table reference split into schema and name, checked to stay inside the env.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    fn sqlite(&self) -> String {
        crate::table_ref(Dialect::Sqlite, &self.schema, &self.name)
    }
}

fn idents(name: &ObjectName) -> Result<Vec<String>, MigrateError> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Ok(i.value.clone()),
            ObjectNamePart::Function(f) => Err(unsupported(format!("name {f}"))),
        })
        .collect()
}

/// Checks a table name: schema public/auth/storage, no dot or `_vb` prefix in user table names.
pub(crate) fn table_name(name: &ObjectName) -> Result<TableName, MigrateError> {
    let parts = idents(name)?;
    let (schema, table) = match parts.as_slice() {
        [t] => ("public".to_owned(), t.clone()),
        [s, t] => (s.to_lowercase(), t.clone()),
        _ => return Err(MigrateError::Forbidden(format!("name {name} reaches beyond the env's database"))),
    };
    if !["public", "auth", "storage"].contains(&schema.as_str()) {
        return Err(MigrateError::Forbidden(format!("schema {schema} (only public, auth and storage)")));
    }
    if table.contains('.') || table.to_lowercase().starts_with("_vb") || table.contains('\0') || table.is_empty() {
        return Err(MigrateError::Forbidden(format!("table name {table:?} (no dots, no _vb prefix)")));
    }
    Ok(TableName { schema, name: table })
}

fn user_table(name: &ObjectName) -> Result<TableName, MigrateError> {
    let t = table_name(name)?;
    if t.schema != "public" {
        return Err(MigrateError::Forbidden(format!(
            "changing {}.{} (migrations change tables of schema public)",
            t.schema, t.name
        )));
    }
    Ok(t)
}

/// Tables of schema `storage` an env's migrations may put policies on (Supabase Storage's access
/// rules are policies on these).
pub const STORAGE_POLICY_TABLES: [&str; 2] = ["objects", "buckets"];

/// The storage helper functions policies may call (`storage.foldername(name)` and friends).
pub const STORAGE_FUNCTIONS: [&str; 3] = ["storage.foldername", "storage.filename", "storage.extension"];

/// A table a policy may be created on: a public table or `storage.objects` / `storage.buckets`.
fn policy_table(name: &ObjectName) -> Result<TableName, MigrateError> {
    let t = table_name(name)?;
    if t.schema == "storage" && STORAGE_POLICY_TABLES.contains(&t.name.as_str()) {
        return Ok(t);
    }
    user_table(name)
}

/// Functions that reach the server's files, network, processes or settings: refused on both backends.
const FORBIDDEN_FUNCTIONS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "lo_import",
    "lo_export",
    "dblink",
    "dblink_exec",
    "dblink_connect",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_sleep",
    "set_config",
    "load_extension",
    "readfile",
    "writefile",
    "fts3_tokenizer",
];

/// Functions an SQLite env database has (PostgreSQL name → SQLite name).
fn sqlite_function(name: &str) -> Option<&'static str> {
    Some(match name {
        "now" | "current_timestamp" | "statement_timestamp" | "transaction_timestamp" => "vb_now",
        "gen_random_uuid" | "uuid_generate_v4" | "extensions.uuid_generate_v4" => "gen_random_uuid",
        "auth.uid" => "auth_uid",
        "auth.role" => "auth_role",
        "auth.jwt" => "auth_jwt",
        "auth.email" => "auth_email",
        "storage.foldername" => "storage_foldername",
        "storage.filename" => "storage_filename",
        "storage.extension" => "storage_extension",
        "lower" => "lower",
        "upper" => "upper",
        "length" | "char_length" | "character_length" => "length",
        "coalesce" => "coalesce",
        "nullif" => "nullif",
        "abs" => "abs",
        "round" => "round",
        "trim" => "trim",
        "ltrim" => "ltrim",
        "rtrim" => "rtrim",
        "replace" => "replace",
        "substr" => "substr",
        "greatest" => "max",
        "least" => "min",
        "concat" => "concat",
        "random" => "random",
        "count" => "count",
        "sum" => "sum",
        "min" => "min",
        "max" => "max",
        "avg" => "avg",
        "json_array_length" | "jsonb_array_length" => "json_array_length",
        "json_typeof" | "jsonb_typeof" => "json_type",
        _ => return None,
    })
}

fn function_name(f: &ast::Function) -> String {
    f.name.0.iter().map(|p| p.to_string().trim_matches('"').to_lowercase()).collect::<Vec<_>>().join(".")
}

/// Checks every relation and function a statement names (both backends).
fn check_reach(stmt: &Statement) -> Result<(), MigrateError> {
    let mut err = None;
    let _ = ast::visit_relations(stmt, |rel| match table_name(rel) {
        Ok(_) => ControlFlow::Continue(()),
        Err(e) => {
            err = Some(e);
            ControlFlow::Break(())
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let _ = ast::visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e {
            let name = function_name(f);
            let bare = name.rsplit('.').next().unwrap_or(&name);
            if FORBIDDEN_FUNCTIONS.contains(&bare) || bare.starts_with("dblink") || bare.starts_with("pg_") {
                err = Some(MigrateError::Forbidden(format!("function {name}")));
                return ControlFlow::Break(());
            }
            if name.contains('.')
                && !name.starts_with("auth.")
                && !name.starts_with("public.")
                && !name.starts_with("extensions.")
                && !STORAGE_FUNCTIONS.contains(&name.as_str())
            {
                err = Some(MigrateError::Forbidden(format!("function {name} outside the env's schemas")));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    err.map_or(Ok(()), Err)
}

/// Checks one statement's kind and reach; true when PostgreSQL runs it and SQLite ignores it.
fn check_statement(stmt: &Statement) -> Result<(), MigrateError> {
    check_reach(stmt)?;
    match stmt {
        Statement::CreateTable(ct) => {
            user_table(&ct.name)?;
            if ct.query.is_some() || ct.like.is_some() || ct.clone.is_some() {
                return Err(unsupported("CREATE TABLE … AS / LIKE / CLONE"));
            }
            if ct.temporary {
                return Err(unsupported("CREATE TEMPORARY TABLE"));
            }
            Ok(())
        }
        Statement::AlterTable { name, .. } => user_table(name).map(drop),
        Statement::CreateIndex(ci) => user_table(&ci.table_name).map(drop),
        Statement::CreatePolicy { table_name, .. } | Statement::DropPolicy { table_name, .. } => {
            policy_table(table_name).map(drop)
        }
        Statement::Drop { object_type, names, .. } => match object_type {
            ObjectType::Table | ObjectType::View => names.iter().try_for_each(|n| user_table(n).map(drop)),
            ObjectType::Index => Ok(()),
            other => Err(unsupported(format!("DROP {other}"))),
        },
        Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) => Ok(()),
        Statement::CreateView { name, .. } => user_table(name).map(drop),
        Statement::CreateExtension { name, .. } => {
            if ["pgcrypto", "uuid-ossp"].contains(&name.value.as_str()) {
                Ok(())
            } else {
                Err(MigrateError::Forbidden(format!("extension {}", name.value)))
            }
        }
        Statement::CreateFunction(f) => {
            let lang = f.language.as_ref().map(|l| l.value.to_lowercase()).unwrap_or_default();
            if !["sql", "plpgsql"].contains(&lang.as_str()) {
                return Err(MigrateError::Forbidden(format!("function language {lang:?} (sql and plpgsql only)")));
            }
            user_table(&f.name).map(drop)
        }
        Statement::CreateTrigger { .. } | Statement::CreateType { .. } => Ok(()),
        Statement::Grant { .. } | Statement::Revoke { .. } | Statement::Comment { .. } => Ok(()),
        other => Err(unsupported(format!("statement {}", short(other)))),
    }
}

impl AppDbs {
    /// Applies a migration to the env's database in one transaction and records it in the history.
    pub async fn migrate(&self, env: &protocol::EnvId, sql: String) -> Result<Applied, MigrateError> {
        self.migrate_with(env, sql, MigrateOptions::default()).await
    }

    /// [`Self::migrate`] with options.
    pub async fn migrate_with(
        &self,
        env: &protocol::EnvId,
        sql: String,
        options: MigrateOptions,
    ) -> Result<Applied, MigrateError> {
        let statements = match self.dialect() {
            // PostgreSQL runs the original text; the parser only checks it, and it does not know
            // `RETURNS SETOF t`, which changes nothing the checks look at.
            Dialect::Postgres => parse(&without_setof(&sql))?,
            Dialect::Sqlite => parse(&sql)?,
        };
        for s in &statements {
            check_statement(s)?;
        }
        let count = statements.len();
        self.run(env, move |db| {
            db.tx(&Role::Owner, |tx: &mut Tx<'_>| {
                match tx.dialect() {
                    Dialect::Postgres => {
                        tx.batch_sql(&sql).map_err(|error| MigrateError::Database { index: 0, error })?;
                    }
                    Dialect::Sqlite => {
                        for (i, s) in statements.iter().enumerate() {
                            for step in translate_sqlite(s)? {
                                run_step(tx, step).map_err(|error| MigrateError::Database { index: i + 1, error })?;
                            }
                        }
                    }
                }
                if options.require_rls {
                    let exposed =
                        exposed_without_rls(tx).map_err(|error| MigrateError::Database { index: 0, error })?;
                    if !exposed.is_empty() {
                        return Err(MigrateError::RlsRequired(exposed));
                    }
                }
                record(tx, &sql)
                    .map(|version| Applied { version, statements: count })
                    .map_err(|error| MigrateError::Database { index: 0, error })
            })
        })
        .await
    }
}

impl AppDbs {
    /// The version of the env's latest applied migration; `None` when none was applied (or the env has
    /// no database yet, which is not created for asking).
    pub async fn migration_position(&self, env: &protocol::EnvId) -> Result<Option<i64>, MigrateError> {
        if !self.exists(env).await? {
            return Ok(None);
        }
        self.run(env, |db| {
            db.tx(&Role::Owner, |tx: &mut Tx<'_>| {
                let sql = match tx.dialect() {
                    Dialect::Sqlite => "SELECT CAST(MAX(version) AS TEXT) FROM _vb_migrations",
                    Dialect::Postgres => "SELECT MAX(version)::text FROM _vb.migrations",
                };
                let rows = tx.rows(sql, &[]).map_err(|error| MigrateError::Database { index: 0, error })?;
                Ok(rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|v| v.parse().ok()))
            })
        })
        .await
    }
}

/// What a migration becomes on SQLite, statement by statement (checks and bookkeeping left out):
/// for tests, and for showing a user what runs.
pub fn sqlite_translation(sql: &str) -> Result<Vec<String>, MigrateError> {
    let mut out = Vec::new();
    for s in parse(sql)? {
        check_statement(&s)?;
        for step in translate_sqlite(&s)? {
            if let Step::Sql(sql) = step {
                out.push(sql);
            }
        }
    }
    Ok(out)
}

/// Tables of the env's own schema that the data API's `anon` or `authenticated` roles can reach while
/// row-level security is off on them. On SQLite every user table is reachable (grants are not modelled).
fn exposed_without_rls(tx: &mut Tx<'_>) -> Result<Vec<String>, SqlError> {
    let sql = match tx.dialect() {
        Dialect::Postgres => {
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity \
             AND (has_table_privilege('anon', c.oid, 'SELECT,INSERT,UPDATE,DELETE') \
               OR has_table_privilege('authenticated', c.oid, 'SELECT,INSERT,UPDATE,DELETE')) ORDER BY 1"
        }
        Dialect::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name NOT LIKE '\\_vb\\_%' ESCAPE '\\' AND name NOT LIKE 'auth.%' AND name NOT LIKE 'storage.%' \
             AND name NOT IN (SELECT table_name FROM _vb_rls) ORDER BY 1"
        }
    };
    Ok(tx.rows(sql, &[])?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect())
}

fn record(tx: &mut Tx<'_>, sql: &str) -> Result<i64, SqlError> {
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let (ins, params) = match tx.dialect() {
        Dialect::Sqlite => (
            "INSERT INTO _vb_migrations (statements, applied_at) VALUES (?1, ?2) RETURNING CAST(version AS TEXT)",
            vec![sql.into(), now.into()],
        ),
        Dialect::Postgres => (
            "INSERT INTO _vb.migrations (statements, applied_at) VALUES ($1, $2) RETURNING version::text",
            vec![sql.into(), now.into()],
        ),
    };
    let rows = tx.rows(ins, &params)?;
    Ok(rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|v| v.parse().ok()).unwrap_or(0))
}

impl From<&str> for crate::backend::Param {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}
impl From<String> for crate::backend::Param {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

/// One thing a translated statement does on SQLite.
enum Step {
    Sql(String),
    /// A query run only to see that it compiles (policy expressions).
    Probe(String),
    /// SQL with parameters (bookkeeping rows).
    Bound(String, Vec<crate::backend::Param>),
    /// A check that must find a row, else the error.
    Expect(String, Vec<crate::backend::Param>, SqlError),
}

fn run_step(tx: &mut Tx<'_>, step: Step) -> Result<(), SqlError> {
    match step {
        Step::Sql(s) | Step::Probe(s) => tx.batch_sql(&s),
        Step::Bound(s, p) => tx.exec(&s, &p).map(drop),
        Step::Expect(s, p, e) => {
            if tx.rows(&s, &p)?.is_empty() {
                Err(e)
            } else {
                Ok(())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// SQLite translation

/// The SQLite declared type of a PostgreSQL type. The declared type keeps the PostgreSQL name first
/// (the data API reads it back) and ends with a word that gives SQLite the right affinity.
pub(crate) fn sqlite_type(dt: &DataType) -> Result<(String, bool), MigrateError> {
    let pg = dt.to_string().to_lowercase();
    let (base, array) = match pg.strip_suffix("[]") {
        Some(b) => (b.trim().to_owned(), true),
        None => (pg.clone(), false),
    };
    let head = base.split('(').next().unwrap_or("").trim().to_owned();
    let serial = matches!(head.as_str(), "serial" | "bigserial" | "smallserial" | "serial4" | "serial8");
    let decl = match head.as_str() {
        "smallint" | "int2" | "integer" | "int" | "int4" | "serial" | "serial4" | "smallserial" => "INTEGER".to_owned(),
        "bigint" | "int8" | "bigserial" | "serial8" => "BIGINT".to_owned(),
        "text" | "citext" | "name" => "TEXT".to_owned(),
        "varchar" | "character varying" | "char" | "character" | "bpchar" => "VARCHAR TEXT".to_owned(),
        "uuid" => "UUID TEXT".to_owned(),
        "boolean" | "bool" => "BOOLEAN".to_owned(),
        "real" | "float4" => "REAL".to_owned(),
        "double precision" | "float8" | "float" => "DOUBLE REAL".to_owned(),
        "numeric" | "decimal" => "NUMERIC".to_owned(),
        "json" => "JSON TEXT".to_owned(),
        "jsonb" => "JSONB TEXT".to_owned(),
        "timestamptz" | "timestamp with time zone" => "TIMESTAMPTZ TEXT".to_owned(),
        "timestamp" | "timestamp without time zone" => "TIMESTAMP TEXT".to_owned(),
        "date" => "DATE TEXT".to_owned(),
        "time" | "time without time zone" | "timetz" | "time with time zone" => "TIME TEXT".to_owned(),
        "interval" => "INTERVAL TEXT".to_owned(),
        _ => return Err(unsupported(format!("column type {pg}"))),
    };
    if array {
        let word = decl.split(' ').next().unwrap_or("TEXT");
        return Ok((format!("{word}_ARRAY TEXT"), false));
    }
    Ok((decl, serial))
}

/// The SQLite type for a cast target.
fn sqlite_cast_type(dt: &DataType) -> Result<&'static str, MigrateError> {
    let (decl, _) = sqlite_type(dt)?;
    Ok(if decl.ends_with("TEXT") {
        "TEXT"
    } else if decl == "INTEGER" || decl == "BIGINT" || decl == "BOOLEAN" {
        "INTEGER"
    } else if decl.ends_with("REAL") {
        "REAL"
    } else {
        "NUMERIC"
    })
}

fn sqlite_ident(s: &str) -> Ident {
    Ident::with_quote('"', s)
}

/// Translates an expression for SQLite: functions mapped, casts retyped, relations renamed. Any
/// construct without a translation is an error naming it.
pub(crate) fn sqlite_expr(expr: &Expr) -> Result<String, MigrateError> {
    sqlite_rewrite(expr)
}

/// Renames every relation and translates every expression of `node` for SQLite, then renders it.
fn sqlite_rewrite<T>(node: &T) -> Result<String, MigrateError>
where
    T: Clone + std::fmt::Display + ast::VisitMut,
{
    let mut node = node.clone();
    let mut err: Option<MigrateError> = None;
    let _ = ast::visit_relations_mut(&mut node, |rel| {
        match table_name(rel) {
            Ok(t) => *rel = ObjectName::from(vec![sqlite_ident(&sqlite_name(&t))]),
            Err(x) => err = Some(x),
        }
        ControlFlow::<()>::Continue(())
    });
    let _ = ast::visit_expressions_mut(&mut node, |x| {
        if err.is_some() {
            return ControlFlow::Break(());
        }
        if let Err(problem) = rewrite_sqlite_expr(x) {
            err = Some(problem);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    match err {
        Some(x) => Err(x),
        None => Ok(node.to_string()),
    }
}

fn sqlite_name(t: &TableName) -> String {
    if t.schema == "public" { t.name.clone() } else { format!("{}.{}", t.schema, t.name) }
}

fn rewrite_sqlite_expr(x: &mut Expr) -> Result<(), MigrateError> {
    match x {
        Expr::Value(v) => {
            // PostgreSQL's `$$…$$` strings: SQLite would read `$…` as a parameter (bound to NULL).
            if let ast::Value::DollarQuotedString(d) = &v.value {
                v.value = ast::Value::SingleQuotedString(d.value.clone());
            }
            Ok(())
        }
        Expr::Identifier(_)
        | Expr::CompoundIdentifier(_)
        | Expr::Nested(_)
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::IsTrue(_)
        | Expr::IsFalse(_)
        | Expr::IsNotTrue(_)
        | Expr::IsNotFalse(_)
        | Expr::IsDistinctFrom(..)
        | Expr::IsNotDistinctFrom(..)
        | Expr::InList { .. }
        | Expr::InSubquery { .. }
        | Expr::Between { .. }
        | Expr::Like { .. }
        | Expr::Exists { .. }
        | Expr::Subquery(_)
        | Expr::Case { .. } => Ok(()),
        // `arr[i]` (PostgreSQL arrays are 1-based): SQLite's array-valued functions return JSON arrays.
        Expr::CompoundFieldAccess { root, access_chain } => match access_chain.as_slice() {
            [ast::AccessExpr::Subscript(ast::Subscript::Index { index })] => {
                let arg = |e: Expr| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e));
                *x = Expr::Function(ast::Function {
                    name: ObjectName::from(vec![Ident::new("vb_array_at")]),
                    uses_odbc_syntax: false,
                    parameters: ast::FunctionArguments::None,
                    args: ast::FunctionArguments::List(ast::FunctionArgumentList {
                        duplicate_treatment: None,
                        args: vec![arg((**root).clone()), arg(index.clone())],
                        clauses: vec![],
                    }),
                    filter: None,
                    null_treatment: None,
                    over: None,
                    within_group: vec![],
                });
                Ok(())
            }
            _ => Err(unsupported(format!("expression {}", short(&*x)))),
        },
        Expr::ILike { negated, expr, pattern, escape_char, .. } => {
            // SQLite's LIKE already ignores ASCII case.
            *x = Expr::Like {
                negated: *negated,
                any: false,
                expr: expr.clone(),
                pattern: pattern.clone(),
                escape_char: escape_char.clone(),
            };
            Ok(())
        }
        Expr::UnaryOp { op, .. } => match op {
            ast::UnaryOperator::Not | ast::UnaryOperator::Minus | ast::UnaryOperator::Plus => Ok(()),
            other => Err(unsupported(format!("operator {other}"))),
        },
        Expr::BinaryOp { op, .. } => {
            use ast::BinaryOperator as B;
            match op {
                B::Plus
                | B::Minus
                | B::Multiply
                | B::Divide
                | B::Modulo
                | B::StringConcat
                | B::Gt
                | B::Lt
                | B::GtEq
                | B::LtEq
                | B::Eq
                | B::NotEq
                | B::And
                | B::Or
                | B::Arrow
                | B::LongArrow => Ok(()),
                other => Err(unsupported(format!("operator {other}"))),
            }
        }
        Expr::Cast { expr, data_type, kind, .. } => {
            let target = sqlite_cast_type(data_type)?;
            *kind = ast::CastKind::Cast;
            *data_type = DataType::Custom(ObjectName::from(vec![Ident::new(target)]), vec![]);
            let _ = expr;
            Ok(())
        }
        Expr::Function(f) => {
            let name = function_name(f);
            let Some(mapped) = sqlite_function(&name) else {
                return Err(unsupported(format!("function {name}() on SQLite")));
            };
            f.name = ObjectName::from(vec![Ident::new(mapped)]);
            if matches!(f.args, ast::FunctionArguments::None) {
                f.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
                    duplicate_treatment: None,
                    args: vec![],
                    clauses: vec![],
                });
            }
            Ok(())
        }
        other => Err(unsupported(format!("expression {}", short(&*other)))),
    }
}

fn referential(a: &ReferentialAction) -> &'static str {
    match a {
        ReferentialAction::Restrict => "RESTRICT",
        ReferentialAction::Cascade => "CASCADE",
        ReferentialAction::SetNull => "SET NULL",
        ReferentialAction::NoAction => "NO ACTION",
        ReferentialAction::SetDefault => "SET DEFAULT",
    }
}

fn references(
    table: &ObjectName,
    cols: &[Ident],
    on_delete: &Option<ReferentialAction>,
    on_update: &Option<ReferentialAction>,
) -> Result<String, MigrateError> {
    let t = table_name(table)?;
    let mut s = format!("REFERENCES {}", t.sqlite());
    if !cols.is_empty() {
        s.push_str(&format!(" ({})", cols.iter().map(|c| quote_ident(&c.value)).collect::<Vec<_>>().join(", ")));
    }
    if let Some(a) = on_delete {
        s.push_str(&format!(" ON DELETE {}", referential(a)));
    }
    if let Some(a) = on_update {
        s.push_str(&format!(" ON UPDATE {}", referential(a)));
    }
    Ok(s)
}

fn index_cols(cols: &[ast::IndexColumn]) -> Result<String, MigrateError> {
    cols.iter()
        .map(|c| {
            let mut s = match &c.column.expr {
                Expr::Identifier(i) => quote_ident(&i.value),
                other => format!("({})", sqlite_expr(other)?),
            };
            if c.column.options.asc == Some(false) {
                s.push_str(" DESC");
            }
            Ok(s)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.join(", "))
}

fn column_sql(col: &ast::ColumnDef) -> Result<String, MigrateError> {
    let (decl, serial) = sqlite_type(&col.data_type)?;
    let mut identity = serial;
    let mut primary = false;
    let mut parts = Vec::new();
    for opt in &col.options {
        let prefix = opt.name.as_ref().map(|n| format!("CONSTRAINT {} ", quote_ident(&n.value))).unwrap_or_default();
        match &opt.option {
            ColumnOption::Null => parts.push("NULL".to_owned()),
            ColumnOption::NotNull => parts.push(format!("{prefix}NOT NULL")),
            ColumnOption::Default(e) => parts.push(format!("DEFAULT ({})", sqlite_expr(e)?)),
            ColumnOption::Unique { is_primary: true, .. } => primary = true,
            ColumnOption::Unique { is_primary: false, .. } => parts.push(format!("{prefix}UNIQUE")),
            ColumnOption::ForeignKey { foreign_table, referred_columns, on_delete, on_update, .. } => {
                parts.push(format!("{prefix}{}", references(foreign_table, referred_columns, on_delete, on_update)?));
            }
            ColumnOption::Check(e) => parts.push(format!("{prefix}CHECK ({})", sqlite_expr(e)?)),
            ColumnOption::Generated { generation_expr: None, .. } | ColumnOption::Identity(_) => identity = true,
            other => return Err(unsupported(format!("column option {other}"))),
        }
    }
    let name = quote_ident(&col.name.value);
    if identity {
        if !primary {
            return Err(unsupported(format!(
                "identity or serial column {} that is not the primary key (SQLite)",
                col.name.value
            )));
        }
        // INTEGER PRIMARY KEY is SQLite's row id: the only auto-numbered column it has.
        let rest = if parts.is_empty() { String::new() } else { format!(" {}", parts.join(" ")) };
        return Ok(format!("{name} INTEGER PRIMARY KEY AUTOINCREMENT{rest}"));
    }
    if primary {
        parts.insert(0, "PRIMARY KEY".to_owned());
    }
    let rest = if parts.is_empty() { String::new() } else { format!(" {}", parts.join(" ")) };
    Ok(format!("{name} {decl}{rest}"))
}

fn constraint_sql(c: &TableConstraint) -> Result<String, MigrateError> {
    let named =
        |n: &Option<Ident>| n.as_ref().map(|n| format!("CONSTRAINT {} ", quote_ident(&n.value))).unwrap_or_default();
    Ok(match c {
        TableConstraint::PrimaryKey { name, columns, .. } => {
            format!("{}PRIMARY KEY ({})", named(name), index_cols(columns)?)
        }
        TableConstraint::Unique { name, columns, .. } => format!("{}UNIQUE ({})", named(name), index_cols(columns)?),
        TableConstraint::ForeignKey {
            name, columns, foreign_table, referred_columns, on_delete, on_update, ..
        } => format!(
            "{}FOREIGN KEY ({}) {}",
            named(name),
            columns.iter().map(|c| quote_ident(&c.value)).collect::<Vec<_>>().join(", "),
            references(foreign_table, referred_columns, on_delete, on_update)?
        ),
        TableConstraint::Check { name, expr, .. } => format!("{}CHECK ({})", named(name), sqlite_expr(expr)?),
        other => return Err(unsupported(format!("table constraint {}", short(other)))),
    })
}

fn exists_table(t: &TableName) -> Step {
    Step::Expect(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1".to_owned(),
        vec![sqlite_name(t).into()],
        SqlError::new("42P01", format!("relation \"{}\" does not exist", t.name)),
    )
}

/// Rewrites relations and expressions of a whole statement for SQLite (DML seeds, views).
fn sqlite_statement(stmt: &Statement) -> Result<String, MigrateError> {
    sqlite_rewrite(stmt)
}

fn translate_sqlite(stmt: &Statement) -> Result<Vec<Step>, MigrateError> {
    Ok(match stmt {
        Statement::CreateTable(ct) => {
            let t = user_table(&ct.name)?;
            let mut items = ct.columns.iter().map(column_sql).collect::<Result<Vec<_>, _>>()?;
            for c in &ct.constraints {
                items.push(constraint_sql(c)?);
            }
            let ine = if ct.if_not_exists { "IF NOT EXISTS " } else { "" };
            vec![Step::Sql(format!("CREATE TABLE {ine}{} ({})", t.sqlite(), items.join(", ")))]
        }
        Statement::AlterTable { name, operations, .. } => {
            let t = user_table(name)?;
            let mut steps = vec![exists_table(&t)];
            for op in operations {
                let step = match op {
                    AlterTableOperation::AddColumn { column_def, .. } => {
                        Step::Sql(format!("ALTER TABLE {} ADD COLUMN {}", t.sqlite(), column_sql(column_def)?))
                    }
                    AlterTableOperation::DropColumn { column_names, .. } => Step::Sql(
                        column_names
                            .iter()
                            .map(|c| format!("ALTER TABLE {} DROP COLUMN {};", t.sqlite(), quote_ident(&c.value)))
                            .collect(),
                    ),
                    AlterTableOperation::RenameColumn { old_column_name, new_column_name } => Step::Sql(format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {}",
                        t.sqlite(),
                        quote_ident(&old_column_name.value),
                        quote_ident(&new_column_name.value)
                    )),
                    AlterTableOperation::RenameTable { table_name: new } => {
                        let new = match new {
                            ast::RenameTableNameKind::As(n) | ast::RenameTableNameKind::To(n) => user_table(n)?,
                        };
                        let (old_n, new_n) = (sqlite_name(&t), sqlite_name(&new));
                        steps.push(Step::Bound(
                            "UPDATE _vb_rls SET table_name = ?2 WHERE table_name = ?1".to_owned(),
                            vec![old_n.clone().into(), new_n.clone().into()],
                        ));
                        steps.push(Step::Bound(
                            "UPDATE _vb_policies SET table_name = ?2 WHERE table_name = ?1".to_owned(),
                            vec![old_n.into(), new_n.into()],
                        ));
                        Step::Sql(format!("ALTER TABLE {} RENAME TO {}", t.sqlite(), new.sqlite()))
                    }
                    AlterTableOperation::EnableRowLevelSecurity => Step::Bound(
                        "INSERT INTO _vb_rls (table_name) VALUES (?1) ON CONFLICT DO NOTHING".to_owned(),
                        vec![sqlite_name(&t).into()],
                    ),
                    AlterTableOperation::DisableRowLevelSecurity => Step::Bound(
                        "DELETE FROM _vb_rls WHERE table_name = ?1".to_owned(),
                        vec![sqlite_name(&t).into()],
                    ),
                    other => return Err(unsupported(format!("ALTER TABLE {} on SQLite", short(other)))),
                };
                steps.push(step);
            }
            steps
        }
        Statement::CreateIndex(ci) => {
            let t = user_table(&ci.table_name)?;
            let name = match &ci.name {
                Some(n) => idents(n)?.last().cloned().unwrap_or_default(),
                None => format!(
                    "{}_{}_idx",
                    t.name,
                    ci.columns.iter().map(|c| c.column.expr.to_string().replace('"', "")).collect::<Vec<_>>().join("_")
                ),
            };
            let mut sql = format!(
                "CREATE {}INDEX {}{} ON {} ({})",
                if ci.unique { "UNIQUE " } else { "" },
                if ci.if_not_exists { "IF NOT EXISTS " } else { "" },
                quote_ident(&name),
                t.sqlite(),
                index_cols(&ci.columns)?
            );
            if let Some(p) = &ci.predicate {
                sql.push_str(&format!(" WHERE {}", sqlite_expr(p)?));
            }
            vec![Step::Sql(sql)]
        }
        Statement::Drop { object_type, if_exists, names, .. } => {
            let ie = if *if_exists { "IF EXISTS " } else { "" };
            let mut steps = Vec::new();
            for n in names {
                match object_type {
                    ObjectType::Table | ObjectType::View => {
                        let t = user_table(n)?;
                        let kind = if *object_type == ObjectType::Table { "TABLE" } else { "VIEW" };
                        steps.push(Step::Sql(format!("DROP {kind} {ie}{}", t.sqlite())));
                        for bookkeeping in ["_vb_rls", "_vb_policies"] {
                            steps.push(Step::Bound(
                                format!("DELETE FROM {bookkeeping} WHERE table_name = ?1"),
                                vec![sqlite_name(&t).into()],
                            ));
                        }
                    }
                    _ => {
                        let name = idents(n)?.last().cloned().unwrap_or_default();
                        steps.push(Step::Sql(format!("DROP INDEX {ie}{}", quote_ident(&name))));
                    }
                }
            }
            steps
        }
        Statement::CreatePolicy { name, table_name: tn, policy_type, command, to, using, with_check } => {
            let t = policy_table(tn)?;
            let command = match command {
                None | Some(CreatePolicyCommand::All) => "all",
                Some(CreatePolicyCommand::Select) => "select",
                Some(CreatePolicyCommand::Insert) => "insert",
                Some(CreatePolicyCommand::Update) => "update",
                Some(CreatePolicyCommand::Delete) => "delete",
            };
            let roles = match to {
                None => "public".to_owned(),
                Some(owners) => owners
                    .iter()
                    .map(|o| match o {
                        Owner::Ident(i) => {
                            let r = i.value.to_lowercase();
                            if ["public", "anon", "authenticated", "service_role"].contains(&r.as_str()) {
                                Ok(r)
                            } else {
                                Err(unsupported(format!("policy role {r}")))
                            }
                        }
                        other => Err(unsupported(format!("policy role {other}"))),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(","),
            };
            let permissive = !matches!(policy_type, Some(CreatePolicyType::Restrictive));
            let using_sql = using.as_ref().map(sqlite_expr).transpose()?;
            let check_sql = with_check.as_ref().map(sqlite_expr).transpose()?;
            let mut steps = vec![exists_table(&t)];
            // The expressions must compile against the table now, not at the first request.
            for e in [&using_sql, &check_sql].into_iter().flatten() {
                steps.push(Step::Probe(format!("SELECT 1 FROM {} WHERE ({e}) LIMIT 0", t.sqlite())));
            }
            steps.push(Step::Bound(
                "INSERT INTO _vb_policies (table_name, name, command, roles, permissive, using_sql, check_sql) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                    .to_owned(),
                vec![
                    sqlite_name(&t).into(),
                    name.value.clone().into(),
                    command.into(),
                    roles.into(),
                    crate::backend::Param::Int(i64::from(permissive)),
                    using_sql.map_or(crate::backend::Param::Null, Into::into),
                    check_sql.map_or(crate::backend::Param::Null, Into::into),
                ],
            ));
            steps
        }
        Statement::DropPolicy { if_exists, name, table_name: tn, .. } => {
            let t = policy_table(tn)?;
            let mut steps = Vec::new();
            if !if_exists {
                steps.push(Step::Expect(
                    "SELECT 1 FROM _vb_policies WHERE table_name = ?1 AND name = ?2".to_owned(),
                    vec![sqlite_name(&t).into(), name.value.clone().into()],
                    SqlError::new(
                        "42704",
                        format!("policy \"{}\" for table \"{}\" does not exist", name.value, t.name),
                    ),
                ));
            }
            steps.push(Step::Bound(
                "DELETE FROM _vb_policies WHERE table_name = ?1 AND name = ?2".to_owned(),
                vec![sqlite_name(&t).into(), name.value.clone().into()],
            ));
            steps
        }
        Statement::Insert(_) | Statement::Update { .. } | Statement::Delete(_) | Statement::CreateView { .. } => {
            vec![Step::Sql(sqlite_statement(stmt)?)]
        }
        // Supabase grants every table to the API roles by default; SQLite has no roles, and RLS is
        // what restricts rows. Extensions that only add uuid functions exist built in.
        Statement::Grant { .. } | Statement::Comment { .. } | Statement::CreateExtension { .. } => vec![],
        Statement::Revoke { .. } => return Err(unsupported("REVOKE on SQLite (use row-level security)")),
        Statement::CreateFunction(_) => return Err(unsupported("CREATE FUNCTION on SQLite")),
        Statement::CreateTrigger { .. } => return Err(unsupported("CREATE TRIGGER on SQLite")),
        Statement::CreateType { .. } => return Err(unsupported("CREATE TYPE on SQLite (use text with a CHECK)")),
        other => return Err(unsupported(format!("statement {}", short(other)))),
    })
}
