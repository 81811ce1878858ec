//! The PostgREST data API: one request → one transaction on the env's database as the request role.

use protocol::EnvId;
use serde_json::Value as Json;

use crate::backend::{Param, Role, Tx};
use crate::rest::{Query, Scope, parse_query};
use crate::sqlgen::{Builder, Cmd, RestError, TableMeta, body_param, first, paging_sql, policy_sql};
use crate::{AppDbs, Dialect, RequestAuth, quote_ident};

/// HTTP methods the data API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Patch,
    Delete,
}

/// A data-API request, already authenticated.
#[derive(Debug, Clone)]
pub struct RestRequest {
    pub method: Method,
    /// The table (the path after `/rest/v1/`).
    pub table: String,
    /// The raw query string.
    pub query: String,
    pub prefer: Option<String>,
    pub accept: Option<String>,
    pub range: Option<String>,
    pub body: Vec<u8>,
}

/// The answer, and what it cost (for the meters).
#[derive(Debug, Clone)]
pub struct RestResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub rows_read: i64,
    pub rows_written: i64,
}

impl RestResponse {
    pub fn error(e: &RestError) -> Self {
        Self {
            status: e.status,
            headers: vec![("content-type", "application/json; charset=utf-8".to_owned())],
            body: e.body().to_string(),
            rows_read: 0,
            rows_written: 0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Prefs {
    representation: bool,
    count: bool,
    merge: bool,
    ignore: bool,
    missing_default: bool,
}

fn prefs(h: Option<&str>) -> Prefs {
    let mut p = Prefs::default();
    for item in h.unwrap_or("").split(',').map(str::trim) {
        match item {
            "return=representation" => p.representation = true,
            "count=exact" | "count=planned" | "count=estimated" => p.count = true,
            "resolution=merge-duplicates" => p.merge = true,
            "resolution=ignore-duplicates" => p.ignore = true,
            "missing=default" => p.missing_default = true,
            _ => {}
        }
    }
    p
}

/// `Range: 0-9` → (offset, limit).
fn range(h: Option<&str>) -> Result<(Option<u64>, Option<u64>), RestError> {
    let Some(h) = h else { return Ok((None, None)) };
    let spec = h.trim().strip_prefix("items=").unwrap_or(h.trim());
    let (a, b) =
        spec.split_once('-').ok_or_else(|| RestError::new(416, "PGRST103", "Requested range not satisfiable"))?;
    let from: u64 = a.trim().parse().map_err(|_| RestError::new(416, "PGRST103", "Requested range not satisfiable"))?;
    if b.trim().is_empty() {
        return Ok((Some(from), None));
    }
    let to: u64 = b.trim().parse().map_err(|_| RestError::new(416, "PGRST103", "Requested range not satisfiable"))?;
    if to < from {
        return Err(RestError::new(416, "PGRST103", "Requested range not satisfiable"));
    }
    Ok((Some(from), Some(to - from + 1)))
}

fn singular(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/vnd.pgrst.object"))
}

/// Most rows one read returns, whatever limit the client asks for (Supabase's default `max_rows`).
pub const MAX_ROWS: u64 = 1000;

struct Outcome {
    status: u16,
    json: Option<String>,
    rows: i64,
    written: i64,
    total: Option<i64>,
    offset: u64,
}

impl AppDbs {
    /// Answers one PostgREST request for `env` as `auth`.
    pub async fn rest(&self, env: &EnvId, auth: RequestAuth, req: RestRequest) -> RestResponse {
        match self.rest_inner(env, auth, req).await {
            Ok(r) => r,
            Err(e) => RestResponse::error(&e),
        }
    }

    async fn rest_inner(&self, env: &EnvId, auth: RequestAuth, req: RestRequest) -> Result<RestResponse, RestError> {
        let table = crate::rest::ident(&crate::rest::percent_decode(&req.table)?)?;
        let query = parse_query(&req.query)?;
        let prefs = prefs(req.prefer.as_deref());
        let one = singular(req.accept.as_deref());
        let body: Option<Json> = match req.method {
            Method::Post | Method::Patch => Some(
                serde_json::from_slice(&req.body)
                    .map_err(|e| RestError::new(400, "PGRST102", "Empty or invalid json").details(e.to_string()))?,
            ),
            _ => None,
        };
        let (r_off, r_lim) =
            if matches!(req.method, Method::Get | Method::Head) { range(req.range.as_deref())? } else { (None, None) };
        // An env that never ran a migration has no tables (and gets no database for asking).
        if !self.exists(env).await? {
            return Err(crate::sqlgen::table_not_found(&table));
        }
        let method = req.method;
        let out = self
            .run(env, move |db| {
                db.tx(&Role::Request(auth.clone()), |tx: &mut Tx<'_>| {
                    let out = match method {
                        Method::Get | Method::Head => read(tx, &auth, &table, &query, &prefs, r_off, r_lim),
                        Method::Post => insert(tx, &auth, &table, &query, &prefs, body.unwrap_or(Json::Null)),
                        Method::Patch => update(tx, &auth, &table, &query, &prefs, body.unwrap_or(Json::Null)),
                        Method::Delete => delete(tx, &auth, &table, &query, &prefs),
                    }?;
                    if one && out.json.is_some() && out.rows != 1 {
                        // Rolls the whole statement back, as PostgREST does.
                        return Err(RestError::new(
                            406,
                            "PGRST116",
                            "JSON object requested, multiple (or no) rows returned",
                        )
                        .details(format!("The result contains {} rows", out.rows)));
                    }
                    Ok(out)
                })
            })
            .await?;
        let mut headers = Vec::new();
        let body = match out.json {
            Some(j) if one => {
                headers.push(("content-type", "application/vnd.pgrst.object+json; charset=utf-8".to_owned()));
                let v: Json = serde_json::from_str(&j).unwrap_or(Json::Null);
                v.get(0).cloned().unwrap_or(Json::Null).to_string()
            }
            Some(j) => {
                headers.push(("content-type", "application/json; charset=utf-8".to_owned()));
                j
            }
            None => String::new(),
        };
        let total = out.total.map_or("*".to_owned(), |t| t.to_string());
        let range_h = if out.rows == 0 {
            format!("*/{total}")
        } else {
            format!("{}-{}/{total}", out.offset, out.offset + out.rows as u64 - 1)
        };
        headers.push(("content-range", range_h));
        let mut status = out.status;
        if status == 200
            && matches!(method, Method::Get | Method::Head)
            && let Some(t) = out.total
            && (out.offset > 0 || (out.rows as u64 + out.offset) < t as u64)
        {
            status = 206;
        }
        if let (Some(t), true) = (out.total, out.offset > 0 && out.rows == 0)
            && out.offset >= t as u64
            && t > 0
        {
            return Err(RestError::new(416, "PGRST103", "Requested range not satisfiable")
                .details(format!("An offset of {} was requested, but there are only {t} rows.", out.offset)));
        }
        if prefs.merge || prefs.ignore {
            let p = if prefs.merge { "resolution=merge-duplicates" } else { "resolution=ignore-duplicates" };
            headers.push(("preference-applied", p.to_owned()));
        }
        Ok(RestResponse {
            status,
            headers,
            body: if method == Method::Head { String::new() } else { body },
            rows_read: if matches!(method, Method::Get | Method::Head) { out.rows } else { 0 },
            rows_written: out.written,
        })
    }
}

fn sql_err(auth: &RequestAuth) -> impl Fn(crate::backend::SqlError) -> RestError + '_ {
    move |e| RestError::from_sql(e, auth.role)
}

fn where_clause(conds: &[String]) -> String {
    if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) }
}

