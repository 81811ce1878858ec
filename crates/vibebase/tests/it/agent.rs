//! The agent runtime on the real binary: `kill -9` of the server in the middle of a turn loses no event,
//! and the restarted server — or, on PostgreSQL and S3, a second server sharing them — finishes the run.
//! The tool whose outcome is unknown (it was running when the server died) is reported to the model as
//! interrupted and never run again. The model is a scripted OpenAI-compatible mock on loopback.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use crate::{Server, json as cli_json, tempdir};

const ADMIN: &str = "vb_admin_agent_tests_0123456789abcdefghij0";

/// Requests the mock model received (their message lists).
type Seen = Arc<Mutex<Vec<Value>>>;

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// After a tool result: "saw: <result>". A user asking for the slow tool: a `bash` call that sleeps,
/// then writes a marker (so a second run of it would show). Anything else: "hello".
async fn completions(State(seen): State<Seen>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap();
    let messages = body["messages"].as_array().unwrap().clone();
    seen.lock().unwrap().push(Value::Array(messages.clone()));
    let last = messages.last().unwrap();
    let frames = if last["role"] == "tool" {
        let text: String = last["content"].as_str().unwrap_or_default().chars().take(80).collect();
        vec![
            chunk(json!({"role": "assistant", "content": format!("saw: {text}")}), None),
            chunk(json!({}), Some("stop")),
        ]
    } else if last["content"].as_str().unwrap_or_default().contains("slow tool") {
        let args = json!({"command": "sleep 6; echo ran >> marker.txt; echo finished"}).to_string();
        vec![
            chunk(
                json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_p", "type": "function",
                    "function": {"name": "bash", "arguments": args}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
        ]
    } else {
        vec![chunk(json!({"role": "assistant", "content": "hello"}), None), chunk(json!({}), Some("stop"))]
    };
    let mut text = frames.concat();
    text.push_str("data: [DONE]\n\n");
    Response::builder().header("content-type", "text/event-stream").body(Body::from(text)).unwrap()
}

/// The mock model on a thread of its own; its base URL and what it saw.
fn mock_model() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let state = seen.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let app =
                axum::Router::new().route("/v1/chat/completions", axum::routing::post(completions)).with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/v1"), seen)
}

