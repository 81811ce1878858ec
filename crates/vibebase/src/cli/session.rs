//! `vibebase session …`: an env's agent sessions. `send` and `events` read the session's event stream
//! (SSE, each event's log sequence number as its id) and, when the connection drops, reconnect with
//! `Last-Event-ID`, so nothing is printed twice or missed.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Client, Failure, Reply, http_failure, items, progress, s, table};

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Start a session (prints its id).
    Create {
        #[arg(long)]
        env: String,
        /// The session id (AG-UI's threadId); generated when absent.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        title: Option<String>,
        /// The model of its messages (a model of the gateway's models file).
        #[arg(long)]
        model: Option<String>,
    },
    /// List the env's sessions.
    List {
        #[arg(long)]
        env: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show a session.
    Get {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Send a message and print the run's answer as it streams (with --json, the run's raw AG-UI
    /// events, one a line). Exits 1 when the run ends with RUN_ERROR.
    Send {
        #[arg(long)]
        env: String,
        id: String,
        /// The message; `-` reads standard input.
        message: String,
        /// Switch the session's model from this message on.
        #[arg(long)]
        model: Option<String>,
    },
    /// Print a session's events (with --json, the raw AG-UI events, one a line) and follow new ones.
    Events {
        #[arg(long)]
        env: String,
        id: String,
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// Print what is there and stop instead of following.
        #[arg(long)]
        no_follow: bool,
    },
    /// Stop the session's run.
    Interrupt {
        #[arg(long)]
        env: String,
        id: String,
    },
}

pub(super) async fn run(c: &Client, command: SessionCommand) -> Result<Option<ExitCode>, Failure> {
    let base = |env: &str, id: &str| format!("/v1/envs/{env}/sessions/{id}");
    match command {
        SessionCommand::Create { env, id, title, model } => {
            let body = json!({"id": id, "title": title, "model": model});
            let r = c.call(Method::POST, &format!("/v1/envs/{env}/sessions"), Some(body)).await?;
            c.show(r, |v| format!("{}\n", s(&v["id"])));
        }
        SessionCommand::List { env, limit } => {
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/sessions?limit={limit}"), None).await?;
            c.show(r, |v| {
                table(
                    items(v),
                    &[
                        ("id", "ID"),
                        ("status", "STATUS"),
                        ("model", "MODEL"),
                        ("last_seq", "EVENTS"),
                        ("updated_at", "UPDATED"),
                        ("title", "TITLE"),
                    ],
                )
            });
        }
        SessionCommand::Get { env, id } => c.show(c.call(Method::GET, &base(&env, &id), None).await?, session_text),
        SessionCommand::Send { env, id, message, model } => {
            let content = if message == "-" {
                std::io::read_to_string(std::io::stdin())
                    .map_err(|e| Failure::new(2, format!("cannot read standard input: {e}")))?
            } else {
                message
            };
            let body = json!({"content": content, "model": model});
            let Reply::Json(run) = c.call(Method::POST, &format!("{}/messages", base(&env, &id)), Some(body)).await?
            else {
                return Err(Failure::new(1, "the server did not describe the run it started"));
            };
            let after = run["after_seq"].as_i64().ok_or_else(|| Failure::new(1, "the run has no after_seq"))?;
            let mut stream = EventStream::new(c, format!("{}/events", base(&env, &id)), after, true);
            let mut printer = Printer::new(c.conn.json, Style::Answer);
            while let Some((_, event)) = stream.next().await? {
                printer.print(&event);
                if let Some(end) = run_end(&event) {
                    return end.map(|()| None);
                }
            }
            return Err(Failure::new(7, "the event stream ended before the run did"));
        }
        SessionCommand::Events { env, id, after, no_follow } => {
            if after < 0 {
                return Err(Failure::new(2, "--after must be 0 or more"));
            }
            let mut stream = EventStream::new(c, format!("{}/events", base(&env, &id)), after, !no_follow);
            let mut printer = Printer::new(c.conn.json, Style::Log);
            while let Some((seq, event)) = stream.next().await? {
                printer.seq = seq;
                printer.print(&event);
            }
        }
        SessionCommand::Interrupt { env, id } => {
            let r = c.call(Method::POST, &format!("{}/interrupt", base(&env, &id)), None).await?;
            c.show(r, |v| {
                if v["interrupted"] == true { "interrupted\n".to_owned() } else { "no run in progress\n".to_owned() }
            });
        }
    }
    Ok(None)
}

fn session_text(v: &Value) -> String {
    format!(
        "id:       {}\nstatus:   {}\nmodel:    {}\ntitle:    {}\nevents:   {}\nrun:      {}\nsandbox:  {}\ncreated:  {}\nupdated:  {}\n",
        s(&v["id"]),
        s(&v["status"]),
        v["model"].as_str().unwrap_or("-"),
        v["title"].as_str().unwrap_or("-"),
        v["last_seq"],
        v["run_id"].as_str().unwrap_or("-"),
        v["sandbox_id"].as_str().unwrap_or("-"),
        s(&v["created_at"]),
        s(&v["updated_at"]),
    )
}

/// `Some(Ok)` for RUN_FINISHED, `Some(Err)` for RUN_ERROR (exit 1, its code and message), else `None`.
pub(super) fn run_end(event: &Value) -> Option<Result<(), Failure>> {
    match event["type"].as_str() {
        Some("RUN_FINISHED") => Some(Ok(())),
        Some("RUN_ERROR") => {
            let code = event["code"].as_str().unwrap_or("run_error");
            Some(Err(Failure::new(1, format!("the run failed: {code}: {}", s(&event["message"])))))
        }
        _ => None,
    }
}

/// How events are shown without `--json`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Style {
    /// The answer: text to stdout as it streams; tool calls and their results as progress on stderr.
    Answer,
    /// One line per event with its sequence number.
    Log,
}

