//! The `replay` provider: answers from a recordings file instead of a network upstream, for demos and
//! tests. Each recording pairs a request's content (system prompt, messages, tool names) with the
//! completion to play back. A request without a recording fails loudly (422 `replay_no_recording`,
//! naming the content key), never falls through to another route, and every replayed answer says so.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::json;
use sha2::Digest as _;

use crate::config::ConfigError;
use crate::error::GatewayError;
use crate::ir::{ChatRequest, Completion, Message};

/// What a recording matches on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordedRequest {
    #[serde(default)]
    pub system: Option<String>,
    pub messages: Vec<Message>,
    /// Names of the tools offered (order does not matter).
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recording {
    request: RecordedRequest,
    response: Completion,
}

/// The recordings of one replay provider, by content key.
#[derive(Debug, Default)]
pub struct Recordings {
    by_key: HashMap<String, Completion>,
}

/// The content key of a request: SHA-256 of its system prompt, messages and sorted tool names.
pub fn content_key(system: Option<&str>, messages: &[Message], tools: &[String]) -> String {
    let mut tools = tools.to_vec();
    tools.sort();
    let canonical = json!({"system": system, "messages": messages, "tools": tools}).to_string();
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}

impl Recordings {
    /// Loads a recordings file (a JSON array of `{request, response}`).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let list: Vec<Recording> = serde_json::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })?;
        let mut by_key = HashMap::new();
        for r in list {
            let key = content_key(r.request.system.as_deref(), &r.request.messages, &r.request.tools);
            by_key.insert(key, r.response);
        }
        Ok(Self { by_key })
    }

    /// The recorded answer to `req`.
    pub fn answer(&self, provider: &str, req: &ChatRequest) -> Result<Completion, GatewayError> {
        let tools: Vec<String> = req.tools.iter().map(|t| t.name.clone()).collect();
        let key = content_key(req.system.as_deref(), &req.messages, &tools);
        self.by_key.get(&key).cloned().ok_or_else(|| {
            GatewayError::new(
                422,
                "replay_no_recording",
                format!("replay provider {provider:?} has no recording for this request (content key {key})"),
            )
        })
    }
}
