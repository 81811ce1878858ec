//! Migrations as LLMs write them for Supabase, translated for SQLite; what cannot be translated or
//! reaches beyond the env is refused by name; no input makes the translator panic.

use appdb::migrate::{MigrateError, sqlite_translation};
use proptest::prelude::*;

#[test]
fn supabase_style_schema_translates() {
    let out = sqlite_translation(
        r#"
        create table public.posts (
          id uuid primary key default gen_random_uuid(),
          user_id uuid references auth.users(id) on delete cascade not null,
          title text not null check (length(title) > 0),
          body text,
          published boolean default false,
          score numeric(10,2),
          tags text[] default '{}',
          data jsonb,
          created_at timestamptz default now()
        );
        create table comments (id bigserial primary key, post_id uuid references posts on delete set null, body text);
        create unique index on posts (user_id, title);
        alter table posts enable row level security;
        create policy "read own" on posts for select to authenticated using ((select auth.uid()) = user_id);
        insert into posts (user_id, title) values ('00000000-0000-4000-8000-000000000000', 'hello');
        "#,
    )
    .unwrap();
    let create = &out[0];
    assert!(
        create.contains(r#""user_id" UUID TEXT NOT NULL REFERENCES "auth.users" ("id") ON DELETE CASCADE"#)
            || create.contains(r#"REFERENCES "auth.users" ("id") ON DELETE CASCADE"#),
        "{create}"
    );
    assert!(create.contains("DEFAULT (gen_random_uuid())"), "{create}");
    assert!(create.contains("DEFAULT (vb_now())"), "{create}");
    assert!(create.contains(r#""tags" TEXT_ARRAY TEXT"#), "{create}");
    assert!(out[1].contains(r#""id" INTEGER PRIMARY KEY AUTOINCREMENT"#), "{}", out[1]);
    assert!(out[2].starts_with("CREATE UNIQUE INDEX"), "{}", out[2]);
    assert!(out[3].contains(r#"INSERT INTO "posts""#), "{}", out[3]);
}

#[test]
fn dollar_quoted_strings_become_sqlite_strings() {
    let out = sqlite_translation("insert into notes (body) values ($$it's here$$), ($tag$x$tag$);").unwrap();
    assert!(out[0].contains("'it''s here'") && out[0].contains("'x'"), "{}", out[0]);
    assert!(!out[0].contains('$'), "{}", out[0]);
}

#[test]
fn untranslatable_constructs_are_named() {
    let cases = [
        ("create table t (r int4range)", "int4range"),
        ("create table t (id int primary key, n int generated always as (id * 2) stored)", "column option"),
        ("create table t (id serial)", "not the primary key"),
        ("create function f() returns int language sql as $$ select 1 $$", "CREATE FUNCTION"),
        ("create table t (id int primary key, x int default (array_length('{1}'::int[], 1)))", "array_length"),
        ("revoke select on t from anon", "REVOKE"),
    ];
    for (sql, needle) in cases {
        let err = sqlite_translation(sql).unwrap_err();
        assert!(matches!(err, MigrateError::Unsupported(_)), "{sql}: {err:?}");
        assert!(err.to_string().contains(needle), "{sql}: {err}");
    }
}

#[test]
fn statements_reaching_beyond_the_env_are_refused() {
    for sql in [
        "create table private.t (id int)",
        "select * from pg_catalog.pg_authid",
        "create extension dblink",
        "create table t (x text default pg_read_file('/etc/passwd'))",
        "create function f() returns void language c as 'x'",
        "insert into other_schema.t values (1)",
        "create table \"_vb_policies2\" (id int)",
    ] {
        let err = sqlite_translation(sql).unwrap_err();
        assert!(matches!(err, MigrateError::Forbidden(_) | MigrateError::Unsupported(_)), "{sql}: {err:?}");
    }
    for sql in [
        "set role postgres",
        "create role x superuser",
        "copy t from '/etc/passwd'",
        "do $$ begin end $$",
        "create schema s",
    ] {
        assert!(sqlite_translation(sql).is_err(), "{sql}");
    }
}

proptest! {
    #[test]
    fn translator_never_panics(s in "\\PC{0,300}") {
        let _ = sqlite_translation(&s);
    }

    #[test]
    fn translator_never_panics_on_sql_like_input(
        col in "[a-z]{1,8}",
        ty in prop::sample::select(vec!["int", "text", "uuid", "jsonb", "boolean", "numeric(5,2)", "text[]", "timestamptz", "bogus"]),
        expr in "[a-z0-9_ ().,'=<>+*-]{0,60}",
    ) {
        let _ = sqlite_translation(&format!("create table t ({col} {ty} default {expr})"));
        let _ = sqlite_translation(&format!("create policy p on t using ({expr})"));
        let _ = sqlite_translation(&format!("create table t ({col} {ty} check ({expr}))"));
    }
}