pub(super) struct Printer {
    json: bool,
    style: Style,
    seq: i64,
    /// Tool call id → tool name, to label results.
    tools: std::collections::HashMap<String, String>,
    /// The answer's stdout ends without a newline.
    mid_line: bool,
}

impl Printer {
    pub(super) fn new(json: bool, style: Style) -> Self {
        Self { json, style, seq: 0, tools: Default::default(), mid_line: false }
    }

    pub(super) fn print(&mut self, e: &Value) {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            let _ = writeln!(stdout, "{e}");
            let _ = stdout.flush();
            return;
        }
        let kind = s(&e["type"]);
        if self.style == Style::Log {
            let detail = match kind {
                "TEXT_MESSAGE_CONTENT" | "TOOL_CALL_ARGS" => e["delta"].to_string(),
                "TOOL_CALL_START" => s(&e["toolCallName"]).to_owned(),
                "TOOL_CALL_RESULT" => {
                    let mut c = first_line(s(&e["content"]), 120);
                    if e["metadata"]["isError"] == true {
                        c.push_str(" (error)");
                    }
                    c
                }
                "RUN_ERROR" => format!("{}: {}", e["code"].as_str().unwrap_or("run_error"), s(&e["message"])),
                "RUN_STARTED" | "RUN_FINISHED" => s(&e["runId"]).to_owned(),
                "CUSTOM" => e["value"].to_string(),
                _ => String::new(),
            };
            let name = if kind == "CUSTOM" { s(&e["name"]) } else { kind };
            let _ = writeln!(stdout, "{:>6}  {name}  {detail}", self.seq);
            return;
        }
        match kind {
            "TEXT_MESSAGE_CONTENT" => {
                let delta = s(&e["delta"]);
                let _ = stdout.write_all(delta.as_bytes());
                let _ = stdout.flush();
                self.mid_line = !delta.ends_with('\n');
            }
            "TEXT_MESSAGE_END" => self.end_line(&mut stdout),
            "TOOL_CALL_START" => {
                self.end_line(&mut stdout);
                self.tools.insert(s(&e["toolCallId"]).to_owned(), s(&e["toolCallName"]).to_owned());
                progress(&format!("[tool {}]", s(&e["toolCallName"])));
            }
            "TOOL_CALL_RESULT" => {
                let name = self.tools.get(s(&e["toolCallId"])).map_or("tool", String::as_str);
                let outcome = if e["metadata"]["isError"] == true { "failed" } else { "done" };
                progress(&format!("[{name} {outcome}] {}", first_line(s(&e["content"]), 200)));
            }
            "RUN_FINISHED" | "RUN_ERROR" => self.end_line(&mut stdout),
            _ => {}
        }
    }

    fn end_line(&mut self, stdout: &mut std::io::StdoutLock<'_>) {
        if self.mid_line {
            let _ = writeln!(stdout);
            let _ = stdout.flush();
            self.mid_line = false;
        }
    }
}

