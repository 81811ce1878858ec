//! Sandboxes: isolated, disposable workspaces for LLM-written code.
//!
//! - [`Backend`] / [`Instance`]: what a sandbox backend provides (start, pause, resume, usage, destroy,
//!   and a way to reach the agent). [`local::LocalBackend`] is bubblewrap + cgroups on this host; a
//!   Kubernetes backend (a pod per sandbox running the same agent) fits the same trait.
//! - [`agent`]: the in-sandbox agent (hidden `vibebase __sandbox-agent`), confined by [`confine`].
//! - [`launch`]: the root-side launcher (hidden `vibebase __sandbox-launch`).
//! - [`proto`] / [`client`]: the agent protocol and the host's client.
//! - [`manager::Sandboxes`]: the platform's registry: credentials, lifetimes, workspaces, metering.

pub mod agent;
pub mod cgroup;
pub mod client;
pub mod confine;
pub mod launch;
pub mod local;
pub mod manager;
pub mod proto;

use async_trait::async_trait;

pub use client::AgentClient;
pub use manager::{SandboxDefaults, Sandboxes};

/// The hidden subcommand that runs the agent inside a sandbox.
pub const AGENT_COMMAND: &str = "__sandbox-agent";
/// The hidden subcommand that launches a sandbox (run by the platform as root).
pub const LAUNCH_COMMAND: &str = "__sandbox-launch";

/// What can go wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No live sandbox with this id in this env.
    #[error("sandbox not found")]
    NotFound,
    /// The named workspace is mounted in another live sandbox.
    #[error("workspace {0} is in use by another sandbox")]
    WorkspaceBusy(String),
    /// The request is malformed or out of range.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// This host cannot run sandboxes (no bubblewrap, no cgroups, …).
    #[error("sandboxes are unavailable on this host: {0}")]
    Unavailable(String),
    /// The sandbox could not be started or torn down.
    #[error("sandbox start failed: {0}")]
    Start(String),
    /// The agent reported an error (file not found, permission denied, …).
    #[error(transparent)]
    Agent(proto::AgentError),
    /// The agent stopped answering (the sandbox died or was killed).
    #[error("the sandbox's agent is gone: {0}")]
    AgentLost(String),
    /// The sandbox is paused; resume it first.
    #[error("the sandbox is paused")]
    Paused,
    /// Too many live sandboxes.
    #[error("too many sandboxes (limit {0})")]
    TooMany(usize),
    /// The platform (credentials, ledger) failed.
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
}

/// What a backend needs to start one sandbox.
#[derive(Clone)]
pub struct StartPlan {
    pub id: String,
    pub env: protocol::EnvId,
    pub memory_bytes: u64,
    pub max_processes: u64,
    pub cpu_percent: u32,
    pub disk_bytes: u64,
    /// The persistent workspace's image file, or `None` for a disposable workspace.
    pub workspace_image: Option<std::path::PathBuf>,
    /// Start the (disposable) workspace as a copy-on-write view of this template.
    pub template: Option<String>,
    pub env_vars: std::collections::BTreeMap<String, String>,
    /// Where the sandbox's outbound connections go (none: no way out at all).
    pub egress: Option<(EgressContext, EgressHandler)>,
}

/// Who is asking, for the egress proxy: the only way out of a sandbox.
#[derive(Debug, Clone)]
pub struct EgressContext {
    pub env: protocol::EnvId,
    pub sandbox: String,
    pub session: Option<String>,
    /// Hosts the sandbox may reach besides its own env's data plane (`host` or `*.suffix`).
    pub allow: Vec<String>,
}

impl EgressContext {
    /// Whether `host` is on the allow-list.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|a| match a.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => *a == host,
        })
    }
}

/// Serves one outbound connection of a sandbox (the platform installs it; see `server::egress`).
pub type EgressHandler = std::sync::Arc<dyn Fn(EgressContext, tokio::net::UnixStream) + Send + Sync>;

/// Resource use of a sandbox so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_us: u64,
    pub memory_bytes: u64,
    /// Forks refused by the process limit.
    pub pids_refused: u64,
    /// Processes killed by the memory limit.
    pub oom_kills: u64,
}

/// A sandbox backend.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// For records and logs, e.g. `bubblewrap/cgroup-v1`.
    fn name(&self) -> String;
    /// Starts a sandbox and returns once its agent answers.
    async fn start(&self, plan: StartPlan) -> Result<Box<dyn Instance>, SandboxError>;
    /// Releases what the backend holds beyond its sandboxes (called after every sandbox is gone).
    async fn shutdown(&self) {}
    /// Stores (or replaces) a workspace template from a `tar.gz` archive.
    async fn put_template(&self, name: &str, archive: Vec<u8>) -> Result<(), SandboxError> {
        let _ = (name, archive);
        Err(SandboxError::Unavailable("this backend has no templates".to_owned()))
    }
    /// The stored templates.
    fn templates(&self) -> Vec<String> {
        Vec::new()
    }
    /// Removes a template (sandboxes started from it keep their view).
    async fn delete_template(&self, name: &str) -> Result<(), SandboxError> {
        let _ = name;
        Err(SandboxError::NotFound)
    }
}

/// Template names: 1..=63 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn valid_template_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One running sandbox, as its backend manages it.
#[async_trait]
pub trait Instance: Send + Sync {
    fn agent(&self) -> AgentClient;
    async fn pause(&self) -> Result<(), SandboxError>;
    async fn resume(&self) -> Result<(), SandboxError>;
    fn usage(&self) -> Usage;
    /// Whether the sandbox's processes are still there.
    async fn alive(&self) -> bool;
    /// Kills everything and releases every host resource; retried until done.
    async fn destroy(&self) -> Result<(), SandboxError>;
}
