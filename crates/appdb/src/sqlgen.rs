//! PostgREST requests → SQL on either backend, run inside one transaction as the request role.
//! Identifiers are validated and quoted; every value is a bound parameter. Responses are JSON built by
//! the database itself (`json_agg` / `json_group_array`).

use std::collections::HashMap;

use crate::backend::{Param, SqlError, Tx};
use crate::rest::{Cond, Embed, Field, IsValue, Op, Operand, OrderTerm, ParseError, Query, Scope, SelectItem};
use crate::{Dialect, RequestAuth, RequestRole, quote_ident};

/// An error in PostgREST's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RestError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub details: Option<String>,
    pub hint: Option<String>,
}

impl RestError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into(), details: None, hint: None }
    }

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = Some(d.into());
        self
    }

    /// A database error, with PostgREST's status for its SQLSTATE.
    pub fn from_sql(e: SqlError, role: RequestRole) -> Self {
        let status = match e.code.as_str() {
            "23505" | "23503" => 409,
            "42501" => {
                if role == RequestRole::Anon {
                    401
                } else {
                    403
                }
            }
            "42P01" | "42883" => 404,
            "25006" => 405,
            c if c.starts_with("22")
                || c.starts_with("23")
                || c.starts_with("42")
                || c.starts_with("54")
                || c == "P0001" =>
            {
                400
            }
            _ => 500,
        };
        if status == 500 {
            tracing::error!(code = %e.code, message = %e.message, "env database error");
        }
        Self { status, code: e.code, message: e.message, details: e.details, hint: e.hint }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code, "message": self.message, "details": self.details, "hint": self.hint})
    }
}

impl From<ParseError> for RestError {
    fn from(e: ParseError) -> Self {
        Self { status: 400, code: e.code.to_owned(), message: e.message, details: e.details, hint: None }
    }
}

impl From<crate::AppDbError> for RestError {
    fn from(e: crate::AppDbError) -> Self {
        tracing::error!(error = %e, "env database unavailable");
        Self::new(503, "PGRST000", "database unavailable")
    }
}

/// How a column's values are represented (SQLite needs this to render JSON and bind values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Real,
    Bool,
    Json,
    Array,
    Text,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// PostgreSQL type (for casts), e.g. `uuid`, `text[]`.
    pub pg_type: String,
}

#[derive(Debug, Clone)]
pub struct Fk {
    pub name: String,
    pub table: String,
    pub columns: Vec<String>,
    pub ref_table: String,
    pub ref_columns: Vec<String>,
}

/// A stored SQLite policy: command, roles (comma-separated), permissive, USING, WITH CHECK.
pub type Policy = (String, String, bool, Option<String>, Option<String>);

#[derive(Debug, Clone)]
pub struct TableMeta {
    pub name: String,
    pub columns: Vec<Column>,
    pub pk: Vec<String>,
    /// FKs from or to this table.
    pub fks: Vec<Fk>,
    /// SQLite: RLS enabled (PostgreSQL enforces RLS itself).
    pub rls: bool,
    /// SQLite: policies (command, roles, permissive, using, check).
    pub policies: Vec<Policy>,
}

