//! The `replay` provider: answers from recordings instead of a network upstream, for demos and tests.
//! Each recording pairs a request's content (system prompt, messages, tool names) with the completion to
//! play back. A request without a recording fails loudly (422 `replay_no_recording`, naming the content
//! key), never falls through to another route, and every replayed answer says so.
//!
//! Recordings are made by any network provider with `record` set: each answered request is added to
//! the file under its content key. Two things in a request are not content and are left out of the key:
//! tool call ids (opaque tokens, numbered in order of appearance instead) and the *volatile* values the
//! file declares, each a prefix whose following word (ids, URLs, keys) is masked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest as _;

use crate::config::ConfigError;
use crate::error::GatewayError;
use crate::ir::{ChatRequest, Completion, Message, Part};

/// What a recording matches on, spelled out (a recording may give its `key` instead).
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

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recording {
    #[serde(default, skip_serializing)]
    request: Option<RecordedRequest>,
    /// The content key of the request ([`content_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// For people reading the file: what the request ended with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    response: Completion,
}

/// A recordings file: a plain list, or the list with the volatile prefixes its keys were made with.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum File {
    List(Vec<Recording>),
    Full(FullFile),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FullFile {
    #[serde(default)]
    volatile: Vec<String>,
    recordings: Vec<Recording>,
}

impl File {
    fn parse(text: &str, path: &str) -> Result<FullFile, ConfigError> {
        let file: File =
            serde_json::from_str(text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        Ok(match file {
            File::List(recordings) => FullFile { volatile: Vec::new(), recordings },
            File::Full(f) => f,
        })
    }
}

/// The recordings of one replay provider, by content key.
#[derive(Debug, Default)]
pub struct Recordings {
    volatile: Vec<String>,
    by_key: HashMap<String, Completion>,
}

/// Characters that end a masked volatile value.
fn ends_value(c: char) -> bool {
    c.is_whitespace() || "\"'`()[]{}<>,;".contains(c)
}

/// `text` with the word after each occurrence of a volatile prefix replaced by `*`.
fn mask(text: &str, volatile: &[String]) -> String {
    let mut out = text.to_owned();
    for prefix in volatile.iter().filter(|p| !p.is_empty()) {
        let mut masked = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(prefix.as_str()) {
            let after = &rest[at + prefix.len()..];
            let end = after.find(ends_value).unwrap_or(after.len());
            masked.push_str(&rest[..at + prefix.len()]);
            if end > 0 {
                masked.push('*');
            }
            rest = &after[end..];
        }
        masked.push_str(rest);
        out = masked;
    }
    out
}

/// The content key of a request: SHA-256 of its system prompt, messages and sorted tool names, with
/// tool call ids numbered in order of appearance and volatile values masked.
pub fn content_key(system: Option<&str>, messages: &[Message], tools: &[String], volatile: &[String]) -> String {
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut number = |id: &str| {
        let n = ids.len() + 1;
        ids.entry(id.to_owned()).or_insert_with(|| format!("call_{n}")).clone()
    };
    let messages: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            role: m.role,
            content: m
                .content
                .iter()
                .map(|p| match p {
                    Part::Text { text } => Part::Text { text: mask(text, volatile) },
                    Part::ToolCall { id, name, arguments } => {
                        Part::ToolCall { id: number(id), name: name.clone(), arguments: mask(arguments, volatile) }
                    }
                    Part::ToolResult { call_id, content, is_error } => Part::ToolResult {
                        call_id: number(call_id),
                        content: mask(content, volatile),
                        is_error: *is_error,
                    },
                })
                .collect(),
        })
        .collect();
    let mut tools = tools.to_vec();
    tools.sort();
    let system = system.map(|s| mask(s, volatile));
    let canonical = json!({"system": system, "messages": messages, "tools": tools}).to_string();
    hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
}

fn key_of(req: &ChatRequest, volatile: &[String]) -> String {
    let tools: Vec<String> = req.tools.iter().map(|t| t.name.clone()).collect();
    content_key(req.system.as_deref(), &req.messages, &tools, volatile)
}

/// What a request ended with, in a line (the `note` of a recording).
fn note_of(req: &ChatRequest) -> String {
    let Some(last) = req.messages.last().and_then(|m| m.content.last()) else { return String::new() };
    let text = match last {
        Part::Text { text } => format!("text: {text}"),
        Part::ToolCall { name, .. } => format!("tool call: {name}"),
        Part::ToolResult { content, is_error, .. } => {
            format!("{}: {content}", if *is_error { "tool error" } else { "tool result" })
        }
    };
    let line: String = text.chars().take(160).collect::<String>().replace('\n', " ");
    format!("turn {}, {line}", req.messages.iter().filter(|m| m.role == crate::ir::Role::Assistant).count() + 1)
}