/// The aggregate of `_vb_o` objects, and their count.
fn aggregate(dialect: Dialect, inner: &str) -> String {
    match dialect {
        Dialect::Sqlite => {
            format!("SELECT coalesce(json_group_array(json(_vb_o)), json_array()), count(*) FROM ({inner})")
        }
        Dialect::Postgres => {
            format!("SELECT coalesce(json_agg(_vb_o), '[]'::json)::text, count(*)::text FROM ({inner}) AS _vb_s")
        }
    }
}

fn read(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    table: &str,
    query: &Query,
    prefs: &Prefs,
    r_off: Option<u64>,
    r_lim: Option<u64>,
) -> Result<Outcome, RestError> {
    let root = query.scopes.get("").cloned().unwrap_or_default();
    let offset = root.offset.or(r_off).unwrap_or(0);
    let limit = match (root.limit, r_lim) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(MAX_ROWS),
    }
    .min(MAX_ROWS);
    let mut b = Builder::new(tx.dialect(), auth);
    let meta = b.meta(tx, table)?;
    let alias = b.alias();
    let mut inner = Vec::new();
    let obj = b.object_sql(tx, &alias, &meta, &query.select, query, "", &mut inner)?;
    let mut conds = b.where_sql(&alias, &meta, Some(&root), Cmd::Select)?;
    conds.extend(inner.clone());
    let order = b.order_sql(&alias, &meta, &root.order)?;
    let sql = aggregate(
        tx.dialect(),
        &format!(
            "SELECT {obj} AS _vb_o FROM {} AS {}{}{order}{}",
            quote_ident(table),
            quote_ident(&alias),
            where_clause(&conds),
            paging_sql(Some(limit), Some(offset))
        ),
    );
    let params = std::mem::take(&mut b.params);
    let rows = tx.rows(&sql, &params).map_err(sql_err(auth))?;
    let json = first(&rows).unwrap_or_else(|| "[]".to_owned());
    let n: i64 = rows.first().and_then(|r| r.get(1).cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
    let total = if prefs.count { Some(count(tx, auth, table, query, &root)?) } else { None };
    Ok(Outcome { status: 200, json: Some(json), rows: n, written: 0, total, offset })
}