impl TableMeta {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

fn kind_of(pg: &str) -> Kind {
    let t = pg.to_lowercase();
    if t.ends_with("[]") || t.contains("_array") {
        Kind::Array
    } else if t.starts_with("json") {
        Kind::Json
    } else if t.starts_with("bool") {
        Kind::Bool
    } else if t.contains("int") && !t.contains("interval") || t.contains("serial") {
        Kind::Int
    } else if t.starts_with("real") || t.starts_with("double") || t.starts_with("float") || t.starts_with("numeric") {
        Kind::Real
    } else {
        Kind::Text
    }
}

/// PostgREST's answer for a table that does not exist.
pub fn table_not_found(table: &str) -> RestError {
    not_found(table)
}

fn not_found(table: &str) -> RestError {
    RestError::new(404, "42P01", format!("relation \"public.{table}\" does not exist"))
}

fn first_text(rows: &[Vec<Option<String>>]) -> Option<String> {
    rows.first().and_then(|r| r.first().cloned().flatten())
}

/// Reads a table's columns, keys, FKs and (SQLite) policies.
pub fn load_meta(tx: &mut Tx<'_>, table: &str) -> Result<TableMeta, RestError> {
    let sqlerr = |e: SqlError| RestError::from_sql(e, RequestRole::ServiceRole);
    match tx.dialect() {
        Dialect::Sqlite => {
            if table.contains('.') || table.starts_with("_vb") || table.starts_with("sqlite_") {
                return Err(not_found(table));
            }
            let exists = tx
                .rows("SELECT 1 FROM sqlite_master WHERE type IN ('table','view') AND name = ?1", &[table.into()])
                .map_err(sqlerr)?;
            if exists.is_empty() {
                return Err(not_found(table));
            }
            let cols = tx
                .rows("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid", &[table.into()])
                .map_err(sqlerr)?;
            let mut columns = Vec::new();
            let mut pk = Vec::new();
            for r in cols {
                let name = r[0].clone().unwrap_or_default();
                let decl = r[1].clone().unwrap_or_default();
                let pg = decl.split(' ').next().unwrap_or("").to_lowercase();
                if r[2].as_deref().is_some_and(|p| p != "0") {
                    pk.push(name.clone());
                }
                columns.push(Column { name, kind: kind_of(&pg), pg_type: pg });
            }
            // Every FK from or to this table, in one query over all tables.
            let rows = tx
                .rows(
                    "SELECT m.name, f.id, f.\"table\", f.\"from\", f.\"to\" FROM sqlite_master AS m, \
                     pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table' AND m.name NOT LIKE '\\_vb%' ESCAPE '\\' \
                     AND (m.name = ?1 OR f.\"table\" = ?1) ORDER BY m.name, f.id, f.seq",
                    &[table.into()],
                )
                .map_err(sqlerr)?;
            let mut fks: Vec<Fk> = Vec::new();
            let mut last: Option<(String, String)> = None;
            for r in rows {
                let t = r[0].clone().unwrap_or_default();
                let id = r[1].clone().unwrap_or_default();
                let from = r[3].clone().unwrap_or_default();
                let to = r[4].clone();
                if last.as_ref() == Some(&(t.clone(), id.clone()))
                    && let Some(fk) = fks.last_mut()
                {
                    fk.columns.push(from);
                    fk.ref_columns.extend(to);
                    continue;
                }
                last = Some((t.clone(), id));
                fks.push(Fk {
                    name: String::new(),
                    table: t,
                    columns: vec![from],
                    ref_table: r[2].clone().unwrap_or_default(),
                    ref_columns: to.into_iter().collect(),
                });
            }
            for fk in &mut fks {
                fk.name = format!("{}_{}_fkey", fk.table, fk.columns.join("_"));
            }
            // REFERENCES t without columns means t's primary key.
            for fk in &mut fks {
                if fk.ref_columns.is_empty() {
                    let pkr = tx
                        .rows(
                            "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
                            &[fk.ref_table.clone().into()],
                        )
                        .map_err(sqlerr)?;
                    fk.ref_columns = pkr.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
                }
            }
            let rls =
                !tx.rows("SELECT 1 FROM _vb_rls WHERE table_name = ?1", &[table.into()]).map_err(sqlerr)?.is_empty();
            let policies = tx
                .rows(
                    "SELECT command, roles, permissive, using_sql, check_sql FROM _vb_policies WHERE table_name = ?1 ORDER BY name",
                    &[table.into()],
                )
                .map_err(sqlerr)?
                .into_iter()
                .map(|r| {
                    (
                        r[0].clone().unwrap_or_default(),
                        r[1].clone().unwrap_or_default(),
                        r[2].as_deref() == Some("1"),
                        r[3].clone(),
                        r[4].clone(),
                    )
                })
                .collect();
            Ok(TableMeta { name: table.to_owned(), columns, pk, fks, rls, policies })
        }
        Dialect::Postgres => {
            let cols = tx
                .rows(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                     CASE WHEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary AND a.attnum = ANY(i.indkey)) THEN '1' ELSE '0' END \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                     WHERE n.nspname = 'public' AND c.relname = $1::text AND c.relkind IN ('r','v','p','m') ORDER BY a.attnum",
                    &[table.into()],
                )
                .map_err(sqlerr)?;
            if cols.is_empty() {
                return Err(not_found(table));
            }
            let mut columns = Vec::new();
            let mut pk = Vec::new();
            for r in cols {
                let name = r[0].clone().unwrap_or_default();
                let pg = r[1].clone().unwrap_or_default();
                if r[2].as_deref() == Some("1") {
                    pk.push(name.clone());
                }
                columns.push(Column { name, kind: kind_of(&pg), pg_type: pg });
            }
            let fk_rows = tx
                .rows(
                    "SELECT con.conname::text, cl.relname::text, rcl.relname::text, \
                     (SELECT json_agg(a.attname ORDER BY k.i)::text FROM unnest(con.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n), \
                     (SELECT json_agg(a.attname ORDER BY k.i)::text FROM unnest(con.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n) \
                     FROM pg_constraint con JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_class rcl ON rcl.oid = con.confrelid \
                     JOIN pg_namespace n ON n.oid = cl.relnamespace JOIN pg_namespace rn ON rn.oid = rcl.relnamespace \
                     WHERE con.contype = 'f' AND n.nspname = 'public' AND rn.nspname = 'public' AND (cl.relname = $1::text OR rcl.relname = $1::text)",
                    &[table.into()],
                )
                .map_err(sqlerr)?;
            let list = |s: &Option<String>| -> Vec<String> {
                s.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
            };
            let fks = fk_rows
                .iter()
                .map(|r| Fk {
                    name: r[0].clone().unwrap_or_default(),
                    table: r[1].clone().unwrap_or_default(),
                    ref_table: r[2].clone().unwrap_or_default(),
                    columns: list(&r[3]),
                    ref_columns: list(&r[4]),
                })
                .collect();
            Ok(TableMeta { name: table.to_owned(), columns, pk, fks, rls: false, policies: vec![] })
        }
    }
}

