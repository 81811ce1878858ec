//! Request and response bodies of the session API (`/v1/envs/{env}/sessions`). A session's events are
//! AG-UI events, streamed as SSE; their shapes are AG-UI's, not described here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/envs/{env}/sessions`. Every field is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// The session id (AG-UI's `threadId`): 1..=128 of `A-Z a-z 0-9 - _ . :`; generated when absent.
    pub id: Option<String>,
    pub title: Option<String>,
    /// The model (a gateway model name) of its messages unless a message names another.
    pub model: Option<String>,
    /// Tools that wait for a person's decision (allow, allow always, deny) before they run.
    #[serde(default)]
    pub require_approval: Vec<String>,
    /// Cap on model calls over the session's life (a run that reaches it ends with `session_turn_cap`).
    #[schema(minimum = 1)]
    pub max_turns: Option<u64>,
    /// Cap on model tokens, input and output together, over the session's life.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Cap on model cost in micro-USD (the unit of the `llm_cost` meter) over the session's life.
    #[schema(minimum = 1)]
    pub max_cost: Option<u64>,
}

/// A session.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionRecord {
    pub id: String,
    pub env: String,
    pub title: Option<String>,
    pub model: Option<String>,
    /// `idle`, or `running` while a run is in progress.
    pub status: String,
    /// Sequence number of the newest event (the SSE id of the last event).
    pub last_seq: i64,
    /// The run in progress, or the last one.
    pub run_id: Option<String>,
    /// The sandbox attached to the session, if any.
    pub sandbox_id: Option<String>,
    pub max_turns: Option<u64>,
    pub max_tokens: Option<u64>,
    pub max_cost: Option<u64>,
    /// Tools that wait for a person's decision.
    pub require_approval: Vec<String>,
    /// Tools a person allowed for the rest of the session.
    pub always_allowed: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionRecord>,
}

/// `POST /v1/envs/{env}/sessions/{session}/messages`: a user message, which starts a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    pub content: String,
    /// Switches the session's model from this message on.
    pub model: Option<String>,
    /// The run's id (AG-UI's `runId`); generated when absent.
    pub run_id: Option<String>,
}

/// A started run. Its events are the session's events after `after_seq`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunStarted {
    pub session: String,
    pub run_id: String,
    pub after_seq: i64,
}

/// `POST …/interrupt`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InterruptResult {
    /// False when no run was in progress.
    pub interrupted: bool,
}

/// `POST …/revert`: the checkpoint to return the session's workspace and site to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The sequence number of a `vibebase.checkpoint` event of the session.
    pub checkpoint: i64,
}

/// What a revert restored. The schema is not reverted: `migration` is where it stood at the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevertResult {
    pub checkpoint: i64,
    /// The sequence number of the `vibebase.reverted` event.
    pub seq: i64,
    /// The workspace snapshot the session's next sandbox starts from (none: an empty workspace).
    pub snapshot: Option<String>,
    /// The deployment published again (none: the checkpoint had no site, which is left as it is).
    pub deployment: Option<String>,
    /// The migration version at the checkpoint (the schema itself is not reverted).
    pub migration: Option<i64>,
}

/// A person's decision on a tool call waiting for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    /// Allow this call and every later call of the same tool in the session.
    AllowAlways,
    Deny,
}

/// `POST …/approvals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    pub tool_call_id: String,
    pub decision: Decision,
}
