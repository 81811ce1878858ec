//! Env databases through the real router: migrations (translated on SQLite, native on PostgreSQL), the
//! PostgREST data API and row-level security with two end users. Runs on SQLite, or on PostgreSQL with
//! `VIBEBASE_TEST_DATABASE_URL` (a real database per env).

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness, Resp};

const SCHEMA: &str = r#"
create extension if not exists "uuid-ossp";
create table public.profiles (
  id uuid primary key,
  username text unique not null check (char_length(username) >= 3),
  created_at timestamptz not null default now()
);
create table todos (
  id bigint generated always as identity primary key,
  owner uuid not null references profiles(id) on delete cascade,
  title text not null,
  done boolean not null default false,
  priority int,
  tags text[],
  meta jsonb
);
create index todos_owner_idx on todos (owner);
alter table todos enable row level security;
create policy "own todos read" on todos for select using ((select auth.uid()) = owner);
create policy "own todos insert" on todos for insert to authenticated with check (auth.uid() = owner);
create policy "own todos update" on todos for update using (auth.uid() = owner) with check (auth.uid() = owner);
create policy "own todos delete" on todos for delete using (auth.uid() = owner);
"#;

pub(crate) const ALICE: &str = "11111111-1111-4111-8111-111111111111";
pub(crate) const BOB: &str = "22222222-2222-4222-8222-222222222222";

/// An access token of user `sub`, signed with the env's own auth key (what GoTrue issues at sign-in).
pub(crate) async fn user_token(state: &server::AppState, env: &str, sub: &str) -> String {
    let env_id = protocol::EnvId::parse(env).unwrap();
    let keys = state.auth.signing_keys(&env_id).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = auth::Claims {
        iss: auth::jwt::issuer(&state.platform.config().public_url, env),
        sub: sub.to_owned(),
        aud: "authenticated".to_owned(),
        exp: now + 3600,
        iat: now,
        email: format!("{sub}@example.com"),
        phone: String::new(),
        app_metadata: json!({}),
        user_metadata: json!({}),
        role: "authenticated".to_owned(),
        aal: "aal1".to_owned(),
        amr: json!([]),
        session_id: "test-session".to_owned(),
        is_anonymous: false,
    };
    keys[0].sign(&claims).unwrap()
}

struct Env {
    h: Harness,
    router: axum::Router,
    id: String,
    secret: String,
    publishable: String,
    /// Access tokens of ALICE and BOB.
    tokens: std::collections::HashMap<&'static str, String>,
}

/// A platform with one env (id `<prefix><random>`), its keys, and access tokens of ALICE and BOB.
pub(crate) struct UserEnv {
    pub h: Harness,
    pub state: server::AppState,
    pub id: String,
    pub secret: String,
    pub publishable: String,
    pub tokens: std::collections::HashMap<&'static str, String>,
}

pub(crate) async fn user_env(prefix: &str) -> UserEnv {
    let h = Harness::new().await;
    let id = format!("{prefix}{}", h.platform.random_id(8));
    let rec = h.create_env(&id).await;
    let state = server::AppState::new(h.platform.clone());
    let tokens = [(ALICE, user_token(&state, &id, ALICE).await), (BOB, user_token(&state, &id, BOB).await)].into();
    UserEnv { secret: rec.secret().to_owned(), publishable: rec.publishable().to_owned(), h, state, id, tokens }
}

impl Env {
    async fn new() -> Self {
        let UserEnv { h, state, id, secret, publishable, tokens } = user_env("app-").await;
        let router = server::router(state);
        Self { secret, publishable, h, router, id, tokens }
    }