/// Which statement a policy filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Select,
    Insert,
    Update,
    Delete,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// The SQLite policy expression for `cmd` (`using` = false → WITH CHECK), or None when RLS does not
/// apply. Permissive policies are OR-ed, restrictive ones AND-ed; none at all → no row.
pub fn policy_sql(meta: &TableMeta, auth: &RequestAuth, cmd: Cmd, using: bool) -> Option<String> {
    if !meta.rls || auth.role == RequestRole::ServiceRole {
        return None;
    }
    let role = auth.role.name();
    let mut permissive = Vec::new();
    let mut restrictive = Vec::new();
    for (command, roles, perm, using_sql, check_sql) in &meta.policies {
        if command != "all" && command != cmd.name() {
            continue;
        }
        if !roles.split(',').any(|r| r == "public" || r == role) {
            continue;
        }
        let expr = if using { using_sql.clone() } else { check_sql.clone().or_else(|| using_sql.clone()) };
        // A policy without the clause the command needs allows every row for it.
        let e = expr.unwrap_or_else(|| "1".to_owned());
        if *perm {
            permissive.push(format!("({e})"));
        } else {
            restrictive.push(format!("({e})"));
        }
    }
    if permissive.is_empty() {
        return Some("0".to_owned());
    }
    let mut s = format!("({})", permissive.join(" OR "));
    for r in restrictive {
        s.push_str(&format!(" AND {r}"));
    }
    Some(s)
}

/// The SQLite policy filter (as [`policy_sql`]) of a table outside `public`, such as
/// `"storage.objects"`, for code that queries it through [`crate::AppDbs::with_conn`]. The expressions
/// name the table's columns unqualified. `None` on PostgreSQL (the engine applies RLS itself), when
/// RLS is off for the table, and for `service_role`.
pub fn stored_policy(
    conn: &mut dyn store::Conn,
    table: &str,
    auth: &RequestAuth,
    cmd: Cmd,
    using: bool,
) -> Result<Option<String>, store::StoreError> {
    if conn.dialect() == Dialect::Postgres || auth.role == RequestRole::ServiceRole {
        return Ok(None);
    }
    let rls = conn.query_opt("SELECT 1 FROM _vb_rls WHERE table_name = $1", &[table.into()])?.is_some();
    let mut policies = Vec::new();
    for r in conn.query(
        "SELECT command, roles, permissive, using_sql, check_sql FROM _vb_policies WHERE table_name = $1 ORDER BY name",
        &[table.into()],
    )? {
        policies.push((r.text(0)?, r.text(1)?, r.int(2)? == 1, r.opt_text(3)?, r.opt_text(4)?));
    }
    let meta = TableMeta { name: table.to_owned(), columns: vec![], pk: vec![], fks: vec![], rls, policies };
    Ok(policy_sql(&meta, auth, cmd, using))
}

/// Builds SQL text and its parameters.
pub struct Builder<'a> {
    pub dialect: Dialect,
    pub params: Vec<Param>,
    pub auth: &'a RequestAuth,
    metas: HashMap<String, TableMeta>,
    alias_n: usize,
}

impl<'a> Builder<'a> {
    pub fn new(dialect: Dialect, auth: &'a RequestAuth) -> Self {
        Self { dialect, params: Vec::new(), auth, metas: HashMap::new(), alias_n: 0 }
    }

    pub fn meta(&mut self, tx: &mut Tx<'_>, table: &str) -> Result<TableMeta, RestError> {
        if let Some(m) = self.metas.get(table) {
            return Ok(m.clone());
        }
        let m = load_meta(tx, table)?;
        self.metas.insert(table.to_owned(), m.clone());
        Ok(m)
    }

    pub fn alias(&mut self) -> String {
        self.alias_n += 1;
        format!("_vb_t{}", self.alias_n)
    }

    /// A bound parameter; on PostgreSQL cast to `pg_type` when given.
    pub fn bind(&mut self, p: Param, pg_type: Option<&str>) -> String {
        self.params.push(p);
        let n = self.params.len();
        match self.dialect {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => match pg_type {
                Some(t) => format!("CAST(${n}::text AS {t})"),
                None => format!("${n}::text"),
            },
        }
    }

