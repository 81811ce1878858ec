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
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// The scripted model: a tool result → "saw: <result>"; "tool" in the user's message → a `bash` call;
/// "slow" → text trickling out for seconds; anything else → an echo with the message count.
async fn completions(State(m): State<Mock>, body: String) -> Response {
    m.calls.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().unwrap().clone();
    let last = messages.last().unwrap().clone();
    let user_text = last["content"].as_str().unwrap_or_default().to_owned();
    let frames: Vec<(String, u64)> = if last["role"] == "tool" {
        let seen: String = last["content"].as_str().unwrap_or_default().chars().take(60).collect();
        vec![
            (chunk(json!({"role": "assistant", "content": format!("saw: {seen}")}), None), 0),
            (chunk(json!({}), Some("stop")), 0),
        ]
    } else if user_text.contains("tool") {
        let args = json!({"command": "echo hello-from-sandbox > out.txt && cat out.txt"}).to_string();
        let (a, b) = args.split_at(10);
        vec![
            (
                chunk(
                    json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_x1", "type": "function",
                        "function": {"name": "bash", "arguments": a}}]}),
                    None,
                ),
                0,
            ),
            (chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": b}}]}), None), 0),
            (chunk(json!({}), Some("tool_calls")), 0),
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
        "models": [{"name": "m", "routes": [{"provider": "mock"}]}, {"name": "m2", "routes": [{"provider": "mock"}]}],
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
        "vibebase.model_request",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "vibebase.model_response",
        "vibebase.checkpoint",
        "RUN_FINISHED",
    ];
    assert_eq!(k, expected, "{all:#?}");
    assert_eq!(all[0].1["runId"], json!(run_id));
    assert_eq!(all[0].1["threadId"], json!(id));
    let args: String =
        all.iter().filter(|(_, e)| e["type"] == "TOOL_CALL_ARGS").map(|(_, e)| e["delta"].as_str().unwrap()).collect();
    assert!(args.contains("hello-from-sandbox > out.txt"), "{args}");
    let result = &all[8].1;
    assert_eq!(result["toolCallId"], "call_x1");
    assert!(result["content"].as_str().unwrap().contains("hello-from-sandbox"), "{result}");
    let text = &all[11].1["delta"];
    assert!(text.as_str().unwrap().starts_with("saw: exit code: 0"), "{text}");
    assert_eq!(mock.calls.load(Ordering::SeqCst), 2);

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