    async fn send(&self, method: &str, path: &str, headers: &[(&str, String)], body: Option<Value>) -> Resp {
        use axum::body::Body;
        // Encode what URLs may not carry raw, as a client library would.
        let path: String = path
            .chars()
            .map(|c| match c {
                ' ' | '"' | '\'' | '{' | '}' | '<' | '>' | '|' | '\\' | '^' | '`' => format!("%{:02X}", c as u32),
                c => c.to_string(),
            })
            .collect();
        let mut req = http::Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let response = server::handle(self.router.clone(), "localhost", req).await;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, text, json }
    }

    async fn sql(&self, q: &str) -> Resp {
        self.send(
            "POST",
            &format!("/v1/envs/{}/sql", self.id),
            &[("authorization", format!("Bearer {}", self.secret))],
            Some(json!({"query": q})),
        )
        .await
    }

    fn service(&self) -> Vec<(&'static str, String)> {
        vec![("apikey", self.secret.clone()), ("authorization", format!("Bearer {}", self.secret))]
    }

    fn anon(&self) -> Vec<(&'static str, String)> {
        vec![("apikey", self.publishable.clone())]
    }

    fn user(&self, sub: &str) -> Vec<(&'static str, String)> {
        vec![("apikey", self.publishable.clone()), ("authorization", format!("Bearer {}", self.tokens[sub]))]
    }

    async fn rest(&self, method: &str, q: &str, headers: &[(&str, String)], body: Option<Value>) -> Resp {
        self.send(method, &format!("/env/{}/rest/v1/{q}", self.id), headers, body).await
    }

    async fn delete(self) {
        let r = self.h.call("DELETE", &format!("/v1/envs/{}", self.id), Some(&self.h.admin), None).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    }
}