    /// A value for a column of `kind` from its text form in a URL.
    fn url_value(&mut self, v: &str, col: Option<&Column>) -> String {
        match (self.dialect, col) {
            (Dialect::Sqlite, Some(c)) if c.kind == Kind::Bool => {
                let p = match v.to_lowercase().as_str() {
                    "true" | "t" | "1" | "yes" | "on" => Param::Int(1),
                    "false" | "f" | "0" | "no" | "off" => Param::Int(0),
                    _ => Param::Text(v.to_owned()),
                };
                self.bind(p, None)
            }
            (Dialect::Sqlite, _) => self.bind(Param::Text(v.to_owned()), None),
            (Dialect::Postgres, Some(c)) => {
                let t = c.pg_type.clone();
                self.bind(Param::Text(v.to_owned()), Some(&t))
            }
            (Dialect::Postgres, None) => self.bind(Param::Text(v.to_owned()), None),
        }
    }

    /// The SQL for a field (with JSON path) of the table under `alias`.
    fn field_sql(&mut self, alias: &str, meta: &TableMeta, f: &Field) -> Result<String, RestError> {
        if meta.column(&f.column).is_none() {
            return Err(RestError::new(400, "42703", format!("column {}.{} does not exist", meta.name, f.column)));
        }
        let mut s = format!("{}.{}", quote_ident(alias), quote_ident(&f.column));
        for step in &f.path {
            let op = if step.text { "->>" } else { "->" };
            let key = if step.key.chars().all(|c| c.is_ascii_digit()) && step.key.len() < 10 {
                step.key.clone()
            } else {
                match self.dialect {
                    Dialect::Sqlite => self.bind(Param::Text(step.key.clone()), None),
                    Dialect::Postgres => self.bind(Param::Text(step.key.clone()), None),
                }
            };
            s = match self.dialect {
                Dialect::Postgres => format!("({s}::jsonb {op} {key})"),
                Dialect::Sqlite if key.starts_with('?') => format!("({s} {op} ('$.\"' || {key} || '\"'))"),
                Dialect::Sqlite => format!("({s} {op} {key})"),
            };
        }
        Ok(s)
    }

    fn cond_sql(&mut self, alias: &str, meta: &TableMeta, c: &Cond) -> Result<String, RestError> {
        match c {
            Cond::And { negated, items } | Cond::Or { negated, items } => {
                let joiner = if matches!(c, Cond::And { .. }) { " AND " } else { " OR " };
                let parts = items.iter().map(|i| self.cond_sql(alias, meta, i)).collect::<Result<Vec<_>, _>>()?;
                let inner = if parts.is_empty() {
                    if joiner == " AND " { "1=1".to_owned() } else { "1=0".to_owned() }
                } else {
                    parts.join(joiner)
                };
                Ok(if *negated { format!("NOT ({inner})") } else { format!("({inner})") })
            }
            Cond::Leaf { field, op, negated, operand } => {
                let mut lhs = self.field_sql(alias, meta, field)?;
                let json_path = !field.path.is_empty();
                let text_path = field.path.last().is_some_and(|p| p.text);
                let col = if json_path { None } else { meta.column(&field.column).cloned() };
                if self.dialect == Dialect::Sqlite && text_path {
                    lhs = format!("CAST({lhs} AS TEXT)");
                }
                if self.dialect == Dialect::Postgres && json_path && !text_path {
                    // Compare JSON with JSON.
                    lhs = format!("({lhs})");
                }
                let sql = match (op, operand) {
                    (Op::Is, Operand::Is(v)) => match v {
                        IsValue::Null => format!("{lhs} IS NULL"),
                        IsValue::NotNull => format!("{lhs} IS NOT NULL"),
                        IsValue::True => format!("{lhs} IS TRUE"),
                        IsValue::False => format!("{lhs} IS FALSE"),
                        IsValue::Unknown => format!("{lhs} IS NULL"),
                    },
                    (Op::In, Operand::List(list)) => {
                        if list.is_empty() {
                            "1=0".to_owned()
                        } else {
                            let vals = list
                                .iter()
                                .map(|v| self.json_or_value(v, col.as_ref(), json_path && !text_path))
                                .collect::<Vec<_>>();
                            format!("{lhs} IN ({})", vals.join(", "))
                        }
                    }
                    (Op::Like | Op::Ilike, Operand::Value(v)) => {
                        let p = self.bind(Param::Text(v.clone()), None);
                        match (self.dialect, op) {
                            (Dialect::Postgres, Op::Like) => format!("{lhs}::text LIKE {p}"),
                            (Dialect::Postgres, _) => format!("{lhs}::text ILIKE {p}"),
                            (Dialect::Sqlite, Op::Ilike) => format!("{lhs} LIKE {p} ESCAPE '\\'"),
                            // SQLite's LIKE ignores case; GLOB does not.
                            (Dialect::Sqlite, _) => {
                                self.params.pop();
                                let g = self.bind(Param::Text(like_to_glob(v)), None);
                                format!("{lhs} GLOB {g}")
                            }
                        }
                    }
                    (Op::Cs | Op::Cd, Operand::Value(v)) => self.contains_sql(&lhs, v, col.as_ref(), *op == Op::Cs)?,
                    (Op::Eq | Op::Neq | Op::Gt | Op::Gte | Op::Lt | Op::Lte, Operand::Value(v)) => {
                        let sym = match op {
                            Op::Eq => "=",
                            Op::Neq => "<>",
                            Op::Gt => ">",
                            Op::Gte => ">=",
                            Op::Lt => "<",
                            _ => "<=",
                        };
                        let rhs = self.json_or_value(v, col.as_ref(), json_path && !text_path);
                        format!("{lhs} {sym} {rhs}")
                    }
                    _ => return Err(RestError::new(400, "PGRST100", "operator and operand do not match")),
                };
                Ok(if *negated { format!("NOT ({sql})") } else { sql })
            }
        }
    }

