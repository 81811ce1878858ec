//! Request and response bodies of the container apps API (`/v1/envs/{env}/apps`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How the platform decides an app is up: `GET path` answers with a status below 500.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An absolute path (default `/`).
    #[serde(default = "default_health_path")]
    #[schema(min_length = 1, max_length = 1024)]
    pub path: String,
    /// Between checks of a running app, in milliseconds (default 10000).
    #[serde(default = "default_health_interval")]
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub interval_ms: u64,
}

fn default_health_path() -> String {
    "/".to_owned()
}

fn default_health_interval() -> u64 {
    10_000
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self { path: default_health_path(), interval_ms: default_health_interval() }
    }
}

/// `PUT /v1/envs/{env}/apps/{app}`: the whole definition of an app (creates it, or replaces the
/// definition and restarts a running instance). The source is uploaded separately (`…/archive`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAppRequest {
    /// A shell command run in the app's directory, e.g. `node server.js` or `npm start`.
    #[schema(min_length = 1, max_length = 4096)]
    pub command: String,
    /// The port the app listens on inside its sandbox (`PORT` is set to it).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u32,
    /// Environment variables of the app's process (stored encrypted; values are never returned).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Stop the instance after this long without a request (default 300).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86400)]
    pub idle_timeout_seconds: Option<u64>,
    /// Memory limit in MiB (default 512).
    #[serde(default)]
    #[schema(minimum = 64, maximum = 8192)]
    pub memory_mb: Option<u64>,
}

/// `POST …/from-sandbox`: the app's source is a directory of a running sandbox of the env (archived
/// inside the sandbox, then checked like an uploaded archive).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppFromSandboxRequest {
    #[schema(min_length = 1, max_length = 63)]
    pub sandbox: String,
    /// The app's directory: absolute, or relative to `/home/user` (e.g. `app`).
    #[schema(min_length = 1, max_length = 1024)]
    pub path: String,
}

/// The state of an app's instance on this platform instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AppStatus {
    /// No instance (never started, scaled to zero, or stopped); the next request starts one.
    Stopped,
    /// Its sandbox and process are starting; requests wait until it is healthy.
    Starting,
    /// Healthy and serving.
    Running,
    /// Its process exited or failed its health checks; it is restarted after a backoff.
    Crashed,
}

impl AppStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Crashed => "crashed",
        }
    }
}

/// The uploaded source of an app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppSource {
    /// SHA-256 of the stored bundle (source plus installed dependencies), hex.
    pub sha256: String,
    pub size_bytes: u64,
    /// Whether `npm install` ran when it was uploaded.
    pub dependencies_installed: bool,
    pub uploaded_at: String,
}

/// Where an app is served.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppUrls {
    /// Host form (`<app>--<env>.<apps-domain>`), what a browser opens.
    pub site: String,
    /// Path form on the platform's address (`/env/<env>/apps/<app>/`).
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppRecord {
    pub name: String,
    pub command: String,
    pub port: u32,
    /// Names of its environment variables.
    pub env: Vec<String>,
    pub health_check: HealthCheck,
    pub idle_timeout_seconds: u64,
    pub memory_mb: u64,
    /// `null` until an archive is uploaded.
    pub source: Option<AppSource>,
    pub status: AppStatus,
    /// Restarts after a crash since this platform instance started it.
    pub restarts: u64,
    /// Why the last run ended badly (cleared once it is healthy again).
    pub last_error: Option<String>,
    pub urls: AppUrls,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub items: Vec<AppRecord>,
}

/// One line an app's process (or the platform, about it) wrote.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppLogLine {
    pub at: String,
    /// `stdout`, `stderr` or `system` (starts, exits, restarts, health).
    pub stream: String,
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppLogList {
    /// Oldest first.
    pub items: Vec<AppLogLine>,
}
