//! Request and response bodies of the functions API (`/v1/envs/{env}/functions`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One immutable deployed version of a function.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionVersion {
    pub version: u64,
    /// The file the runner loads (relative to the function's root).
    pub entrypoint: String,
    /// Size of the stored bundle (source plus installed dependencies), in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the stored bundle (hex).
    pub sha256: String,
    /// Whether `npm install` ran at deploy time.
    pub dependencies_installed: bool,
    pub memory_mb: u64,
    pub timeout_ms: u64,
    /// Invocations of this function running at once on one instance, at most.
    pub concurrency: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionVersionList {
    pub items: Vec<FunctionVersion>,
}

/// A function of an env and the version it serves.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionRecord {
    pub name: String,
    pub active_version: u64,
    pub active: FunctionVersion,
    /// Names of its environment variables and secrets (values are never returned).
    pub secrets: Vec<String>,
    /// A cron expression (5 fields, UTC) that invokes it, if any.
    pub schedule: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionList {
    pub items: Vec<FunctionRecord>,
}

/// `POST …/rollback`: serve this (earlier or later) version from now on.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    #[schema(minimum = 1)]
    pub version: u64,
}

/// `PUT …/secrets`: sets (a string) or removes (`null`) environment variables of the function; values
/// are encrypted at rest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecretsRequest {
    pub values: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretNames {
    pub items: Vec<String>,
}

/// `PUT …/schedule`: a 5-field cron expression in UTC, or `null` to remove the schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetScheduleRequest {
    pub schedule: Option<String>,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InvocationOutcome {
    Ok,
    Threw,
    InvalidResult,
    LoadFailed,
    Timeout,
    Crashed,
    OutOfMemory,
}

impl InvocationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Threw => "threw",
            Self::InvalidResult => "invalid_result",
            Self::LoadFailed => "load_failed",
            Self::Timeout => "timeout",
            Self::Crashed => "crashed",
            Self::OutOfMemory => "out_of_memory",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ok, Self::Threw, Self::InvalidResult, Self::LoadFailed, Self::Timeout, Self::Crashed, Self::OutOfMemory]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// The record of one invocation: its outcome and what it printed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationLog {
    pub id: String,
    pub function: String,
    pub version: u64,
    pub started_at: String,
    pub duration_ms: u64,
    /// The HTTP status the caller got.
    pub status: u16,
    pub outcome: InvocationOutcome,
    /// What triggered it: `http` or `schedule`.
    pub trigger: String,
    pub stdout: String,
    pub stderr: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvocationLogList {
    pub items: Vec<InvocationLog>,
}