    fn json_or_value(&mut self, v: &str, col: Option<&Column>, json: bool) -> String {
        if json {
            match self.dialect {
                Dialect::Postgres => self.bind(Param::Text(v.to_owned()), Some("jsonb")),
                Dialect::Sqlite => {
                    let p = self.bind(Param::Text(v.to_owned()), None);
                    format!("json({p})")
                }
            }
        } else {
            self.url_value(v, col)
        }
    }

    fn contains_sql(&mut self, lhs: &str, v: &str, col: Option<&Column>, contains: bool) -> Result<String, RestError> {
        let op = if contains { "@>" } else { "<@" };
        match self.dialect {
            Dialect::Postgres => {
                let t = col.map_or("jsonb".to_owned(), |c| c.pg_type.clone());
                let p = self.bind(Param::Text(v.to_owned()), Some(&t));
                Ok(format!("{lhs} {op} {p}"))
            }
            Dialect::Sqlite => {
                // Arrays are JSON arrays on SQLite; `{a,b}` is PostgreSQL's array literal.
                let list: Vec<serde_json::Value> =
                    if let Some(inner) = v.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                        if inner.trim().is_empty() {
                            vec![]
                        } else if inner.trim_start().starts_with('"')
                            && serde_json::from_str::<serde_json::Value>(v).is_ok()
                        {
                            return Err(RestError::new(
                                400,
                                "PGRST100",
                                "containment of JSON objects is not supported on this backend",
                            ));
                        } else {
                            inner
                                .split(',')
                                .map(|s| serde_json::Value::String(s.trim().trim_matches('"').to_owned()))
                                .collect()
                        }
                    } else if let Ok(serde_json::Value::Array(a)) = serde_json::from_str(v) {
                        a
                    } else {
                        return Err(RestError::new(400, "PGRST100", "cs and cd take an array ({a,b} or a JSON array)"));
                    };
                let numeric = col.is_some_and(|c| c.pg_type.starts_with("int") || c.pg_type.starts_with("bigint"));
                let list: Vec<serde_json::Value> = list
                    .into_iter()
                    .map(|x| match (&x, numeric) {
                        (serde_json::Value::String(s), true) => {
                            s.parse::<i64>().map(serde_json::Value::from).unwrap_or(x.clone())
                        }
                        _ => x,
                    })
                    .collect();
                let p = self.bind(Param::Text(serde_json::Value::Array(list).to_string()), None);
                Ok(if contains {
                    format!(
                        "NOT EXISTS (SELECT 1 FROM json_each({p}) AS _vb_v WHERE _vb_v.value NOT IN (SELECT value FROM json_each({lhs})))"
                    )
                } else {
                    format!(
                        "NOT EXISTS (SELECT 1 FROM json_each({lhs}) AS _vb_v WHERE _vb_v.value NOT IN (SELECT value FROM json_each({p})))"
                    )
                })
            }
        }
    }

    /// WHERE conditions for a scope plus RLS (SQLite), for the table under `alias`.
    pub fn where_sql(
        &mut self,
        alias: &str,
        meta: &TableMeta,
        scope: Option<&Scope>,
        cmd: Cmd,
    ) -> Result<Vec<String>, RestError> {
        let mut out = Vec::new();
        if let Some(s) = scope {
            for c in &s.conds {
                out.push(self.cond_sql(alias, meta, c)?);
            }
        }
        if self.dialect == Dialect::Sqlite
            && let Some(p) = policy_sql(meta, self.auth, cmd, true)
        {
            // Correlated on the rowid, so a read of a few rows checks a few rows (an `IN (SELECT …)`
            // would evaluate the policy over the whole table first). Inside, the policy's
            // unqualified columns and the table's own name refer to the row being checked.
            let t = quote_ident(&meta.name);
            out.push(format!("EXISTS (SELECT 1 FROM {t} WHERE {t}.rowid = {}.rowid AND ({p}))", quote_ident(alias)));
        }
        Ok(out)
    }

    pub fn order_sql(&mut self, alias: &str, meta: &TableMeta, order: &[OrderTerm]) -> Result<String, RestError> {
        if order.is_empty() {
            return Ok(String::new());
        }
        let mut terms = Vec::new();
        for t in order {
            let mut s = self.field_sql(alias, meta, &t.field)?;
            s.push_str(if t.desc { " DESC" } else { " ASC" });
            match t.nulls_first {
                Some(true) => s.push_str(" NULLS FIRST"),
                Some(false) => s.push_str(" NULLS LAST"),
                None => {}
            }
            terms.push(s);
        }
        Ok(format!(" ORDER BY {}", terms.join(", ")))
    }

    /// The JSON object expression for one row of `meta` under `alias`, with embeds.
    #[allow(clippy::too_many_arguments)]
    pub fn object_sql(
        &mut self,
        tx: &mut Tx<'_>,
        alias: &str,
        meta: &TableMeta,
        select: &[SelectItem],
        query: &Query,
        path: &str,
        inner_conds: &mut Vec<String>,
    ) -> Result<String, RestError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for item in select {
            match item {
                SelectItem::Star => {
                    for c in &meta.columns {
                        let v = self.output_value(&format!("{}.{}", quote_ident(alias), quote_ident(&c.name)), c.kind);
                        pairs.push((c.name.clone(), v));
                    }
                }
                SelectItem::Field { alias: a, field, cast } => {
                    let mut v = self.field_sql(alias, meta, field)?;
                    let kind = if field.path.is_empty() {
                        meta.column(&field.column).map_or(Kind::Text, |c| c.kind)
                    } else if field.path.last().is_some_and(|p| p.text) {
                        Kind::Text
                    } else {
                        Kind::Json
                    };
                    let kind = match cast {
                        Some(t) => {
                            let (sql_t, k) = cast_target(self.dialect, t);
                            v = format!("CAST({v} AS {sql_t})");
                            k
                        }
                        None => kind,
                    };
                    let name = a.clone().unwrap_or_else(|| field.output_name().to_owned());
                    pairs.push((name, self.output_value(&v, kind)));
                }
                SelectItem::Embed(e) => {
                    let (name, sql) = self.embed_sql(tx, alias, meta, e, query, path, inner_conds)?;
                    pairs.push((name, sql));
                }
            }
        }
        Ok(self.build_object(pairs))
    }

    fn output_value(&self, v: &str, kind: Kind) -> String {
        match (self.dialect, kind) {
            (Dialect::Sqlite, Kind::Bool) => {
                format!("CASE WHEN {v} IS NULL THEN NULL WHEN {v} THEN json('true') ELSE json('false') END")
            }
            (Dialect::Sqlite, Kind::Json | Kind::Array) => {
                format!("CASE WHEN json_valid({v}) THEN json({v}) ELSE {v} END")
            }
            _ => v.to_owned(),
        }
    }

    fn build_object(&mut self, pairs: Vec<(String, String)>) -> String {
        let mut chunks = Vec::new();
        for chunk in pairs.chunks(50) {
            let args = chunk
                .iter()
                .map(|(k, v)| {
                    let key = self.bind(Param::Text(k.clone()), None);
                    format!("{key}, {v}")
                })
                .collect::<Vec<_>>()
                .join(", ");
            chunks.push(match self.dialect {
                Dialect::Sqlite => format!("json_object({args})"),
                Dialect::Postgres => format!("json_build_object({args})"),
            });
        }
        match (self.dialect, chunks.len()) {
            (_, 0) => match self.dialect {
                Dialect::Sqlite => "json_object()".to_owned(),
                Dialect::Postgres => "json_build_object()".to_owned(),
            },
            (_, 1) => chunks.remove(0),
            (Dialect::Postgres, _) => {
                format!("({})::json", chunks.iter().map(|c| format!("{c}::jsonb")).collect::<Vec<_>>().join(" || "))
            }
            (Dialect::Sqlite, _) => chunks.join(" || "),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn embed_sql(
        &mut self,
        tx: &mut Tx<'_>,
        parent_alias: &str,
        parent: &TableMeta,
        e: &Embed,
        query: &Query,
        path: &str,
        inner_conds: &mut Vec<String>,
    ) -> Result<(String, String), RestError> {
        let child = self.meta(tx, &e.relation).map_err(|_| {
            RestError::new(
                400,
                "PGRST200",
                format!("Could not find a relationship between '{}' and '{}'", parent.name, e.relation),
            )
        })?;
        // Many-to-one: the parent holds the FK; one-to-many: the child does.
        let mut candidates: Vec<(Fk, bool)> = Vec::new();
        for fk in &parent.fks {
            if fk.table == parent.name && fk.ref_table == child.name {
                candidates.push((fk.clone(), true));
            }
            if fk.table == child.name
                && fk.ref_table == parent.name
                && !(fk.table == fk.ref_table && candidates.iter().any(|(c, _)| c.name == fk.name))
            {
                candidates.push((fk.clone(), false));
            }
        }
        if let Some(h) = &e.hint {
            candidates.retain(|(fk, _)| fk.name == *h || fk.columns.iter().any(|c| c == h));
        }
        // Many-to-many through a junction table with FKs to both, when there is no direct FK.
        let mut junctions: Vec<(TableMeta, Fk, Fk)> = Vec::new();
        if candidates.is_empty() {
            for to_parent in parent
                .fks
                .iter()
                .filter(|f| f.ref_table == parent.name && f.table != parent.name && f.table != child.name)
            {
                let Ok(j) = self.meta(tx, &to_parent.table) else { continue };
                for to_child in j.fks.iter().filter(|f| f.table == j.name && f.ref_table == child.name) {
                    if e.hint.as_ref().is_none_or(|h| *h == j.name) {
                        junctions.push((j.clone(), to_parent.clone(), to_child.clone()));
                    }
                }
            }
        }
        let name = e.alias.clone().unwrap_or_else(|| e.relation.clone());
        let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        let scope = query.scopes.get(&child_path).cloned();
        let ca = self.alias();
        let eq = |a: &str, x: &str, b: &str, y: &str| {
            format!("{}.{} = {}.{}", quote_ident(a), quote_ident(x), quote_ident(b), quote_ident(y))
        };
        let (join, to_one): (Vec<String>, bool) = if candidates.is_empty() && junctions.len() == 1 {
            let (j, to_parent, to_child) = junctions.remove(0);
            let ja = self.alias();
            let mut conds: Vec<String> =
                to_child.columns.iter().zip(&to_child.ref_columns).map(|(c, r)| eq(&ja, c, &ca, r)).collect();
            conds
                .extend(to_parent.columns.iter().zip(&to_parent.ref_columns).map(|(c, r)| eq(&ja, c, parent_alias, r)));
            conds.extend(self.where_sql(&ja, &j, None, Cmd::Select)?);
            (
                vec![format!(
                    "EXISTS (SELECT 1 FROM {} AS {} WHERE {})",
                    quote_ident(&j.name),
                    quote_ident(&ja),
                    conds.join(" AND ")
                )],
                false,
            )
        } else {
            if candidates.is_empty() && junctions.len() > 1 {
                return Err(RestError::new(
                    300,
                    "PGRST201",
                    format!(
                        "Could not embed because more than one relationship was found for '{}' and '{}'",
                        parent.name, e.relation
                    ),
                )
                .details(junctions.iter().map(|(j, _, _)| j.name.clone()).collect::<Vec<_>>().join(", ")));
            }
            let (fk, to_one) = match candidates.len() {
                0 => {
                    return Err(RestError::new(
                        400,
                        "PGRST200",
                        format!(
                            "Could not find a relationship between '{}' and '{}' in the schema cache",
                            parent.name, e.relation
                        ),
                    ));
                }
                1 => candidates.remove(0),
                _ => {
                    return Err(RestError::new(
                        300,
                        "PGRST201",
                        format!(
                            "Could not embed because more than one relationship was found for '{}' and '{}'",
                            parent.name, e.relation
                        ),
                    )
                    .details(candidates.iter().map(|(f, _)| f.name.clone()).collect::<Vec<_>>().join(", ")));
                }
            };
            let join = if to_one {
                fk.columns.iter().zip(&fk.ref_columns).map(|(c, r)| eq(&ca, r, parent_alias, c)).collect()
            } else {
                fk.columns.iter().zip(&fk.ref_columns).map(|(c, r)| eq(&ca, c, parent_alias, r)).collect()
            };
            (join, to_one)
        };
        let mut nested_inner = Vec::new();
        let obj = self.object_sql(tx, &ca, &child, &e.select, query, &child_path, &mut nested_inner)?;
        let mut conds = join;
        conds.extend(self.where_sql(&ca, &child, scope.as_ref(), Cmd::Select)?);
        conds.extend(nested_inner);
        let where_ = format!(" WHERE {}", conds.join(" AND "));
        let from = format!("{} AS {}", quote_ident(&child.name), quote_ident(&ca));
        if e.inner {
            inner_conds.push(format!("EXISTS (SELECT 1 FROM {from}{where_})"));
        }
        let sql = if to_one {
            format!("(SELECT {obj} FROM {from}{where_} LIMIT 1)")
        } else {
            let order = match &scope {
                Some(s) => self.order_sql(&ca, &child, &s.order)?,
                None => String::new(),
            };
            let paging = scope.as_ref().map(|s| paging_sql(s.limit, s.offset)).unwrap_or_default();
            match self.dialect {
                Dialect::Sqlite => format!(
                    "(SELECT coalesce(json_group_array(json(_vb_o)), json_array()) FROM (SELECT {obj} AS _vb_o FROM {from}{where_}{order}{paging}))"
                ),
                Dialect::Postgres => format!(
                    "(SELECT coalesce(json_agg(_vb_o), '[]'::json) FROM (SELECT {obj} AS _vb_o FROM {from}{where_}{order}{paging}) AS _vb_e)"
                ),
            }
        };
        let sql = match self.dialect {
            Dialect::Sqlite if to_one => format!("json({sql})"),
            Dialect::Sqlite => format!("json({sql})"),
            Dialect::Postgres => sql,
        };
        Ok((name, sql))
    }
}

pub fn paging_sql(limit: Option<u64>, offset: Option<u64>) -> String {
    let mut s = String::new();
    match (limit, offset) {
        (Some(l), _) => s.push_str(&format!(" LIMIT {l}")),
        (None, Some(_)) => s.push_str(" LIMIT -1"),
        (None, None) => {}
    }
    if let Some(o) = offset {
        s.push_str(&format!(" OFFSET {o}"));
    }
    s
}

fn cast_target(dialect: Dialect, t: &str) -> (&'static str, Kind) {
    let kind = kind_of(t);
    match dialect {
        Dialect::Postgres => (
            match t {
                "text" => "text",
                "int" | "integer" | "int4" => "integer",
                "bigint" | "int8" => "bigint",
                "smallint" => "smallint",
                "numeric" => "numeric",
                "real" => "real",
                "double precision" | "float8" => "double precision",
                "boolean" | "bool" => "boolean",
                "json" => "json",
                "jsonb" => "jsonb",
                "date" => "date",
                "timestamptz" => "timestamptz",
                "timestamp" => "timestamp",
                "uuid" => "uuid",
                _ => "text",
            },
            kind,
        ),
        Dialect::Sqlite => match kind {
            Kind::Int | Kind::Bool => ("INTEGER", kind),
            Kind::Real => ("REAL", kind),
            Kind::Json | Kind::Array | Kind::Text => ("TEXT", if kind == Kind::Text { Kind::Text } else { Kind::Json }),
        },
    }
}

/// A LIKE pattern as a GLOB pattern (`%` → `*`, `_` → `?`, GLOB's own metacharacters escaped).
fn like_to_glob(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '%' => out.push('*'),
            '_' => out.push('?'),
            '*' => out.push_str("[*]"),
            '?' => out.push_str("[?]"),
            '[' => out.push_str("[[]"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON body value as a parameter for a column.
pub fn body_param(v: &serde_json::Value, col: &Column, dialect: Dialect) -> Param {
    match v {
        serde_json::Value::Null => Param::Null,
        serde_json::Value::Bool(b) => match dialect {
            Dialect::Sqlite => Param::Int(i64::from(*b)),
            Dialect::Postgres => Param::Text(b.to_string()),
        },
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Param::Int(i),
            (None, Some(f)) => Param::Real(f),
            _ => Param::Text(n.to_string()),
        },
        serde_json::Value::String(s) => {
            if dialect == Dialect::Sqlite && col.kind == Kind::Bool {
                match s.as_str() {
                    "true" | "t" => return Param::Int(1),
                    "false" | "f" => return Param::Int(0),
                    _ => {}
                }
            }
            if dialect == Dialect::Sqlite && col.kind == Kind::Json {
                // A JSON string value of a json column is stored as JSON text.
                return Param::Text(v.to_string());
            }
            Param::Text(s.clone())
        }
        serde_json::Value::Array(a) if dialect == Dialect::Postgres && col.kind == Kind::Array => {
            Param::Text(pg_array_literal(a))
        }
        other => Param::Text(other.to_string()),
    }
}

/// A JSON array as PostgreSQL's array literal (`{"a","b"}`).
pub(crate) fn pg_array_literal(a: &[serde_json::Value]) -> String {
    let items: Vec<String> = a
        .iter()
        .map(|v| match v {
            serde_json::Value::Null => "NULL".to_owned(),
            serde_json::Value::String(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            serde_json::Value::Array(inner) => pg_array_literal(inner),
            other => format!("\"{}\"", other.to_string().replace('\\', "\\\\").replace('"', "\\\"")),
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

pub(crate) fn first(rows: &[Vec<Option<String>>]) -> Option<String> {
    first_text(rows)
}
