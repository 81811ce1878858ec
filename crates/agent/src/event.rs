//! The events of a session's log. The log *is* an AG-UI event stream: every row is one AG-UI event
//! (RUN_STARTED, TEXT_MESSAGE_*, TOOL_CALL_*, RUN_FINISHED / RUN_ERROR, STATE_SNAPSHOT, …), so a client
//! resuming with `Last-Event-ID` gets exactly the rows after that sequence number, and replaying a
//! session is reading its rows. What AG-UI has no event for (the user's message, the model request,
//! sandbox attach and detach) is a `CUSTOM` event named `vibebase.*`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `CUSTOM` event names written by the loop.
pub mod custom {
    /// A user's message: `{messageId, content, model?}`.
    pub const USER_MESSAGE: &str = "vibebase.user_message";
    /// The loop is about to call the model: `{model, turn}`.
    pub const MODEL_REQUEST: &str = "vibebase.model_request";
    /// The model's answer is complete: `{usage: {input_tokens, output_tokens}, finish}`.
    pub const MODEL_RESPONSE: &str = "vibebase.model_response";
    /// A sandbox was attached to the session: `{sandbox}`.
    pub const SANDBOX_ATTACH: &str = "vibebase.sandbox_attach";
    /// A sandbox left the session: `{sandbox, reason}`.
    pub const SANDBOX_DETACH: &str = "vibebase.sandbox_detach";
    /// The end of a run that changed the workspace, schema or deployments: `{snapshot, migration,
    /// deployment}` (the workspace snapshot, if a sandbox was used; the env's latest migration version;
    /// the published site deployment). A revert names it by its sequence number.
    pub const CHECKPOINT: &str = "vibebase.checkpoint";
    /// The session was reverted to a checkpoint: `{checkpoint, snapshot, deployment, schema}` (the
    /// workspace and site are restored; the schema is not, `schema` says where it stands).
    pub const REVERTED: &str = "vibebase.reverted";
    /// A tool call waits for a person's decision: `{toolCallId, toolName, arguments}`.
    pub const APPROVAL_REQUESTED: &str = "vibebase.approval_requested";
    /// A person decided: `{toolCallId, decision}` (`allow`, `allow_always`, `deny`).
    pub const APPROVAL: &str = "vibebase.approval";
    /// The conversation before `upTo` (a sequence number) was summarized for the model, whose context
    /// window filled: `{summary, upTo}`. The raw log is kept; the model sees the summary instead.
    pub const COMPACTION: &str = "vibebase.compaction";
    /// Another instance took the session over after its driver stopped: `{holder}`.
    pub const RESUMED: &str = "vibebase.resumed";
}

/// One AG-UI event as the log keeps it and the stream sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", rename_all_fields = "camelCase")]
pub enum Event {
    RunStarted {
        thread_id: String,
        run_id: String,
    },
    RunFinished {
        thread_id: String,
        run_id: String,
    },
    RunError {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<String>,
    },
    TextMessageStart {
        message_id: String,
        role: String,
    },
    TextMessageContent {
        message_id: String,
        delta: String,
    },
    TextMessageEnd {
        message_id: String,
    },
    ToolCallStart {
        tool_call_id: String,
        tool_call_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_message_id: Option<String>,
    },
    ToolCallArgs {
        tool_call_id: String,
        delta: String,
    },
    /// The call is complete: from here on it is an intent the loop will act on (or report as
    /// interrupted after a crash, never run twice).
    ToolCallEnd {
        tool_call_id: String,
    },
    ToolCallResult {
        message_id: String,
        tool_call_id: String,
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        role: Option<String>,
        /// The tool failed. Sent as `metadata: {"isError": true}`, AG-UI's place for producer additions
        /// (`@ag-ui/client` strips unknown top-level fields with a warning, and keeps `metadata` on the
        /// tool message); a top-level `isError` (logs written before) is read too.
        #[serde(
            default,
            rename = "metadata",
            alias = "isError",
            skip_serializing_if = "std::ops::Not::not",
            with = "error_metadata"
        )]
        is_error: bool,
    },
    StateSnapshot {
        snapshot: Value,
    },
    Custom {
        name: String,
        value: Value,
    },
}

/// `is_error` as AG-UI event metadata: `true` ⇄ `{"isError": true}`.
mod error_metadata {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    pub fn serialize<S: Serializer>(is_error: &bool, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&serde_json::json!({ "isError": is_error }), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::Bool(b) => b,
            Value::Object(m) => m.get("isError") == Some(&Value::Bool(true)),
            _ => false,
        })
    }
}

impl Event {
    pub fn custom(name: &str, value: Value) -> Self {
        Self::Custom { name: name.to_owned(), value }
    }

    /// The usage meter this event counts toward: a model request is a turn, a tool result a tool call.
    pub fn meter(&self) -> Option<protocol::Meter> {
        match self {
            Self::Custom { name, .. } if name == custom::MODEL_REQUEST => Some(protocol::Meter::AgentTurns),
            Self::ToolCallResult { .. } => Some(protocol::Meter::AgentToolCalls),
            _ => None,
        }
    }

    /// True for the events that end a run.
    pub fn ends_run(&self) -> bool {
        matches!(self, Self::RunFinished { .. } | Self::RunError { .. })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_use_ag_ui_names() {
        let e =
            Event::ToolCallStart { tool_call_id: "c1".into(), tool_call_name: "bash".into(), parent_message_id: None };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v, serde_json::json!({"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "bash"}));
        let e = Event::RunStarted { thread_id: "t".into(), run_id: "r".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"type":"RUN_STARTED","threadId":"t","runId":"r"}"#);
        let back: Event = serde_json::from_value(v).unwrap();
        assert!(matches!(back, Event::ToolCallStart { .. }));
    }

    #[test]
    fn a_failed_tool_result_says_so_in_metadata_and_old_logs_still_read() {
        let failed = |is_error| Event::ToolCallResult {
            message_id: "m".into(),
            tool_call_id: "c".into(),
            content: "x".into(),
            role: Some("tool".into()),
            is_error,
        };
        let v = serde_json::to_value(failed(true)).unwrap();
        assert_eq!(v["metadata"], serde_json::json!({"isError": true}));
        assert!(v.get("isError").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), failed(true));
        let ok = serde_json::to_value(failed(false)).unwrap();
        assert!(ok.get("metadata").is_none(), "{ok}");
        assert_eq!(serde_json::from_value::<Event>(ok).unwrap(), failed(false));
        let old = serde_json::json!({"type": "TOOL_CALL_RESULT", "messageId": "m", "toolCallId": "c",
            "content": "x", "role": "tool", "isError": true});
        assert_eq!(serde_json::from_value::<Event>(old).unwrap(), failed(true));
    }
}
