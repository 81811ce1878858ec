//! The env's MCP server (`/env/{env}/mcp`, streamable HTTP) through the real router: initialize, list
//! and call the registry's tools in a real sandbox, JSON-RPC errors, sessions ending and idling out, and
//! other envs' keys and sessions refused.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness, Resp};

const ACCEPT_BOTH: &str = "application/json, text/event-stream";

fn rpc(id: i64, method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

async fn post(h: &Harness, env: &str, key: &str, session: Option<&str>, body: String) -> Resp {
    let mut headers = vec![("authorization", format!("Bearer {key}")), ("accept", ACCEPT_BOTH.to_owned())];
    if let Some(s) = session {
        headers.push(("mcp-session-id", s.to_owned()));
        headers.push(("mcp-protocol-version", "2025-06-18".to_owned()));
    }
    h.send("POST", &format!("/env/{env}/mcp"), &headers, Some(body)).await
}

/// Initializes a session and sends `notifications/initialized`, as clients do; returns the session id.
async fn initialize(h: &Harness, env: &str, key: &str) -> String {
    let params =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    let r = post(h, env, key, None, rpc(0, "initialize", params)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let session = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let r =
        post(h, env, key, Some(&session), json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::ACCEPTED, ""));
    session
}

async fn call(h: &Harness, env: &str, key: &str, session: &str, tool: &str, arguments: Value) -> Value {
    let r = post(h, env, key, Some(session), rpc(9, "tools/call", json!({"name": tool, "arguments": arguments}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["id"], 9, "{}", r.text);
    r.json["result"].clone()
}

fn text(result: &Value) -> &str {
    assert_eq!(result["content"][0]["type"], "text", "{result}");
    result["content"][0]["text"].as_str().unwrap()
}

fn need_sandboxes(h: &Harness) -> &sandbox::Sandboxes {
    match &h.sandboxes {
        Ok(s) => s,
        Err(e) => panic!("this test needs real sandboxes (root, bubblewrap): {e}"),
    }
}

fn env_id(s: &str) -> protocol::EnvId {
    protocol::EnvId::parse(s).unwrap()
}

#[tokio::test]
async fn initialize_list_and_call_tools_in_the_sessions_own_sandbox() {
    let h = Harness::new().await;
    let sandboxes = need_sandboxes(&h).clone();
    let a = h.create_env("mcp-a").await;
    let key = a.secret();
    let params =
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}});
    let r = post(&h, "mcp-a", key, None, rpc(1, "initialize", params)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["content-type"], "application/json");
    let session = r.headers["mcp-session-id"].to_str().unwrap().to_owned();
    assert!(session.len() >= 32 && session.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{session}");
    let result = &r.json["result"];
    assert_eq!(r.json["id"], 1);
    assert_eq!(result["protocolVersion"], "2025-06-18");
    assert!(result["capabilities"]["tools"].is_object(), "{result}");
    assert_eq!(result["serverInfo"]["name"], "vibebase");
    let r = post(
        &h,
        "mcp-a",
        key,
        Some(&session),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);

    let r = post(&h, "mcp-a", key, Some(&session), rpc(2, "ping", json!({}))).await;
    assert_eq!(r.json, json!({"jsonrpc": "2.0", "id": 2, "result": {}}));
    let r = post(&h, "mcp-a", key, Some(&session), rpc(3, "tools/list", json!({}))).await;
    let tools = r.json["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    let registry: Vec<String> = agent::tools::specs().into_iter().map(|t| t.name).collect();
    assert_eq!(names, registry, "the MCP server lists the agent's registry");
    let bash = tools.iter().find(|t| t["name"] == "bash").unwrap();
    assert_eq!(bash["inputSchema"]["required"], json!(["command"]));
    assert!(sandboxes.list(&env_id("mcp-a")).is_empty(), "listing tools starts no sandbox");

    let r =
        call(&h, "mcp-a", key, &session, "write_file", json!({"path": "notes/hello.txt", "content": "hi from mcp"}))
            .await;
    assert_eq!(r["isError"], false, "{r}");
    let r = call(&h, "mcp-a", key, &session, "read_file", json!({"path": "notes/hello.txt"})).await;
    assert_eq!((text(&r), &r["isError"]), ("hi from mcp", &json!(false)));
    let r = call(&h, "mcp-a", key, &session, "bash", json!({"command": "cat notes/hello.txt; pwd"})).await;
    assert_eq!(r["isError"], false, "{r}");
    assert!(text(&r).contains("hi from mcp") && text(&r).contains("/home/user"), "{r}");
    let r = call(&h, "mcp-a", key, &session, "bash", json!({"command": "exit 3"})).await;
    assert_eq!(r["isError"], true, "a failing command is a tool error: {r}");
    let r = call(&h, "mcp-a", key, &session, "no_such_tool", json!({})).await;
    assert_eq!(r["isError"], true);
    assert!(text(&r).contains("no tool named"), "{r}");
    let r = call(&h, "mcp-a", key, &session, "read_file", json!({"file": "x"})).await;
    assert!(r["isError"] == true && text(&r).contains("invalid arguments"), "{r}");

    // One sandbox, working for (and metered under) this MCP session.
    let live = sandboxes.list(&env_id("mcp-a"));
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].session.as_deref(), Some(session.as_str()));

    // A second session has its own sandbox: it does not see the first one's files.
    let other = initialize(&h, "mcp-a", key).await;
    assert_ne!(other, session);
    let r = call(&h, "mcp-a", key, &other, "read_file", json!({"path": "notes/hello.txt"})).await;
    assert_eq!(r["isError"], true, "{r}");
    assert_eq!(sandboxes.list(&env_id("mcp-a")).len(), 2);

    // A client that accepts only SSE gets the response as one SSE event.
    let headers = [
        ("authorization", format!("Bearer {key}")),
        ("accept", "text/event-stream".to_owned()),
        ("mcp-session-id", session.clone()),
    ];
    let r = h.send("POST", "/env/mcp-a/mcp", &headers, Some(rpc(4, "ping", json!({})))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert_eq!(r.text, "event: message\ndata: {\"id\":4,\"jsonrpc\":\"2.0\",\"result\":{}}\n\n");

    // DELETE ends the session and kills its sandbox; the id is unknown afterwards.
    let auth = [("authorization", format!("Bearer {key}")), ("mcp-session-id", session.clone())];
    let r = h.send("DELETE", "/env/mcp-a/mcp", &auth, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let live = sandboxes.list(&env_id("mcp-a"));
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].session.as_deref(), Some(other.as_str()));
    let r = post(&h, "mcp-a", key, Some(&session), rpc(5, "ping", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!((r.json["id"].clone(), r.json["error"]["code"].clone()), (Value::Null, json!(-32001)), "{}", r.text);
    let r = h.send("DELETE", "/env/mcp-a/mcp", &auth, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // An idle session ends by itself (here: found idle by the next initialize's sweep), sandbox and all.
    h.clock.advance(Duration::from_secs(31 * 60));
    let r = post(&h, "mcp-a", key, Some(&other), rpc(6, "ping", json!({}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "an idle session is gone");
    initialize(&h, "mcp-a", key).await;
    assert!(sandboxes.list(&env_id("mcp-a")).is_empty(), "the idle session's sandbox was killed");
    sandboxes.kill_all().await;
}

#[tokio::test]
async fn protocol_versions_are_negotiated() {
    let h = Harness::new().await;
    let a = h.create_env("mcp-a").await;
    for (asked, answered) in [("2025-03-26", "2025-03-26"), ("2025-06-18", "2025-06-18"), ("2030-01-01", "2025-06-18")]
    {
        let r = post(
            &h,
            "mcp-a",
            a.secret(),
            None,
            rpc(1, "initialize", json!({"protocolVersion": asked, "capabilities": {}})),
        )
        .await;
        assert_eq!(r.json["result"]["protocolVersion"], answered, "{}", r.text);
    }
}

#[tokio::test]
async fn bad_messages_get_json_rpc_errors_and_change_nothing() {
    let h = Harness::new().await;
    let a = h.create_env("mcp-a").await;
    let key = a.secret();
    let session = initialize(&h, "mcp-a", key).await;
    let envelope = |r: &Resp, status: StatusCode, code: i64| {
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.json["jsonrpc"], "2.0", "{}", r.text);
        assert_eq!(r.json["id"], Value::Null, "{}", r.text);
        assert_eq!(r.json["error"]["code"], code, "{}", r.text);
        assert!(r.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", r.text);
    };
    let r = post(&h, "mcp-a", key, Some(&session), "{not json".to_owned()).await;
    envelope(&r, StatusCode::BAD_REQUEST, -32700);
    let batch = format!("[{}]", rpc(1, "ping", json!({})));
    envelope(&post(&h, "mcp-a", key, Some(&session), batch).await, StatusCode::BAD_REQUEST, -32600);
    let r =
        post(&h, "mcp-a", key, Some(&session), json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}).to_string()).await;
    envelope(&r, StatusCode::BAD_REQUEST, -32600);
    let r = post(&h, "mcp-a", key, Some(&session), json!({"jsonrpc": "2.0", "id": null, "method": "ping"}).to_string())
        .await;
    envelope(&r, StatusCode::BAD_REQUEST, -32600);
    // After initialize, a message needs its session.
    envelope(&post(&h, "mcp-a", key, None, rpc(1, "ping", json!({}))).await, StatusCode::BAD_REQUEST, -32600);
    envelope(
        &post(&h, "mcp-a", key, Some("mcp_unknown"), rpc(1, "ping", json!({}))).await,
        StatusCode::NOT_FOUND,
        -32001,
    );
    let auth = ("authorization", format!("Bearer {key}"));
    let with = |extra: &[(&'static str, &str)]| {
        let mut v = vec![auth.clone(), ("mcp-session-id", session.clone())];
        v.extend(extra.iter().map(|(k, x)| (*k, (*x).to_owned())));
        v
    };
    let r = h
        .send("POST", "/env/mcp-a/mcp", &with(&[("content-type", "text/plain")]), Some(rpc(1, "ping", json!({}))))
        .await;
    envelope(&r, StatusCode::UNSUPPORTED_MEDIA_TYPE, -32001);
    let r = h.send("POST", "/env/mcp-a/mcp", &with(&[("accept", "text/html")]), Some(rpc(1, "ping", json!({})))).await;
    envelope(&r, StatusCode::NOT_ACCEPTABLE, -32001);
    let r = h
        .send(
            "POST",
            "/env/mcp-a/mcp",
            &with(&[("mcp-protocol-version", "1999-01-01")]),
            Some(rpc(1, "ping", json!({}))),
        )
        .await;
    envelope(&r, StatusCode::BAD_REQUEST, -32600);
    let r = h.send("GET", "/env/mcp-a/mcp", &with(&[("accept", "text/event-stream")]), None).await;
    envelope(&r, StatusCode::METHOD_NOT_ALLOWED, -32001);
    assert_eq!(r.headers["allow"], "POST, DELETE");

    // Errors of a request are its JSON-RPC response (HTTP 200, the request's id).
    let answer = |r: &Resp, id: i64, code: i64| {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!((r.json["id"].clone(), r.json["error"]["code"].clone()), (json!(id), json!(code)), "{}", r.text);
    };
    answer(&post(&h, "mcp-a", key, Some(&session), rpc(11, "resources/list", json!({}))).await, 11, -32601);
    let bad_args = rpc(12, "tools/call", json!({"name": "bash", "arguments": "ls"}));
    answer(&post(&h, "mcp-a", key, Some(&session), bad_args).await, 12, -32602);
    let no_name = rpc(13, "tools/call", json!({"arguments": {}}));
    answer(&post(&h, "mcp-a", key, Some(&session), no_name).await, 13, -32602);
    answer(&post(&h, "mcp-a", key, Some(&session), rpc(14, "initialize", json!({}))).await, 14, -32602);
    let r = post(&h, "mcp-a", key, None, rpc(15, "initialize", json!({"capabilities": {}}))).await;
    answer(&r, 15, -32602);
    assert!(r.headers.get("mcp-session-id").is_none(), "a refused initialize starts no session");
    // None of it started a sandbox, and the session still works.
    if let Ok(s) = &h.sandboxes {
        assert!(s.list(&env_id("mcp-a")).is_empty());
    }
    let r = post(&h, "mcp-a", key, Some(&session), rpc(16, "ping", json!({}))).await;
    assert_eq!(r.json["result"], json!({}), "{}", r.text);
}

#[tokio::test]
async fn other_envs_keys_and_sessions_are_refused_for_every_tool() {
    let h = Harness::new().await;
    let a = h.create_env("mcp-a").await;
    let b = h.create_env("mcp-b").await;
    let session = initialize(&h, "mcp-a", a.secret()).await;
    let b_session = initialize(&h, "mcp-b", b.secret()).await;
    // Only the env's secret key reaches MCP: not its publishable key, not another env's key.
    for key in [a.publishable(), b.secret(), b.publishable()] {
        let r = post(&h, "mcp-a", key, None, rpc(1, "initialize", json!({"protocolVersion": "2025-06-18"}))).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
        assert_eq!(r.json["error"]["code"], -32001, "{}", r.text);
        // Refused before anything is read: even a body that is not JSON gets the 403.
        let r = post(&h, "mcp-a", key, Some(&session), "{oops".to_owned()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    }
    let tools: Vec<String> = agent::tools::specs().into_iter().map(|t| t.name).collect();
    for tool in &tools {
        let msg =
            rpc(2, "tools/call", json!({"name": tool, "arguments": {"command": "true", "path": "x", "pattern": "x"}}));
        // B's key on A's endpoint with A's session: 403 at the gate.
        let r = post(&h, "mcp-a", b.secret(), Some(&session), msg.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{tool}: {}", r.text);
        // A's session id under B's env: not a session of B.
        let r = post(&h, "mcp-b", b.secret(), Some(&session), msg.clone()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{tool}: {}", r.text);
        // …and B's session under A's env is not A's.
        let r = post(&h, "mcp-a", a.secret(), Some(&b_session), msg).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{tool}: {}", r.text);
    }
    let r = h
        .send(
            "DELETE",
            "/env/mcp-b/mcp",
            &[("authorization", format!("Bearer {}", b.secret())), ("mcp-session-id", session.clone())],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "B cannot end A's session");
    if let Ok(s) = &h.sandboxes {
        assert!(s.list(&env_id("mcp-a")).is_empty() && s.list(&env_id("mcp-b")).is_empty());
    }
    let r = post(&h, "mcp-a", a.secret(), Some(&session), rpc(3, "ping", json!({}))).await;
    assert_eq!(r.json["result"], json!({}), "A's session is intact: {}", r.text);
}

#[tokio::test]
async fn named_hands_and_bucket_tools_over_mcp_stay_in_the_session_and_its_env() {
    let h = Harness::new().await;
    let sandboxes = need_sandboxes(&h).clone();
    let a = h.create_env("mcp-a").await;
    let b = h.create_env("mcp-b").await;
    let session = initialize(&h, "mcp-a", a.secret()).await;
    let b_session = initialize(&h, "mcp-b", b.secret()).await;
    let call_a = |tool: &'static str, args: Value| call(&h, "mcp-a", a.secret(), &session, tool, args);

    // Each hand is a sandbox of its own.
    let r = call_a("write_file", json!({"path": "pic.svg", "content": "<svg/>", "sandbox": "assets"})).await;
    assert_eq!(r["isError"], false, "{r}");
    let r = call_a("read_file", json!({"path": "pic.svg"})).await;
    assert_eq!(r["isError"], true, "the main hand does not see the assets hand's files: {r}");
    let r = call_a("read_file", json!({"path": "pic.svg", "sandbox": "assets"})).await;
    assert_eq!(text(&r), "<svg/>");
    let r = call_a("bash", json!({"command": "true", "sandbox": "../x"})).await;
    assert!(r["isError"] == true && text(&r).starts_with("invalid arguments: sandbox"), "{r}");
    assert_eq!(sandboxes.list(&env_id("mcp-a")).len(), 2);

    // Bucket tools act on the session's env only.
    let r = call_a("create_bucket", json!({"name": "pics", "public": true})).await;
    assert_eq!(r["isError"], false, "{r}");
    let r =
        call_a("upload_file", json!({"bucket": "pics", "path": "p.svg", "file": "pic.svg", "sandbox": "assets"})).await;
    assert!(text(&r).starts_with("uploaded pics/p.svg (6 bytes, image/svg+xml)"), "{r}");
    let r = call_a("upload_file", json!({"bucket": "pics", "path": "q.svg", "file": "pic.svg"})).await;
    assert!(r["isError"] == true && text(&r).contains("could not read pic.svg"), "the main hand has no such file: {r}");
    let public = h.send("GET", "/env/mcp-a/storage/v1/object/public/pics/p.svg", &[], None).await;
    assert_eq!((public.status, public.text.as_str()), (StatusCode::OK, "<svg/>"));
    let r = call(&h, "mcp-b", b.secret(), &b_session, "list_buckets", json!({})).await;
    assert_eq!(text(&r), "(no buckets)");
    let r = call(&h, "mcp-b", b.secret(), &b_session, "list_objects", json!({"bucket": "pics"})).await;
    assert!(r["isError"] == true && text(&r).starts_with("error NoSuchBucket"), "{r}");
    let r = call(&h, "mcp-b", b.secret(), &b_session, "update_bucket", json!({"name": "pics", "public": false})).await;
    assert!(r["isError"] == true && text(&r).starts_with("error NoSuchBucket"), "{r}");
    let r = call_a("list_objects", json!({"bucket": "pics"})).await;
    assert_eq!(text(&r), "p.svg (6 bytes, image/svg+xml)");
    let r = call_a("update_bucket", json!({"name": "pics", "public": false, "file_size_limit": 1048576})).await;
    assert_eq!(text(&r), "updated bucket pics (private, files up to 1048576 bytes)");

    // Ending the session kills every hand.
    let auth = [("authorization", format!("Bearer {}", a.secret())), ("mcp-session-id", session.clone())];
    let r = h.send("DELETE", "/env/mcp-a/mcp", &auth, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(sandboxes.list(&env_id("mcp-a")).is_empty());
    sandboxes.kill_all().await;
}