fn count(tx: &mut Tx<'_>, auth: &RequestAuth, table: &str, query: &Query, root: &Scope) -> Result<i64, RestError> {
    // The read query without paging, so `!inner` embeds filter the count as they filter the rows.
    let mut b = Builder::new(tx.dialect(), auth);
    let meta = b.meta(tx, table)?;
    let alias = b.alias();
    let mut inner = Vec::new();
    let obj = b.object_sql(tx, &alias, &meta, &query.select, query, "", &mut inner)?;
    let mut conds = b.where_sql(&alias, &meta, Some(root), Cmd::Select)?;
    conds.extend(inner);
    let sql = format!(
        "SELECT CAST(count(*) AS TEXT) FROM (SELECT {obj} AS _vb_o FROM {} AS {}{}) AS _vb_c",
        quote_ident(table),
        quote_ident(&alias),
        where_clause(&conds)
    );
    let rows = tx.rows(&sql, &b.params).map_err(sql_err(auth))?;
    Ok(first(&rows).and_then(|s| s.parse().ok()).unwrap_or(0))
}

type JsonRow = serde_json::Map<String, Json>;

/// Rows of the body: an object or an array of objects.
fn body_rows(body: Json) -> Result<Vec<serde_json::Map<String, Json>>, RestError> {
    let bad = || RestError::new(400, "PGRST102", "All object keys must match");
    match body {
        Json::Object(m) => Ok(vec![m]),
        Json::Array(items) => {
            items.into_iter().map(|i| if let Json::Object(m) = i { Ok(m) } else { Err(bad()) }).collect()
        }
        _ => Err(RestError::new(400, "PGRST102", "Empty or invalid json")),
    }
}

