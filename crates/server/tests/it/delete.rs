//! Deleting an env leaves nothing behind but its ledger and audit rows. The test inventories the data
//! dir, every table of the platform database, the object store, processes and cgroups before the env
//! exists and after it is deleted, and compares.

use std::collections::BTreeSet;
use std::path::Path;

use http::StatusCode;
use serde_json::json;

use crate::harness::{EnvKeysExt, Harness};

/// Tables whose rows about a deleted env are kept, for billing and forensics.
const RETAINED: [&str; 3] = ["usage_events", "usage_minutes", "audit"];

fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            // The platform database's own files change with every write; its rows are compared below.
            if rel.starts_with("platform.db") {
                continue;
            }
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.insert(rel);
        }
    }
    out
}

/// Every row of every platform table, as text, tagged with its table.
async fn rows(h: &Harness) -> BTreeSet<(String, String)> {
    h.platform
        .db()
        .tx(|c| {
            let tables_sql = match c.dialect() {
                store::Dialect::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                store::Dialect::Postgres => "SELECT CAST(table_name AS TEXT) FROM information_schema.tables WHERE table_schema = current_schema()",
            };
            let mut out = BTreeSet::new();
            for t in c.query(tables_sql, &[])? {
                let table = t.text(0)?;
                let cols = match c.dialect() {
                    store::Dialect::Sqlite => c.query(&format!("SELECT name FROM pragma_table_info('{table}')"), &[])?,
                    store::Dialect::Postgres => c.query(
                        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                        &[table.as_str().into()],
                    )?,
                };
                let cols: Vec<String> = cols.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?;
                let select = cols.iter().map(|c| format!("CAST({c} AS TEXT)")).collect::<Vec<_>>().join(", ");
                for r in c.query(&format!("SELECT {select} FROM {table}"), &[])? {
                    let vals: Vec<String> = (0..cols.len()).map(|i| r.opt_text(i).map(|v| v.unwrap_or_default())).collect::<Result<_, _>>()?;
                    out.insert((table.clone(), vals.join("|")));
                }
            }
            Ok::<_, store::StoreError>(out)
        })
        .await
        .unwrap()
}

fn processes_naming(needle: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("nextest") && !cmd.contains("/it-") {
                out.insert(cmd);
            }
        }
    }
    out
}

