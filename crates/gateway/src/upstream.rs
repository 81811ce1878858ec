//! Upstream adapters: build a provider request from a [`ChatRequest`] and turn the provider's event
//! stream into [`Event`]s. Upstream calls are always streamed (with usage), so one decoder per provider
//! serves streamed and non-streamed callers alike.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{ProviderConfig, ProviderKind};
use crate::error::GatewayError;
use crate::ir::{ChatRequest, Event, FinishReason, Part, Role, ToolChoice, Usage};
use crate::sse::{SseEvent, SseParser};

/// The JSON body of the upstream request; `model` is the provider's name for the model.
pub fn request_body(provider: &ProviderConfig, req: &ChatRequest, model: &str, max_tokens: u64) -> Value {
    let (mut body, extra) = match provider.kind {
        ProviderKind::Anthropic => (anthropic_body(req, model, max_tokens), &req.extra.anthropic),
        ProviderKind::Openai | ProviderKind::Replay => {
            let mut body = openai_body(req, model);
            body[provider.max_tokens_param.as_str()] = json!(max_tokens);
            (body, &req.extra.openai)
        }
    };
    if let Value::Object(b) = &mut body {
        for (k, v) in extra {
            b.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    body
}

fn openai_body(req: &ChatRequest, model: &str) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = &req.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    for m in &req.messages {
        let mut text = String::new();
        let mut calls = Vec::new();
        for p in &m.content {
            match p {
                Part::Text { text: t } => text.push_str(t),
                Part::ToolCall { id, name, arguments } => calls
                    .push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})),
                Part::ToolResult { call_id, content, .. } => {
                    messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
                }
            }
        }
        match m.role {
            Role::User if !text.is_empty() => messages.push(json!({"role": "user", "content": text})),
            Role::User => {}
            Role::Assistant => {
                let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text) }});
                if !calls.is_empty() {
                    msg["tool_calls"] = Value::Array(calls);
                }
                messages.push(msg);
            }
        }
    }
    let mut body = json!({
        "model": model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                json!({"type": "function", "function": f})
            })
            .collect();
    }
    if let Some(c) = &req.tool_choice {
        body["tool_choice"] = match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(name) => json!({"type": "function", "function": {"name": name}}),
        };
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = req.top_p {
        body["top_p"] = json!(t);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    body
}

fn anthropic_body(req: &ChatRequest, model: &str, max_tokens: u64) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let content: Vec<Value> = m
                .content
                .iter()
                // Anthropic refuses empty text blocks.
                .filter(|p| !matches!(p, Part::Text { text } if text.is_empty()))
                .map(|p| match p {
                    Part::Text { text } => json!({"type": "text", "text": text}),
                    Part::ToolCall { id, name, arguments } => json!({
                        "type": "tool_use", "id": id, "name": name,
                        "input": serde_json::from_str::<Value>(arguments).ok().filter(Value::is_object).unwrap_or_else(|| json!({})),
                    }),
                    Part::ToolResult { call_id, content, is_error } => json!({
                        "type": "tool_result", "tool_use_id": call_id, "content": content, "is_error": is_error,
                    }),
                })
                .collect();
            json!({"role": match m.role { Role::User => "user", Role::Assistant => "assistant" }, "content": content})
        })
        .collect();
    let mut body = json!({"model": model, "messages": messages, "max_tokens": max_tokens, "stream": true});
    if let Some(s) = &req.system {
        body["system"] = json!(s);
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = json!(d);
                }
                v
            })
            .collect();
    }
    if let Some(c) = &req.tool_choice {
        body["tool_choice"] = match c {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Tool(name) => json!({"type": "tool", "name": name}),
        };
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(t) = req.top_p {
        body["top_p"] = json!(t);
    }
    if !req.stop.is_empty() {
        body["stop_sequences"] = json!(req.stop);
    }
    body
}

/// The path appended to a provider's base URL.
pub fn endpoint(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Anthropic => "/messages",
        ProviderKind::Openai | ProviderKind::Replay => "/chat/completions",
    }
}

