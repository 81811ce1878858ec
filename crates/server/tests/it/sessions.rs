//! Agent sessions through the real router: a scripted OpenAI-compatible mock upstream plays the model,
//! real bubblewrap sandboxes run the tools. The log is the AG-UI stream: these tests read it as a client
//! does (SSE, `Last-Event-ID`, AG-UI's entry point) and check what a crash leaves behind is closed
//! without running anything twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use crate::harness::{EnvKeysExt, Harness};

#[derive(Clone, Default)]
struct Mock {
    calls: Arc<AtomicUsize>,
    /// The message list of each request, in order.
    requests: Arc<std::sync::Mutex<Vec<Value>>>,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// A command that writes SIDE into side.txt, says it is ready and waits for a `go` file.
const WAIT_FOR_GO: &str = "echo SIDE > side.txt; touch ready; \
    for i in $(seq 600); do [ -e go ] && echo released SIDE && exit 0; sleep 0.1; done; exit 1";

/// The tool calls the scripted model makes for a user message containing the key, in order, one per
/// answer; a call named `parallel` is an answer with several calls (`[[name, arguments], …]`).
fn script(user_text: &str) -> Vec<(&'static str, Value)> {
    let open = "create table notes (id bigint primary key, body text);";
    let safe = "create table notes (id bigint primary key, body text, owner uuid default auth.uid()); \
                alter table notes enable row level security; \
                create policy own on notes for all using (owner = auth.uid());";
    let scripts: [(&str, Vec<(&str, Value)>); 16] = [
        ("tool", vec![("bash", json!({"command": "echo hello-from-sandbox > out.txt && cat out.txt"}))]),
        ("rls", vec![("apply_migration", json!({"sql": open}))]),
        ("safe", vec![("apply_migration", json!({"sql": safe}))]),
        (
            "site",
            vec![
                ("write_file", json!({"path": "dist/index.html", "content": "<h1>agent site</h1>"})),
                ("deploy_site", json!({"dir": "dist"})),
            ],
        ),
        ("info", vec![("env_info", json!({}))]),
        ("query rows", vec![("query_data", json!({"table": "notes", "query": "select=id,body"}))]),
        (
            "container",
            vec![
                (
                    "write_file",
                    json!({"path": "api/server.js", "content": "require('http').createServer((q, r) => r.end('from the app ' + q.url)).listen(process.env.PORT, '127.0.0.1');"}),
                ),
                ("deploy_app", json!({"name": "api", "dir": "api", "command": "node server.js", "port": 3000})),
            ],
        ),
        ("app logs", vec![("read_logs", json!({"kind": "app", "name": "api"}))]),
        (
            "background",
            vec![
                ("start_process", json!({"command": "echo bg-started; sleep 60"})),
                ("bash", json!({"command": "sleep 1"})),
                // The mock fills in the pid from the first result (see `completions`).
                ("process_output", json!({"pid": 0})),
                ("stop_process", json!({"pid": 0})),
                ("process_output", json!({"pid": 0})),
            ],
        ),
        (
            "redo",
            vec![
                ("write_file", json!({"path": "dist/index.html", "content": "<h1>second site</h1>"})),
                ("deploy_site", json!({"dir": "dist"})),
            ],
        ),
        ("peek", vec![("read_file", json!({"path": "dist/index.html"}))]),
        (
            "buckets",
            vec![
                ("write_file", json!({"path": "seed/hello.txt", "content": "hello bucket"})),
                (
                    "create_bucket",
                    json!({"name": "media", "public": true, "allowed_mime_types": ["text/*", "image/*"]}),
                ),
                ("upload_file", json!({"bucket": "media", "path": "docs/hello.txt", "file": "seed/hello.txt"})),
                ("list_objects", json!({"bucket": "media", "prefix": "docs"})),
                ("list_buckets", json!({})),
            ],
        ),
        (
            "bad storage",
            vec![
                ("create_bucket", json!({"name": "bad/name"})),
                ("create_bucket", json!({"name": "odd", "allowed_mime_types": ["not a type"]})),
                ("create_bucket", json!({"name": "odd", "colour": "red"})),
                ("create_bucket", json!({"name": "media"})),
                ("upload_file", json!({"bucket": "media", "path": "a.txt", "file": "missing.txt"})),
                (
                    "upload_file",
                    json!({"bucket": "media", "path": "x.bin", "file": "seed/hello.txt", "content_type": "application/zip"}),
                ),
                ("upload_file", json!({"bucket": "nope", "path": "a.txt", "file": "seed/hello.txt"})),
                ("upload_file", json!({"bucket": "media", "path": "docs/hello.txt", "file": "seed/hello.txt"})),
                ("upload_file", json!({"bucket": "media", "path": "../escape.txt", "file": "seed/hello.txt"})),
            ],
        ),
        (
            // Two hands in one answer: each waits (at most a minute) for a `go` file only the test writes,
            // once it has seen both waiting, so the answer can only finish if they ran at the same time.
            "two hands",
            vec![(
                "parallel",
                json!([
                    ["bash", {"command": WAIT_FOR_GO.replace("SIDE", "main-side")}],
                    ["bash", {"command": WAIT_FOR_GO.replace("SIDE", "web-side"), "sandbox": "web"}],
                    ["read_file", {"path": "side.txt", "sandbox": "web"}],
                ]),
            )],
        ),
        ("look at web", vec![("read_file", json!({"path": "side.txt", "sandbox": "web"}))]),
        (
            "too many hands",
            vec![(
                "parallel",
                json!([
                    ["bash", {"command": "true", "sandbox": "h1"}],
                    ["bash", {"command": "true", "sandbox": "h2"}],
                    ["bash", {"command": "true", "sandbox": "h3"}],
                    ["bash", {"command": "true", "sandbox": "h4"}],
                    ["bash", {"command": "true", "sandbox": "h5"}],
                    ["bash", {"command": "true", "sandbox": "Not-A-Name"}],
                ]),
            )],
        ),
    ];
    scripts.into_iter().find(|(k, _)| user_text.contains(k)).map(|(_, s)| s).unwrap_or_default()
}

/// The scripted model: the user's message picks a script of tool calls ([`script`]), made one per
/// answer; after the last, "saw: <the last tool result>". "slow" → text trickling out for seconds;
/// anything else → an echo with the message count.
async fn completions(State(m): State<Mock>, body: String) -> Response {
    m.calls.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().unwrap().clone();
    m.requests.lock().unwrap().push(Value::Array(messages.clone()));
    let last = messages.last().unwrap().clone();
    if last["content"] == "Summarize the conversation above." {
        let frames = format!(
            "{}{}data: [DONE]\n\n",
            chunk(json!({"role": "assistant", "content": "SUMMARY-OF-EARLIER"}), None),
            chunk(json!({}), Some("stop"))
        );
        return Response::builder().header("content-type", "text/event-stream").body(Body::from(frames)).unwrap();
    }
    let user_at = messages.iter().rposition(|m| m["role"] == "user").unwrap();
    let user_text = messages[user_at]["content"].as_str().unwrap_or_default().to_owned();
    let step = messages[user_at..].iter().filter(|m| m["role"] == "assistant" && m["tool_calls"].is_array()).count();
    let script = script(&user_text);
    let frames: Vec<(String, u64)> = if let Some(("parallel", calls)) = script.get(step) {
        let mut f: Vec<(String, u64)> = calls
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let call = json!({"index": i, "id": format!("call_p{i}"), "type": "function",
                    "function": {"name": c[0], "arguments": c[1].to_string()}});
                (chunk(json!({"role": "assistant", "tool_calls": [call]}), None), 0)
            })
            .collect();
        f.push((chunk(json!({}), Some("tool_calls")), 0));
        f
    } else if let Some((name, args)) = script.get(step) {
        let mut args = args.clone();
        if args.get("pid").is_some() {
            // The pid the first tool of the script started.
            let started = messages[user_at..].iter().find(|m| m["role"] == "tool").unwrap();
            let text = started["content"].as_str().unwrap();
            let pid: u64 = text.split_whitespace().nth(2).unwrap().trim_end_matches(';').parse().unwrap();
            args["pid"] = json!(pid);
        }
        let args = args.to_string();
        let (a, b) = args.split_at(args.len() / 2);
        vec![
            (
                chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": format!("call_x{}", step + 1), "type": "function",
                        "function": {"name": name, "arguments": a}}]}),
                    None,
                ),
                0,
            ),
            (chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}), None), 0),
            (chunk(json!({}), Some("tool_calls")), 0),
        ]
    } else if last["role"] == "tool" {
        let seen: String = last["content"].as_str().unwrap_or_default().chars().take(200).collect();
        vec![
            (chunk(json!({"role": "assistant", "content": format!("saw: {seen}")}), None), 0),
            (chunk(json!({}), Some("stop")), 0),
        ]
    } else if user_text.contains("slow") {
        let mut f: Vec<(String, u64)> =
            (0..60).map(|i| (chunk(json!({"content": format!("part{i} ")}), None), 150)).collect();
        f.push((chunk(json!({}), Some("stop")), 0));
        f
    } else {
        vec![
            (chunk(json!({"role": "assistant", "content": format!("echo: {user_text}; ")}), None), 0),
            (chunk(json!({"content": format!("messages: {}", messages.len())}), None), 0),
            (chunk(json!({}), Some("stop")), 0),
        ]
    };
    let stream = futures_util::stream::unfold(frames.into_iter(), |mut it| async move {
        let (frame, delay) = it.next()?;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        Some((Ok::<_, std::convert::Infallible>(frame), it))
    });
    let tail = futures_util::stream::once(async { Ok("data: [DONE]\n\n".to_owned()) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(futures_util::StreamExt::chain(stream, tail)))
        .unwrap()
}