fn with(mut h: Vec<(&'static str, String)>, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    h.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    h
}

async fn seeded() -> Env {
    let e = Env::new().await;
    let r = e.sql(SCHEMA).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["statements"], 9, "{}", r.text);
    let r = e
        .rest(
            "POST",
            "profiles",
            &e.service(),
            Some(json!([{"id": ALICE, "username": "alice"}, {"id": BOB, "username": "bob"}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let todos = json!([
        {"owner": ALICE, "title": "buy milk", "priority": 1, "tags": ["home", "shop"], "meta": {"color": "red", "n": 1}},
        {"owner": ALICE, "title": "write code", "done": true, "priority": 3, "tags": ["work"], "meta": {"color": "blue", "n": 2}},
        {"owner": BOB, "title": "Bob's secret", "priority": null, "tags": [], "meta": null},
    ]);
    let r = e.rest("POST", "todos", &with(e.service(), &[("prefer", "return=representation")]), Some(todos)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json.as_array().unwrap().len(), 3, "{}", r.text);
    e
}

fn titles(r: &Resp) -> Vec<String> {
    r.json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {}", r.text))
        .iter()
        .map(|t| t["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn migrations_select_filters_and_embedding() {
    let e = seeded().await;
    let s = e.service();
    let r = e.rest("GET", "todos?select=title,done,priority,tags,meta&order=id", &s, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.json[0],
        json!({"title": "buy milk", "done": false, "priority": 1, "tags": ["home", "shop"], "meta": {"color": "red", "n": 1}})
    );
    // Each filter.
    let cases: &[(&str, &[&str])] = &[
        ("priority=eq.3", &["write code"]),
        ("priority=neq.3", &["buy milk"]),
        ("priority=gt.1", &["write code"]),
        ("priority=gte.1", &["buy milk", "write code"]),
        ("priority=lt.3", &["buy milk"]),
        ("priority=lte.3", &["buy milk", "write code"]),
        ("title=like.*milk", &["buy milk"]),
        ("title=like.*MILK", &[]),
        ("title=ilike.*MILK", &["buy milk"]),
        ("priority=is.null", &["Bob's secret"]),
        ("done=is.true", &["write code"]),
        ("done=eq.false", &["buy milk", "Bob's secret"]),
        ("priority=in.(1,3)", &["buy milk", "write code"]),
        ("title=in.(\"buy milk\",\"a,b\")", &["buy milk"]),
        ("tags=cs.{home}", &["buy milk"]),
        ("tags=cd.{work,home}", &["write code", "Bob's secret"]),
        ("priority=not.eq.1", &["write code"]),
        ("or=(priority.eq.1,done.is.true)", &["buy milk", "write code"]),
        ("or=(priority.eq.3,and(done.is.false,priority.is.null))", &["write code", "Bob's secret"]),
        ("not.or=(priority.eq.1,priority.is.null)", &["write code"]),
        ("meta->>color=eq.blue", &["write code"]),
        ("title=eq.", &[]),
    ];
    for (q, want) in cases {
        let r = e.rest("GET", &format!("todos?select=title&order=id&{q}"), &s, None).await;
        assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.text);
        assert_eq!(titles(&r), *want, "{q}");
    }
    // Order with nulls, limit/offset, Range and count.
    let r = e.rest("GET", "todos?select=title&order=priority.desc.nullsfirst", &s, None).await;
    assert_eq!(titles(&r), ["Bob's secret", "write code", "buy milk"]);
    let r = e.rest("GET", "todos?select=title&order=priority.asc.nullslast&limit=1&offset=1", &s, None).await;
    assert_eq!(titles(&r), ["write code"]);
    let r = e
        .rest(
            "GET",
            "todos?select=title&order=id",
            &with(s.clone(), &[("range", "0-1"), ("prefer", "count=exact")]),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{}", r.text);
    assert_eq!(r.headers["content-range"], "0-1/3");
    // Aliases, casts, JSON paths.
    let r = e
        .rest("GET", "todos?select=name:title,p:priority::text,c:meta->>color,n:meta->n&order=id&limit=1", &s, None)
        .await;
    assert_eq!(r.json, json!([{"name": "buy milk", "p": "1", "c": "red", "n": 1}]), "{}", r.text);
    // Many-to-one and one-to-many embedding, nested.
    let r = e.rest("GET", "todos?select=title,profiles(username)&order=id&limit=1", &s, None).await;
    assert_eq!(r.json, json!([{"title": "buy milk", "profiles": {"username": "alice"}}]), "{}", r.text);
    let r = e
        .rest(
            "GET",
            "profiles?select=username,todos(title,profiles(username))&order=username&todos.order=id.desc",
            &s,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json[0]["todos"][0], json!({"title": "write code", "profiles": {"username": "alice"}}), "{}", r.text);
    assert_eq!(r.json[1]["todos"].as_array().unwrap().len(), 1);
    let r = e.rest("GET", "profiles?select=username,todos!inner(title)&todos.priority=eq.3", &s, None).await;
    assert_eq!(r.json, json!([{"username": "alice", "todos": [{"title": "write code"}]}]), "{}", r.text);
    // Singular object.
    let obj = with(s.clone(), &[("accept", "application/vnd.pgrst.object+json")]);
    let r = e.rest("GET", "todos?select=title&priority=eq.3", &obj, None).await;
    assert_eq!(r.json, json!({"title": "write code"}), "{}", r.text);
    let r = e.rest("GET", "todos?select=title", &obj, None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_ACCEPTABLE, Some("PGRST116")), "{}", r.text);
    // PATCH, upsert, DELETE.
    let rep = with(s.clone(), &[("prefer", "return=representation")]);
    let r = e.rest("PATCH", "todos?priority=eq.1&select=title,done", &rep, Some(json!({"done": true}))).await;
    assert_eq!(r.json, json!([{"title": "buy milk", "done": true}]), "{}", r.text);
    let up = with(s.clone(), &[("prefer", "return=representation,resolution=merge-duplicates")]);
    let r = e
        .rest(
            "POST",
            "profiles?on_conflict=username&select=username",
            &up,
            Some(json!({"id": ALICE, "username": "alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = e.rest("DELETE", "todos?done=is.true&select=title", &rep, None).await;
    let mut deleted = titles(&r);
    deleted.sort();
    assert_eq!(deleted, ["buy milk", "write code"]);
    let r = e.rest("GET", "todos?select=title", &with(s.clone(), &[("prefer", "count=exact")]), None).await;
    assert_eq!(r.headers["content-range"], "0-0/1");
    e.delete().await;
}

#[tokio::test]
async fn row_level_security_for_two_users() {
    let e = seeded().await;
    // anon: RLS table with no policy for anon reads → nothing.
    let r = e.rest("GET", "todos?select=title", &e.anon(), None).await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!([])), "{}", r.text);
    let r = e.rest("GET", "todos?select=title&order=id", &e.user(ALICE), None).await;
    assert_eq!(titles(&r), ["buy milk", "write code"]);
    let r = e.rest("GET", "todos?select=title", &e.user(BOB), None).await;
    assert_eq!(titles(&r), ["Bob's secret"]);
    // Embedded rows are filtered by their own table's policies too.
    let r = e.rest("GET", "profiles?select=username,todos(title)&order=username", &e.user(BOB), None).await;
    assert_eq!(
        r.json,
        json!([{"username": "alice", "todos": []}, {"username": "bob", "todos": [{"title": "Bob's secret"}]}]),
        "{}",
        r.text
    );
    let r = e.rest("GET", "profiles?select=username,todos!inner(title)", &e.user(BOB), None).await;
    assert_eq!(r.json, json!([{"username": "bob", "todos": [{"title": "Bob's secret"}]}]), "{}", r.text);
    // WITH CHECK: Bob may not insert a todo owned by Alice; anon may not insert at all.
    let r = e.rest("POST", "todos", &e.user(BOB), Some(json!({"owner": ALICE, "title": "spam"}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::FORBIDDEN, Some("42501")), "{}", r.text);
    let r = e.rest("POST", "todos", &e.anon(), Some(json!({"owner": ALICE, "title": "spam"}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("42501")), "{}", r.text);
    let r = e
        .rest(
            "POST",
            "todos",
            &with(e.user(BOB), &[("prefer", "return=representation")]),
            Some(json!({"owner": BOB, "title": "mine"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // An upsert may not take over another user's row.
    let r = e.rest("GET", "todos?select=id&title=eq.buy milk", &e.service(), None).await;
    let alice_row = r.json[0]["id"].clone();
    let r = e
        .rest(
            "POST",
            "todos",
            &with(e.user(BOB), &[("prefer", "resolution=merge-duplicates")]),
            Some(json!({"id": alice_row, "owner": BOB, "title": "taken"})),
        )
        .await;
    // SQLite leaves the row alone; PostgreSQL refuses (the identity column, or RLS).
    assert!(r.status == StatusCode::CREATED || r.status.is_client_error(), "{}", r.text);
    let r = e.rest("GET", &format!("todos?select=title,owner&id=eq.{alice_row}"), &e.service(), None).await;
    assert_eq!(r.json, json!([{"title": "buy milk", "owner": ALICE}]), "{}", r.text);
    // USING: Bob's update and delete of Alice's rows touch nothing.
    let r = e
        .rest(
            "PATCH",
            "todos?title=eq.buy milk",
            &with(e.user(BOB), &[("prefer", "return=representation")]),
            Some(json!({"title": "hacked"})),
        )
        .await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!([])), "{}", r.text);
    let r = e.rest("DELETE", "todos", &with(e.user(BOB), &[("prefer", "return=representation")]), None).await;
    let mut deleted = titles(&r);
    deleted.sort();
    assert_eq!(deleted, ["Bob's secret", "mine"]);
    // Bob may not move his row to Alice (WITH CHECK on update).
    let r = e.rest("GET", "todos?select=title&order=id", &e.user(ALICE), None).await;
    assert_eq!(titles(&r), ["buy milk", "write code"]);
    let r = e.rest("PATCH", "todos?title=eq.buy milk", &e.user(ALICE), Some(json!({"owner": BOB}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::FORBIDDEN, Some("42501")), "{}", r.text);
    // service_role bypasses RLS.
    let r = e.rest("GET", "todos?select=title&order=id", &e.service(), None).await;
    assert_eq!(titles(&r), ["buy milk", "write code"]);
    // A JWT the verifier refuses.
    let bad = vec![("apikey", e.publishable.clone()), ("authorization", "Bearer a.b".to_owned())];
    let r = e.rest("GET", "todos", &bad, None).await;
    assert_eq!(r.status, StatusCode::OK, "a non-JWT bearer falls back to the key: {}", r.text);
    e.delete().await;
}

#[tokio::test]
async fn errors_and_injection_attempts() {
    let e = seeded().await;
    let s = e.service();
    let code = |r: &Resp| r.json["code"].as_str().unwrap_or("").to_owned();
    let r = e.rest("GET", "nope", &s, None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::NOT_FOUND, "42P01".into()), "{}", r.text);
    let r = e.rest("GET", "todos?select=nope", &s, None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "42703".into()), "{}", r.text);
    let r = e.rest("GET", "todos?priority=zz.1", &s, None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "PGRST100".into()), "{}", r.text);
    let r = e.rest("POST", "profiles", &s, Some(json!({"id": ALICE, "username": "again"}))).await;
    assert_eq!((r.status, code(&r)), (StatusCode::CONFLICT, "23505".into()), "{}", r.text);
    let r = e
        .rest("POST", "profiles", &s, Some(json!({"id": "33333333-3333-4333-8333-333333333333", "username": "x"})))
        .await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "23514".into()), "{}", r.text);
    let r = e.rest("POST", "todos", &s, Some(json!({"owner": ALICE, "title": "t", "bogus": 1}))).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "PGRST204".into()), "{}", r.text);
    let nested = format!("todos?or=({}priority.eq.1{})", "or(".repeat(20), ")".repeat(20));
    let r = e.rest("GET", &nested, &s, None).await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "PGRST100".into()), "{}", r.text);
    // Injection through every part of the query and body: each is an identifier (quoted) or a value
    // (bound), so it either fails as a missing column or matches nothing, and the table survives.
    let attacks = [
        "todos?select=title%22%3Bdrop%20table%20todos%3B--",
        "todos?title=eq.x%27%3Bdrop%20table%20todos%3B--",
        "todos?order=title%3Bdrop%20table%20todos",
        "todos?title%22%3Bdrop=eq.1",
        "todos?or=(title.eq.x'),title.eq.1)",
        "todos?title=in.(%22a%22%29%3Bdrop%20table%20todos%3B--%22)",
        "todos?meta->>a'%3Bdrop=eq.1",
        "todos%22%3Bdrop%20table%20todos%3B--",
    ];
    for a in attacks {
        let r = e.rest("GET", a, &s, None).await;
        assert!(r.status == StatusCode::OK || r.status.is_client_error(), "{a}: {}", r.text);
    }
    let r = e.rest("POST", "todos", &s, Some(json!({"owner": ALICE, "title": "'); drop table todos; --"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = e.rest("GET", "todos?select=title&title=eq.'); drop table todos; --", &s, None).await;
    assert_eq!(titles(&r), ["'); drop table todos; --"]);
    let r = e.rest("GET", "todos?select=title", &with(s.clone(), &[("prefer", "count=exact")]), None).await;
    assert_eq!(r.headers["content-range"], "0-3/4", "the table is intact");
    e.delete().await;
}

#[tokio::test]
async fn migration_errors_name_the_problem_and_apply_nothing() {
    let e = Env::new().await;
    let code = |r: &Resp| r.json["code"].as_str().unwrap_or("").to_owned();
    let r = e.sql("create table a (id int primary key); create tabel b (id int)").await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "sql_syntax_error".into()), "{}", r.text);
    let r = e.sql("create table other.t (id int)").await;
    assert_eq!(code(&r), "sql_forbidden", "{}", r.text);
    let r = e.sql("select pg_read_file('/etc/passwd')").await;
    assert!(["sql_forbidden", "sql_unsupported"].contains(&code(&r).as_str()), "{}", r.text);
    let r = e.sql("create role evil superuser").await;
    assert_eq!(code(&r), "sql_unsupported", "{}", r.text);
    let r = e.sql("set role postgres").await;
    assert_eq!(code(&r), "sql_unsupported", "{}", r.text);
    let r = e.sql("create table \"a.b\" (id int)").await;
    assert_eq!(code(&r), "sql_forbidden", "{}", r.text);
    // A failing statement rolls back the whole migration.
    let r = e.sql("create table ok1 (id int primary key); insert into missing values (1)").await;
    assert_eq!((r.status, code(&r)), (StatusCode::BAD_REQUEST, "sql_error".into()), "{}", r.text);
    let r = e.rest("GET", "ok1", &e.service(), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    // Publishable keys may not migrate.
    let r = e
        .send(
            "POST",
            &format!("/v1/envs/{}/sql", e.id),
            &[("authorization", format!("Bearer {}", e.publishable))],
            Some(json!({"query": "create table x (id int)"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    if e.h.platform.db().dialect() == store::Dialect::Sqlite {
        let r = e.sql("create table t (id int primary key, v int4range)").await;
        assert_eq!(code(&r), "sql_unsupported", "{}", r.text);
        assert!(r.json["message"].as_str().unwrap().contains("int4range"), "{}", r.text);
    }
    e.delete().await;
}

#[tokio::test]
async fn deleting_the_env_drops_its_database() {
    let e = seeded().await;
    let layout = e.h.platform.layout(&protocol::EnvId::parse(&e.id).unwrap());
    let db = e.h.platform.db().clone();
    let on_pg = db.dialect() == store::Dialect::Postgres;
    let like = format!("%{}", layout.database_name);
    let exists = move || {
        let (db, like) = (db.clone(), like.clone());
        async move {
            db.tx(move |c| {
                Ok::<_, store::StoreError>(
                    c.query_opt("SELECT 1 FROM pg_database WHERE datname LIKE $1", &[like.into()])?.is_some(),
                )
            })
            .await
            .unwrap()
        }
    };
    if on_pg {
        assert!(exists().await);
    } else {
        assert!(layout.sqlite_file.exists());
    }
    e.delete().await;
    if on_pg {
        assert!(!exists().await, "database dropped");
    } else {
        assert!(!layout.sqlite_file.exists());
    }
}

#[tokio::test]
async fn rows_and_bytes_are_metered_and_quotas_hold() {
    let e = seeded().await;
    let r = e.rest("GET", "todos?select=title", &e.service(), None).await;
    assert_eq!(r.json.as_array().unwrap().len(), 3);
    let totals = e.h.usage_totals(&e.id).await;
    let total = |m: &str| totals.get(m).copied().unwrap_or(0);
    assert_eq!(total("db_rows_written"), 5, "{totals:?}");
    // 3 rows returned by the seeding insert's representation are writes, not reads.
    assert_eq!(total("db_rows_read"), 3, "{totals:?}");
    assert!(total("db_bytes") > 0, "{totals:?}");
    // The migration is in the env's audit log.
    let audit = e.h.call("GET", &format!("/v1/envs/{}/audit", e.id), Some(&e.h.admin), None).await;
    assert!(
        audit.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["action"] == "db:Migrate" && i["target"] == "migration 1"),
        "{}",
        audit.text
    );
    // A read of an env that never migrated creates no database.
    let fresh = format!("fresh-{}", e.h.platform.random_id(6));
    let rec = e.h.create_env(&fresh).await;
    let r =
        e.send("GET", &format!("/env/{fresh}/rest/v1/todos"), &[("apikey", rec.publishable().to_owned())], None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("42P01")), "{}", r.text);
    assert!(!e.h.platform.layout(&protocol::EnvId::parse(&fresh).unwrap()).sqlite_file.exists());
    // Hard quotas: rows written per day, and the database's size.
    let limits = json!({"quotas": [{"meter": "db_rows_written", "period": "day", "hard_limit": 5}]});
    assert_eq!(
        e.h.call("PUT", &format!("/v1/envs/{}/limits", e.id), Some(&e.h.admin), Some(limits)).await.status,
        StatusCode::OK
    );
    let r = e
        .rest(
            "POST",
            "profiles",
            &e.service(),
            Some(json!({"id": "44444444-4444-4444-8444-444444444444", "username": "carol"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("quota_exceeded_db_rows_written")),
        "{}",
        r.text
    );
    let limits = json!({"quotas": [{"meter": "db_bytes", "period": "month", "hard_limit": 1024}]});
    assert_eq!(
        e.h.call("PUT", &format!("/v1/envs/{}/limits", e.id), Some(&e.h.admin), Some(limits)).await.status,
        StatusCode::OK
    );
    let r = e
        .rest(
            "POST",
            "profiles",
            &e.service(),
            Some(json!({"id": "44444444-4444-4444-8444-444444444444", "username": "carol"})),
        )
        .await;
    assert_eq!(
        (r.status, r.json["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("quota_exceeded_db_bytes")),
        "{}",
        r.text
    );
    // Reads still work.
    assert_eq!(e.rest("GET", "profiles", &e.service(), None).await.status, StatusCode::OK);
    e.delete().await;
}

#[tokio::test]
async fn rpc_calls_functions_on_postgresql() {
    let e = seeded().await;
    let s = e.service();
    if e.h.platform.db().dialect() == store::Dialect::Sqlite {
        let r = e.rest("POST", "rpc/anything", &s, Some(json!({}))).await;
        assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("PGRST202")), "{}", r.text);
        e.delete().await;
        return;
    }
    let r = e
        .sql(
            "create function add(a int, b int) returns int language sql as $$ select a + b $$;
             create function my_todos() returns setof todos language sql stable as $$ select * from todos where owner = auth.uid() order by id $$;
             create function touch(t text) returns void language plpgsql as $$ begin perform t; end $$;",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = e.rest("POST", "rpc/add", &s, Some(json!({"a": 2, "b": 40}))).await;
    assert_eq!((r.status, r.json.clone()), (StatusCode::OK, json!(42)), "{}", r.text);
    let r = e.rest("GET", "rpc/add?a=1&b=2", &s, None).await;
    assert_eq!(r.json, json!(3), "{}", r.text);
    // Functions run as the request role, so RLS and auth.uid() apply.
    let r = e.rest("POST", "rpc/my_todos", &e.user(BOB), Some(json!({}))).await;
    assert_eq!(titles(&r), ["Bob's secret"]);
    let r = e.rest("POST", "rpc/touch", &s, Some(json!({"t": "x"}))).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = e.rest("POST", "rpc/add", &s, Some(json!({"a": 1, "nope": 2}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("PGRST202")), "{}", r.text);
    let r = e.rest("POST", "rpc/add", &s, Some(json!({"a": "x'); drop table todos; --", "b": 1}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("22P02")), "{}", r.text);
    e.delete().await;
}

/// The contract the `auth` crate builds on: schema DDL registered once per env database, and
/// `with_conn` transactions on the env's database; migrations and the data API can reference
/// `auth.users` on both backends.
#[tokio::test]
async fn auth_schema_hook_and_with_conn() {
    let h = Harness::new().await;
    let id = format!("auth-{}", h.platform.random_id(8));
    let rec = h.create_env(&id).await;
    let state = server::AppState::new(h.platform.clone());
    // The auth crate's tables come with every env database (AppState::new registers their DDL).
    let env = protocol::EnvId::parse(&id).unwrap();
    let dialect = state.appdb.dialect();
    let users = appdb::table_ref(dialect, "auth", "users");
    let insert = match dialect {
        store::Dialect::Postgres => format!("INSERT INTO {users} (id, email) VALUES ($1::text::uuid, $2)"),
        store::Dialect::Sqlite => {
            format!("INSERT INTO {users} (id, email, created_at, updated_at) VALUES ($1, $2, 'now', 'now')")
        }
    };
    let n = state
        .appdb
        .with_conn(&env, appdb::Role::Owner, move |c| {
            c.execute(&insert, &[ALICE.into(), "alice@example.com".into()])?;
            let rows = c.query(&format!("SELECT CAST(id AS TEXT), email FROM {users}"), &[])?;
            Ok::<_, appdb::AppDbError>(rows.len())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A failing closure leaves nothing behind.
    let users = appdb::table_ref(dialect, "auth", "users");
    let failed = state
        .appdb
        .with_conn(&env, appdb::Role::Owner, move |c| {
            c.execute(&format!("DELETE FROM {users}"), &[])?;
            Err::<(), _>(appdb::AppDbError::from(store::StoreError::Conflict))
        })
        .await;
    assert!(failed.is_err());
    let router = server::router(state.clone());
    let e = Env {
        h,
        router,
        id: id.clone(),
        secret: rec.secret().to_owned(),
        publishable: rec.publishable().to_owned(),
        tokens: std::collections::HashMap::new(),
    };
    let r = e
        .sql("create table notes (id bigserial primary key, user_id uuid not null references auth.users(id) on delete cascade, body text)")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = e.rest("POST", "notes", &e.service(), Some(json!({"user_id": ALICE, "body": "hi"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = e.rest("POST", "notes", &e.service(), Some(json!({"user_id": BOB, "body": "no such user"}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("23503")), "{}", r.text);
    // auth tables are not part of the data API.
    let r = e.rest("GET", "auth.users", &e.service(), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    e.delete().await;
}

#[tokio::test]
async fn many_to_many_embedding_through_a_junction_table() {
    let e = Env::new().await;
    let r = e
        .sql(
            "create table posts (id bigint primary key, title text not null);
             create table tags (id bigint primary key, name text not null);
             create table post_tags (post_id bigint references posts(id) on delete cascade,
                                     tag_id bigint references tags(id) on delete cascade,
                                     primary key (post_id, tag_id));
             insert into posts values (1, 'first'), (2, 'second');
             insert into tags values (10, 'rust'), (11, 'sql');
             insert into post_tags values (1, 10), (1, 11), (2, 11);",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let s = e.service();
    let r = e.rest("GET", "posts?select=title,tags(name)&order=id&tags.order=name", &s, None).await;
    assert_eq!(
        r.json,
        json!([{"title": "first", "tags": [{"name": "rust"}, {"name": "sql"}]}, {"title": "second", "tags": [{"name": "sql"}]}]),
        "{}",
        r.text
    );
    let r = e.rest("GET", "tags?select=name,posts(title)&name=eq.rust", &s, None).await;
    assert_eq!(r.json, json!([{"name": "rust", "posts": [{"title": "first"}]}]), "{}", r.text);
    e.delete().await;
}

/// Arbitrary query strings against a real env database: every answer is a success or a client error
/// (never a 5xx or a panic), and the data is intact afterwards.
#[test]
fn arbitrary_queries_never_fail_the_server() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(seeded());
    let s = e.service();
    let atoms = prop::sample::select(vec![
        "select=",
        "title",
        "priority",
        "meta->>color",
        "meta->n",
        "tags",
        "profiles(username)",
        "todos(title)",
        "*",
        "=eq.",
        "=neq.",
        "=gt.",
        "=like.",
        "=ilike.",
        "=is.",
        "=in.(",
        "=cs.{",
        "=not.",
        "or=(",
        "and(",
        ")",
        "}",
        ",",
        ".",
        ":",
        "::text",
        "!inner",
        "order=",
        ".desc",
        ".nullsfirst",
        "&",
        "limit=",
        "offset=",
        "1",
        "x",
        "'",
        "\"",
        "%27",
        "%22",
        ";",
        "--",
        "drop table todos",
        "null",
        "true",
        "->",
        "(",
        "%00",
        "%",
    ]);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 300, ..ProptestConfig::default() });
    runner
        .run(&prop::collection::vec(atoms, 0..12), |parts| {
            let q = parts.concat();
            let r = rt.block_on(e.rest("GET", &format!("todos?{q}"), &s, None));
            prop_assert!(r.status.as_u16() < 500, "todos?{q} → {} {}", r.status, r.text);
            Ok(())
        })
        .unwrap();
    let r = rt.block_on(e.rest("GET", "todos?select=title", &with(s.clone(), &[("prefer", "count=exact")]), None));
    assert_eq!(r.headers["content-range"], "0-2/3");
    rt.block_on(e.delete());
}

/// Arbitrary JSON bodies for inserts and updates: a success or a client error, never a 5xx.
#[test]
fn arbitrary_bodies_never_fail_the_server() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(seeded());
    let s = with(e.service(), &[("prefer", "return=representation")]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        Just(json!(ALICE)),
    ];
    let value = leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3).prop_map(|m| json!(m)),
        ]
    });
    let column = prop::sample::select(vec!["owner", "title", "done", "priority", "tags", "meta", "id", "nope"]);
    let body = prop::collection::btree_map(column, value, 0..5);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 200, ..ProptestConfig::default() });
    runner
        .run(&(body, any::<bool>()), |(b, patch)| {
            let b = json!(b);
            let r = if patch {
                rt.block_on(e.rest("PATCH", "todos?id=eq.-1", &s, Some(b.clone())))
            } else {
                rt.block_on(e.rest("POST", "todos", &s, Some(b.clone())))
            };
            prop_assert!(r.status.as_u16() < 500, "{b} → {} {}", r.status, r.text);
            Ok(())
        })
        .unwrap();
    rt.block_on(e.delete());
}