struct Lab {
    dir: tempfile::TempDir,
    args: Vec<String>,
    seen: Seen,
    http: reqwest::blocking::Client,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let dir = tempdir();
        let (url, seen) = mock_model();
        let models = dir.path().join("models.json");
        let file = json!({"providers": {"mock": {"kind": "openai", "base_url": url}},
            "models": [{"name": "m", "routes": [{"provider": "mock"}]}]});
        std::fs::write(&models, file.to_string()).unwrap();
        let mut args = crate::scale_out_args(&format!("agent{tag}"));
        args.extend(["--models".to_owned(), models.display().to_string(), "--agent-model".to_owned(), "m".to_owned()]);
        // A short lease, so a dead driver's session is resumed within seconds.
        args.extend(["--agent-lease-seconds".to_owned(), "3".to_owned()]);
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        Self { dir, args, seen, http }
    }

    fn data_dir(&self, name: &str) -> std::path::PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d.canonicalize().unwrap()
    }

    fn post(&self, server: &Server, key: &str, path: &str, body: Value) -> Value {
        let r = self.http.post(format!("{}{path}", server.url)).bearer_auth(key).json(&body).send().unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// The session's events as (seq, event), read with `?follow=false`.
    fn events(&self, server: &Server, key: &str, session: &str) -> Vec<(i64, Value)> {
        let url = format!("{}/v1/envs/crash/sessions/{session}/events?follow=false", server.url);
        let text = self.http.get(url).bearer_auth(key).send().unwrap().text().unwrap();
        text.split("\n\n")
            .filter_map(|block| {
                let id = block.lines().find_map(|l| l.strip_prefix("id: "))?.parse().ok()?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((id, serde_json::from_str(data).unwrap()))
            })
            .collect()
    }

    fn wait_for(
        &self,
        server: &Server,
        key: &str,
        what: &str,
        done: impl Fn(&[(i64, Value)]) -> bool,
    ) -> Vec<(i64, Value)> {
        let started = Instant::now();
        loop {
            let events = self.events(server, key, "s");
            if done(&events) {
                return events;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{what}: {events:#?}\n{}",
                server.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn kind(e: &Value) -> String {
    match e["type"].as_str().unwrap() {
        "CUSTOM" => e["name"].as_str().unwrap().to_owned(),
        t => t.to_owned(),
    }
}

fn has(events: &[(i64, Value)], k: &str) -> bool {
    events.iter().any(|(_, e)| kind(e) == k)
}

/// Starts a run whose tool is still running, then kills its server with SIGKILL. Returns the events a
/// client had seen before the kill.
fn crash_mid_tool(lab: &Lab, driver: Server, key: &str) -> Vec<(i64, Value)> {
    lab.post(&driver, key, "/v1/envs/crash/sessions", json!({"id": "s"}));
    lab.post(&driver, key, "/v1/envs/crash/sessions/s/messages", json!({"content": "run the slow tool"}));
    // The tool has started in the sandbox (attached), and sleeps.
    lab.wait_for(&driver, key, "the tool starts", |e| has(e, "vibebase.sandbox_attach"));
    std::thread::sleep(Duration::from_millis(1500));
    let seen = lab.events(&driver, key, "s");
    assert!(!has(&seen, "TOOL_CALL_RESULT"), "the tool is still running: {seen:#?}");
    let mut driver = driver;
    driver.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    driver.child.wait().unwrap();
    seen
}

/// What must hold once another server finished the run.
fn check_resumed(lab: &Lab, before: &[(i64, Value)], after: &[(i64, Value)]) {
    // Nothing a client saw before the crash is lost or changed, and numbering stays dense.
    assert_eq!(&after[..before.len()], before, "events seen before the kill changed");
    let seqs: Vec<i64> = after.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=after.len() as i64).collect::<Vec<_>>());
    let kinds: Vec<String> = after.iter().map(|(_, e)| kind(e)).collect();
    assert!(kinds.contains(&"vibebase.resumed".to_owned()), "{kinds:?}");
    assert_eq!(kinds.last().unwrap(), "RUN_FINISHED", "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| *k == "TOOL_CALL_START").count(), 1, "the tool was asked for once: {kinds:?}");
    let result = after.iter().find(|(_, e)| e["type"] == "TOOL_CALL_RESULT").unwrap();
    assert!(result.1["content"].as_str().unwrap().starts_with("interrupted"), "{}", result.1);
    assert_eq!(result.1["metadata"]["isError"], true);
    // The model heard that the outcome is unknown; it was not called again with a re-run's output.
    let seen = lab.seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "one model call before the crash, one after");
    let last = seen[1].as_array().unwrap().last().unwrap();
    assert!(last["content"].as_str().unwrap().starts_with("interrupted"), "{last}");
}

#[test]
fn kill_9_mid_turn_loses_no_event_and_the_restarted_server_finishes_the_run() {
    let lab = Lab::new("restart");
    let data_dir = lab.data_dir("data");
    let port = crate::free_port();
    let server = Server::start_on(port, &data_dir, &lab.args, Some(ADMIN));
    let env = cli_json(&server.cli(ADMIN, &["env", "create", "--id", "crash", "--json"]));
    let key = env["keys"]["secret"].as_str().unwrap().to_owned();
    let before = crash_mid_tool(&lab, server, &key);

    let restarted = Server::start_on(port, &data_dir, &lab.args, Some(ADMIN));
    let after = lab.wait_for(&restarted, &key, "the run finishes", |e| {
        e.last().is_some_and(|(_, last)| last["type"] == "RUN_FINISHED" || last["type"] == "RUN_ERROR")
    });
    check_resumed(&lab, &before, &after);
    // The session takes a new message on the restarted server.
    lab.post(&restarted, &key, "/v1/envs/crash/sessions/s/messages", json!({"content": "hi"}));
    lab.wait_for(&restarted, &key, "the next run", |e| {
        e.last().is_some_and(|(_, l)| l["type"] == "RUN_FINISHED") && e.len() > after.len()
    });
    restarted.stop();
}

/// Two servers share PostgreSQL and the object store; the one driving the run dies and the other
/// finishes it. Needs the scale-out backends (the `test-scaleout` stage runs it): on the embedded
/// defaults two processes do not share a store, which the restart test above covers instead.
#[test]
fn a_second_server_sharing_postgres_finishes_the_run_of_a_killed_one() {
    if std::env::var("VIBEBASE_TEST_DATABASE_URL").is_err() || std::env::var("VIBEBASE_TEST_OBJECT_STORE_URL").is_err()
    {
        eprintln!("skipped here: two servers share a store only on PostgreSQL + S3 (stage test-scaleout)");
        return;
    }
    let lab = Lab::new("pair");
    let a = Server::start(&lab.data_dir("a"), &lab.args, Some(ADMIN));
    let b = Server::start(&lab.data_dir("b"), &lab.args, Some(ADMIN));
    let env = cli_json(&a.cli(ADMIN, &["env", "create", "--id", "crash", "--json"]));
    let key = env["keys"]["secret"].as_str().unwrap().to_owned();
    let before = crash_mid_tool(&lab, a, &key);
    let after = lab.wait_for(&b, &key, "the survivor finishes the run", |e| {
        e.last().is_some_and(|(_, last)| last["type"] == "RUN_FINISHED" || last["type"] == "RUN_ERROR")
    });
    check_resumed(&lab, &before, &after);
    b.stop();
}
