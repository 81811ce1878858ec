//! The gateway's own neutral form of a chat request and of the events of its answer. Every inbound
//! protocol parses into it and renders from it; every upstream adapter builds its request from it and
//! turns its stream into [`Event`]s. Translation between protocols is therefore two hops through here.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    /// A call the assistant made; `arguments` is the JSON text of the arguments.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result the caller sends back for a tool call.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Tool(String),
}

/// A chat request in neutral form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    /// Provider-specific options (`response_format`, `seed`, `top_k`, …) forwarded verbatim to upstreams
    /// of the protocol they were written for, and dropped for the other.
    #[serde(default)]
    pub extra: Extra,
}

/// Options of one protocol with no neutral form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extra {
    /// Chat Completions fields for OpenAI-compatible upstreams.
    pub openai: serde_json::Map<String, Value>,
    /// Messages fields for Anthropic upstreams.
    pub anthropic: serde_json::Map<String, Value>,
}

impl ChatRequest {
    /// A rough token count of the prompt (about four characters a token, as the providers' own rules of
    /// thumb say). Used for reservations, `count_tokens` and the context-window check, never for billing
    /// when the upstream reports usage.
    pub fn estimate_input_tokens(&self) -> u64 {
        let mut chars = self.system.as_deref().map_or(0, str::len);
        for m in &self.messages {
            chars += 4;
            for p in &m.content {
                chars += match p {
                    Part::Text { text } => text.len(),
                    Part::ToolCall { id, name, arguments } => id.len() + name.len() + arguments.len(),
                    Part::ToolResult { call_id, content, .. } => call_id.len() + content.len(),
                };
            }
        }
        for t in &self.tools {
            chars += t.name.len() + t.description.as_deref().map_or(0, str::len) + t.parameters.to_string().len();
        }
        estimate_tokens(chars)
    }
}

/// Tokens of `bytes` bytes of text, by the four-characters rule, at least 1.
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// Token usage of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// One event of an answer, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The upstream is answering; `input_tokens` if it says so up front (Anthropic).
    Start {
        input_tokens: Option<u64>,
    },
    TextDelta {
        text: String,
    },
    /// A tool call begins; `index` counts tool calls of this answer from 0.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallDelta {
        index: usize,
        arguments: String,
    },
    /// Final usage (cumulative), as the upstream reported it.
    Usage {
        usage: Usage,
    },
    Finish {
        reason: FinishReason,
    },
}

/// A tool call of a finished answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A whole answer, gathered from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

impl Completion {
    /// Folds one event in.
    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::Start { input_tokens } => {
                if let Some(n) = input_tokens {
                    self.usage.input_tokens = *n;
                }
            }
            Event::TextDelta { text } => self.text.push_str(text),
            Event::ToolCallStart { index, id, name } => {
                while self.tool_calls.len() <= *index {
                    self.tool_calls.push(ToolCall { id: String::new(), name: String::new(), arguments: String::new() });
                }
                self.tool_calls[*index].id.clone_from(id);
                self.tool_calls[*index].name.clone_from(name);
            }
            Event::ToolCallDelta { index, arguments } => {
                if let Some(c) = self.tool_calls.get_mut(*index) {
                    c.arguments.push_str(arguments);
                }
            }
            Event::Usage { usage } => self.usage = *usage,
            Event::Finish { reason } => self.finish = Some(*reason),
        }
    }

    /// The events that replay this completion (used by the replay provider).
    pub fn to_events(&self) -> Vec<Event> {
        let mut out = vec![Event::Start { input_tokens: Some(self.usage.input_tokens) }];
        if !self.text.is_empty() {
            out.push(Event::TextDelta { text: self.text.clone() });
        }
        for (index, c) in self.tool_calls.iter().enumerate() {
            out.push(Event::ToolCallStart { index, id: c.id.clone(), name: c.name.clone() });
            out.push(Event::ToolCallDelta { index, arguments: c.arguments.clone() });
        }
        out.push(Event::Finish { reason: self.finish.unwrap_or(FinishReason::Stop) });
        out.push(Event::Usage { usage: self.usage });
        out
    }
}