/// Error of a provider's stream: before the first content event it may be retried elsewhere.
fn broken(message: impl Into<String>) -> GatewayError {
    GatewayError::new(502, "upstream_stream_error", message)
}

/// Decodes one provider's SSE events into [`Event`]s.
#[derive(Debug)]
pub struct Decoder {
    kind: ProviderKind,
    parser: SseParser,
    /// Provider's tool index (OpenAI) or content block index (Anthropic) → our tool index.
    tools: HashMap<u64, usize>,
    usage: Usage,
    finish: Option<FinishReason>,
    /// The provider said it is done (`[DONE]`, `message_stop`).
    pub done: bool,
    started: bool,
}

impl Decoder {
    pub fn new(kind: ProviderKind) -> Self {
        Self {
            kind,
            parser: SseParser::default(),
            tools: HashMap::new(),
            usage: Usage::default(),
            finish: None,
            done: false,
            started: false,
        }
    }

    /// Decodes what `chunk` completes into `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut VecDeque<Event>) -> Result<(), GatewayError> {
        let events = self.parser.push(chunk).map_err(|e| broken(e.to_string()))?;
        for e in events {
            if self.done {
                break;
            }
            match self.kind {
                ProviderKind::Anthropic => self.anthropic(e, out)?,
                ProviderKind::Openai | ProviderKind::Replay => self.openai(e, out)?,
            }
        }
        Ok(())
    }

    /// The upstream closed the connection: a stream that did not finish properly is an error.
    pub fn end(&mut self, out: &mut VecDeque<Event>) -> Result<(), GatewayError> {
        if self.done {
            return Ok(());
        }
        // An OpenAI-compatible server that finished and sent usage but closed without `[DONE]` is fine.
        if self.kind != ProviderKind::Anthropic && self.finish.is_some() && !self.parser.has_partial() {
            self.close(out);
            return Ok(());
        }
        Err(broken("the upstream stream ended before the answer was complete"))
    }

    fn close(&mut self, out: &mut VecDeque<Event>) {
        self.done = true;
        out.push_back(Event::Finish { reason: self.finish.unwrap_or(FinishReason::Stop) });
        out.push_back(Event::Usage { usage: self.usage });
    }

    fn start(&mut self, input_tokens: Option<u64>, out: &mut VecDeque<Event>) {
        if !self.started {
            self.started = true;
            out.push_back(Event::Start { input_tokens });
        }
    }

    fn openai(&mut self, e: SseEvent, out: &mut VecDeque<Event>) -> Result<(), GatewayError> {
        let data = e.data.trim();
        if data == "[DONE]" {
            if self.finish.is_none() {
                return Err(broken("the upstream stream ended without a finish reason"));
            }
            self.close(out);
            return Ok(());
        }
        let v: Value = serde_json::from_str(data).map_err(|_| broken("the upstream sent an event that is not JSON"))?;
        if let Some(err) = v.get("error") {
            let msg = err.get("message").and_then(Value::as_str).unwrap_or("upstream error");
            return Err(broken(format!("upstream error: {msg}")));
        }
        self.start(None, out);
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Usage {
                input_tokens: u["prompt_tokens"].as_u64().unwrap_or(0),
                output_tokens: u["completion_tokens"].as_u64().unwrap_or(0),
            };
        }
        let Some(choice) = v.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else { return Ok(()) };
        let delta = &choice["delta"];
        if let Some(t) = delta.get("content").and_then(Value::as_str)
            && !t.is_empty()
        {
            out.push_back(Event::TextDelta { text: t.to_owned() });
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let up = c["index"].as_u64().unwrap_or(0);
                let f = &c["function"];
                let index = match self.tools.get(&up) {
                    Some(i) => *i,
                    None => {
                        let i = self.tools.len();
                        self.tools.insert(up, i);
                        let id = c["id"].as_str().map_or_else(|| format!("call_{i}"), str::to_owned);
                        let name = f["name"].as_str().unwrap_or_default().to_owned();
                        out.push_back(Event::ToolCallStart { index: i, id, name });
                        i
                    }
                };
                if let Some(a) = f.get("arguments").and_then(Value::as_str)
                    && !a.is_empty()
                {
                    out.push_back(Event::ToolCallDelta { index, arguments: a.to_owned() });
                }
            }
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(match r {
                "length" => FinishReason::Length,
                "tool_calls" | "function_call" => FinishReason::ToolCalls,
                "content_filter" => FinishReason::ContentFilter,
                _ => FinishReason::Stop,
            });
        }
        Ok(())
    }

    fn anthropic(&mut self, e: SseEvent, out: &mut VecDeque<Event>) -> Result<(), GatewayError> {
        let kind = e.event.as_deref().unwrap_or("");
        if kind == "ping" {
            return Ok(());
        }
        let v: Value =
            serde_json::from_str(&e.data).map_err(|_| broken("the upstream sent an event that is not JSON"))?;
        let kind = if kind.is_empty() { v["type"].as_str().unwrap_or("") } else { kind };
        match kind {
            "error" => {
                let msg = v["error"]["message"].as_str().unwrap_or("upstream error");
                return Err(broken(format!("upstream error: {msg}")));
            }
            "message_start" => {
                let u = &v["message"]["usage"];
                self.usage.input_tokens = u["input_tokens"].as_u64().unwrap_or(0);
                self.usage.output_tokens = u["output_tokens"].as_u64().unwrap_or(0);
                self.start(Some(self.usage.input_tokens), out);
            }
            "content_block_start" => {
                let block = &v["content_block"];
                let up = v["index"].as_u64().unwrap_or(0);
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let i = self.tools.len();
                        self.tools.insert(up, i);
                        out.push_back(Event::ToolCallStart {
                            index: i,
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                    Some("text") => {
                        if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push_back(Event::TextDelta { text: t.to_owned() });
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        out.push_back(Event::TextDelta { text: d["text"].as_str().unwrap_or_default().to_owned() })
                    }
                    Some("input_json_delta") => {
                        let up = v["index"].as_u64().unwrap_or(0);
                        let Some(index) = self.tools.get(&up).copied() else {
                            return Err(broken("the upstream sent tool input for an unknown block"));
                        };
                        let arguments = d["partial_json"].as_str().unwrap_or_default().to_owned();
                        if !arguments.is_empty() {
                            out.push_back(Event::ToolCallDelta { index, arguments });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(r) = v["delta"]["stop_reason"].as_str() {
                    self.finish = Some(match r {
                        "max_tokens" => FinishReason::Length,
                        "tool_use" => FinishReason::ToolCalls,
                        "refusal" => FinishReason::ContentFilter,
                        _ => FinishReason::Stop,
                    });
                }
                let u = &v["usage"];
                if let Some(n) = u["output_tokens"].as_u64() {
                    self.usage.output_tokens = n;
                }
                if let Some(n) = u["input_tokens"].as_u64() {
                    self.usage.input_tokens = n;
                }
            }
            "message_stop" => {
                if self.finish.is_none() {
                    return Err(broken("the upstream stream ended without a stop reason"));
                }
                self.close(out);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads the next chunk of a response within `timeout`; `None` at the end.
pub async fn next_chunk(resp: &mut reqwest::Response, timeout: Duration) -> Result<Option<bytes::Bytes>, GatewayError> {
    match tokio::time::timeout(timeout, resp.chunk()).await {
        Err(_) => Err(GatewayError::new(504, "upstream_timeout", "the upstream stopped sending")),
        Ok(Err(e)) => Err(broken(format!("reading the upstream response failed: {}", without_url(&e)))),
        Ok(Ok(c)) => Ok(c),
    }
}

/// A reqwest error's text without the URL (which may carry a provider's query-string key).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<upstream>");
    }
    s
}
