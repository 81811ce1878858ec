//! Request and response bodies of the sandbox API (`/v1/envs/{env}/sandboxes`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Largest lifetime a sandbox may ask for (24 h).
pub const MAX_SANDBOX_SECONDS: u64 = 86_400;

/// `POST /v1/envs/{env}/sandboxes`. Every field has a default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Mount this persistent workspace of the env (created on first use) instead of an empty,
    /// disposable one. A workspace is used by one sandbox at a time.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9_-]*$")]
    pub workspace: Option<String>,
    /// Wall-clock lifetime in seconds (default 300).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: Option<u64>,
    /// Kill after this many seconds without an API call (default: never before the lifetime).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub idle_timeout_seconds: Option<u64>,
    /// Memory limit in MiB (default 512).
    #[serde(default)]
    #[schema(minimum = 16, maximum = 16384)]
    pub memory_mb: Option<u64>,
    /// Process limit (default 256).
    #[serde(default)]
    #[schema(minimum = 8, maximum = 4096)]
    pub max_processes: Option<u64>,
    /// CPU quota as a percentage of one core (default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 800)]
    pub cpu_percent: Option<u32>,
    /// Workspace size in MiB (default 1024).
    #[serde(default)]
    #[schema(minimum = 4, maximum = 65536)]
    pub disk_mb: Option<u64>,
    /// The agent session the sandbox works for (its token and usage are billed to it).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 128)]
    pub session: Option<String>,
    /// Extra environment variables of every process.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Free-form labels, returned with the sandbox.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Hosts the sandbox may reach through its egress proxy besides its own env's APIs (exact names, or
    /// `*.example.com`), e.g. `registry.npmjs.org`. HTTPS (CONNECT) on ports 443 and 80 only.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub allow_egress: Vec<String>,
    /// Start the workspace as a copy-on-write view of this platform template (disposable workspaces
    /// only): ready in milliseconds whatever its size; writes never reach the template.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 63, pattern = "^[a-z0-9][a-z0-9_-]*$")]
    pub template: Option<String>,
    /// Restore this snapshot of the env into the new sandbox's workspace.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub snapshot: Option<String>,
}

/// State of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Paused,
}

/// A live sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxRecord {
    pub id: String,
    pub env: String,
    pub state: SandboxState,
    pub workspace: Option<String>,
    pub template: Option<String>,
    pub session: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339: when the sandbox is killed unless extended.
    pub expires_at: String,
    pub memory_mb: u64,
    pub max_processes: u64,
    pub cpu_percent: u32,
    pub disk_mb: u64,
    pub metadata: BTreeMap<String, String>,
    /// The local backend's isolation (`bubblewrap`), and the cgroup version it uses.
    pub backend: String,
    /// The key of this sandbox's envd API (E2B's `envdAccessToken`, sent as `X-Access-Token`); it
    /// works on this sandbox only and dies with it.
    pub envd_access_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SandboxList {
    pub items: Vec<SandboxRecord>,
}

/// `POST …/timeout`: the sandbox now lives this long from now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    #[schema(minimum = 1, maximum = 86400)]
    pub timeout_seconds: u64,
}

/// `POST …/exec`: run a command to completion.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Program and arguments. Give this or `command`.
    #[serde(default)]
    #[schema(max_items = 4096)]
    pub argv: Vec<String>,
    /// A shell command line (`/bin/sh -c`).
    #[serde(default)]
    #[schema(max_length = 1048576)]
    pub command: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the workspace, `/home/user`).
    #[serde(default)]
    #[schema(max_length = 4096)]
    pub cwd: Option<String>,
    /// Text written to the process's stdin, which is then closed.
    #[serde(default)]
    #[schema(max_length = 1048576)]
    pub stdin: Option<String>,
    /// Kill the command after this many milliseconds (default 60000).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400000)]
    pub timeout_ms: Option<u64>,
    /// Start it and return at once with its pid; output is discarded.
    #[serde(default)]
    pub background: bool,
}

/// The result of an exec. Output beyond the limit is cut and `truncated` is set; bytes that are not
/// UTF-8 are replaced with U+FFFD.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    pub pid: u32,
    /// `null` for a background command.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
    /// Why the command could not start.
    pub error: Option<String>,
}

/// A file or directory in a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    /// RFC 3339.
    pub modified: String,
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub items: Vec<FileEntry>,
}

/// `POST …/files/mkdir`, `POST …/files/move`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MakeDirRequest {
    #[schema(min_length = 1, max_length = 4096)]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    #[schema(min_length = 1, max_length = 4096)]
    pub from: String,
    #[schema(min_length = 1, max_length = 4096)]
    pub to: String,
}

/// A workspace snapshot: a compressed archive in the object store.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRecord {
    pub id: String,
    /// The sandbox it was taken from.
    pub sandbox: String,
    pub size_bytes: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SnapshotList {
    /// Snapshot ids of the env.
    pub items: Vec<String>,
}

/// `POST …/restore`: unpack a snapshot into the sandbox's workspace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    #[schema(min_length = 1, max_length = 64)]
    pub snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    /// Template names.
    pub items: Vec<String>,
}