fn cgroups_naming(needle: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for root in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let vibebase = root.path().join("vibebase");
        for entry in std::fs::read_dir(&vibebase).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains(needle) {
                out.insert(entry.path().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn delete_leaves_only_ledger_and_audit_rows() {
    let h = Harness::new().await;
    let keep = h.create_env("neighbour").await;
    let id = "doomed-env";
    let env = protocol::EnvId::parse(id).unwrap();
    let layout = h.platform.layout(&env);
    // The neighbour owns files and objects too; they must survive.
    let neighbour = h.platform.layout(&protocol::EnvId::parse("neighbour").unwrap());
    std::fs::create_dir_all(&neighbour.data_dir).unwrap();
    std::fs::write(&neighbour.sqlite_file, b"their app database").unwrap();
    h.platform
        .blobs()
        .put(&format!("{}storage/x", neighbour.object_prefix), bytes::Bytes::from_static(b"x"))
        .await
        .unwrap();
    let files_before = files(h.dir.path());
    let rows_before = rows(&h).await;
    let objects_before = h.platform.blobs().list("envs").await.unwrap();

    // Give the env one of everything it can own today.
    let a = h.create_env(id).await;
    let s = a.secret().to_owned();
    h.call(
        "POST",
        &format!("/v1/envs/{id}/keys/rotate"),
        Some(&s),
        Some(json!({"kind": "publishable", "overlap_seconds": 60})),
    )
    .await;
    h.call("POST", &format!("/v1/envs/{id}/tokens"), Some(&s), Some(json!({"ttl_seconds": 60, "session": "s"}))).await;
    let limits = json!({"quotas": [{"meter": "api_requests", "period": "day", "soft_limit": 1}]});
    h.call("PUT", &format!("/v1/envs/{id}/limits"), Some(&h.admin), Some(limits)).await;
    let hook = json!({"url": "http://127.0.0.1:9/h", "events": ["*"], "env": id});
    assert_eq!(h.call("POST", "/v1/webhooks", Some(&h.admin), Some(hook)).await.status, StatusCode::CREATED);
    for _ in 0..3 {
        h.call("GET", &format!("/env/{id}/rest/v1/t"), Some(a.publishable()), None).await;
    }
    // Its app database, with a table and a row.
    let migration = json!({"query": "create table t (id bigint primary key, v text); insert into t values (1, 'x');"});
    let r = h.call("POST", &format!("/v1/envs/{id}/sql"), Some(&s), Some(migration)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = h.call("GET", &format!("/env/{id}/rest/v1/t"), Some(a.publishable()), None).await;
    assert_eq!(r.json, json!([{"id": 1, "v": "x"}]), "{}", r.text);
    // An agent session with an event in its log.
    let r = h.call("POST", &format!("/v1/envs/{id}/sessions"), Some(&s), Some(json!({"id": "chat"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let log = agent::Log::new(h.platform.db().clone());
    let env = protocol::EnvId::parse(id).unwrap();
    assert!(log.acquire(&env, "chat", "test", 0, i64::MAX, Some("r1")).await.unwrap());
    let started = agent::event::Event::RunStarted { thread_id: "chat".into(), run_id: "r1".into() };
    log.append(&env, "chat", "test", vec![started], 0).await.unwrap();
    assert!(rows(&h).await.iter().any(|(t, r)| t == "agent_events" && r.starts_with(id)));
    // A verified custom domain with a stored certificate.
    let r = h
        .call("POST", &format!("/v1/envs/{id}/domains"), Some(&s), Some(json!({"domain": "doomed.example.com"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    h.dns.set_txt("_vibebase-challenge.doomed.example.com", &[r.json["verification"]["value"].as_str().unwrap()]);
    let r = h.call("POST", &format!("/v1/envs/{id}/domains/doomed.example.com/verify"), Some(&s), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    h.platform
        .db()
        .tx(|c| {
            c.execute(
                "INSERT INTO tls_certificates (domain, env_id, cert_pem, key_pem, not_after, updated_at)
                 VALUES ('doomed.example.com', 'doomed-env', 'cert', 'key', 0, 0)",
                &[],
            )
        })
        .await
        .unwrap();
    h.platform.flush_meters().await.unwrap();
    // What later capabilities keep per env lives under the names its layout derives.
    std::fs::create_dir_all(layout.data_dir.join("workspace")).unwrap();
    std::fs::write(layout.data_dir.join("workspace/index.html"), b"<h1>hi</h1>").unwrap();
    for k in ["deployments/d1/index.html", "storage/avatars/me.png", "snapshots/s1.tar"] {
        h.platform.blobs().put(&format!("{}{k}", layout.object_prefix), bytes::Bytes::from_static(b"x")).await.unwrap();
    }
    assert!(rows(&h).await.iter().any(|(t, r)| t == "quota_alerts" && r.starts_with(id)));
    assert_eq!(h.platform.blobs().list(&layout.object_prefix).await.unwrap().len(), 3);

    let r = h.call("DELETE", &format!("/v1/envs/{id}"), Some(&h.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    assert_eq!(files(h.dir.path()), files_before, "files left in the data dir");
    assert_eq!(h.platform.blobs().list("envs").await.unwrap(), objects_before, "objects left in the object store");
    let rows_after = rows(&h).await;
    let left: Vec<_> = rows_after.difference(&rows_before).filter(|(t, _)| !RETAINED.contains(&t.as_str())).collect();
    assert!(left.is_empty(), "rows left behind: {left:#?}");
    let gone: Vec<_> = rows_before.difference(&rows_after).collect();
    assert!(gone.is_empty(), "rows of others removed: {gone:#?}");
    let retained: BTreeSet<&str> = rows_after.difference(&rows_before).map(|(t, _)| t.as_str()).collect();
    assert_eq!(retained, RETAINED.into_iter().collect(), "ledger and audit rows are kept for billing");
    assert!(processes_naming(id).is_empty());
    // The app database went with it.
    if h.platform.db().dialect() == store::Dialect::Postgres {
        let like = format!("%{}", layout.database_name);
        let left = h
            .platform
            .db()
            .tx(move |c| c.query("SELECT datname::text FROM pg_database WHERE datname LIKE $1", &[like.into()]))
            .await
            .unwrap();
        assert!(left.is_empty(), "env database left behind");
    }
    assert!(cgroups_naming(id).is_empty());
    // The neighbour is untouched.
    assert_eq!(h.call("GET", "/v1/envs/neighbour", Some(keep.secret()), None).await.status, StatusCode::OK);
}
