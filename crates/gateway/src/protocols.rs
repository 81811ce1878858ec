//! The inbound protocols: parse each into [`ChatRequest`], render a [`Completion`] as each one's
//! response, and encode [`Event`]s as each one's SSE stream (the event sequences the official SDKs
//! parse: OpenAI chunks with `[DONE]`, Responses lifecycle events, Anthropic message/content-block
//! events with cumulative usage).

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::error::GatewayError;
use crate::ir::{ChatRequest, Completion, Event, Extra, FinishReason, Message, Part, Role, Tool, ToolChoice};
use crate::sse::frame;

/// What a caller asked for besides the chat itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Identity of one answer, shared by its chunks.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub model: String,
    pub created: i64,
}

fn bad(message: impl Into<String>) -> GatewayError {
    GatewayError::invalid("invalid_request", message)
}

fn unsupported(message: impl Into<String>) -> GatewayError {
    GatewayError::invalid("unsupported_content", message)
}

fn obj<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, GatewayError> {
    v.as_object().ok_or_else(|| bad(format!("{what} must be a JSON object")))
}

fn opt_str(o: &Map<String, Value>, key: &str) -> Result<Option<String>, GatewayError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{key}` must be a string"))),
    }
}

fn req_str(o: &Map<String, Value>, key: &str) -> Result<String, GatewayError> {
    opt_str(o, key)?.ok_or_else(|| bad(format!("`{key}` is required")))
}

fn opt_u64(o: &Map<String, Value>, key: &str) -> Result<Option<u64>, GatewayError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().filter(|n| *n >= 1).map(Some).ok_or_else(|| bad(format!("`{key}` must be a positive integer")))
        }
    }
}

fn opt_f64(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, GatewayError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(format!("`{key}` must be a number"))),
    }
}

fn opt_bool(o: &Map<String, Value>, key: &str) -> Result<bool, GatewayError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("`{key}` must be a boolean"))),
    }
}

fn arr<'a>(v: &'a Value, what: &str) -> Result<&'a Vec<Value>, GatewayError> {
    v.as_array().ok_or_else(|| bad(format!("`{what}` must be an array")))
}

fn stop_list(o: &Map<String, Value>, key: &str) -> Result<Vec<String>, GatewayError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| bad(format!("`{key}` must hold strings"))))
            .collect(),
        Some(_) => Err(bad(format!("`{key}` must be a string or an array of strings"))),
    }
}

/// Text of a content that is a string or an array of text parts (`text`, `input_text`, `output_text`).
fn text_of(v: &Value, what: &str) -> Result<String, GatewayError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                let p = obj(p, what)?;
                match p.get("type").and_then(Value::as_str) {
                    Some("text" | "input_text" | "output_text") => out.push_str(&req_str(p, "text")?),
                    Some(t) => return Err(unsupported(format!("content parts of type {t:?} are not supported"))),
                    None => return Err(bad(format!("{what}: a content part needs a `type`"))),
                }
            }
            Ok(out)
        }
        _ => Err(bad(format!("{what} must be a string or an array of parts"))),
    }
}

/// Chat Completions options forwarded to OpenAI-compatible upstreams as they are.
const OPENAI_PASSTHROUGH: &[&str] = &[
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "parallel_tool_calls",
    "reasoning_effort",
    "service_tier",
];
/// Messages options forwarded to Anthropic upstreams as they are.
const ANTHROPIC_PASSTHROUGH: &[&str] = &["top_k", "metadata", "service_tier"];

fn passthrough(o: &Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    keys.iter().filter_map(|k| o.get(*k).filter(|v| !v.is_null()).map(|v| ((*k).to_owned(), v.clone()))).collect()
}

/// OpenAI's `tools` (function tools only). Chat Completions nests each function under `function`
/// (`nested`); the Responses API does not.
fn function_tools(o: &Map<String, Value>, nested: bool) -> Result<Vec<Tool>, GatewayError> {
    let Some(ts) = o.get("tools").filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let mut tools = Vec::new();
    for t in arr(ts, "tools")? {
        let t = obj(t, "a tool")?;
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(unsupported("only tools of type \"function\" are supported"));
        }
        let f = if nested { obj(t.get("function").unwrap_or(&Value::Null), "function")? } else { t };
        tools.push(Tool {
            name: req_str(f, "name")?,
            description: opt_str(f, "description")?,
            parameters: schema(f.get("parameters")),
        });
    }
    Ok(tools)
}

/// OpenAI's `tool_choice`: a mode, or one function by name (under `function` when `nested`, as in
/// Chat Completions).
fn tool_choice(o: &Map<String, Value>, nested: bool) -> Result<Option<ToolChoice>, GatewayError> {
    Ok(match o.get("tool_choice") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => return Err(bad(format!("unknown tool_choice {other:?}"))),
        }),
        Some(v) => {
            let (name, path) = if nested {
                (&v["function"]["name"], "tool_choice.function.name")
            } else {
                (&v["name"], "tool_choice.name")
            };
            Some(ToolChoice::Tool(name.as_str().ok_or_else(|| bad(format!("{path} is required")))?.to_owned()))
        }
    })
}

fn schema(v: Option<&Value>) -> Value {
    match v {
        Some(s @ Value::Object(_)) => s.clone(),
        _ => json!({"type": "object", "properties": {}}),
    }
}

fn push(messages: &mut Vec<Message>, role: Role, part: Part) {
    match messages.last_mut() {
        Some(m) if m.role == role => m.content.push(part),
        _ => messages.push(Message { role, content: vec![part] }),
    }
}

fn finish_openai(r: Option<FinishReason>) -> &'static str {
    match r.unwrap_or(FinishReason::Stop) {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn finish_anthropic(r: Option<FinishReason>) -> &'static str {
    match r.unwrap_or(FinishReason::Stop) {
        FinishReason::Stop | FinishReason::ContentFilter => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}

/// A streamed answer in one protocol.
pub trait Encoder: Send {
    fn event(&mut self, e: &Event, out: &mut Vec<Bytes>);
    /// After the last event (the answer is complete).
    fn finish(&mut self, c: &Completion, out: &mut Vec<Bytes>);
    /// The stream broke after it started: tell the client in its protocol's way (its SDK raises).
    fn error(&mut self, e: &GatewayError, c: &Completion, out: &mut Vec<Bytes>);
}

// ---------------------------------------------------------------------------------------------
// OpenAI Chat Completions

pub mod chat {
    use super::*;

    pub fn parse(body: &Value) -> Result<(ChatRequest, Options), GatewayError> {
        let o = obj(body, "the request body")?;
        let model = req_str(o, "model")?;
        if o.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
            return Err(unsupported("only n = 1 is supported"));
        }
        let mut system: Option<String> = None;
        let mut messages: Vec<Message> = Vec::new();
        for m in arr(o.get("messages").unwrap_or(&Value::Null), "messages")? {
            let m = obj(m, "a message")?;
            let role = req_str(m, "role")?;
            match role.as_str() {
                "system" | "developer" => {
                    let t = text_of(m.get("content").unwrap_or(&Value::Null), "content")?;
                    system = Some(match system {
                        Some(s) => format!("{s}\n\n{t}"),
                        None => t,
                    });
                }
                "user" => {
                    let text = text_of(m.get("content").unwrap_or(&Value::Null), "content")?;
                    push(&mut messages, Role::User, Part::Text { text });
                }
                "assistant" => {
                    let text = text_of(m.get("content").unwrap_or(&Value::Null), "content")?;
                    if !text.is_empty() {
                        push(&mut messages, Role::Assistant, Part::Text { text });
                    }
                    if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
                        for c in arr(calls, "tool_calls")? {
                            let c = obj(c, "a tool call")?;
                            let f = obj(c.get("function").unwrap_or(&Value::Null), "function")?;
                            push(
                                &mut messages,
                                Role::Assistant,
                                Part::ToolCall {
                                    id: req_str(c, "id")?,
                                    name: req_str(f, "name")?,
                                    arguments: opt_str(f, "arguments")?.unwrap_or_default(),
                                },
                            );
                        }
                    }
                    if messages.last().is_none_or(|l| l.role != Role::Assistant) {
                        push(&mut messages, Role::Assistant, Part::Text { text: String::new() });
                    }
                }
                "tool" => {
                    let content = text_of(m.get("content").unwrap_or(&Value::Null), "content")?;
                    let call_id = req_str(m, "tool_call_id")?;
                    push(&mut messages, Role::User, Part::ToolResult { call_id, content, is_error: false });
                }
                other => return Err(bad(format!("unknown message role {other:?}"))),
            }
        }
        let tools = function_tools(o, true)?;
        let tool_choice = tool_choice(o, true)?;
        let stream = opt_bool(o, "stream")?;
        let include_usage =
            o.get("stream_options").and_then(|s| s.get("include_usage")).and_then(Value::as_bool).unwrap_or(false);
        let req = ChatRequest {
            model,
            system,
            messages,
            tools,
            tool_choice,
            max_tokens: opt_u64(o, "max_completion_tokens")?.or(opt_u64(o, "max_tokens")?),
            temperature: opt_f64(o, "temperature")?,
            top_p: opt_f64(o, "top_p")?,
            stop: stop_list(o, "stop")?,
            extra: Extra { openai: passthrough(o, OPENAI_PASSTHROUGH), anthropic: Map::new() },
        };
        Ok((req, Options { stream, include_usage }))
    }

    fn usage(c: &Completion) -> Value {
        let u = c.usage;
        json!({"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens, "total_tokens": u.input_tokens + u.output_tokens})
    }

    pub fn render(meta: &Meta, c: &Completion) -> Value {
        let mut message = json!({
            "role": "assistant",
            "content": if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { Value::String(c.text.clone()) },
            "refusal": Value::Null,
        });
        if !c.tool_calls.is_empty() {
            message["tool_calls"] = c
                .tool_calls
                .iter()
                .map(
                    |t| json!({"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}),
                )
                .collect();
        }
        json!({
            "id": format!("chatcmpl-{}", meta.id),
            "object": "chat.completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "message": message, "logprobs": Value::Null, "finish_reason": finish_openai(c.finish)}],
            "usage": usage(c),
            "system_fingerprint": Value::Null,
        })
    }

    pub struct Stream {
        pub meta: Meta,
        pub include_usage: bool,
        pub started: bool,
    }

    impl Stream {
        fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
            let v = json!({
                "id": format!("chatcmpl-{}", self.meta.id),
                "object": "chat.completion.chunk",
                "created": self.meta.created,
                "model": self.meta.model,
                "system_fingerprint": Value::Null,
                "choices": [{"index": 0, "delta": delta, "logprobs": Value::Null, "finish_reason": finish}],
            });
            frame(None, &v.to_string())
        }
    }

    impl Encoder for Stream {
        fn event(&mut self, e: &Event, out: &mut Vec<Bytes>) {
            if !self.started {
                self.started = true;
                out.push(self.chunk(json!({"role": "assistant", "content": "", "refusal": Value::Null}), None));
            }
            match e {
                Event::TextDelta { text } => out.push(self.chunk(json!({"content": text}), None)),
                Event::ToolCallStart { index, id, name } => out.push(self.chunk(
                    json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                    None,
                )),
                Event::ToolCallDelta { index, arguments } => out
                    .push(self.chunk(json!({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}), None)),
                Event::Start { .. } | Event::Usage { .. } | Event::Finish { .. } => {}
            }
        }

        fn finish(&mut self, c: &Completion, out: &mut Vec<Bytes>) {
            if !self.started {
                self.event(&Event::Start { input_tokens: None }, out);
            }
            out.push(self.chunk(json!({}), Some(finish_openai(c.finish))));
            if self.include_usage {
                let v = json!({
                    "id": format!("chatcmpl-{}", self.meta.id),
                    "object": "chat.completion.chunk",
                    "created": self.meta.created,
                    "model": self.meta.model,
                    "system_fingerprint": Value::Null,
                    "choices": [],
                    "usage": usage(c),
                });
                out.push(frame(None, &v.to_string()));
            }
            out.push(frame(None, "[DONE]"));
        }

        fn error(&mut self, e: &GatewayError, _: &Completion, out: &mut Vec<Bytes>) {
            let v =
                json!({"error": {"message": e.message, "type": "server_error", "param": Value::Null, "code": e.code}});
            out.push(frame(None, &v.to_string()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI Responses

pub mod responses {
    use super::*;

    pub fn parse(body: &Value) -> Result<(ChatRequest, Options), GatewayError> {
        let o = obj(body, "the request body")?;
        let model = req_str(o, "model")?;
        if o.get("previous_response_id").is_some_and(|v| !v.is_null()) {
            return Err(unsupported("previous_response_id is not supported: send the whole conversation in `input`"));
        }
        let mut system = opt_str(o, "instructions")?;
        let mut messages: Vec<Message> = Vec::new();
        match o.get("input") {
            Some(Value::String(s)) => {
                messages.push(Message { role: Role::User, content: vec![Part::Text { text: s.clone() }] })
            }
            Some(Value::Array(items)) => {
                for item in items {
                    let it = obj(item, "an input item")?;
                    match it.get("type").and_then(Value::as_str).unwrap_or("message") {
                        "message" => {
                            let text = text_of(it.get("content").unwrap_or(&Value::Null), "content")?;
                            match req_str(it, "role")?.as_str() {
                                "user" => push(&mut messages, Role::User, Part::Text { text }),
                                "assistant" => push(&mut messages, Role::Assistant, Part::Text { text }),
                                "system" | "developer" => {
                                    system = Some(match system {
                                        Some(s) => format!("{s}\n\n{text}"),
                                        None => text,
                                    })
                                }
                                other => return Err(bad(format!("unknown role {other:?}"))),
                            }
                        }
                        "function_call" => push(
                            &mut messages,
                            Role::Assistant,
                            Part::ToolCall {
                                id: req_str(it, "call_id")?,
                                name: req_str(it, "name")?,
                                arguments: opt_str(it, "arguments")?.unwrap_or_default(),
                            },
                        ),
                        "function_call_output" => {
                            let content = match it.get("output") {
                                Some(Value::String(s)) => s.clone(),
                                Some(v) => text_of(v, "output")?,
                                None => String::new(),
                            };
                            push(
                                &mut messages,
                                Role::User,
                                Part::ToolResult { call_id: req_str(it, "call_id")?, content, is_error: false },
                            )
                        }
                        other => return Err(unsupported(format!("input items of type {other:?} are not supported"))),
                    }
                }
            }
            _ => return Err(bad("`input` must be a string or an array of items")),
        }
        let tools = function_tools(o, false)?;
        let tool_choice = tool_choice(o, false)?;
        let req = ChatRequest {
            model,
            system,
            messages,
            tools,
            tool_choice,
            max_tokens: opt_u64(o, "max_output_tokens")?,
            temperature: opt_f64(o, "temperature")?,
            top_p: opt_f64(o, "top_p")?,
            stop: vec![],
            extra: Extra::default(),
        };
        Ok((req, Options { stream: opt_bool(o, "stream")?, include_usage: true }))
    }

    fn message_item(meta: &Meta, text: &str, done: bool) -> Value {
        let content = if done { json!([{"type": "output_text", "text": text, "annotations": []}]) } else { json!([]) };
        json!({"type": "message", "id": format!("msg_{}", meta.id), "status": if done { "completed" } else { "in_progress" },
               "role": "assistant", "content": content})
    }

    fn call_item(meta: &Meta, index: usize, call_id: &str, name: &str, args: &str, done: bool) -> Value {
        json!({"type": "function_call", "id": format!("fc_{}_{index}", meta.id), "call_id": call_id, "name": name,
               "arguments": args, "status": if done { "completed" } else { "in_progress" }})
    }

    fn response(meta: &Meta, status: &str, output: Vec<Value>, c: Option<&Completion>) -> Value {
        let usage = c.map_or(Value::Null, |c| {
            json!({"input_tokens": c.usage.input_tokens, "output_tokens": c.usage.output_tokens,
                   "total_tokens": c.usage.input_tokens + c.usage.output_tokens,
                   "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}})
        });
        let incomplete = match c.and_then(|c| c.finish) {
            Some(FinishReason::Length) => json!({"reason": "max_output_tokens"}),
            Some(FinishReason::ContentFilter) => json!({"reason": "content_filter"}),
            _ => Value::Null,
        };
        let status = if status == "completed" && !incomplete.is_null() { "incomplete" } else { status };
        json!({
            "id": format!("resp_{}", meta.id), "object": "response", "created_at": meta.created, "status": status,
            "error": Value::Null, "incomplete_details": incomplete, "instructions": Value::Null, "metadata": {},
            "model": meta.model, "output": output, "parallel_tool_calls": true, "temperature": Value::Null,
            "tool_choice": "auto", "tools": [], "top_p": Value::Null, "usage": usage,
        })
    }

    fn output(meta: &Meta, c: &Completion) -> Vec<Value> {
        let mut out = Vec::new();
        if !c.text.is_empty() || c.tool_calls.is_empty() {
            out.push(message_item(meta, &c.text, true));
        }
        for (i, t) in c.tool_calls.iter().enumerate() {
            out.push(call_item(meta, i, &t.id, &t.name, &t.arguments, true));
        }
        out
    }

    pub fn render(meta: &Meta, c: &Completion) -> Value {
        response(meta, "completed", output(meta, c), Some(c))
    }

    /// What is open in the stream.
    enum Open {
        None,
        Text { output_index: usize },
        Call { output_index: usize, tool: usize },
    }

    pub struct Stream {
        pub meta: Meta,
        seq: u64,
        started: bool,
        open: Open,
        next_output: usize,
        text: String,
        /// (call id, name, arguments) per tool index.
        calls: Vec<(String, String, String)>,
        done_items: Vec<(usize, Value)>,
    }

    impl Stream {
        pub fn new(meta: Meta) -> Self {
            Self {
                meta,
                seq: 0,
                started: false,
                open: Open::None,
                next_output: 0,
                text: String::new(),
                calls: vec![],
                done_items: vec![],
            }
        }

        fn emit(&mut self, out: &mut Vec<Bytes>, kind: &str, mut v: Value) {
            v["type"] = json!(kind);
            v["sequence_number"] = json!(self.seq);
            self.seq += 1;
            out.push(frame(Some(kind), &v.to_string()));
        }

        fn start(&mut self, out: &mut Vec<Bytes>) {
            if !self.started {
                self.started = true;
                let r = response(&self.meta, "in_progress", vec![], None);
                self.emit(out, "response.created", json!({"response": r}));
                let r = response(&self.meta, "in_progress", vec![], None);
                self.emit(out, "response.in_progress", json!({"response": r}));
            }
        }

        fn close(&mut self, out: &mut Vec<Bytes>) {
            match std::mem::replace(&mut self.open, Open::None) {
                Open::None => {}
                Open::Text { output_index } => {
                    let item_id = format!("msg_{}", self.meta.id);
                    let text = std::mem::take(&mut self.text);
                    self.emit(out, "response.output_text.done", json!({"item_id": item_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}));
                    self.emit(
                        out,
                        "response.content_part.done",
                        json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []}}),
                    );
                    let item = message_item(&self.meta, &text, true);
                    self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
                    self.done_items.push((output_index, item));
                }
                Open::Call { output_index, tool } => {
                    let (call_id, name, args) = self.calls.get(tool).cloned().unwrap_or_default();
                    let item = call_item(&self.meta, tool, &call_id, &name, &args, true);
                    self.emit(
                        out,
                        "response.function_call_arguments.done",
                        json!({"item_id": item["id"], "output_index": output_index, "name": name, "arguments": args}),
                    );
                    self.emit(out, "response.output_item.done", json!({"output_index": output_index, "item": item}));
                    self.done_items.push((output_index, item));
                }
            }
        }
    }

    impl Encoder for Stream {
        fn event(&mut self, e: &Event, out: &mut Vec<Bytes>) {
            self.start(out);
            match e {
                Event::TextDelta { text } => {
                    let output_index = match self.open {
                        Open::Text { output_index } => output_index,
                        _ => {
                            self.close(out);
                            let output_index = self.next_output;
                            self.next_output += 1;
                            self.open = Open::Text { output_index };
                            let item = message_item(&self.meta, "", false);
                            self.emit(
                                out,
                                "response.output_item.added",
                                json!({"output_index": output_index, "item": item}),
                            );
                            self.emit(
                                out,
                                "response.content_part.added",
                                json!({"item_id": format!("msg_{}", self.meta.id), "output_index": output_index,
                                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                            );
                            output_index
                        }
                    };
                    self.text.push_str(text);
                    self.emit(
                        out,
                        "response.output_text.delta",
                        json!({"item_id": format!("msg_{}", self.meta.id), "output_index": output_index,
                        "content_index": 0, "delta": text, "logprobs": []}),
                    );
                }
                Event::ToolCallStart { index, id, name } => {
                    self.close(out);
                    while self.calls.len() <= *index {
                        self.calls.push(Default::default());
                    }
                    self.calls[*index] = (id.clone(), name.clone(), String::new());
                    let output_index = self.next_output;
                    self.next_output += 1;
                    self.open = Open::Call { output_index, tool: *index };
                    let item = call_item(&self.meta, *index, id, name, "", false);
                    self.emit(out, "response.output_item.added", json!({"output_index": output_index, "item": item}));
                }
                Event::ToolCallDelta { index, arguments } => {
                    if let Some(c) = self.calls.get_mut(*index) {
                        c.2.push_str(arguments);
                    }
                    let output_index = match self.open {
                        Open::Call { output_index, tool } if tool == *index => output_index,
                        _ => return, // deltas of a call that is no longer open are in its final item
                    };
                    let item_id = format!("fc_{}_{index}", self.meta.id);
                    self.emit(
                        out,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": output_index, "delta": arguments}),
                    );
                }
                Event::Start { .. } | Event::Usage { .. } | Event::Finish { .. } => {}
            }
        }

        fn finish(&mut self, c: &Completion, out: &mut Vec<Bytes>) {
            self.start(out);
            if self.next_output == 0 {
                // An empty answer still has its (empty) message.
                self.event(&Event::TextDelta { text: String::new() }, out);
            }
            self.close(out);
            let mut items = std::mem::take(&mut self.done_items);
            items.sort_by_key(|(i, _)| *i);
            let r = response(&self.meta, "completed", items.into_iter().map(|(_, v)| v).collect(), Some(c));
            let kind = if r["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
            self.emit(out, kind, json!({"response": r}));
        }

        fn error(&mut self, e: &GatewayError, _: &Completion, out: &mut Vec<Bytes>) {
            // `error` carries the object the SDK raises from.
            self.emit(
                out,
                "error",
                json!({"code": e.code, "message": e.message, "param": Value::Null,
                "error": {"type": "server_error", "code": e.code, "message": e.message}}),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Anthropic Messages

pub mod messages {
    use super::*;

    fn blocks(v: &Value, role: Role, messages: &mut Vec<Message>) -> Result<(), GatewayError> {
        match v {
            Value::String(s) => push(messages, role, Part::Text { text: s.clone() }),
            Value::Array(bs) => {
                for b in bs {
                    let b = obj(b, "a content block")?;
                    let part = match b.get("type").and_then(Value::as_str) {
                        Some("text") => Part::Text { text: req_str(b, "text")? },
                        Some("tool_use") => Part::ToolCall {
                            id: req_str(b, "id")?,
                            name: req_str(b, "name")?,
                            arguments: b.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                        },
                        Some("tool_result") => Part::ToolResult {
                            call_id: req_str(b, "tool_use_id")?,
                            content: text_of(b.get("content").unwrap_or(&Value::Null), "tool_result content")?,
                            is_error: opt_bool(b, "is_error")?,
                        },
                        Some("thinking" | "redacted_thinking") => continue,
                        Some(t) => return Err(unsupported(format!("content blocks of type {t:?} are not supported"))),
                        None => return Err(bad("a content block needs a `type`")),
                    };
                    push(messages, role, part);
                }
            }
            _ => return Err(bad("`content` must be a string or an array of blocks")),
        }
        Ok(())
    }

    pub fn parse(body: &Value) -> Result<(ChatRequest, Options), GatewayError> {
        let o = obj(body, "the request body")?;
        let model = req_str(o, "model")?;
        let system = match o.get("system") {
            None | Some(Value::Null) => None,
            Some(v) => Some(text_of(v, "system")?),
        };
        let mut messages = Vec::new();
        for m in arr(o.get("messages").unwrap_or(&Value::Null), "messages")? {
            let m = obj(m, "a message")?;
            let role = match req_str(m, "role")?.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => return Err(bad(format!("unknown message role {other:?}"))),
            };
            blocks(m.get("content").unwrap_or(&Value::Null), role, &mut messages)?;
        }
        let mut tools = Vec::new();
        if let Some(ts) = o.get("tools").filter(|v| !v.is_null()) {
            for t in arr(ts, "tools")? {
                let t = obj(t, "a tool")?;
                if t.get("type").and_then(Value::as_str).is_some_and(|k| k != "custom") {
                    return Err(unsupported("only client tools (name, input_schema) are supported"));
                }
                tools.push(Tool {
                    name: req_str(t, "name")?,
                    description: opt_str(t, "description")?,
                    parameters: schema(t.get("input_schema")),
                });
            }
        }
        let tool_choice = match o.get("tool_choice") {
            None | Some(Value::Null) => None,
            Some(v) => Some(match v["type"].as_str() {
                Some("auto") => ToolChoice::Auto,
                Some("any") => ToolChoice::Required,
                Some("none") => ToolChoice::None,
                Some("tool") => {
                    ToolChoice::Tool(v["name"].as_str().ok_or_else(|| bad("tool_choice.name is required"))?.to_owned())
                }
                _ => return Err(bad("unknown tool_choice")),
            }),
        };
        let req = ChatRequest {
            model,
            system,
            messages,
            tools,
            tool_choice,
            max_tokens: opt_u64(o, "max_tokens")?,
            temperature: opt_f64(o, "temperature")?,
            top_p: opt_f64(o, "top_p")?,
            stop: stop_list(o, "stop_sequences")?,
            extra: Extra { openai: Map::new(), anthropic: passthrough(o, ANTHROPIC_PASSTHROUGH) },
        };
        Ok((req, Options { stream: opt_bool(o, "stream")?, include_usage: true }))
    }

    fn content(c: &Completion) -> Vec<Value> {
        let mut out = Vec::new();
        if !c.text.is_empty() {
            out.push(json!({"type": "text", "text": c.text}));
        }
        for t in &c.tool_calls {
            let input =
                serde_json::from_str::<Value>(&t.arguments).ok().filter(Value::is_object).unwrap_or_else(|| json!({}));
            out.push(json!({"type": "tool_use", "id": t.id, "name": t.name, "input": input}));
        }
        out
    }

    pub fn render(meta: &Meta, c: &Completion) -> Value {
        json!({
            "id": format!("msg_{}", meta.id), "type": "message", "role": "assistant", "model": meta.model,
            "content": content(c), "stop_reason": finish_anthropic(c.finish), "stop_sequence": Value::Null,
            "usage": {"input_tokens": c.usage.input_tokens, "output_tokens": c.usage.output_tokens},
        })
    }

    pub struct Stream {
        pub meta: Meta,
        /// Input tokens to announce at the start (the upstream's, or the estimate).
        pub input_estimate: u64,
        started: bool,
        /// Index of the open content block and whether it is text.
        open: Option<(usize, bool)>,
        blocks: usize,
        /// Our tool index → block index.
        tool_blocks: Vec<usize>,
    }

    impl Stream {
        pub fn new(meta: Meta, input_estimate: u64) -> Self {
            Self { meta, input_estimate, started: false, open: None, blocks: 0, tool_blocks: vec![] }
        }

        fn emit(out: &mut Vec<Bytes>, kind: &str, mut v: Value) {
            v["type"] = json!(kind);
            out.push(frame(Some(kind), &v.to_string()));
        }

        fn start(&mut self, input: Option<u64>, out: &mut Vec<Bytes>) {
            if self.started {
                return;
            }
            self.started = true;
            let message = json!({
                "id": format!("msg_{}", self.meta.id), "type": "message", "role": "assistant", "model": self.meta.model,
                "content": [], "stop_reason": Value::Null, "stop_sequence": Value::Null,
                "usage": {"input_tokens": input.unwrap_or(self.input_estimate), "output_tokens": 1},
            });
            Self::emit(out, "message_start", json!({"message": message}));
            Self::emit(out, "ping", json!({}));
        }

        fn close(&mut self, out: &mut Vec<Bytes>) {
            if let Some((index, _)) = self.open.take() {
                Self::emit(out, "content_block_stop", json!({"index": index}));
            }
        }
    }

    impl Encoder for Stream {
        fn event(&mut self, e: &Event, out: &mut Vec<Bytes>) {
            if let Event::Start { input_tokens } = e {
                self.start(*input_tokens, out);
                return;
            }
            self.start(None, out);
            match e {
                Event::TextDelta { text } => {
                    let index = match self.open {
                        Some((i, true)) => i,
                        _ => {
                            self.close(out);
                            let i = self.blocks;
                            self.blocks += 1;
                            self.open = Some((i, true));
                            Self::emit(
                                out,
                                "content_block_start",
                                json!({"index": i, "content_block": {"type": "text", "text": ""}}),
                            );
                            i
                        }
                    };
                    Self::emit(
                        out,
                        "content_block_delta",
                        json!({"index": index, "delta": {"type": "text_delta", "text": text}}),
                    );
                }
                Event::ToolCallStart { index, id, name } => {
                    self.close(out);
                    let i = self.blocks;
                    self.blocks += 1;
                    while self.tool_blocks.len() <= *index {
                        self.tool_blocks.push(i);
                    }
                    self.tool_blocks[*index] = i;
                    self.open = Some((i, false));
                    Self::emit(
                        out,
                        "content_block_start",
                        json!({"index": i, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    );
                }
                Event::ToolCallDelta { index, arguments } => {
                    let Some(block) = self.tool_blocks.get(*index).copied() else { return };
                    Self::emit(
                        out,
                        "content_block_delta",
                        json!({"index": block, "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                    );
                }
                Event::Start { .. } | Event::Usage { .. } | Event::Finish { .. } => {}
            }
        }

        fn finish(&mut self, c: &Completion, out: &mut Vec<Bytes>) {
            self.start(None, out);
            self.close(out);
            Self::emit(
                out,
                "message_delta",
                json!({
                    "delta": {"stop_reason": finish_anthropic(c.finish), "stop_sequence": Value::Null},
                    "usage": {"input_tokens": c.usage.input_tokens, "output_tokens": c.usage.output_tokens},
                }),
            );
            Self::emit(out, "message_stop", json!({}));
        }

        fn error(&mut self, e: &GatewayError, _: &Completion, out: &mut Vec<Bytes>) {
            Self::emit(out, "error", json!({"error": {"type": "api_error", "message": e.message}}));
        }
    }
}