fn body_columns(
    meta: &TableMeta,
    query: &Query,
    rows: &[serde_json::Map<String, Json>],
) -> Result<Vec<String>, RestError> {
    let mut cols: Vec<String> = match &query.columns {
        Some(c) => c.clone(),
        None => {
            let mut cols = Vec::new();
            for r in rows {
                for k in r.keys() {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            cols
        }
    };
    for c in &cols {
        if meta.column(c).is_none() {
            return Err(RestError::new(
                400,
                "PGRST204",
                format!("Could not find the '{c}' column of '{}' in the schema cache", meta.name),
            ));
        }
    }
    cols.dedup();
    Ok(cols)
}

/// Representation of the rows `rowids` (SQLite) as visible to the request role.
fn sqlite_rows_json(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    table: &str,
    query: &Query,
    rowids: &[i64],
) -> Result<(String, i64), RestError> {
    let mut b = Builder::new(Dialect::Sqlite, auth);
    let meta = b.meta(tx, table)?;
    let alias = b.alias();
    let mut inner = Vec::new();
    let obj = b.object_sql(tx, &alias, &meta, &query.select, query, "", &mut inner)?;
    let ids = b.bind(Param::Text(serde_json::to_string(rowids).unwrap_or_default()), None);
    let mut conds = vec![format!("{}.rowid IN (SELECT value FROM json_each({ids}))", quote_ident(&alias))];
    conds.extend(b.where_sql(&alias, &meta, None, Cmd::Select)?);
    let sql = aggregate(
        Dialect::Sqlite,
        &format!(
            "SELECT {obj} AS _vb_o FROM {} AS {}{} ORDER BY {}.rowid",
            quote_ident(table),
            quote_ident(&alias),
            where_clause(&conds),
            quote_ident(&alias)
        ),
    );
    let rows = tx.rows(&sql, &b.params).map_err(sql_err(auth))?;
    let n: i64 = rows.first().and_then(|r| r.get(1).cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((first(&rows).unwrap_or_else(|| "[]".to_owned()), n))
}

fn rls_violation(table: &str) -> RestError {
    RestError::new(403, "42501", format!("new row violates row-level security policy for table \"{table}\""))
}

/// SQLite: every row in `rowids` must pass the WITH CHECK expression of `cmd`.
fn sqlite_check(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    meta: &TableMeta,
    cmd: Cmd,
    rowids: &[i64],
) -> Result<(), RestError> {
    let Some(check) = policy_sql(meta, auth, cmd, false) else { return Ok(()) };
    let sql = format!(
        "SELECT 1 FROM {} WHERE rowid IN (SELECT value FROM json_each(?1)) AND NOT coalesce(({check}), 0) LIMIT 1",
        quote_ident(&meta.name)
    );
    let bad =
        tx.rows(&sql, &[Param::Text(serde_json::to_string(rowids).unwrap_or_default())]).map_err(sql_err(auth))?;
    if bad.is_empty() {
        Ok(())
    } else {
        let mut e = rls_violation(&meta.name);
        if auth.role == crate::RequestRole::Anon {
            e.status = 401;
        }
        Err(e)
    }
}

fn conflict_target(meta: &TableMeta, query: &Query) -> Result<Vec<String>, RestError> {
    let cols = query.on_conflict.clone().unwrap_or_else(|| meta.pk.clone());
    if cols.is_empty() {
        return Err(RestError::new(400, "PGRST100", "on_conflict is required for a table without a primary key"));
    }
    for c in &cols {
        if meta.column(c).is_none() {
            return Err(RestError::new(400, "42703", format!("column \"{c}\" does not exist")));
        }
    }
    Ok(cols)
}

fn insert(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    table: &str,
    query: &Query,
    prefs: &Prefs,
    body: Json,
) -> Result<Outcome, RestError> {
    let rows = body_rows(body)?;
    let mut b = Builder::new(tx.dialect(), auth);
    let meta = b.meta(tx, table)?;
    // PostgreSQL checks INSERT policies before any constraint: with no policy that could pass, the
    // answer is 42501 whatever the row (not, say, a NOT NULL error for a default that needs a user).
    if tx.dialect() == Dialect::Sqlite && policy_sql(&meta, auth, Cmd::Insert, false).as_deref() == Some("0") {
        let mut e = rls_violation(&meta.name);
        if auth.role == crate::RequestRole::Anon {
            e.status = 401;
        }
        return Err(e);
    }
    let all_cols = body_columns(&meta, query, &rows)?;
    let conflict = if prefs.merge || prefs.ignore { Some(conflict_target(&meta, query)?) } else { None };
    // With `columns` (as supabase-js sends for bulk inserts), a key a row leaves out is NULL, as in
    // PostgREST, unless `Prefer: missing=default`; without `columns`, it gets the column's default.
    // Consecutive rows with the same keys go in one statement.
    let keys_of = |r: &serde_json::Map<String, Json>| -> Vec<String> {
        if query.columns.is_some() && !prefs.missing_default {
            all_cols.clone()
        } else {
            all_cols.iter().filter(|c| r.contains_key(*c)).cloned().collect()
        }
    };
    let mut groups: Vec<(Vec<String>, Vec<JsonRow>)> = Vec::new();
    for r in rows {
        let k = keys_of(&r);
        match groups.last_mut() {
            Some((gk, g)) if *gk == k && tx.dialect() == Dialect::Postgres => g.push(r),
            _ => groups.push((k, vec![r])),
        }
    }
    let update_using = if tx.dialect() == Dialect::Sqlite { policy_sql(&meta, auth, Cmd::Update, true) } else { None };
    let mut json_rows: Vec<Json> = Vec::new();
    let mut written = 0i64;
    let mut rowids = Vec::new();
    for (cols, rows) in groups {
        let on_conflict = |excluded: &str| -> String {
            match &conflict {
                None => String::new(),
                Some(target) => {
                    let t = target.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                    let updates: Vec<String> = cols
                        .iter()
                        .filter(|c| !target.contains(c))
                        .map(|c| format!("{} = {excluded}.{}", quote_ident(c), quote_ident(c)))
                        .collect();
                    if prefs.ignore || updates.is_empty() {
                        format!(" ON CONFLICT ({t}) DO NOTHING")
                    } else {
                        // SQLite: the existing row must pass the UPDATE policies' USING, as on
                        // PostgreSQL; a row that does not is left alone (PostgreSQL raises 42501).
                        let guard = match update_using.as_deref() {
                            Some(p) if excluded == "excluded" => format!(" WHERE {p}"),
                            _ => String::new(),
                        };
                        format!(" ON CONFLICT ({t}) DO UPDATE SET {}{guard}", updates.join(", "))
                    }
                }
            }
        };
        match tx.dialect() {
            Dialect::Postgres => {
                let mut b = Builder::new(Dialect::Postgres, auth);
                let _ = b.meta(tx, table)?;
                let col_list = cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
                let count = rows.len();
                let data = Json::Array(rows.into_iter().map(Json::Object).collect()).to_string();
                let src = b.bind(Param::Text(data), Some("json"));
                let t = quote_ident(table);
                let ins = if cols.is_empty() {
                    format!("INSERT INTO {t} SELECT FROM generate_series(1, {count}) WHERE {src} IS NOT NULL")
                } else {
                    format!(
                        "INSERT INTO {t} ({col_list}) SELECT {col_list} FROM json_populate_recordset(NULL::public.{t}, {src}){}",
                        on_conflict("EXCLUDED")
                    )
                };
                if prefs.representation {
                    let alias = b.alias();
                    let mut inner = Vec::new();
                    let obj = b.object_sql(tx, &alias, &meta, &query.select, query, "", &mut inner)?;
                    let sql = format!(
                        "WITH _vb_w AS ({ins} RETURNING *) {}",
                        aggregate(
                            Dialect::Postgres,
                            &format!("SELECT {obj} AS _vb_o FROM _vb_w AS {}", quote_ident(&alias))
                        )
                    );
                    let r = tx.rows(&sql, &b.params).map_err(sql_err(auth))?;
                    if let Some(Json::Array(items)) = first(&r).and_then(|j| serde_json::from_str(&j).ok()) {
                        written += items.len() as i64;
                        json_rows.extend(items);
                    }
                } else {
                    written += tx.exec(&ins, &b.params).map_err(sql_err(auth))? as i64;
                }
            }
            Dialect::Sqlite => {
                for row in &rows {
                    let mut params = Vec::new();
                    let sql = if cols.is_empty() {
                        format!("INSERT INTO {} DEFAULT VALUES RETURNING rowid", quote_ident(table))
                    } else {
                        let mut ph = Vec::new();
                        for c in &cols {
                            let col = meta
                                .column(c)
                                .cloned()
                                .ok_or_else(|| RestError::new(400, "PGRST204", "unknown column"))?;
                            params.push(body_param(row.get(c).unwrap_or(&Json::Null), &col, Dialect::Sqlite));
                            ph.push(format!("?{}", params.len()));
                        }
                        format!(
                            "INSERT INTO {} ({}) VALUES ({}){} RETURNING rowid",
                            quote_ident(table),
                            cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", "),
                            ph.join(", "),
                            on_conflict("excluded")
                        )
                    };
                    let r = tx.rows(&sql, &params).map_err(sql_err(auth))?;
                    rowids.extend(
                        r.into_iter()
                            .filter_map(|x| x.into_iter().next().flatten())
                            .filter_map(|s| s.parse::<i64>().ok()),
                    );
                }
            }
        }
    }
    if tx.dialect() == Dialect::Sqlite {
        sqlite_check(tx, auth, &meta, Cmd::Insert, &rowids)?;
        if prefs.merge {
            sqlite_check(tx, auth, &meta, Cmd::Update, &rowids)?;
        }
        written = rowids.len() as i64;
        if prefs.representation {
            let (json, visible) = sqlite_rows_json(tx, auth, table, query, &rowids)?;
            if visible < written {
                return Err(rls_violation(table));
            }
            return Ok(Outcome { status: 201, json: Some(json), rows: written, written, total: None, offset: 0 });
        }
        return Ok(Outcome { status: 201, json: None, rows: written, written, total: None, offset: 0 });
    }
    let json = prefs.representation.then(|| Json::Array(json_rows).to_string());
    Ok(Outcome { status: 201, json, rows: written, written, total: None, offset: 0 })
}

fn update(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    table: &str,
    query: &Query,
    prefs: &Prefs,
    body: Json,
) -> Result<Outcome, RestError> {
    let Json::Object(obj) = body else {
        return Err(RestError::new(400, "PGRST102", "PATCH takes one JSON object"));
    };
    let mut b = Builder::new(tx.dialect(), auth);
    let meta = b.meta(tx, table)?;
    let cols = body_columns(&meta, query, std::slice::from_ref(&obj))?;
    let root = query.scopes.get("").cloned().unwrap_or_default();
    let alias = b.alias();
    if cols.is_empty() {
        return Ok(Outcome {
            status: if prefs.representation { 200 } else { 204 },
            json: prefs.representation.then(|| "[]".to_owned()),
            rows: 0,
            written: 0,
            total: None,
            offset: 0,
        });
    }
    match tx.dialect() {
        Dialect::Postgres => {
            let src = b.bind(Param::Text(Json::Object(obj).to_string()), Some("json"));
            let sets: Vec<String> =
                cols.iter().map(|c| format!("{} = _vb_src.{}", quote_ident(c), quote_ident(c))).collect();
            let conds = b.where_sql(&alias, &meta, Some(&root), Cmd::Update)?;
            let mut where_ = where_clause(&conds);
            if where_.is_empty() {
                where_ = " WHERE true".to_owned();
            }
            let upd = format!(
                "UPDATE {t} AS {a} SET {} FROM json_populate_record(NULL::public.{t}, {src}) AS _vb_src{where_}",
                sets.join(", "),
                t = quote_ident(table),
                a = quote_ident(&alias)
            );
            pg_write(tx, &mut b, auth, &meta, query, &alias, &upd, prefs.representation)
        }
        Dialect::Sqlite => {
            let mut sets = Vec::new();
            for c in &cols {
                let col = meta.column(c).cloned().ok_or_else(|| RestError::new(400, "PGRST204", "unknown column"))?;
                let p = b.bind(body_param(obj.get(c).unwrap_or(&Json::Null), &col, Dialect::Sqlite), None);
                sets.push(format!("{} = {p}", quote_ident(c)));
            }
            let conds = b.where_sql(&alias, &meta, Some(&root), Cmd::Update)?;
            let sql = format!(
                "UPDATE {} AS {} SET {}{} RETURNING rowid",
                quote_ident(table),
                quote_ident(&alias),
                sets.join(", "),
                where_clause(&conds)
            );
            let r = tx.rows(&sql, &b.params).map_err(sql_err(auth))?;
            let rowids: Vec<i64> =
                r.into_iter().filter_map(|x| x.into_iter().next().flatten()).filter_map(|s| s.parse().ok()).collect();
            sqlite_check(tx, auth, &meta, Cmd::Update, &rowids)?;
            let n = rowids.len() as i64;
            if prefs.representation {
                let (json, _) = sqlite_rows_json(tx, auth, table, query, &rowids)?;
                Ok(Outcome { status: 200, json: Some(json), rows: n, written: n, total: None, offset: 0 })
            } else {
                Ok(Outcome { status: 204, json: None, rows: n, written: n, total: None, offset: 0 })
            }
        }
    }
}

/// Runs a PostgreSQL `UPDATE` or `DELETE` (`write`, whose target is aliased `alias`) and answers with
/// the changed rows rendered as `select` asks (`return=representation`), or with their count.
#[allow(clippy::too_many_arguments)]
fn pg_write(
    tx: &mut Tx<'_>,
    b: &mut Builder<'_>,
    auth: &RequestAuth,
    meta: &TableMeta,
    query: &Query,
    alias: &str,
    write: &str,
    representation: bool,
) -> Result<Outcome, RestError> {
    if !representation {
        let n = tx.exec(write, &b.params).map_err(sql_err(auth))? as i64;
        return Ok(Outcome { status: 204, json: None, rows: n, written: n, total: None, offset: 0 });
    }
    let out_alias = b.alias();
    let mut inner = Vec::new();
    let o = b.object_sql(tx, &out_alias, meta, &query.select, query, "", &mut inner)?;
    let sql = format!(
        "WITH _vb_w AS ({write} RETURNING {}.*) {}",
        quote_ident(alias),
        aggregate(Dialect::Postgres, &format!("SELECT {o} AS _vb_o FROM _vb_w AS {}", quote_ident(&out_alias)))
    );
    let r = tx.rows(&sql, &b.params).map_err(sql_err(auth))?;
    let n: i64 = r.first().and_then(|x| x.get(1).cloned().flatten()).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Outcome { status: 200, json: first(&r), rows: n, written: n, total: None, offset: 0 })
}

fn delete(
    tx: &mut Tx<'_>,
    auth: &RequestAuth,
    table: &str,
    query: &Query,
    prefs: &Prefs,
) -> Result<Outcome, RestError> {
    let mut b = Builder::new(tx.dialect(), auth);
    let meta = b.meta(tx, table)?;
    let root = query.scopes.get("").cloned().unwrap_or_default();
    let alias = b.alias();
    let conds = b.where_sql(&alias, &meta, Some(&root), Cmd::Delete)?;
    match tx.dialect() {
        Dialect::Postgres => {
            let del = format!("DELETE FROM {} AS {}{}", quote_ident(table), quote_ident(&alias), where_clause(&conds));
            pg_write(tx, &mut b, auth, &meta, query, &alias, &del, prefs.representation)
        }
        Dialect::Sqlite => {
            let sel = format!(
                "SELECT {}.rowid FROM {} AS {}{}",
                quote_ident(&alias),
                quote_ident(table),
                quote_ident(&alias),
                where_clause(&conds)
            );
            let r = tx.rows(&sel, &b.params).map_err(sql_err(auth))?;
            let rowids: Vec<i64> =
                r.into_iter().filter_map(|x| x.into_iter().next().flatten()).filter_map(|s| s.parse().ok()).collect();
            let json =
                if prefs.representation { Some(sqlite_rows_json(tx, auth, table, query, &rowids)?.0) } else { None };
            let n = tx
                .exec(
                    &format!("DELETE FROM {} WHERE rowid IN (SELECT value FROM json_each(?1))", quote_ident(table)),
                    &[Param::Text(serde_json::to_string(&rowids).unwrap_or_default())],
                )
                .map_err(sql_err(auth))? as i64;
            let status = if json.is_some() { 200 } else { 204 };
            Ok(Outcome { status, json, rows: n, written: n, total: None, offset: 0 })
        }
    }
}

/// A function that `rpc/<name>` may call: every argument is an input argument.
struct RpcFn {
    args: Vec<(String, String)>,
    returns_set: bool,
    returns_void: bool,
}

fn rpc_not_found(name: &str, keys: &[String]) -> RestError {
    RestError::new(
        404,
        "PGRST202",
        format!("Could not find the function public.{name}({}) in the schema cache", keys.join(", ")),
    )
}

impl AppDbs {
    /// Calls `public.<name>` with the JSON object's fields as named arguments (`POST /rpc/<name>`), or
    /// the query string's (`GET`). PostgreSQL only: SQLite env databases have no SQL functions.
    pub async fn rpc(
        &self,
        env: &EnvId,
        auth: RequestAuth,
        name: String,
        args: Json,
        accept: Option<String>,
    ) -> RestResponse {
        let result = self.rpc_inner(env, auth, name, args, accept).await;
        result.unwrap_or_else(|e| RestResponse::error(&e))
    }

    async fn rpc_inner(
        &self,
        env: &EnvId,
        auth: RequestAuth,
        name: String,
        args: Json,
        accept: Option<String>,
    ) -> Result<RestResponse, RestError> {
        let name = crate::rest::ident(&crate::rest::percent_decode(&name)?)?;
        let Json::Object(args) = args else {
            return Err(RestError::new(400, "PGRST102", "rpc arguments must be a JSON object"));
        };
        if self.dialect() == Dialect::Sqlite {
            let keys: Vec<String> = args.keys().cloned().collect();
            return Err(
                rpc_not_found(&name, &keys).details("this environment's database (SQLite) has no SQL functions")
            );
        }
        let one = singular(accept.as_deref());
        if !self.exists(env).await? {
            let keys: Vec<String> = args.keys().cloned().collect();
            return Err(rpc_not_found(&name, &keys));
        }
        let (status, body) = self
            .run(env, move |db| {
                db.tx(&Role::Request(auth.clone()), |tx: &mut Tx<'_>| {
                    let err = sql_err(&auth);
                    let rows = tx
                        .rows(
                            "SELECT p.proretset::text, (p.prorettype = 'void'::regtype)::text, \
                             coalesce(array_to_json(p.proargnames[1:p.pronargs])::text, '[]'), \
                             coalesce((SELECT json_agg(format_type(t, NULL) ORDER BY i) FROM unnest(p.proargtypes) WITH ORDINALITY u(t, i))::text, '[]') \
                             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                             WHERE n.nspname = 'public' AND p.proname = $1::text AND p.prokind = 'f' \
                             AND (p.proargmodes IS NULL OR NOT ('o' = ANY(p.proargmodes::text[]) OR 'b' = ANY(p.proargmodes::text[]) OR 't' = ANY(p.proargmodes::text[])))",
                            &[Param::Text(name.clone())],
                        )
                        .map_err(&err)?;
                    let keys: Vec<String> = args.keys().cloned().collect();
                    let mut candidates: Vec<RpcFn> = rows
                        .iter()
                        .filter_map(|r| {
                            let names: Vec<String> = serde_json::from_str(r[2].as_deref()?).ok()?;
                            let types: Vec<String> = serde_json::from_str(r[3].as_deref()?).ok()?;
                            Some(RpcFn {
                                args: names.into_iter().zip(types).collect(),
                                returns_set: r[0].as_deref() == Some("true"),
                                returns_void: r[1].as_deref() == Some("true"),
                            })
                        })
                        // Every given key must name an argument (arguments with defaults may be left out).
                        .filter(|f| keys.iter().all(|k| f.args.iter().any(|(n, _)| n == k)))
                        .collect();
                    let f = match candidates.len() {
                        0 => return Err(rpc_not_found(&name, &keys)),
                        1 => candidates.remove(0),
                        _ => {
                            return Err(RestError::new(
                                300,
                                "PGRST203",
                                format!("Could not choose the best candidate function between overloads of public.{name}"),
                            ));
                        }
                    };
                    let mut params = Vec::new();
                    let mut call_args = Vec::new();
                    for (arg, ty) in &f.args {
                        let Some(v) = args.get(arg) else { continue };
                        let text = match v {
                            Json::Null => None,
                            Json::String(s) => Some(s.clone()),
                            Json::Array(a) if ty.ends_with("[]") => Some(crate::sqlgen::pg_array_literal(a)),
                            other => Some(other.to_string()),
                        };
                        params.push(text.map_or(Param::Null, Param::Text));
                        call_args.push(format!("{} => CAST(${}::text AS {ty})", quote_ident(arg), params.len()));
                    }
                    let call = format!("public.{}({})", quote_ident(&name), call_args.join(", "));
                    if f.returns_void {
                        tx.rows(&format!("SELECT 1 FROM (SELECT {call}) AS _vb_r"), &params).map_err(&err)?;
                        return Ok((204, None));
                    }
                    let sql = if f.returns_set {
                        format!("SELECT coalesce(json_agg(_vb_r), '[]'::json)::text FROM {call} AS _vb_r")
                    } else {
                        format!("SELECT to_json(_vb_r)::text FROM {call} AS _vb_r")
                    };
                    let rows = tx.rows(&sql, &params).map_err(&err)?;
                    Ok((200, Some(first(&rows).unwrap_or_else(|| "null".to_owned()))))
                })
            })
            .await?;
        let mut headers = vec![("content-type", "application/json; charset=utf-8".to_owned())];
        let body = match body {
            None => String::new(),
            Some(j) if one => {
                headers[0].1 = "application/vnd.pgrst.object+json; charset=utf-8".to_owned();
                match serde_json::from_str::<Json>(&j) {
                    Ok(Json::Array(items)) if items.len() == 1 => items[0].to_string(),
                    Ok(Json::Array(items)) => {
                        return Err(RestError::new(
                            406,
                            "PGRST116",
                            "JSON object requested, multiple (or no) rows returned",
                        )
                        .details(format!("The result contains {} rows", items.len())));
                    }
                    _ => j,
                }
            }
            Some(j) => j,
        };
        Ok(RestResponse { status, headers, body, rows_read: 0, rows_written: 0 })
    }
}