async fn setup() -> (Harness, Mock, String) {
    let mock = Mock::default();
    let app =
        axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut h = Harness::new().await;
    let models = json!({
        "providers": {"mock": {"kind": "openai", "base_url": format!("http://{addr}/v1")}},
        "models": [{"name": "m", "routes": [{"provider": "mock"}]}, {"name": "m2", "routes": [{"provider": "mock"}]},
            {"name": "tiny", "routes": [{"provider": "mock"}], "context_window": 6000}],
    });
    h.use_models(&models.to_string());
    let env = h.create_env("agent-a").await;
    (h, mock, env.secret().to_owned())
}

/// (sequence number, event) of an SSE body.
fn frames(text: &str) -> Vec<(i64, Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            Some((id?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}

fn kinds(events: &[(i64, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(_, e)| match e["type"].as_str().unwrap() {
            "CUSTOM" => e["name"].as_str().unwrap().to_owned(),
            t => t.to_owned(),
        })
        .collect()
}

async fn wait_idle(h: &Harness, key: &str, session: &str) -> Value {
    for _ in 0..400 {
        let r = h.call("GET", &format!("/v1/envs/agent-a/sessions/{session}"), Some(key), None).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        if r.json["status"] == "idle" {
            return r.json;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("session {session} did not finish its run");
}

async fn history(h: &Harness, key: &str, session: &str, last_event_id: Option<i64>) -> Vec<(i64, Value)> {
    let mut headers = vec![("authorization", format!("Bearer {key}"))];
    if let Some(id) = last_event_id {
        headers.push(("last-event-id", id.to_string()));
    }
    let r = h.send("GET", &format!("/v1/envs/agent-a/sessions/{session}/events?follow=false"), &headers, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    frames(&r.text)
}

#[tokio::test]
async fn a_run_with_a_tool_call_streams_ag_ui_events_and_resumes_after_last_event_id() {
    let (h, mock, key) = setup().await;
    if h.sandboxes.is_err() {
        panic!("this test needs real sandboxes (root, bubblewrap): {:?}", h.sandboxes.as_ref().err());
    }
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"model": "m", "title": "t"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_owned();
    let r = h
        .call(
            "POST",
            &format!("/v1/envs/agent-a/sessions/{id}/messages"),
            Some(&key),
            Some(json!({"content": "use a tool"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let run_id = r.json["run_id"].as_str().unwrap().to_owned();
    let session = wait_idle(&h, &key, &id).await;
    let all = history(&h, &key, &id, None).await;
    let seqs: Vec<i64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=all.len() as i64).collect::<Vec<_>>(), "sequence numbers are dense from 1");
    assert_eq!(session["last_seq"], json!(all.len()));
    let k = kinds(&all);
    let expected = [
        "RUN_STARTED",
        "vibebase.user_message",
        "vibebase.model_request",
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "vibebase.model_response",
        "vibebase.sandbox_attach",
        "TOOL_CALL_RESULT",
        // The turn changed the workspace: its checkpoint comes before the next model call.
        "vibebase.checkpoint",
        "STATE_SNAPSHOT",
        "vibebase.model_request",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "vibebase.model_response",
        "RUN_FINISHED",
    ];
    assert_eq!(k, expected, "{all:#?}");
    let state = &all.iter().find(|(_, e)| e["type"] == "STATE_SNAPSHOT").unwrap().1;
    assert!(state["snapshot"]["workspace"]["snapshot"].as_str().is_some(), "the app's state after the turn: {state}");
    assert_eq!(all[0].1["runId"], json!(run_id));
    assert_eq!(all[0].1["threadId"], json!(id));
    let args: String =
        all.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_ARGS").map(|(_, e)| e["delta"].as_str().unwrap()).collect();
    assert!(args.contains("hello-from-sandbox > out.txt"), "{args}");
    let result = &all[8].1;
    assert_eq!(result["toolCallId"], all[3].1["toolCallId"], "the result answers the call");
    assert!(result["toolCallId"].as_str().unwrap().starts_with("call_"));
    assert!(result["content"].as_str().unwrap().contains("hello-from-sandbox"), "{result}");
    let text = &all[13].1["delta"];
    assert!(text.as_str().unwrap().starts_with("saw: exit code: 0"), "{text}");
    assert_eq!(mock.calls.load(Ordering::SeqCst), 2);
    // Turns and tool calls are in the ledger, metered with their log rows.
    let usage = h.usage_totals("agent-a").await;
    assert_eq!((usage.get("agent_turns"), usage.get("agent_tool_calls")), (Some(&2), Some(&1)), "{usage:?}");

    // A client that saw up to 5 gets exactly the rest.
    let rest = history(&h, &key, &id, Some(5)).await;
    assert_eq!(rest, all[5..].to_vec());
    let none = history(&h, &key, &id, Some(all.len() as i64)).await;
    assert!(none.is_empty());

    // The workspace survives the sandbox: kill it, and the next run's tool gets a fresh sandbox
    // restored from the checkpoint.
    let sb = session["sandbox_id"].as_str().unwrap().to_owned();
    h.sandboxes.as_ref().unwrap().kill(&protocol::EnvId::parse("agent-a").unwrap(), &sb).await.unwrap();
    let r = h
        .call(
            "POST",
            &format!("/v1/envs/agent-a/sessions/{id}/messages"),
            Some(&key),
            Some(json!({"content": "tool again"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let session = wait_idle(&h, &key, &id).await;
    assert_ne!(session["sandbox_id"].as_str().unwrap(), sb);
    let tail = history(&h, &key, &id, Some(all.len() as i64)).await;
    let k = kinds(&tail);
    assert!(k.contains(&"vibebase.sandbox_detach".to_owned()), "{k:?}");
    assert_eq!(k.last().unwrap(), "RUN_FINISHED");
    h.sandboxes.as_ref().unwrap().kill_all().await;
}

#[tokio::test]
async fn ag_ui_entry_starts_and_continues_a_thread() {
    let (h, _mock, key) = setup().await;
    let hook = json!({"url": "http://127.0.0.1:9/hook", "events": ["session.run_finished", "session.run_failed"], "env": "agent-a"});
    let hook = h.call("POST", "/v1/webhooks", Some(&h.admin), Some(hook)).await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text);
    let input = |text: &str| {
        json!({"threadId": "thread-1", "runId": format!("run-{}", text.len()), "state": {}, "tools": [], "context": [],
            "forwardedProps": {"model": "m"},
            "messages": [{"id": "u1", "role": "user", "content": text}]})
    };
    let r = h.call("POST", "/v1/envs/agent-a/agent", Some(&key), Some(input("hello"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let first = frames(&r.text);
    let k = kinds(&first);
    assert_eq!(k.first().unwrap(), "RUN_STARTED");
    assert_eq!(k.last().unwrap(), "RUN_FINISHED");
    assert_eq!(first[0].1["threadId"], "thread-1");
    let text: String = first
        .iter()
        .filter(|(_, e)| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    // The system prompt is the first message the model gets.
    assert_eq!(text, "echo: hello; messages: 2");

    // The run's end and the session's release are one write: once a client has seen RUN_FINISHED, the
    // session takes the next run.
    let r = h.call("GET", "/v1/envs/agent-a/sessions/thread-1", Some(&key), None).await;
    assert_eq!(r.json["status"], "idle", "{}", r.text);

    // The same threadId continues the session: the model sees the earlier exchange.
    let r = h.call("POST", "/v1/envs/agent-a/agent", Some(&key), Some(input("again!"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let second = frames(&r.text);
    assert_eq!(second[0].0, first.last().unwrap().0 + 1, "the second run's stream starts where the first ended");
    let text: String = second
        .iter()
        .filter(|(_, e)| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|(_, e)| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "echo: again!; messages: 4");
    let r = h.call("GET", "/v1/envs/agent-a/sessions", Some(&key), None).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["items"][0]["id"], "thread-1");
    // Each finished run queued its webhook, with the session and run.
    let log = format!("/v1/webhooks/{}/deliveries", hook.json["id"].as_str().unwrap());
    let log = h.call("GET", &log, Some(&h.admin), None).await;
    let items = log.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", log.text);
    assert!(items.iter().all(|d| d["event_type"] == "session.run_finished"), "{}", log.text);

    // Another env's key cannot post on this env's thread (the gate refuses before anything is read).
    let b = h.create_env("agent-b").await;
    let r = h.call("POST", "/v1/envs/agent-a/agent", Some(b.secret()), Some(input("steal"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // Under its own env, the same thread id is a different, new session.
    let r = h.call("POST", "/v1/envs/agent-b/agent", Some(b.secret()), Some(input("mine"))).await;
    let text: String = frames(&r.text)
        .iter()
        .filter(|(_, e)| e["type"] == "TEXT_MESSAGE_CONTENT")
        .map(|(_, e)| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "echo: mine; messages: 2");
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let (h, _mock, key) = setup().await;
    let post = |path: &str, body: Value| {
        let path = format!("/v1/envs/agent-a{path}");
        let key = key.clone();
        let h = &h;
        async move { h.call("POST", &path, Some(&key), Some(body)).await }
    };
    let r = post("/sessions", json!({"id": "bad id!"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_session_id")));
    let r = post("/sessions", json!({"model": "nope"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("model_not_found")));
    let r = post("/sessions", json!({"unknown": 1})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post("/sessions", json!({"id": "s1"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post("/sessions", json!({"id": "s1"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("session_exists")));
    let r = post("/sessions/s1/messages", json!({"content": "hi"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("no_model")), "{}", r.text);
    let r = post("/sessions/s1/messages", json!({"content": "", "model": "m"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_message")));
    let r = post("/sessions/s1/messages", json!({"content": "a\u{0}b", "model": "m"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")));
    let r = post("/sessions/nope/messages", json!({"content": "hi", "model": "m"})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("session_not_found")));
    let r = post("/agent", json!({"threadId": "t", "messages": []})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_message")));
    let headers = [("authorization", format!("Bearer {key}")), ("last-event-id", "x".to_owned())];
    let r = h.send("GET", "/v1/envs/agent-a/sessions/s1/events", &headers, None).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_last_event_id")));
    // Nothing was written by the refused messages.
    let r = h.call("GET", "/v1/envs/agent-a/sessions/s1", Some(&key), None).await;
    assert_eq!((r.json["last_seq"].as_i64(), r.json["status"].as_str()), (Some(0), Some("idle")));
    let r = h.call("GET", "/v1/envs/agent-a/sessions", Some(&key), None).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn interrupt_stops_a_run_and_a_busy_session_refuses_a_second_run() {
    let (h, _mock, key) = setup().await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "s", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let send =
        |text: &str| h.call("POST", "/v1/envs/agent-a/sessions/s/messages", Some(&key), Some(json!({"content": text})));
    assert_eq!(send("be slow").await.status, StatusCode::ACCEPTED);
    let r = send("me too").await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("session_busy")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions/s/interrupt", Some(&key), None).await;
    assert_eq!(r.json["interrupted"], true, "{}", r.text);
    // The heartbeat (every lease_ttl / 3 = 5 s) carries the request to the driver.
    wait_idle(&h, &key, "s").await;
    let all = history(&h, &key, "s", None).await;
    let last = &all.last().unwrap().1;
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("RUN_ERROR"), Some("interrupted")), "{all:#?}");
    let k = kinds(&all);
    assert!(k.contains(&"TEXT_MESSAGE_END".to_owned()), "the cut message is closed: {k:?}");
    let parts = all.iter().filter(|(_, e)| e["type"] == "TEXT_MESSAGE_CONTENT").count();
    assert!(parts >= 1, "{k:?}");
    // The session takes the next message.
    assert_eq!(send("hello").await.status, StatusCode::ACCEPTED);
    wait_idle(&h, &key, "s").await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions/s/interrupt", Some(&key), None).await;
    assert_eq!(r.json["interrupted"], false);
}

#[tokio::test]
async fn another_instance_resumes_a_run_whose_driver_died_and_never_reruns_its_tool() {
    let (h, mock, key) = setup().await;
    let env = protocol::EnvId::parse("agent-a").unwrap();
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "s", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    // A driver that died after recording a tool call's intent: its lease is held, and will expire.
    let log = agent::Log::new(h.platform.db().clone());
    let now = h.platform.clock().now_ms();
    assert!(log.acquire(&env, "s", "dead-instance", now, now + 15_000, Some("r1")).await.unwrap());
    use agent::event::{Event, custom};
    let events = vec![
        Event::RunStarted { thread_id: "s".into(), run_id: "r1".into() },
        Event::custom(custom::USER_MESSAGE, json!({"messageId": "u", "content": "use a tool"})),
        Event::custom(custom::MODEL_REQUEST, json!({"model": "m", "turn": 0})),
        Event::ToolCallStart {
            tool_call_id: "call_dead".into(),
            tool_call_name: "bash".into(),
            parent_message_id: None,
        },
        Event::ToolCallArgs { tool_call_id: "call_dead".into(), delta: "{\"command\":\"touch ran.txt\"}".into() },
        Event::ToolCallEnd { tool_call_id: "call_dead".into() },
    ];
    log.append(&env, "s", "dead-instance", events, now).await.unwrap();
    // The survivor: its own runtime on the same platform store.
    let survivor = agent::Agent::new(
        h.platform.clone(),
        h.gateway.clone().unwrap(),
        None,
        agent::AgentConfig { default_model: Some("m".into()), ..Default::default() },
    );
    assert_eq!(survivor.sweep().await.unwrap(), 0, "a live lease is not taken");
    h.clock.advance(Duration::from_secs(16));
    assert_eq!(survivor.sweep().await.unwrap(), 1);
    wait_idle(&h, &key, "s").await;
    let all = history(&h, &key, "s", None).await;
    let k = kinds(&all);
    assert_eq!(
        k[6..],
        [
            "vibebase.resumed",
            "TOOL_CALL_RESULT",
            "vibebase.model_request",
            "TEXT_MESSAGE_START",
            "TEXT_MESSAGE_CONTENT",
            "TEXT_MESSAGE_END",
            "vibebase.model_response",
            "RUN_FINISHED"
        ],
        "{all:#?}"
    );
    let result = &all[7].1;
    assert_eq!(result["toolCallId"], "call_dead");
    assert_eq!(result["metadata"]["isError"], true);
    assert!(result["content"].as_str().unwrap().starts_with("interrupted"), "{result}");
    assert!(!k.contains(&"vibebase.sandbox_attach".to_owned()), "the unknown-outcome tool was not run again");
    assert_eq!(mock.calls.load(Ordering::SeqCst), 1);
    // The dead instance cannot write any more.
    let late =
        log.append(&env, "s", "dead-instance", vec![Event::TextMessageEnd { message_id: "x".into() }], now).await;
    assert!(matches!(late, Err(agent::AgentError::LeaseLost)), "{late:?}");
}

#[tokio::test]
async fn session_caps_end_a_run_with_a_clear_error() {
    let (h, mock, key) = setup().await;
    let create = |body: Value| h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(body));
    assert_eq!(create(json!({"id": "one-turn", "model": "m", "max_turns": 1})).await.status, StatusCode::CREATED);
    assert_eq!(create(json!({"id": "few-tokens", "model": "m", "max_tokens": 5})).await.status, StatusCode::CREATED);
    let r = create(json!({"id": "bad", "max_cost": 0})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_caps")));
    let r = h.call("GET", "/v1/envs/agent-a/sessions/one-turn", Some(&key), None).await;
    assert_eq!(r.json["max_turns"], 1);

    // The tool round needs two model calls; the cap allows one.
    let send = |s: &str| {
        let path = format!("/v1/envs/agent-a/sessions/{s}/messages");
        let (h, key) = (&h, key.clone());
        async move { h.call("POST", &path, Some(&key), Some(json!({"content": "use a tool"}))).await }
    };
    assert_eq!(send("one-turn").await.status, StatusCode::ACCEPTED);
    wait_idle(&h, &key, "one-turn").await;
    let all = history(&h, &key, "one-turn", None).await;
    let last = &all.last().unwrap().1;
    assert_eq!(
        (last["type"].as_str(), last["code"].as_str()),
        (Some("RUN_ERROR"), Some("session_turn_cap")),
        "{all:#?}"
    );
    assert_eq!(kinds(&all).iter().filter(|k| *k == "vibebase.model_request").count(), 1);

    // The gateway holds the token cap: the prompt alone is over it, so no model call is made.
    let before = mock.calls.load(Ordering::SeqCst);
    assert_eq!(send("few-tokens").await.status, StatusCode::ACCEPTED);
    wait_idle(&h, &key, "few-tokens").await;
    let all = history(&h, &key, "few-tokens", None).await;
    let last = &all.last().unwrap().1;
    assert_eq!(last["code"], "budget_exceeded_session_tokens", "{all:#?}");
    assert_eq!(mock.calls.load(Ordering::SeqCst), before);
}

#[tokio::test]
async fn backend_tools_refuse_tables_without_rls_apply_safe_migrations_and_deploy_the_site() {
    let (h, _mock, key) = setup().await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "b", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let mut seen = 0;
    let run = |text: &'static str| {
        let h = &h;
        let key = key.clone();
        async move {
            let r = h
                .call("POST", "/v1/envs/agent-a/sessions/b/messages", Some(&key), Some(json!({"content": text})))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            wait_idle(h, &key, "b").await;
            let events = history(h, &key, "b", None).await;
            let results: Vec<Value> =
                events.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_RESULT").map(|(_, e)| e.clone()).collect();
            (events, results)
        }
    };
    let anon = |path: &str| {
        let h = &h;
        let path = path.to_owned();
        async move {
            let record = h.call("GET", "/v1/envs/agent-a", Some(&h.admin), None).await;
            let pk = record.json["keys"]["publishable"].as_str().unwrap().to_owned();
            h.send("GET", &path, &[("apikey", pk.clone()), ("authorization", format!("Bearer {pk}"))], None).await
        }
    };

    // A table left open to anon/authenticated is refused, and nothing of it is applied.
    let (_, results) = run("rls").await;
    let r = &results[seen];
    seen += 1;
    assert_eq!(r["metadata"]["isError"], true, "{r}");
    let text = r["content"].as_str().unwrap();
    assert!(text.contains("rls_required") && text.contains("notes"), "{text}");
    assert_ne!(anon("/env/agent-a/rest/v1/notes").await.status, StatusCode::OK);

    // With row-level security and a policy, it is applied.
    let (_, results) = run("safe").await;
    let r = &results[seen];
    seen += 1;
    assert!(r["content"].as_str().unwrap().starts_with("applied migration"), "{r}");
    let notes = anon("/env/agent-a/rest/v1/notes").await;
    assert_eq!((notes.status, notes.json.clone()), (StatusCode::OK, json!([])), "{}", notes.text);
    // The loop reads data as the service role (a row no end user owns is visible to it).
    let migration = json!({"query": "insert into notes (id, body) values (7, 'hidden from anon')"});
    let r = h.call("POST", "/v1/envs/agent-a/sql", Some(&key), Some(migration)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (_, results) = run("query rows").await;
    let rows: Value = serde_json::from_str(results[seen]["content"].as_str().unwrap()).unwrap();
    seen += 1;
    assert_eq!(rows, json!([{"id": 7, "body": "hidden from anon"}]));
    assert_eq!(anon("/env/agent-a/rest/v1/notes").await.json, json!([]), "anon still sees nothing");

    // Files written in the sandbox, deployed and published as the env's site.
    let (events, results) = run("site").await;
    assert!(results[seen]["content"].as_str().unwrap().starts_with("wrote"), "{}", results[seen]);
    let deployed = results[seen + 1]["content"].as_str().unwrap();
    seen += 2;
    assert!(deployed.starts_with("deployment ") && deployed.contains("live at"), "{deployed}");
    assert!(kinds(&events).contains(&"vibebase.checkpoint".to_owned()));
    let site = h.send("GET", "/env/agent-a/site/index.html", &[], None).await;
    assert_eq!((site.status, site.text.as_str()), (StatusCode::OK, "<h1>agent site</h1>"));

    // The env's facts carry the publishable key, never a secret.
    let (_, results) = run("info").await;
    let info: Value = serde_json::from_str(results[seen]["content"].as_str().unwrap()).unwrap();
    assert!(info["publishable_key"].as_str().unwrap().starts_with("vb_pk_"), "{info}");
    assert!(!info.to_string().contains("vb_sk_"), "{info}");
    let audit = h.call("GET", "/v1/envs/agent-a/audit", Some(&h.admin), None).await;
    assert!(audit.text.contains("agent:b"), "backend tools are audited as the session: {}", audit.text);
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}

/// Polls the log until an event of `kind` (a type or a `vibebase.*` name) appears after `after`.
async fn wait_for(h: &Harness, key: &str, session: &str, kind: &str, after: usize) -> Vec<(i64, Value)> {
    for _ in 0..400 {
        let all = history(h, key, session, None).await;
        if kinds(&all).iter().skip(after).any(|k| k == kind) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {kind} in session {session}");
}

#[tokio::test]
async fn approvals_allow_deny_and_allow_always_tool_calls() {
    let (h, _mock, key) = setup().await;
    let body = json!({"id": "ask", "model": "m", "require_approval": ["bash"]});
    assert_eq!(h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(body)).await.status, StatusCode::CREATED);
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"require_approval": ["rm"]}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unknown_tool")));
    let send = |text: &'static str| {
        let (h, key) = (&h, key.clone());
        async move {
            let r = h
                .call("POST", "/v1/envs/agent-a/sessions/ask/messages", Some(&key), Some(json!({"content": text})))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        }
    };
    let decide = |call: String, decision: &'static str| {
        let (h, key) = (&h, key.clone());
        async move {
            let body = json!({"tool_call_id": call, "decision": decision});
            h.call("POST", "/v1/envs/agent-a/sessions/ask/approvals", Some(&key), Some(body)).await
        }
    };
    let asked = |events: &[(i64, Value)]| {
        events
            .iter()
            .rev()
            .find(|(_, e)| e["name"] == "vibebase.approval_requested")
            .map(|(_, e)| e["value"]["toolCallId"].as_str().unwrap().to_owned())
            .unwrap()
    };

    // Allowed: the call waits (nothing runs, the session stays running), then runs.
    send("use a tool").await;
    let events = wait_for(&h, &key, "ask", "vibebase.approval_requested", 0).await;
    assert!(!kinds(&events).contains(&"TOOL_CALL_RESULT".to_owned()));
    let r = h.call("GET", "/v1/envs/agent-a/sessions/ask", Some(&key), None).await;
    assert_eq!(r.json["status"], "running");
    let r = decide("call_nope".into(), "allow").await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("approval_not_found")));
    let call = asked(&events);
    assert_eq!(decide(call.clone(), "allow").await.status, StatusCode::OK);
    let r = decide(call, "deny").await;
    assert_ne!(r.status, StatusCode::OK, "a decided call cannot be decided again: {}", r.text);
    wait_idle(&h, &key, "ask").await;
    let events = history(&h, &key, "ask", None).await;
    let result = events.iter().rev().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert!(result.1["content"].as_str().unwrap().contains("hello-from-sandbox"), "{}", result.1);

    // Denied: the model hears so, and nothing ran.
    let seen = events.len();
    send("tool again").await;
    let events = wait_for(&h, &key, "ask", "vibebase.approval_requested", seen).await;
    assert_eq!(decide(asked(&events), "deny").await.status, StatusCode::OK);
    wait_idle(&h, &key, "ask").await;
    let events = history(&h, &key, "ask", None).await;
    let result = events.iter().rev().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert_eq!(result.1["metadata"]["isError"], true);
    assert!(result.1["content"].as_str().unwrap().starts_with("denied"), "{}", result.1);
    assert_eq!(events.last().unwrap().1["type"], "RUN_FINISHED");

    // Allowed always: this call and later ones of the tool run without asking.
    let seen = events.len();
    send("tool once more").await;
    let events = wait_for(&h, &key, "ask", "vibebase.approval_requested", seen).await;
    assert_eq!(decide(asked(&events), "allow_always").await.status, StatusCode::OK);
    wait_idle(&h, &key, "ask").await;
    let r = h.call("GET", "/v1/envs/agent-a/sessions/ask", Some(&key), None).await;
    assert_eq!(r.json["always_allowed"], json!(["bash"]));
    let seen = history(&h, &key, "ask", None).await.len();
    send("tool without asking").await;
    wait_idle(&h, &key, "ask").await;
    let events = history(&h, &key, "ask", None).await;
    let k = kinds(&events[seen..]);
    assert!(
        !k.contains(&"vibebase.approval_requested".to_owned()) && k.contains(&"TOOL_CALL_RESULT".to_owned()),
        "{k:?}"
    );
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}

#[tokio::test]
async fn a_pending_approval_survives_the_driver_and_is_honoured_by_the_instance_that_resumes() {
    let (h, _mock, key) = setup().await;
    let env = protocol::EnvId::parse("agent-a").unwrap();
    let body = json!({"id": "s", "model": "m", "require_approval": ["write_file"]});
    assert_eq!(h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(body)).await.status, StatusCode::CREATED);
    // A driver that asked for approval and died.
    let log = agent::Log::new(h.platform.db().clone());
    let now = h.platform.clock().now_ms();
    assert!(log.acquire(&env, "s", "dead-instance", now, now + 15_000, Some("r1")).await.unwrap());
    use agent::event::{Event, custom};
    let args = json!({"path": "approved.txt", "content": "yes"}).to_string();
    let events = vec![
        Event::RunStarted { thread_id: "s".into(), run_id: "r1".into() },
        Event::custom(custom::USER_MESSAGE, json!({"messageId": "u", "content": "write it"})),
        Event::custom(custom::MODEL_REQUEST, json!({"model": "m", "turn": 0})),
        Event::ToolCallStart {
            tool_call_id: "call_w".into(),
            tool_call_name: "write_file".into(),
            parent_message_id: None,
        },
        Event::ToolCallArgs { tool_call_id: "call_w".into(), delta: args.clone() },
        Event::ToolCallEnd { tool_call_id: "call_w".into() },
        Event::custom(
            custom::APPROVAL_REQUESTED,
            json!({"toolCallId": "call_w", "toolName": "write_file", "arguments": args}),
        ),
    ];
    log.append(&env, "s", "dead-instance", events, now).await.unwrap();
    let survivor = agent::Agent::new(
        h.platform.clone(),
        h.gateway.clone().unwrap(),
        h.sandboxes.as_ref().ok().cloned(),
        agent::AgentConfig { default_model: Some("m".into()), ..Default::default() },
    );
    h.clock.advance(Duration::from_secs(16));
    assert_eq!(survivor.sweep().await.unwrap(), 1);
    // The survivor waits for the person instead of reporting the call as interrupted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let k = kinds(&history(&h, &key, "s", None).await);
    assert!(!k.contains(&"TOOL_CALL_RESULT".to_owned()), "{k:?}");
    // The decision goes through the API (another runtime); the survivor finds it in the store.
    let body = json!({"tool_call_id": "call_w", "decision": "allow"});
    let r = h.call("POST", "/v1/envs/agent-a/sessions/s/approvals", Some(&key), Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    wait_idle(&h, &key, "s").await;
    let all = history(&h, &key, "s", None).await;
    let result = all.iter().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert_eq!(result.1["toolCallId"], "call_w");
    assert!(result.1["content"].as_str().unwrap().starts_with("wrote 3 bytes"), "{}", result.1);
    assert_eq!(all.last().unwrap().1["type"], "RUN_FINISHED");
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}

/// The checkpoint events of a session's log: (seq, value).
fn checkpoints(events: &[(i64, Value)]) -> Vec<(i64, Value)> {
    events.iter().filter(|(_, e)| e["name"] == "vibebase.checkpoint").map(|(s, e)| (*s, e["value"].clone())).collect()
}

#[tokio::test]
async fn revert_restores_the_workspace_and_the_site_of_a_checkpoint_but_not_the_schema() {
    let (h, _mock, key) = setup().await;
    if h.sandboxes.is_err() {
        panic!("this test needs real sandboxes (root, bubblewrap): {:?}", h.sandboxes.as_ref().err());
    }
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "cp", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let run = |text: &'static str| {
        let h = &h;
        let key = key.clone();
        async move {
            let r = h
                .call("POST", "/v1/envs/agent-a/sessions/cp/messages", Some(&key), Some(json!({"content": text})))
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            wait_idle(h, &key, "cp").await;
            history(h, &key, "cp", None).await
        }
    };
    let site = || async { h.send("GET", "/env/agent-a/site/index.html", &[], None).await.text };
    let revert = |body: Value| {
        let h = &h;
        let key = key.clone();
        async move { h.call("POST", "/v1/envs/agent-a/sessions/cp/revert", Some(&key), Some(body)).await }
    };

    // Run 1 writes and deploys; a schema change; run 2 overwrites and deploys again.
    let events = run("site").await;
    // One checkpoint per turn that changed something: the write, then the deploy.
    let first = checkpoints(&events);
    assert_eq!(first.len(), 2, "{events:#?}");
    assert!(first[0].1["snapshot"].as_str().is_some(), "{}", first[0].1);
    assert_eq!(first[0].1["deployment"], Value::Null, "not deployed yet: {}", first[0].1);
    let (cp1, v1) = first[1].clone();
    assert!(v1["snapshot"].as_str().is_some_and(|s| !s.is_empty()), "{v1}");
    assert!(v1["deployment"].as_str().is_some(), "{v1}");
    assert_eq!(v1["migration"], Value::Null, "no migration yet: {v1}");
    assert_eq!(site().await, "<h1>agent site</h1>");
    // A run that only changed the schema records a checkpoint too, with the migration position.
    let events = run("safe").await;
    let cps = checkpoints(&events);
    assert_eq!(cps.len(), 3, "{events:#?}");
    assert_eq!(cps[2].1["migration"], json!(1), "{}", cps[2].1);
    assert_eq!(cps[2].1["deployment"], v1["deployment"]);
    let events = run("redo").await;
    let cps = checkpoints(&events);
    let v3 = cps.last().unwrap().1.clone();
    assert_ne!(v3["deployment"], v1["deployment"]);
    assert_ne!(v3["snapshot"], v1["snapshot"]);
    assert_eq!(v3["migration"], json!(1));
    assert_eq!(site().await, "<h1>second site</h1>");

    // Bad input is refused and writes nothing.
    let before = history(&h, &key, "cp", None).await.len();
    let not_checkpoint = events.iter().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap().0;
    for seq in [not_checkpoint, 1, 0, -1, 1_000_000, i64::MAX, i64::MIN] {
        let r = revert(json!({"checkpoint": seq})).await;
        assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("checkpoint_not_found")), "{seq}");
    }
    for body in [json!({}), json!({"checkpoint": "1"}), json!({"checkpoint": cp1, "extra": true})] {
        let r = revert(body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    let r = h.call("POST", "/v1/envs/agent-a/sessions/nope/revert", Some(&key), Some(json!({"checkpoint": cp1}))).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::NOT_FOUND, Some("session_not_found")));
    assert_eq!(history(&h, &key, "cp", None).await.len(), before, "refused reverts write nothing");
    assert_eq!(site().await, "<h1>second site</h1>");

    // Refused while a run is in progress.
    let r = h.call("POST", "/v1/envs/agent-a/sessions/cp/messages", Some(&key), Some(json!({"content": "slow"}))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = revert(json!({"checkpoint": cp1})).await;
    assert_eq!((r.status, r.json["code"].as_str()), (StatusCode::CONFLICT, Some("session_busy")), "{}", r.text);
    h.call("POST", "/v1/envs/agent-a/sessions/cp/interrupt", Some(&key), None).await;
    wait_idle(&h, &key, "cp").await;
    assert_eq!(site().await, "<h1>second site</h1>");

    // Revert to run 1: the site is run 1's at once, and the next run's sandbox has run 1's file.
    let old_sandbox = wait_idle(&h, &key, "cp").await["sandbox_id"].as_str().unwrap().to_owned();
    let r = revert(json!({"checkpoint": cp1})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["deployment"], v1["deployment"]);
    assert_eq!(r.json["snapshot"], v1["snapshot"]);
    assert_eq!(site().await, "<h1>agent site</h1>");
    let session = wait_idle(&h, &key, "cp").await;
    assert_eq!(session["sandbox_id"], Value::Null, "the reverted workspace's sandbox is detached");
    let all = history(&h, &key, "cp", None).await;
    let (seq, reverted) = all.last().unwrap();
    assert_eq!(*seq, r.json["seq"].as_i64().unwrap());
    assert_eq!(reverted["name"], "vibebase.reverted");
    assert_eq!(reverted["value"]["checkpoint"], json!(cp1));
    assert_eq!(reverted["value"]["schema"]["reverted"], json!(false), "{reverted}");
    let detach = &all[all.len() - 2].1;
    assert_eq!(
        (detach["name"].as_str(), detach["value"]["sandbox"].as_str()),
        (Some("vibebase.sandbox_detach"), Some(old_sandbox.as_str()))
    );
    let events = run("peek").await;
    let read = events.iter().rev().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert_eq!(read.1["content"].as_str().unwrap().trim(), "<h1>agent site</h1>", "{}", read.1);
    assert_ne!(wait_idle(&h, &key, "cp").await["sandbox_id"].as_str().unwrap(), old_sandbox);
    // The schema stays where it was: the table of the migration after checkpoint 1 is still there.
    let record = h.call("GET", "/v1/envs/agent-a", Some(&h.admin), None).await;
    let pk = record.json["keys"]["publishable"].as_str().unwrap().to_owned();
    let notes = h
        .send(
            "GET",
            "/env/agent-a/rest/v1/notes",
            &[("apikey", pk.clone()), ("authorization", format!("Bearer {pk}"))],
            None,
        )
        .await;
    assert_eq!(notes.status, StatusCode::OK, "{}", notes.text);
    h.sandboxes.as_ref().unwrap().kill_all().await;
}

#[tokio::test]
async fn a_filling_context_window_is_compacted_into_a_durable_summary() {
    let (h, mock, key) = setup().await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "c", "model": "tiny"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let send = |text: String| {
        let (h, key) = (&h, key.clone());
        async move {
            let body = json!({"content": text});
            let r = h.call("POST", "/v1/envs/agent-a/sessions/c/messages", Some(&key), Some(body)).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            wait_idle(h, &key, "c").await;
        }
    };
    // About 2,250 tokens, echoed back by the model: the second prompt passes 75% of the window.
    send("alpha ".repeat(1500)).await;
    send("second".to_owned()).await;
    let all = history(&h, &key, "c", None).await;
    let compaction = all.iter().find(|(_, e)| e["name"] == "vibebase.compaction").expect("a compaction event");
    assert_eq!(compaction.1["value"]["summary"], "SUMMARY-OF-EARLIER");
    let up_to = compaction.1["value"]["upTo"].as_i64().unwrap();
    let second_user = all.iter().rfind(|(_, e)| e["name"] == "vibebase.user_message").unwrap();
    assert_eq!(up_to, second_user.0 - 1, "the cut is just before the latest user message");
    assert_eq!(all.last().unwrap().1["type"], "RUN_FINISHED", "{all:#?}");
    // The model's last request carried the summary instead of the old exchange; the log kept it all.
    let last = mock.requests.lock().unwrap().last().unwrap().to_string();
    assert!(last.contains("SUMMARY-OF-EARLIER") && !last.contains("alpha alpha"), "{last}");
    assert!(all.iter().any(|(_, e)| e["value"]["content"].as_str().is_some_and(|c| c.starts_with("alpha"))));
    // The summary stays in force for the next turn too (no second compaction for the same part).
    send("third".to_owned()).await;
    let all = history(&h, &key, "c", None).await;
    let compactions = all.iter().filter(|(_, e)| e["name"] == "vibebase.compaction").count();
    let last = mock.requests.lock().unwrap().last().unwrap().to_string();
    assert!(last.contains("SUMMARY-OF-EARLIER") && !last.contains("alpha alpha"), "{last}");
    assert!(compactions <= 2, "{compactions}");
}

#[tokio::test]
async fn background_processes_start_report_their_output_and_stop() {
    let (h, _mock, key) = setup().await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "bg", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let body = json!({"content": "run it in the background"});
    let r = h.call("POST", "/v1/envs/agent-a/sessions/bg/messages", Some(&key), Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    wait_idle(&h, &key, "bg").await;
    let all = history(&h, &key, "bg", None).await;
    let results: Vec<String> = all
        .iter()
        .filter(|(_, e)| e["type"] == "TOOL_CALL_RESULT")
        .map(|(_, e)| e["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results.len(), 5, "{results:#?}");
    assert!(results[0].starts_with("started process "), "{}", results[0]);
    assert!(results[2].contains("running") && results[2].contains("bg-started"), "{}", results[2]);
    assert!(results[3].contains("stopped"), "{}", results[3]);
    assert!(results[4].contains("exited"), "the process is gone after stop: {}", results[4]);
    assert_eq!(all.last().unwrap().1["type"], "RUN_FINISHED");
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}

#[tokio::test]
async fn the_loop_deploys_a_container_app_from_the_workspace_and_reads_its_logs() {
    let (h, _mock, key) = setup().await;
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "app", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let send = |text: &'static str| {
        let (h, key) = (&h, key.clone());
        async move {
            let body = json!({"content": text});
            let r = h.call("POST", "/v1/envs/agent-a/sessions/app/messages", Some(&key), Some(body)).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            wait_idle(h, &key, "app").await;
            history(h, &key, "app", None).await
        }
    };
    let all = send("deploy a container").await;
    let deployed = all.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_RESULT").nth(1).unwrap();
    assert!(deployed.1["content"].as_str().unwrap().starts_with("deployed app api"), "{}", deployed.1);
    // The app answers through the platform (it starts on this first request).
    let r = h.send("GET", "/env/agent-a/apps/api/hello", &[], None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "from the app /hello"));
    let all = send("show the app logs").await;
    let logs = all.iter().rfind(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    let text = logs.1["content"].as_str().unwrap();
    assert!(text.contains("system"), "the supervisor's notes are in the logs: {text}");
    if let Ok(s) = &h.sandboxes {
        s.kill_all().await;
    }
}

/// Sends `text` to session `s`, waits for the run and returns the tool results of that run.
async fn run_script(h: &Harness, key: &str, s: &str, text: &str) -> (Vec<(i64, Value)>, Vec<Value>) {
    let before = h.call("GET", &format!("/v1/envs/agent-a/sessions/{s}"), Some(key), None).await.json["last_seq"]
        .as_i64()
        .unwrap();
    let r = h
        .call("POST", &format!("/v1/envs/agent-a/sessions/{s}/messages"), Some(key), Some(json!({"content": text})))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    wait_idle(h, key, s).await;
    let events = history(h, key, s, Some(before)).await;
    let results = events.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_RESULT").map(|(_, e)| e.clone()).collect();
    (events, results)
}

fn content(result: &Value) -> &str {
    result["content"].as_str().unwrap()
}

#[tokio::test]
async fn bucket_tools_create_a_bucket_upload_a_workspace_file_and_refuse_bad_arguments_whole() {
    let (h, _mock, key) = setup().await;
    if h.sandboxes.is_err() {
        panic!("this test needs real sandboxes (root, bubblewrap): {:?}", h.sandboxes.as_ref().err());
    }
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "st", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (_, results) = run_script(&h, &key, "st", "buckets").await;
    assert_eq!(results.len(), 5, "{results:#?}");
    assert!(results.iter().all(|r| r["metadata"]["isError"] != true), "{results:#?}");
    assert!(content(&results[1]).starts_with("created bucket media (public, types text/* image/*)"), "{}", results[1]);
    let api =
        h.call("GET", "/v1/envs/agent-a", Some(&h.admin), None).await.json["urls"]["api"].as_str().unwrap().to_owned();
    assert_eq!(
        content(&results[2]),
        format!(
            "uploaded media/docs/hello.txt (12 bytes, text/plain; charset=utf-8); public URL \
             {api}/storage/v1/object/public/media/docs/hello.txt"
        )
    );
    assert_eq!(content(&results[3]), "hello.txt (12 bytes, text/plain; charset=utf-8)");
    assert_eq!(content(&results[4]), "media (public, types text/* image/*)");

    // The object is there for the storage API: publicly, and with a key.
    let public = h.send("GET", "/env/agent-a/storage/v1/object/public/media/docs/hello.txt", &[], None).await;
    assert_eq!((public.status, public.text.as_str()), (StatusCode::OK, "hello bucket"));
    let auth = [("authorization", format!("Bearer {key}")), ("apikey", key.clone())];
    let keyed = h.send("GET", "/env/agent-a/storage/v1/object/media/docs/hello.txt", &auth, None).await;
    assert_eq!((keyed.status, keyed.text.as_str()), (StatusCode::OK, "hello bucket"));

    // Bad arguments are error results that read as the API's errors, and write nothing.
    let (_, results) = run_script(&h, &key, "st", "bad storage").await;
    let texts: Vec<&str> = results.iter().map(content).collect();
    assert_eq!(results.len(), 9, "{texts:#?}");
    assert!(results.iter().all(|r| r["metadata"]["isError"] == true), "{texts:#?}");
    let expect = [
        "error InvalidBucketName:",
        "error InvalidRequest: invalid mime type",
        "invalid arguments: unknown field `colour`",
        "error Duplicate:",
        "could not read missing.txt from the workspace",
        "error InvalidMimeType:",
        "error NoSuchBucket:",
        "error Duplicate:",
        "error InvalidKey:",
    ];
    for (text, start) in texts.iter().zip(expect) {
        assert!(text.starts_with(start), "{text:?} should start with {start:?}");
    }
    let buckets = h.send("GET", "/env/agent-a/storage/v1/bucket", &auth, None).await;
    let names: Vec<&str> = buckets.json.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(names, ["media"], "{}", buckets.text);
    let mut headers = auth.to_vec();
    headers.push(("content-type", "application/json".to_owned()));
    for (prefix, expected) in [("", json!(["docs"])), ("docs", json!(["hello.txt"]))] {
        let list = h
            .send(
                "POST",
                "/env/agent-a/storage/v1/object/list/media",
                &headers,
                Some(json!({"prefix": prefix}).to_string()),
            )
            .await;
        let names: Vec<&str> = list.json.as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
        assert_eq!(json!(names), expected, "{}", list.text);
    }
    let keyed = h.send("GET", "/env/agent-a/storage/v1/object/media/docs/hello.txt", &auth, None).await;
    assert_eq!(keyed.text, "hello bucket", "the refused upsert left the object as it was");
    h.sandboxes.as_ref().unwrap().kill_all().await;
}

/// The session's live sandboxes whose workspace has a `ready` file.
async fn ready_hands(sandboxes: &sandbox::Sandboxes, env: &protocol::EnvId, session: &str) -> Vec<String> {
    let mut ready = Vec::new();
    for sb in sandboxes.list(env).into_iter().filter(|s| s.session.as_deref() == Some(session)) {
        if let Ok(agent) = sandboxes.agent(env, &sb.id)
            && agent.read_file("ready", 16).await.is_ok()
        {
            ready.push(sb.id);
        }
    }
    ready
}

#[tokio::test]
async fn hands_of_one_answer_run_at_once_keep_their_bindings_across_a_restart_and_are_capped() {
    let (h, _mock, key) = setup().await;
    let Ok(sandboxes) = h.sandboxes.clone() else {
        panic!("this test needs real sandboxes (root, bubblewrap): {:?}", h.sandboxes.as_ref().err());
    };
    let env = protocol::EnvId::parse("agent-a").unwrap();
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "hands", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = h
        .call("POST", "/v1/envs/agent-a/sessions/hands/messages", Some(&key), Some(json!({"content": "two hands"})))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Each call waits for a `go` that is written only once both wait: calls run one after another
    // would never get there (the first would wait in vain, the second never start).
    let mut ready = Vec::new();
    for _ in 0..600 {
        ready = ready_hands(&sandboxes, &env, "hands").await;
        if ready.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready.len(), 2, "the two hands' calls were never in flight at the same time");
    for sb in &ready {
        sandboxes.agent(&env, sb).unwrap().write_file("go", b"", None).await.unwrap();
    }
    wait_idle(&h, &key, "hands").await;
    let all = history(&h, &key, "hands", None).await;
    let results: Vec<&Value> = all.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_RESULT").map(|(_, e)| e).collect();
    let texts: Vec<&str> = results.iter().map(|r| content(r)).collect();
    assert_eq!(results.len(), 3, "{all:#?}");
    assert!(texts.iter().any(|t| t.contains("released main-side")), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("released web-side")), "{texts:?}");
    assert!(texts.contains(&"web-side\n"), "the web hand's later call ran in the web hand: {texts:?}");
    // Every intent was written before any call ran.
    let last_intent = all.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_END").map(|(s, _)| *s).max().unwrap();
    let first_attach = all.iter().find(|(_, e)| e["name"] == "vibebase.sandbox_attach").unwrap().0;
    assert!(last_intent < first_attach, "{all:#?}");
    let mut attached: Vec<&str> = all
        .iter()
        .filter(|(_, e)| e["name"] == "vibebase.sandbox_attach")
        .map(|(_, e)| e["value"]["hand"].as_str().unwrap())
        .collect();
    attached.sort();
    assert_eq!(attached, ["main", "web"]);
    let bindings = agent::Log::new(h.platform.db().clone()).bindings(&env, "hands").await.unwrap();
    let hands: Vec<&str> = bindings.hands.iter().map(|(hand, _)| hand.as_str()).collect();
    assert_eq!(hands, ["main", "web"]);
    assert!(kinds(&all).contains(&"vibebase.checkpoint".to_owned()), "a checkpoint snapshots the main hand");

    // A restarted runtime (nothing in memory) finds the web hand's sandbox from the store.
    let restarted = agent::Agent::new(
        h.platform.clone(),
        h.gateway.clone().unwrap(),
        Some(sandboxes.clone()),
        agent::AgentConfig { default_model: Some("m".into()), ..Default::default() },
    );
    let msg = agent::SendMessageRequest { content: "look at web".into(), model: None, run_id: None };
    restarted.send(&env, "hands", msg).await.unwrap();
    wait_idle(&h, &key, "hands").await;
    let tail = history(&h, &key, "hands", Some(all.last().unwrap().0)).await;
    let result = tail.iter().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert_eq!(content(&result.1), "web-side\n", "{tail:#?}");
    assert!(!kinds(&tail).iter().any(|k| k.starts_with("vibebase.sandbox_")), "no sandbox was started or dropped");

    // At most four hands at once; a bad hand name is a bad argument.
    let r = h.call("POST", "/v1/envs/agent-a/sessions", Some(&key), Some(json!({"id": "many", "model": "m"}))).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let (_, results) = run_script(&h, &key, "many", "too many hands").await;
    let texts: Vec<&str> = results.iter().map(content).collect();
    assert_eq!(results.len(), 6, "{texts:#?}");
    assert_eq!(texts.iter().filter(|t| t.starts_with("too many sandboxes")).count(), 1, "{texts:#?}");
    assert_eq!(texts.iter().filter(|t| t.starts_with("invalid arguments: sandbox")).count(), 1, "{texts:#?}");
    assert_eq!(results.iter().filter(|r| r["metadata"]["isError"] != true).count(), 4, "{texts:#?}");
    let live = sandboxes.list(&env).into_iter().filter(|s| s.session.as_deref() == Some("many")).count();
    assert_eq!(live, 4);
    sandboxes.kill_all().await;
}
