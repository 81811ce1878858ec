//! The CLI of the platform API. Readable output by default, `--json` for scripts, and exit codes that
//! say what went wrong: 0 ok, 1 other error, 2 bad usage, 3 not authorized, 4 not found, 5 conflict,
//! 6 quota or rate limit, 7 cannot reach the server.

mod demo;
mod session;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Platform URL.
    #[arg(long, global = true, env = "VIBEBASE_URL", default_value = "http://127.0.0.1:8787")]
    url: String,
    /// Admin key, sub-account key or env secret key.
    #[arg(long, global = true, env = "VIBEBASE_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print raw JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Manage environments.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Manage an env's keys and minted tokens.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show usage (one env with --env, else the whole platform).
    Usage {
        #[arg(long)]
        env: Option<String>,
        /// RFC 3339 start (default: 30 days ago).
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339 end (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Per-minute buckets instead of totals.
        #[arg(long)]
        minute: bool,
        /// CSV export.
        #[arg(long)]
        csv: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show or set an env's quotas and rate limit.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Manage CAM-style sub-accounts.
    Principals {
        #[command(subcommand)]
        command: PrincipalsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Manage webhooks.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run and manage an env's sandboxes.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Run an env's agent sessions: create, send a message and watch the answer stream, follow events.
    Session {
        #[command(subcommand)]
        command: session::SessionCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deploy and manage an env's cloud functions.
    Functions {
        #[command(subcommand)]
        command: FunctionsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Attach custom domains to an env, prove their ownership (DNS TXT) and detach them.
    Domains {
        #[command(subcommand)]
        command: DomainsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deploy and manage an env's container apps (long-lived web servers in sandboxes).
    Apps {
        #[command(subcommand)]
        command: AppsCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// From nothing to a deployed app: create an env and have one prompt build a todo app with sign-in
    /// and per-user row-level security, played by the built-in replay model; prints the site's URL.
    Demo(demo::DemoArgs),
    /// Manage the platform's workspace templates.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
        #[command(flatten)]
        conn: Connection,
    },
    /// Deploy a directory as the env's static site (uploads only what the env does not hold yet);
    /// prints the deployment id and its URLs. Dotfiles (`.env`, `.git/…`) are never uploaded.
    Deploy {
        #[arg(long)]
        env: String,
        /// The built site (e.g. `dist`).
        dir: std::path::PathBuf,
        /// Publish it as the env's site once complete.
        #[arg(long)]
        publish: bool,
        #[command(flatten)]
        conn: Connection,
    },
    /// Serve an earlier deployment as the env's site again (nothing is uploaded).
    Rollback {
        #[arg(long)]
        env: String,
        deployment: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// List the env's deployments, newest first.
    Deployments {
        #[arg(long)]
        env: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Apply a migration (PostgreSQL dialect) from FILE (`-` = stdin) to an env's database.
    Sql {
        #[arg(long)]
        env: String,
        /// SQL file; `-` reads standard input.
        file: std::path::PathBuf,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show an env's audit log.
    Audit {
        #[arg(long)]
        env: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        conn: Connection,
    },
}

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// Create an environment (prints its keys; the secret is shown only now).
    Create {
        /// Env id (DNS label); generated if absent.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// List environments.
    List,
    /// Show one environment.
    Get { id: String },
    /// Delete an environment and everything it owns.
    Delete { id: String },
    /// Suspend an environment.
    Suspend { id: String },
    /// Resume a suspended environment.
    Resume { id: String },
}

#[derive(Subcommand, Debug)]
pub enum TemplateCommand {
    /// Store (or replace) a template from a local directory, e.g. a Vite app with node_modules.
    Put { name: String, dir: std::path::PathBuf },
    /// List templates.
    List,
    /// Delete a template.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub enum DomainsCommand {
    /// Attach a domain (pending); prints the TXT record that proves ownership.
    Add {
        #[arg(long)]
        env: String,
        domain: String,
    },
    /// List the env's domains.
    List {
        #[arg(long)]
        env: String,
    },
    /// Check the TXT record; once it holds the token the domain is served.
    Verify {
        #[arg(long)]
        env: String,
        domain: String,
    },
    /// Detach a domain; it stops being served at once.
    Delete {
        #[arg(long)]
        env: String,
        domain: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum FunctionsCommand {
    /// Deploy a directory (or a .tar.gz) as the function's next version and serve it.
    Deploy {
        #[arg(long)]
        env: String,
        name: String,
        /// The function's directory (with index.js, index.mjs or package.json), or a .tar.gz of it.
        source: std::path::PathBuf,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Invocations at once per instance.
        #[arg(long)]
        concurrency: Option<u64>,
    },
    /// List the env's functions.
    List {
        #[arg(long)]
        env: String,
    },
    /// Show a function.
    Get {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// List a function's stored versions.
    Versions {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Serve a stored version from now on.
    Rollback {
        #[arg(long)]
        env: String,
        name: String,
        version: u64,
    },
    /// Delete a function with its versions, secrets and logs.
    Delete {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Set (`--set NAME=VALUE`) or remove (`--unset NAME`) environment variables; values are encrypted at rest.
    Secrets {
        #[arg(long)]
        env: String,
        name: String,
        #[arg(long = "set")]
        set: Vec<String>,
        #[arg(long = "unset")]
        unset: Vec<String>,
    },
    /// Invoke a function on a cron schedule (5 fields, UTC), or `--clear` it.
    Schedule {
        #[arg(long)]
        env: String,
        name: String,
        #[arg(required_unless_present = "clear")]
        cron: Option<String>,
        #[arg(long, conflicts_with = "cron")]
        clear: bool,
    },
    /// Show invocation logs (newest first).
    Logs {
        #[arg(long)]
        env: String,
        name: String,
        /// RFC 3339 start (default: 24 hours ago).
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 end (default: now).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Invoke a function with a JSON body and print its answer.
    Invoke {
        #[arg(long)]
        env: String,
        name: String,
        /// The request body (JSON).
        #[arg(long, default_value = "{}")]
        data: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Define an app (or replace its definition) and upload its source; it starts on the first request.
    Deploy {
        #[arg(long)]
        env: String,
        name: String,
        /// The app's directory, or a .tar.gz of it (npm dependencies of package.json are installed).
        source: std::path::PathBuf,
        /// Shell command that starts the server, e.g. `node server.js` or `npm start`.
        #[arg(long)]
        command: String,
        /// Port the server listens on (`PORT` is set to it).
        #[arg(long)]
        port: u32,
        /// Environment variable `NAME=VALUE` of the app. Repeatable.
        #[arg(long = "var")]
        vars: Vec<String>,
        /// Health check path (default `/`).
        #[arg(long)]
        health_path: Option<String>,
        /// Milliseconds between health checks (default 10000).
        #[arg(long)]
        health_interval_ms: Option<u64>,
        /// Stop after this many seconds without requests (default 300).
        #[arg(long)]
        idle_timeout: Option<u64>,
        #[arg(long)]
        memory_mb: Option<u64>,
    },
    /// List the env's apps with their status.
    List {
        #[arg(long)]
        env: String,
    },
    /// Show an app.
    Get {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Delete an app: its instance, definition and source.
    Delete {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Stop the app's instance and start a new one.
    Restart {
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Show the last lines of the app's output and of its supervisor.
    Logs {
        #[arg(long)]
        env: String,
        name: String,
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum SandboxCommand {
    /// Start a sandbox (prints its id).
    Create {
        #[arg(long)]
        env: String,
        /// Mount this persistent workspace (created on first use).
        #[arg(long)]
        workspace: Option<String>,
        /// Start from this template (copy-on-write).
        #[arg(long)]
        template: Option<String>,
        /// Allow egress to this host (e.g. registry.npmjs.org). Repeatable.
        #[arg(long = "allow-egress")]
        allow_egress: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(long)]
        memory_mb: Option<u64>,
        #[arg(long)]
        disk_mb: Option<u64>,
        #[arg(long)]
        cpu_percent: Option<u32>,
        /// Environment variable `NAME=VALUE` of every process. Repeatable.
        #[arg(long = "var")]
        vars: Vec<String>,
    },
    /// List the env's live sandboxes.
    List {
        #[arg(long)]
        env: String,
    },
    /// Show a sandbox.
    Get {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Kill a sandbox.
    Kill {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Freeze a sandbox.
    Pause {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Let a sandbox live this many seconds from now.
    Timeout {
        #[arg(long)]
        env: String,
        id: String,
        seconds: u64,
    },
    /// Run a shell command; prints its output and exits with its exit code.
    Exec {
        #[arg(long)]
        env: String,
        id: String,
        command: String,
        #[arg(long)]
        cwd: Option<String>,
        /// Kill it after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// List a directory of a sandbox.
    Ls {
        #[arg(long)]
        env: String,
        id: String,
        #[arg(default_value = "/home/user")]
        path: String,
    },
    /// Print a file of a sandbox.
    Cat {
        #[arg(long)]
        env: String,
        id: String,
        path: String,
    },
    /// Copy a local file into a sandbox.
    Put {
        #[arg(long)]
        env: String,
        id: String,
        local: std::path::PathBuf,
        path: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LimitsCommand {
    /// Show an env's limits.
    Get {
        #[arg(long)]
        env: String,
    },
    /// Replace an env's limits.
    Set {
        #[arg(long)]
        env: String,
        /// A quota `METER:PERIOD:HARD:SOFT` (period minute|hour|day|month; leave HARD or SOFT empty
        /// for none), e.g. `api_requests:day:100000:80000`. Repeatable.
        #[arg(long = "quota")]
        quotas: Vec<String>,
        /// Requests per second.
        #[arg(long)]
        rate: Option<u32>,
        /// Burst size.
        #[arg(long)]
        burst: Option<u32>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PrincipalsCommand {
    /// Create a sub-account (prints its key once).
    Create {
        #[arg(long)]
        name: String,
        /// A policy file (JSON), or `-` for standard input.
        #[arg(long, conflicts_with = "owner_of", required_unless_present = "owner_of")]
        policy: Option<String>,
        /// Use the standard owner policy of this env.
        #[arg(long)]
        owner_of: Option<String>,
    },
    /// List sub-accounts.
    List,
    /// Delete a sub-account and its key.
    Delete { id: String },
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Subscribe a URL to events (prints the signing secret once).
    Create {
        /// The receiving URL (`--url` is the platform's).
        #[arg(long)]
        target: String,
        /// Event type (repeatable; `*` for all).
        #[arg(long = "event", required = true)]
        events: Vec<String>,
        /// Only events of this env.
        #[arg(long)]
        env: Option<String>,
    },
    /// List webhooks.
    List,
    /// Delete a webhook.
    Delete { id: String },
    /// Show a webhook's delivery log.
    Deliveries { id: String },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List an env's keys and tokens.
    List {
        #[arg(long)]
        env: String,
    },
    /// Rotate the secret or publishable key.
    Rotate {
        #[arg(long)]
        env: String,
        #[arg(long, value_parser = ["secret", "publishable"], default_value = "secret")]
        kind: String,
        /// Seconds the old key keeps working.
        #[arg(long, default_value_t = 0)]
        overlap: u64,
    },
    /// Revoke a key or token by id.
    Revoke {
        #[arg(long)]
        env: String,
        id: String,
    },
    /// Mint a short-lived token.
    Mint {
        #[arg(long)]
        env: String,
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[arg(long)]
        session: Option<String>,
        /// Allowed action patterns (repeatable), e.g. `db:*`.
        #[arg(long = "action")]
        actions: Vec<String>,
    },
}

/// Prints an error line to stderr.
pub fn fail(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
}

fn out(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn progress(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The failure (exit code and message) of an error answer of the API.
fn http_failure(status: u16, text: &str) -> Failure {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    // Data-plane surfaces name the code `error_code` (functions, GoTrue).
    let code = v["code"].as_str().or_else(|| v["error_code"].as_str()).unwrap_or("error");
    let message = v["message"].as_str().unwrap_or(text);
    let exit = match status {
        401 | 403 => 3,
        404 => 4,
        409 => 5,
        402 | 429 => 6,
        400 | 413 | 415 => 2,
        _ => 1,
    };
    Failure::new(exit, format!("{code}: {message} (HTTP {status})"))
}

struct Client {
    http: reqwest::Client,
    conn: Connection,
}

enum Reply {
    Json(Value),
    Text(String),
    Empty,
}

impl Client {
    fn new(conn: Connection) -> Result<Self, Failure> {
        let http = reqwest::Client::builder().build().map_err(|e| Failure::new(1, e.to_string()))?;
        Ok(Self { http, conn })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Reply, Failure> {
        let key = self.conn.key.as_deref().ok_or_else(|| Failure::new(3, "no key: set VIBEBASE_KEY or pass --key"))?;
        let url = format!("{}{path}", self.conn.url.trim_end_matches('/'));
        let mut req = self.http.request(method, &url).bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| Failure::new(7, format!("cannot reach {url}: {e}")))?;
        let status = resp.status();
        let is_json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = resp.text().await.map_err(|e| Failure::new(7, e.to_string()))?;
        if !status.is_success() {
            return Err(http_failure(status.as_u16(), &text));
        }
        Ok(if text.is_empty() {
            Reply::Empty
        } else if is_json {
            Reply::Json(serde_json::from_str(&text).map_err(|e| Failure::new(1, e.to_string()))?)
        } else {
            Reply::Text(text)
        })
    }

    /// Sends raw bytes and returns the answer (the files API).
    async fn raw(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let key = self.conn.key.as_deref().ok_or_else(|| Failure::new(3, "no key: set VIBEBASE_KEY or pass --key"))?;
        let url = format!("{}{path}", self.conn.url.trim_end_matches('/'));
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(key)
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::new(7, format!("cannot reach {url}: {e}")))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Failure::new(7, e.to_string()))?;
        if !status.is_success() {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let exit = match status.as_u16() {
                401 | 403 => 3,
                404 => 4,
                400 | 413 => 2,
                _ => 1,
            };
            return Err(Failure::new(
                exit,
                format!("{}: {} (HTTP {})", s(&v["code"]), s(&v["message"]), status.as_u16()),
            ));
        }
        Ok(bytes.to_vec())
    }

    fn show(&self, reply: Reply, human: impl Fn(&Value) -> String) {
        match reply {
            Reply::Json(v) if self.conn.json => out(&serde_json::to_string_pretty(&v).unwrap_or_default()),
            Reply::Json(v) => out(human(&v).trim_end()),
            Reply::Text(t) => out(t.trim_end()),
            Reply::Empty if self.conn.json => out("{}"),
            Reply::Empty => {}
        }
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn env_text(v: &Value) -> String {
    let mut t = format!(
        "id:          {}\nstatus:      {}\ncreated:     {}\napi:         {}\nsite:        {}\nllm:         {}\nmcp:         {}\npublishable: {}\n",
        s(&v["id"]),
        s(&v["status"]),
        s(&v["created_at"]),
        s(&v["urls"]["api"]),
        s(&v["urls"]["site"]),
        s(&v["urls"]["llm"]),
        s(&v["urls"]["mcp"]),
        s(&v["keys"]["publishable"])
    );
    if let Some(secret) = v["keys"]["secret"].as_str() {
        t.push_str(&format!("secret:      {secret}\n             (shown once: store it now)\n"));
    }
    t
}

/// The `items` of a list answer.
fn items(v: &Value) -> &[Value] {
    v["items"].as_array().map_or(&[], Vec::as_slice)
}

/// Parses `METER:PERIOD:HARD:SOFT`.
fn parse_quota(spec: &str) -> Result<Value, Failure> {
    let parts: Vec<&str> = spec.split(':').collect();
    let limit = |s: Option<&&str>| -> Result<Value, Failure> {
        match s.map(|s| s.trim()).filter(|s| !s.is_empty()) {
            None => Ok(Value::Null),
            Some(n) => n
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| Failure::new(2, format!("bad limit {n:?} in --quota {spec}"))),
        }
    };
    if !(2..=4).contains(&parts.len()) {
        return Err(Failure::new(2, format!("--quota {spec}: expected METER:PERIOD:HARD:SOFT")));
    }
    Ok(
        json!({"meter": parts[0], "period": parts[1], "hard_limit": limit(parts.get(2))?, "soft_limit": limit(parts.get(3))?}),
    )
}

fn table(rows: &[Value], cols: &[(&str, &str)]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|(k, _)| match &r[*k] {
                    Value::String(x) => x.clone(),
                    Value::Null => "-".to_owned(),
                    o => o.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, h))| cells.iter().map(|c| c[i].len()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let mut t = String::new();
    for (i, (_, h)) in cols.iter().enumerate() {
        t.push_str(&format!("{h:<w$}  ", w = widths[i]));
    }
    t.push('\n');
    for row in cells {
        for (i, c) in row.iter().enumerate() {
            t.push_str(&format!("{c:<w$}  ", w = widths[i]));
        }
        t.push('\n');
    }
    t
}

pub async fn run(command: ClientCommand) -> ExitCode {
    match dispatch(command).await {
        // `sandbox exec` exits with the command's own exit code.
        Ok(code) => code.unwrap_or(ExitCode::SUCCESS),
        Err(f) => {
            fail(&f.message);
            ExitCode::from(f.code)
        }
    }
}

fn sandbox_text(v: &Value) -> String {
    format!(
        "id:        {}\nstate:     {}\nworkspace: {}\nstarted:   {}\nexpires:   {}\nlimits:    {} MiB memory, {} processes, {}% cpu, {} MiB disk\nbackend:   {}\n",
        s(&v["id"]),
        s(&v["state"]),
        v["workspace"].as_str().unwrap_or("(disposable)"),
        s(&v["started_at"]),
        s(&v["expires_at"]),
        v["memory_mb"],
        v["max_processes"],
        v["cpu_percent"],
        v["disk_mb"],
        s(&v["backend"]),
    )
}

/// Query-string encoding of a path.
fn q(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A directory as a `tar.gz` (GNU tar).
fn pack_dir(dir: &std::path::Path) -> Result<Vec<u8>, Failure> {
    progress(&format!("packing {}…", dir.display()));
    let out = std::process::Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-czf", "-", "."])
        .output()
        .map_err(|e| Failure::new(1, format!("tar: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(1, format!("tar: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(out.stdout)
}

fn function_text(v: &Value) -> String {
    format!(
        "name:        {}\nversion:     {} (of {})\nentrypoint:  {}\nlimits:      {} MiB memory, {} ms timeout, {} at once\ndependencies: {}\nsecrets:     {}\nschedule:    {}\nupdated:     {}\n",
        s(&v["name"]),
        v["active_version"],
        s(&v["active"]["created_at"]),
        s(&v["active"]["entrypoint"]),
        v["active"]["memory_mb"],
        v["active"]["timeout_ms"],
        v["active"]["concurrency"],
        if v["active"]["dependencies_installed"] == true { "installed" } else { "none" },
        v["secrets"].as_array().map_or(String::new(), |a| a
            .iter()
            .map(|x| s(x).to_owned())
            .collect::<Vec<_>>()
            .join(", ")),
        v["schedule"].as_str().unwrap_or("-"),
        s(&v["updated_at"]),
    )
}

fn app_text(v: &Value) -> String {
    let source = &v["source"];
    format!(
        "name:      {}\nstatus:    {} ({} restarts)\ncommand:   {}\nport:      {}\nhealth:    GET {} every {} ms\nidle stop: after {} s\nmemory:    {} MiB\nenv:       {}\nsource:    {}\nurl:       {}\npath:      {}\nupdated:   {}\n",
        s(&v["name"]),
        s(&v["status"]),
        v["restarts"],
        s(&v["command"]),
        v["port"],
        s(&v["health_check"]["path"]),
        v["health_check"]["interval_ms"],
        v["idle_timeout_seconds"],
        v["memory_mb"],
        v["env"].as_array().map_or(String::new(), |a| a.iter().map(|x| s(x).to_owned()).collect::<Vec<_>>().join(", ")),
        if source.is_null() {
            "none yet".to_owned()
        } else {
            format!("{} bytes, sha256 {}", source["size_bytes"], s(&source["sha256"]))
        },
        s(&v["urls"]["site"]),
        s(&v["urls"]["path"]),
        s(&v["updated_at"]),
    )
}

async fn apps(c: &Client, command: AppsCommand) -> Result<Option<ExitCode>, Failure> {
    use reqwest::Method;
    let base = |env: &str, name: &str| format!("/v1/envs/{env}/apps/{name}");
    match command {
        AppsCommand::Deploy {
            env,
            name,
            source,
            command,
            port,
            vars,
            health_path,
            health_interval_ms,
            idle_timeout,
            memory_mb,
        } => {
            let archive = if source.is_dir() {
                pack_dir(&source)?
            } else {
                std::fs::read(&source).map_err(|e| Failure::new(2, format!("{}: {e}", source.display())))?
            };
            let mut env_vars = serde_json::Map::new();
            for v in vars {
                let (k, val) =
                    v.split_once('=').ok_or_else(|| Failure::new(2, format!("--var {v}: expected NAME=VALUE")))?;
                env_vars.insert(k.to_owned(), json!(val));
            }
            let mut spec = json!({"command": command, "port": port, "env": env_vars});
            if health_path.is_some() || health_interval_ms.is_some() {
                let mut h = serde_json::Map::new();
                if let Some(p) = health_path {
                    h.insert("path".to_owned(), json!(p));
                }
                if let Some(i) = health_interval_ms {
                    h.insert("interval_ms".to_owned(), json!(i));
                }
                spec["health_check"] = Value::Object(h);
            }
            if let Some(i) = idle_timeout {
                spec["idle_timeout_seconds"] = json!(i);
            }
            if let Some(m) = memory_mb {
                spec["memory_mb"] = json!(m);
            }
            let existed = c.call(Method::GET, &base(&env, &name), None).await.is_ok();
            c.call(Method::PUT, &base(&env, &name), Some(spec)).await?;
            progress(&format!("uploading {name} ({} bytes)…", archive.len()));
            let uploaded = c.raw(Method::PUT, &format!("{}/archive", base(&env, &name)), archive).await;
            let reply = match uploaded {
                Ok(r) => r,
                Err(e) => {
                    // A refused source leaves no half-made app behind.
                    if !existed {
                        let _ = c.call(Method::DELETE, &base(&env, &name), None).await;
                    }
                    return Err(e);
                }
            };
            let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
            c.show(Reply::Json(v), app_text);
        }
        AppsCommand::List { env } => {
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/apps"), None).await?;
            c.show(r, |v| {
                table(
                    &items(v)
                        .iter()
                        .map(|a| {
                            json!({"name": a["name"], "status": a["status"], "restarts": a["restarts"],
                                "command": a["command"], "url": a["urls"]["site"]})
                        })
                        .collect::<Vec<_>>(),
                    &[
                        ("name", "NAME"),
                        ("status", "STATUS"),
                        ("restarts", "RESTARTS"),
                        ("command", "COMMAND"),
                        ("url", "URL"),
                    ],
                )
            });
        }
        AppsCommand::Get { env, name } => c.show(c.call(Method::GET, &base(&env, &name), None).await?, app_text),
        AppsCommand::Delete { env, name } => {
            c.show(c.call(Method::DELETE, &base(&env, &name), None).await?, |_| String::new());
        }
        AppsCommand::Restart { env, name } => {
            c.show(c.call(Method::POST, &format!("{}/restart", base(&env, &name)), None).await?, app_text);
        }
        AppsCommand::Logs { env, name, limit } => {
            let query = limit.map_or(String::new(), |l| format!("?limit={l}"));
            let r = c.call(Method::GET, &format!("{}/logs{query}", base(&env, &name)), None).await?;
            c.show(r, |v| {
                items(v)
                    .iter()
                    .map(|l| format!("{} {:<6}| {}\n", s(&l["at"]), s(&l["stream"]), s(&l["line"])))
                    .collect()
            });
        }
    }
    Ok(None)
}

async fn functions(c: &Client, command: FunctionsCommand) -> Result<Option<ExitCode>, Failure> {
    use reqwest::Method;
    let base = |env: &str, name: &str| format!("/v1/envs/{env}/functions/{name}");
    match command {
        FunctionsCommand::Deploy { env, name, source, memory_mb, timeout_ms, concurrency } => {
            let archive = if source.is_dir() {
                pack_dir(&source)?
            } else {
                std::fs::read(&source).map_err(|e| Failure::new(2, format!("{}: {e}", source.display())))?
            };
            let mut q: Vec<String> = Vec::new();
            for (k, v) in [("memory_mb", memory_mb), ("timeout_ms", timeout_ms), ("concurrency", concurrency)] {
                if let Some(v) = v {
                    q.push(format!("{k}={v}"));
                }
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            progress(&format!("deploying {name} ({} bytes)…", archive.len()));
            let reply = c.raw(Method::POST, &format!("{}/deploy{query}", base(&env, &name)), archive).await?;
            let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
            c.show(Reply::Json(v), |v| {
                format!(
                    "deployed {name} version {} ({} bytes{})\n",
                    v["version"],
                    v["size_bytes"],
                    if v["dependencies_installed"] == true { ", dependencies installed" } else { "" }
                )
            });
        }
        FunctionsCommand::List { env } => {
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/functions"), None).await?;
            c.show(r, |v| {
                table(
                    &items(v)
                        .iter()
                        .map(|f| {
                            json!({"name": f["name"], "version": f["active_version"],
                        "schedule": f["schedule"], "updated_at": f["updated_at"]})
                        })
                        .collect::<Vec<_>>(),
                    &[("name", "NAME"), ("version", "VERSION"), ("schedule", "SCHEDULE"), ("updated_at", "UPDATED")],
                )
            });
        }
        FunctionsCommand::Get { env, name } => {
            c.show(c.call(Method::GET, &base(&env, &name), None).await?, function_text)
        }
        FunctionsCommand::Versions { env, name } => {
            let r = c.call(Method::GET, &format!("{}/versions", base(&env, &name)), None).await?;
            c.show(r, |v| {
                table(
                    items(v),
                    &[
                        ("version", "VERSION"),
                        ("created_at", "CREATED"),
                        ("size_bytes", "BYTES"),
                        ("entrypoint", "ENTRY"),
                    ],
                )
            });
        }
        FunctionsCommand::Rollback { env, name, version } => {
            let r = c
                .call(Method::POST, &format!("{}/rollback", base(&env, &name)), Some(json!({"version": version})))
                .await?;
            c.show(r, function_text);
        }
        FunctionsCommand::Delete { env, name } => {
            c.show(c.call(Method::DELETE, &base(&env, &name), None).await?, |_| String::new());
        }
        FunctionsCommand::Secrets { env, name, set, unset } => {
            let mut values = serde_json::Map::new();
            for v in set {
                let (k, val) =
                    v.split_once('=').ok_or_else(|| Failure::new(2, format!("--set {v}: expected NAME=VALUE")))?;
                values.insert(k.to_owned(), json!(val));
            }
            for k in unset {
                values.insert(k, Value::Null);
            }
            let r =
                c.call(Method::PUT, &format!("{}/secrets", base(&env, &name)), Some(json!({"values": values}))).await?;
            c.show(r, |v| items(v).iter().map(|x| format!("{}\n", s(x))).collect());
        }
        FunctionsCommand::Schedule { env, name, cron, clear } => {
            let schedule = if clear { Value::Null } else { json!(cron) };
            let r = c
                .call(Method::PUT, &format!("{}/schedule", base(&env, &name)), Some(json!({"schedule": schedule})))
                .await?;
            c.show(r, function_text);
        }
        FunctionsCommand::Logs { env, name, since, until, limit } => {
            let mut q: Vec<String> = Vec::new();
            for (k, v) in [("from", since), ("to", until), ("limit", limit.map(|l| l.to_string()))] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", v.replace('+', "%2B")));
                }
            }
            let query = if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) };
            let r = c.call(Method::GET, &format!("{}/logs{query}", base(&env, &name)), None).await?;
            c.show(r, |v| {
                let mut t = String::new();
                for l in items(v).iter().rev() {
                    t.push_str(&format!(
                        "{} {} v{} {} {} {} ms{}\n",
                        s(&l["started_at"]),
                        s(&l["id"]),
                        l["version"],
                        l["status"],
                        s(&l["outcome"]),
                        l["duration_ms"],
                        l["error"].as_str().map_or(String::new(), |e| format!(": {e}"))
                    ));
                    for (stream, text) in [("stdout", s(&l["stdout"])), ("stderr", s(&l["stderr"]))] {
                        for line in text.lines() {
                            t.push_str(&format!("  {stream}| {line}\n"));
                        }
                    }
                }
                t
            });
        }
        FunctionsCommand::Invoke { env, name, data } => {
            let body: Value =
                serde_json::from_str(&data).map_err(|e| Failure::new(2, format!("--data is not JSON: {e}")))?;
            let r = c.call(Method::POST, &format!("/env/{env}/functions/v1/{name}"), Some(body)).await?;
            c.show(r, |v| serde_json::to_string_pretty(v).unwrap_or_default());
        }
    }
    Ok(None)
}

async fn sandbox(c: &Client, command: SandboxCommand) -> Result<Option<ExitCode>, Failure> {
    use reqwest::Method;
    let base = |env: &str, id: &str| format!("/v1/envs/{env}/sandboxes/{id}");
    match command {
        SandboxCommand::Create {
            env,
            workspace,
            template,
            allow_egress,
            timeout,
            memory_mb,
            disk_mb,
            cpu_percent,
            vars,
        } => {
            let mut env_vars = serde_json::Map::new();
            for v in vars {
                let (k, val) =
                    v.split_once('=').ok_or_else(|| Failure::new(2, format!("--var {v}: expected NAME=VALUE")))?;
                env_vars.insert(k.to_owned(), json!(val));
            }
            let body = json!({"workspace": workspace, "template": template, "allow_egress": allow_egress,
                "timeout_seconds": timeout, "memory_mb": memory_mb, "disk_mb": disk_mb, "cpu_percent": cpu_percent,
                "env_vars": env_vars});
            let r = c.call(Method::POST, &format!("/v1/envs/{env}/sandboxes"), Some(body)).await?;
            c.show(r, |v| format!("{}\n", s(&v["id"])));
        }
        SandboxCommand::List { env } => {
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/sandboxes"), None).await?;
            c.show(r, |v| {
                table(
                    items(v),
                    &[("id", "ID"), ("state", "STATE"), ("workspace", "WORKSPACE"), ("expires_at", "EXPIRES")],
                )
            });
        }
        SandboxCommand::Get { env, id } => c.show(c.call(Method::GET, &base(&env, &id), None).await?, sandbox_text),
        SandboxCommand::Kill { env, id } => {
            c.show(c.call(Method::DELETE, &base(&env, &id), None).await?, |_| String::new());
        }
        SandboxCommand::Pause { env, id } => {
            c.show(c.call(Method::POST, &format!("{}/pause", base(&env, &id)), None).await?, sandbox_text);
        }
        SandboxCommand::Resume { env, id } => {
            c.show(c.call(Method::POST, &format!("{}/resume", base(&env, &id)), None).await?, sandbox_text);
        }
        SandboxCommand::Timeout { env, id, seconds } => {
            let body = json!({"timeout_seconds": seconds});
            c.show(c.call(Method::POST, &format!("{}/timeout", base(&env, &id)), Some(body)).await?, sandbox_text);
        }
        SandboxCommand::Exec { env, id, command, cwd, timeout_ms } => {
            let body = json!({"command": command, "cwd": cwd, "timeout_ms": timeout_ms});
            let r = c.call(Method::POST, &format!("{}/exec", base(&env, &id)), Some(body)).await?;
            if c.conn.json {
                c.show(r, |_| String::new());
                return Ok(None);
            }
            let Reply::Json(v) = r else { return Ok(None) };
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(s(&v["stdout"]).as_bytes());
            let _ = std::io::stderr().write_all(s(&v["stderr"]).as_bytes());
            if v["truncated"] == true {
                fail("(output truncated)");
            }
            let code = v["exit_code"].as_i64().unwrap_or(1);
            return Ok(Some(ExitCode::from(u8::try_from(code).unwrap_or(1))));
        }
        SandboxCommand::Ls { env, id, path } => {
            let r = c.call(Method::GET, &format!("{}/files/list?path={}", base(&env, &id), q(&path)), None).await?;
            c.show(r, |v| {
                table(items(v), &[("kind", "KIND"), ("size", "SIZE"), ("modified", "MODIFIED"), ("path", "PATH")])
            });
        }
        SandboxCommand::Cat { env, id, path } => {
            let data = c.raw(Method::GET, &format!("{}/files?path={}", base(&env, &id), q(&path)), Vec::new()).await?;
            use std::io::Write as _;
            let _ = std::io::stdout().write_all(&data);
        }
        SandboxCommand::Put { env, id, local, path } => {
            let data = std::fs::read(&local).map_err(|e| Failure::new(2, format!("{}: {e}", local.display())))?;
            let reply = c.raw(Method::PUT, &format!("{}/files?path={}", base(&env, &id), q(&path)), data).await?;
            let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
            c.show(Reply::Json(v), |v| format!("{} ({} bytes)\n", s(&v["path"]), v["size"]));
        }
    }
    Ok(None)
}

/// The files of a site directory: (site path, local path), dotfiles and symlinks left out.
fn site_files(root: &std::path::Path) -> Result<Vec<(String, std::path::PathBuf)>, Failure> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Failure::new(2, format!("{}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| Failure::new(1, e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".well-known" {
                continue;
            }
            let kind = entry.file_type().map_err(|e| Failure::new(1, e.to_string()))?;
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(root).map_err(|e| Failure::new(1, e.to_string()))?;
                let site = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                out.push((site, path));
            } else {
                progress(&format!("skipping {} (not a regular file)", path.display()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn domain_text(v: &Value) -> String {
    let mut text = format!("{} ({})\nurl: {}\n", s(&v["domain"]), s(&v["status"]), s(&v["url"]));
    if v["status"] == "pending" {
        text += &format!(
            "prove ownership with a DNS TXT record, then run `vibebase domains verify`:\n  {}  TXT  \"{}\"\n",
            s(&v["verification"]["name"]),
            s(&v["verification"]["value"]),
        );
    }
    text
}

fn deployment_text(v: &Value) -> String {
    format!(
        "{}\npreview:      {}\npreview path: {}\nsite:         {}{}\n",
        s(&v["id"]),
        s(&v["urls"]["preview"]),
        s(&v["urls"]["preview_path"]),
        s(&v["urls"]["site"]),
        if v["published"] == true { " (published)" } else { "" },
    )
}

async fn deploy(c: &Client, env: &str, dir: &std::path::Path, publish: bool) -> Result<(), Failure> {
    use reqwest::Method;
    use sha2::Digest as _;
    if !dir.is_dir() {
        return Err(Failure::new(2, format!("{} is not a directory", dir.display())));
    }
    let files = site_files(dir)?;
    let mut manifest = serde_json::Map::new();
    let mut by_sha = std::collections::HashMap::new();
    for (site, local) in &files {
        let data = std::fs::read(local).map_err(|e| Failure::new(2, format!("{}: {e}", local.display())))?;
        let sha: String = sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        manifest.insert(site.clone(), json!(sha));
        by_sha.insert(sha, local.clone());
    }
    let Reply::Json(created) =
        c.call(Method::POST, &format!("/v1/envs/{env}/deployments"), Some(json!({"files": manifest}))).await?
    else {
        return Err(Failure::new(1, "unexpected answer to create deployment"));
    };
    let id = s(&created["deployment"]["id"]).to_owned();
    let missing: Vec<String> =
        created["missing"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    progress(&format!("{} files, {} to upload", files.len(), missing.len()));
    for sha in &missing {
        let local = by_sha.get(sha).ok_or_else(|| Failure::new(1, format!("the server asked for unknown {sha}")))?;
        let data = std::fs::read(local).map_err(|e| Failure::new(2, format!("{}: {e}", local.display())))?;
        c.raw(Method::PUT, &format!("/v1/envs/{env}/deployments/{id}/files/{sha}"), data).await?;
    }
    let r = c.call(Method::POST, &format!("/v1/envs/{env}/deployments/{id}/finalize?publish={publish}"), None).await?;
    c.show(r, deployment_text);
    Ok(())
}

async fn dispatch(command: ClientCommand) -> Result<Option<ExitCode>, Failure> {
    use reqwest::Method;
    match command {
        ClientCommand::Deploy { env, dir, publish, conn } => deploy(&Client::new(conn)?, &env, &dir, publish).await?,
        ClientCommand::Rollback { env, deployment, conn } => {
            let c = Client::new(conn)?;
            let r = c.call(Method::POST, &format!("/v1/envs/{env}/deployments/{deployment}/rollback"), None).await?;
            c.show(r, deployment_text);
        }
        ClientCommand::Deployments { env, conn } => {
            let c = Client::new(conn)?;
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/deployments"), None).await?;
            c.show(r, |v| {
                table(
                    items(v),
                    &[
                        ("id", "ID"),
                        ("status", "STATUS"),
                        ("published", "PUBLISHED"),
                        ("file_count", "FILES"),
                        ("created_at", "CREATED"),
                    ],
                )
            });
        }
        ClientCommand::Sandbox { command, conn } => return sandbox(&Client::new(conn)?, command).await,
        ClientCommand::Functions { command, conn } => return functions(&Client::new(conn)?, command).await,
        ClientCommand::Domains { command, conn } => {
            let c = Client::new(conn)?;
            match command {
                DomainsCommand::Add { env, domain } => {
                    let r = c
                        .call(Method::POST, &format!("/v1/envs/{env}/domains"), Some(json!({"domain": domain})))
                        .await?;
                    c.show(r, domain_text);
                }
                DomainsCommand::List { env } => {
                    let r = c.call(Method::GET, &format!("/v1/envs/{env}/domains"), None).await?;
                    c.show(r, |v| {
                        table(items(v), &[("domain", "DOMAIN"), ("status", "STATUS"), ("created_at", "CREATED")])
                    });
                }
                DomainsCommand::Verify { env, domain } => {
                    let r = c.call(Method::POST, &format!("/v1/envs/{env}/domains/{domain}/verify"), None).await?;
                    c.show(r, domain_text);
                }
                DomainsCommand::Delete { env, domain } => {
                    let r = c.call(Method::DELETE, &format!("/v1/envs/{env}/domains/{domain}"), None).await?;
                    c.show(r, |_| String::new());
                }
            }
        }
        ClientCommand::Apps { command, conn } => return apps(&Client::new(conn)?, command).await,
        ClientCommand::Session { command, conn } => return session::run(&Client::new(conn)?, command).await,
        ClientCommand::Demo(args) => return demo::run(args).await,
        ClientCommand::Template { command, conn } => {
            let c = Client::new(conn)?;
            let names = |v: &Value| {
                v["items"].as_array().into_iter().flatten().filter_map(Value::as_str).collect::<Vec<_>>().join("\n")
            };
            match command {
                TemplateCommand::Put { name, dir } => {
                    if !dir.is_dir() {
                        return Err(Failure::new(2, format!("{} is not a directory", dir.display())));
                    }
                    let archive = pack_dir(&dir)?;
                    let reply = c.raw(Method::PUT, &format!("/v1/templates/{name}"), archive).await?;
                    let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                    c.show(Reply::Json(v), names);
                }
                TemplateCommand::List => c.show(c.call(Method::GET, "/v1/templates", None).await?, names),
                TemplateCommand::Delete { name } => {
                    c.show(c.call(Method::DELETE, &format!("/v1/templates/{name}"), None).await?, |_| String::new());
                }
            }
        }
        ClientCommand::Env { command, conn } => {
            let c = Client::new(conn)?;
            match command {
                EnvCommand::Create { id, name } => {
                    let r = c.call(Method::POST, "/v1/envs", Some(json!({"id": id, "name": name}))).await?;
                    c.show(r, env_text);
                }
                EnvCommand::List => {
                    let mut cursor: Option<String> = None;
                    let mut all = Vec::new();
                    loop {
                        let q = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
                        let Reply::Json(page) = c.call(Method::GET, &format!("/v1/envs?limit=1000{q}"), None).await?
                        else {
                            break;
                        };
                        all.extend(page["items"].as_array().cloned().unwrap_or_default());
                        cursor = page["next_cursor"].as_str().map(str::to_owned);
                        if cursor.is_none() {
                            break;
                        }
                    }
                    c.show(Reply::Json(json!({"items": all})), |v| {
                        table(
                            items(v),
                            &[("id", "ID"), ("status", "STATUS"), ("created_at", "CREATED"), ("name", "NAME")],
                        )
                    });
                }
                EnvCommand::Get { id } => c.show(c.call(Method::GET, &format!("/v1/envs/{id}"), None).await?, env_text),
                EnvCommand::Delete { id } => {
                    progress(&format!("deleting environment {id} and everything it owns…"));
                    c.show(c.call(Method::DELETE, &format!("/v1/envs/{id}"), None).await?, |_| String::new());
                    if !c.conn.json {
                        out(&format!("deleted {id}"));
                    }
                }
                EnvCommand::Suspend { id } => {
                    c.show(c.call(Method::POST, &format!("/v1/envs/{id}/suspend"), None).await?, env_text)
                }
                EnvCommand::Resume { id } => {
                    c.show(c.call(Method::POST, &format!("/v1/envs/{id}/resume"), None).await?, env_text)
                }
            }
        }
        ClientCommand::Keys { command, conn } => {
            let c = Client::new(conn)?;
            let key_cols: &[(&str, &str)] = &[
                ("id", "ID"),
                ("kind", "KIND"),
                ("hint", "KEY"),
                ("created_at", "CREATED"),
                ("expires_at", "EXPIRES"),
                ("revoked_at", "REVOKED"),
            ];
            match command {
                KeysCommand::List { env } => {
                    let r = c.call(Method::GET, &format!("/v1/envs/{env}/keys"), None).await?;
                    c.show(r, |v| table(items(v), key_cols));
                }
                KeysCommand::Rotate { env, kind, overlap } => {
                    let r = c
                        .call(
                            Method::POST,
                            &format!("/v1/envs/{env}/keys/rotate"),
                            Some(json!({"kind": kind, "overlap_seconds": overlap})),
                        )
                        .await?;
                    c.show(r, |v| format!("new {kind} key: {}\nid: {}", s(&v["key"]), s(&v["record"]["id"])));
                }
                KeysCommand::Revoke { env, id } => {
                    let r = c.call(Method::POST, &format!("/v1/envs/{env}/keys/{id}/revoke"), None).await?;
                    c.show(r, |v| format!("revoked {} at {}", s(&v["id"]), s(&v["revoked_at"])));
                }
                KeysCommand::Mint { env, ttl, session, actions } => {
                    let body = json!({"ttl_seconds": ttl, "session": session, "actions": actions});
                    let r = c.call(Method::POST, &format!("/v1/envs/{env}/tokens"), Some(body)).await?;
                    c.show(r, |v| {
                        format!(
                            "token:   {}\nid:      {}\nexpires: {}",
                            s(&v["token"]),
                            s(&v["id"]),
                            s(&v["expires_at"])
                        )
                    });
                }
            }
        }
        ClientCommand::Usage { env, from, to, minute, csv, conn } => {
            let c = Client::new(conn)?;
            let mut q = vec![];
            if let Some(f) = from {
                q.push(format!("from={f}"));
            }
            if let Some(t) = to {
                q.push(format!("to={t}"));
            }
            if minute {
                q.push("granularity=minute".to_owned());
            }
            if csv {
                q.push("format=csv".to_owned());
            }
            let base = env.map_or("/v1/usage".to_owned(), |e| format!("/v1/envs/{e}/usage"));
            let r = c.call(Method::GET, &format!("{base}?{}", q.join("&")), None).await?;
            c.show(r, |v| {
                if minute {
                    table(
                        v["buckets"].as_array().map_or(&[], |a| a.as_slice()),
                        &[("env", "ENV"), ("meter", "METER"), ("minute", "MINUTE"), ("quantity", "QUANTITY")],
                    )
                } else {
                    table(
                        v["totals"].as_array().map_or(&[], |a| a.as_slice()),
                        &[("env", "ENV"), ("meter", "METER"), ("quantity", "QUANTITY")],
                    )
                }
            });
        }
        ClientCommand::Limits { command, conn } => {
            let c = Client::new(conn)?;
            let show = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
            match command {
                LimitsCommand::Get { env } => {
                    c.show(c.call(Method::GET, &format!("/v1/envs/{env}/limits"), None).await?, show)
                }
                LimitsCommand::Set { env, quotas, rate, burst } => {
                    let quotas = quotas.iter().map(|q| parse_quota(q)).collect::<Result<Vec<_>, _>>()?;
                    let body = json!({"quotas": quotas, "rate_limit_per_second": rate, "rate_limit_burst": burst});
                    c.show(c.call(Method::PUT, &format!("/v1/envs/{env}/limits"), Some(body)).await?, show);
                }
            }
        }
        ClientCommand::Principals { command, conn } => {
            let c = Client::new(conn)?;
            match command {
                PrincipalsCommand::Create { name, policy, owner_of } => {
                    let policy: Value = match (policy, owner_of) {
                        (_, Some(env)) => {
                            match c.call(Method::POST, "/v1/policies/owner", Some(json!({"env": env}))).await? {
                                Reply::Json(p) => p,
                                _ => return Err(Failure::new(1, "the server returned no policy")),
                            }
                        }
                        (Some(file), None) => {
                            let text = if file == "-" {
                                std::io::read_to_string(std::io::stdin())
                            } else {
                                std::fs::read_to_string(&file)
                            }
                            .map_err(|e| Failure::new(2, format!("read policy {file}: {e}")))?;
                            serde_json::from_str(&text)
                                .map_err(|e| Failure::new(2, format!("policy {file} is not JSON: {e}")))?
                        }
                        (None, None) => return Err(Failure::new(2, "give --policy FILE or --owner-of ENV")),
                    };
                    let r =
                        c.call(Method::POST, "/v1/principals", Some(json!({"name": name, "policy": policy}))).await?;
                    c.show(r, |v| {
                        format!("id:  {}\nkey: {}\n     (shown once: store it now)", s(&v["id"]), s(&v["key"]))
                    });
                }
                PrincipalsCommand::List => {
                    let r = c.call(Method::GET, "/v1/principals", None).await?;
                    c.show(r, |v| table(items(v), &[("id", "ID"), ("name", "NAME"), ("created_at", "CREATED")]));
                }
                PrincipalsCommand::Delete { id } => {
                    c.show(c.call(Method::DELETE, &format!("/v1/principals/{id}"), None).await?, |_| String::new());
                }
            }
        }
        ClientCommand::Webhooks { command, conn } => {
            let c = Client::new(conn)?;
            match command {
                WebhooksCommand::Create { target, events, env } => {
                    let r = c
                        .call(Method::POST, "/v1/webhooks", Some(json!({"url": target, "events": events, "env": env})))
                        .await?;
                    c.show(r, |v| {
                        format!(
                            "id:     {}\nsecret: {}\n        (shown once: store it now)",
                            s(&v["id"]),
                            s(&v["secret"])
                        )
                    });
                }
                WebhooksCommand::List => {
                    let r = c.call(Method::GET, "/v1/webhooks", None).await?;
                    c.show(r, |v| {
                        table(items(v), &[("id", "ID"), ("url", "URL"), ("env", "ENV"), ("events", "EVENTS")])
                    });
                }
                WebhooksCommand::Delete { id } => {
                    c.show(c.call(Method::DELETE, &format!("/v1/webhooks/{id}"), None).await?, |_| String::new());
                }
                WebhooksCommand::Deliveries { id } => {
                    let r = c.call(Method::GET, &format!("/v1/webhooks/{id}/deliveries"), None).await?;
                    let cols = [
                        ("id", "ID"),
                        ("event_type", "EVENT"),
                        ("status", "STATUS"),
                        ("attempts", "ATTEMPTS"),
                        ("last_status_code", "HTTP"),
                        ("created_at", "CREATED"),
                    ];
                    c.show(r, |v| table(items(v), &cols));
                }
            }
        }
        ClientCommand::Sql { env, file, conn } => {
            let c = Client::new(conn)?;
            let query = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| Failure { code: 2, message: format!("cannot read standard input: {e}") })?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| Failure { code: 2, message: format!("cannot read {}: {e}", file.display()) })?
            };
            let r = c.call(Method::POST, &format!("/v1/envs/{env}/sql"), Some(json!({ "query": query }))).await?;
            c.show(r, |v| format!("applied migration {} ({} statements)\n", v["version"], v["statements"]));
        }
        ClientCommand::Audit { env, limit, conn } => {
            let c = Client::new(conn)?;
            let r = c.call(Method::GET, &format!("/v1/envs/{env}/audit?limit={limit}"), None).await?;
            c.show(r, |v| {
                table(
                    items(v),
                    &[
                        ("at", "AT"),
                        ("actor", "ACTOR"),
                        ("action", "ACTION"),
                        ("target", "TARGET"),
                        ("result", "RESULT"),
                    ],
                )
            });
        }
    }
    Ok(None)
}