impl Recordings {
    /// Loads a recordings file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses recordings (`origin` names them in errors).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file = File::parse(text, origin)?;
        let mut by_key = HashMap::new();
        for r in file.recordings {
            let key = match (r.key, r.request) {
                (Some(key), None) => key,
                (None, Some(q)) => content_key(q.system.as_deref(), &q.messages, &q.tools, &file.volatile),
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "{origin}: each recording has either `request` or `key`"
                    )));
                }
            };
            by_key.insert(key, r.response);
        }
        Ok(Self { volatile: file.volatile, by_key })
    }

    /// The recorded answer to `req`.
    pub fn answer(&self, provider: &str, req: &ChatRequest) -> Result<Completion, GatewayError> {
        let key = key_of(req, &self.volatile);
        self.by_key.get(&key).cloned().ok_or_else(|| {
            GatewayError::new(
                422,
                "replay_no_recording",
                format!("replay provider {provider:?} has no recording for this request (content key {key})"),
            )
        })
    }
}

/// Adds every answer of a network provider to a recordings file (its `record` setting).
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    volatile: Vec<String>,
    lock: Mutex<()>,
}

impl Recorder {
    pub fn new(path: PathBuf, volatile: Vec<String>) -> Self {
        Self { path, volatile, lock: Mutex::new(()) }
    }

    /// What [`Recorder::add`] needs of a request: its key and note.
    pub fn start(&self, req: &ChatRequest) -> (String, String) {
        (key_of(req, &self.volatile), note_of(req))
    }

    /// Adds (or replaces) the recording of `key`. The file is rewritten whole (atomically); a failure
    /// is logged, never the caller's problem.
    pub fn add(&self, key: String, note: String, response: Completion) {
        let _held = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut file = match std::fs::read_to_string(&self.path) {
            Ok(text) => match File::parse(&text, &self.path.display().to_string()) {
                Ok(f) => f,
                Err(e) => return tracing::error!(error = %e, "not recording: the recordings file is unreadable"),
            },
            Err(_) => FullFile::default(),
        };
        file.volatile.clone_from(&self.volatile);
        file.recordings.retain(|r| r.key.as_deref() != Some(key.as_str()));
        file.recordings.push(Recording { request: None, key: Some(key), note: Some(note), response });
        let tmp = self.path.with_extension("tmp");
        let written = serde_json::to_string_pretty(&file)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(&tmp, text + "\n"))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::error!(error = %e, path = %self.path.display(), "could not write a recording");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_words_are_masked_and_the_rest_kept() {
        let v = vec!["deployment ".to_owned(), "http://".to_owned()];
        assert_eq!(
            mask("deployment dpl_12ab (3 files); live at http://x.localhost:80/, ok", &v),
            "deployment * (3 files); live at http://*, ok"
        );
        assert_eq!(mask("no volatile here", &v), "no volatile here");
        assert_eq!(mask("deployment ", &v), "deployment ");
    }

    #[test]
    fn keys_ignore_call_ids_and_volatile_values_but_not_content() {
        let msgs = |id: &str, url: &str, result: &str| {
            vec![
                Message { role: crate::ir::Role::User, content: vec![Part::Text { text: "go".into() }] },
                Message {
                    role: crate::ir::Role::Assistant,
                    content: vec![Part::ToolCall { id: id.into(), name: "deploy".into(), arguments: "{}".into() }],
                },
                Message {
                    role: crate::ir::Role::User,
                    content: vec![Part::ToolResult {
                        call_id: id.into(),
                        content: format!("{result} at {url}"),
                        is_error: false,
                    }],
                },
            ]
        };
        let v = vec!["http://".to_owned()];
        let a = content_key(None, &msgs("call_a", "http://a.localhost", "live"), &[], &v);
        assert_eq!(a, content_key(None, &msgs("call_b", "http://b.localhost", "live"), &[], &v));
        assert_ne!(a, content_key(None, &msgs("call_a", "http://a.localhost", "failed"), &[], &v));
        assert_ne!(a, content_key(None, &msgs("call_a", "http://a.localhost", "live"), &[], &[]));
    }
}