/// The first line of a text, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Reconnect attempts in a row before giving up (each after `RECONNECT_DELAY`): long enough for a
/// server to restart.
const MAX_RECONNECTS: u32 = 60;
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A session's event stream from a sequence number on; reconnects with `Last-Event-ID` after a drop.
pub(super) struct EventStream<'a> {
    c: &'a Client,
    path: String,
    /// The last sequence number received.
    last: i64,
    follow: bool,
    resp: Option<reqwest::Response>,
    buf: Vec<u8>,
    frames: std::collections::VecDeque<(i64, Value)>,
    /// Failed attempts since the last event.
    failures: u32,
    connected: bool,
}

impl<'a> EventStream<'a> {
    pub(super) fn new(c: &'a Client, path: String, after: i64, follow: bool) -> Self {
        Self {
            c,
            path,
            last: after,
            follow,
            resp: None,
            buf: Vec::new(),
            frames: Default::default(),
            failures: 0,
            connected: false,
        }
    }

    /// The next event and its sequence number; `None` at the end of a `--no-follow` stream.
    pub(super) async fn next(&mut self) -> Result<Option<(i64, Value)>, Failure> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                self.last = frame.0;
                self.failures = 0;
                return Ok(Some(frame));
            }
            let Some(resp) = self.resp.as_mut() else {
                self.resp = Some(self.connect().await?);
                continue;
            };
            match resp.chunk().await {
                Ok(Some(bytes)) => {
                    self.buf.extend_from_slice(&bytes);
                    self.take_frames()?;
                }
                Ok(None) if !self.follow => return Ok(None),
                // The server went away (restart, proxy timeout): pick up after the last event.
                Ok(None) | Err(_) => {
                    self.resp = None;
                    self.buf.clear();
                    self.failures += 1;
                    if self.failures > MAX_RECONNECTS {
                        return Err(Failure::new(7, "the event stream keeps dropping"));
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<reqwest::Response, Failure> {
        let key =
            self.c.conn.key.as_deref().ok_or_else(|| Failure::new(3, "no key: set VIBEBASE_KEY or pass --key"))?;
        let query = if self.follow { "" } else { "?follow=false" };
        let url = format!("{}{}{query}", self.c.conn.url.trim_end_matches('/'), self.path);
        loop {
            let sent = self
                .c
                .http
                .get(&url)
                .bearer_auth(key)
                .header("accept", "text/event-stream")
                .header("last-event-id", self.last.to_string())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    self.connected = true;
                    return Ok(resp);
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    return Err(http_failure(status, &text));
                }
                Err(e) => {
                    self.failures += 1;
                    // Unreachable at the start is an answer; after a drop it may be a restart.
                    if !self.connected || self.failures > MAX_RECONNECTS {
                        return Err(Failure::new(7, format!("cannot reach {url}: {e}")));
                    }
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
            }
        }
    }

    /// Moves the complete frames of the buffer to `frames` (comments and frames without an id skipped).
    fn take_frames(&mut self) -> Result<(), Failure> {
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut id = None;
            let mut data = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            let Some(seq) = id else { continue };
            let event: Value =
                serde_json::from_str(&data).map_err(|e| Failure::new(1, format!("event {seq} is not JSON: {e}")))?;
            self.frames.push_back((seq, event));
        }
        Ok(())
    }
}
