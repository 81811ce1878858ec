//! The tool registry: what the model may ask for, and how each request is carried out. Sandbox tools run
//! in the session's sandbox (the hands); the loop only relays them. Every tool answers with text for the
//! model; a failure is an error result, never a crash of the loop.

use std::collections::BTreeMap;
use std::time::Duration;

use gateway::ir::Tool;
use sandbox::client::{AgentClient, OutputLimit};
use sandbox::proto::ExecSpec;
use serde::Deserialize;
use serde_json::{Value, json};

/// What a tool answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub content: String,
    pub is_error: bool,
}

impl Outcome {
    pub fn ok(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: false }
    }
    pub fn error(content: impl Into<String>) -> Self {
        Self { content: content.into(), is_error: true }
    }
}

/// Where a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// In the session's sandbox, provisioned on the first call that needs one.
    Sandbox,
    /// In the loop, through the env's services with the loop's own authority ([`Backend`]);
    /// `needs_sandbox` when it reads the session's workspace (deploys).
    Backend { needs_sandbox: bool },
}

/// A backend tool call: the env and session come from the loop, never from the model.
pub struct BackendCall<'a> {
    pub env: &'a protocol::EnvId,
    pub session: &'a str,
    /// The session's sandbox, for tools that read its workspace.
    pub sandbox: Option<&'a str>,
    pub tool: &'a str,
    pub arguments: &'a str,
}

/// Runs backend tools (migrations, deploys, the env's facts) against the env's services. The server
/// implements it over the same services its API handlers use.
pub trait Backend: Send + Sync {
    fn call<'a>(&'a self, call: BackendCall<'a>) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

    /// The env's current publishable key (written into the workspace for the app's browser client).
    fn publishable_key<'a>(
        &'a self,
        env: &'a protocol::EnvId,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

    /// Where the env's backend stands now, for a checkpoint.
    fn position<'a>(
        &'a self,
        env: &'a protocol::EnvId,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<BackendPosition, String>> + Send + 'a>>;

    /// Publishes `deployment` again as the env's site (a revert to a checkpoint); the error is the
    /// refusal as the API would state it.
    fn roll_back_site<'a>(
        &'a self,
        env: &'a protocol::EnvId,
        session: &'a str,
        deployment: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// The env's backend state a checkpoint records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendPosition {
    /// The version of the latest applied migration.
    pub migration: Option<i64>,
    /// The published site deployment.
    pub deployment: Option<String>,
}

/// Backend tools: (name, needs the sandbox).
const BACKEND_TOOLS: [(&str, bool); 12] = [
    ("env_info", false),
    ("apply_migration", false),
    ("query_data", false),
    ("deploy_site", true),
    ("deploy_function", true),
    ("deploy_app", true),
    ("read_logs", false),
    ("list_buckets", false),
    ("create_bucket", false),
    ("update_bucket", false),
    ("upload_file", true),
    ("list_objects", false),
];

/// Sandbox tools (each has a spec in [`specs`]).
const SANDBOX_TOOLS: [&str; 9] =
    ["bash", "read_file", "write_file", "edit_file", "glob", "grep", "start_process", "process_output", "stop_process"];

/// The hand a tool call names when it names none.
pub const MAIN_HAND: &str = "main";
/// Most hands (sandboxes) one session or MCP session may hold at once.
pub const MAX_HANDS: usize = 4;

/// Hand names: 1..=32 of `a-z 0-9 -`.
pub fn valid_hand(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// True for the tools that run in (or read from) a sandbox, and so take a `sandbox` argument.
pub fn takes_sandbox(name: &str) -> bool {
    matches!(placement(name), Some(Placement::Sandbox | Placement::Backend { needs_sandbox: true }))
}

/// The hand a call names, and its arguments without the `sandbox` argument (which only the hands
/// read). `Ok((None, arguments))` for a tool that takes no sandbox; `Err` for a bad hand name.
pub fn split_hand(name: &str, arguments: &str) -> Result<(Option<String>, String), Outcome> {
    if !takes_sandbox(name) {
        return Ok((None, arguments.to_owned()));
    }
    // Arguments that are not an object are left for the tool to refuse.
    let Ok(serde_json::Value::Object(mut args)) = serde_json::from_str::<Value>(arguments) else {
        return Ok((Some(MAIN_HAND.to_owned()), arguments.to_owned()));
    };
    let hand = match args.remove("sandbox") {
        None | Some(Value::Null) => MAIN_HAND.to_owned(),
        Some(Value::String(h)) if valid_hand(&h) => h,
        Some(other) => {
            return Err(Outcome::error(format!(
                "invalid arguments: sandbox names a sandbox of the session: 1..=32 of a-z 0-9 -, not {other}"
            )));
        }
    };
    Ok((Some(hand), Value::Object(args).to_string()))
}

/// The most a tool answer carries back to the model (longer output is cut, saying so).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Longest a `bash` call may run.
const MAX_BASH_SECONDS: u64 = 600;

/// The tool of `name`, if there is one.
pub fn placement(name: &str) -> Option<Placement> {
    if let Some((_, needs_sandbox)) = BACKEND_TOOLS.iter().find(|(n, _)| *n == name) {
        return Some(Placement::Backend { needs_sandbox: *needs_sandbox });
    }
    SANDBOX_TOOLS.contains(&name).then_some(Placement::Sandbox)
}

/// The registry, as the model sees it.
pub fn specs() -> Vec<Tool> {
    fn tool(name: &str, description: &str, parameters: Value) -> Tool {
        Tool { name: name.to_owned(), description: Some(description.to_owned()), parameters }
    }
    let mut tools = vec![
        tool(
            "bash",
            "Run a bash command in the workspace (/home/user) of the session's sandbox. Returns exit code, stdout and stderr.",
            json!({"type": "object", "properties": {
                "command": {"type": "string"},
                "timeout_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_BASH_SECONDS}
            }, "required": ["command"]}),
        ),
        tool(
            "read_file",
            "Read a text file of the workspace.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}),
        ),
        tool(
            "write_file",
            "Create or replace a file of the workspace (parent directories are created).",
            json!({"type": "object", "properties": {
                "path": {"type": "string"}, "content": {"type": "string"}
            }, "required": ["path", "content"]}),
        ),
        tool(
            "edit_file",
            "Replace an exact string in a file. old_string must occur exactly once unless replace_all is true.",
            json!({"type": "object", "properties": {
                "path": {"type": "string"}, "old_string": {"type": "string"}, "new_string": {"type": "string"},
                "replace_all": {"type": "boolean"}
            }, "required": ["path", "old_string", "new_string"]}),
        ),
        tool(
            "glob",
            "List the files of the workspace matching a glob pattern (** matches directories).",
            json!({"type": "object", "properties": {"pattern": {"type": "string"}}, "required": ["pattern"]}),
        ),
        tool(
            "grep",
            "Search file contents with an extended regular expression; prints file:line:text.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"}, "path": {"type": "string"}
            }, "required": ["pattern"]}),
        ),
        tool(
            "start_process",
            "Start a long-running command in the background (a dev server, a watcher) and return its process \
             id at once; its output goes to a log that process_output reads.",
            json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
        ),
        tool(
            "process_output",
            "Whether a background process still runs, and the end of its output.",
            json!({"type": "object", "properties": {"pid": {"type": "integer"}}, "required": ["pid"]}),
        ),
        tool(
            "stop_process",
            "Stop a background process and everything it started.",
            json!({"type": "object", "properties": {"pid": {"type": "integer"}}, "required": ["pid"]}),
        ),
        tool(
            "env_info",
            "The environment's facts: the API URL (for supabase-js), the publishable key (safe in a browser), \
             the site URL, and the database's migration history.",
            json!({"type": "object", "properties": {}}),
        ),
        tool(
            "apply_migration",
            "Apply a SQL migration (PostgreSQL dialect) to the environment's database, in one transaction. \
             Refused, with nothing applied, when a table the anon or authenticated roles can reach is left \
             without row-level security.",
            json!({"type": "object", "properties": {"sql": {"type": "string"}}, "required": ["sql"]}),
        ),
        tool(
            "query_data",
            "Read rows of a table of the environment's database with PostgREST's query language (for example \
             select=id,title&done=eq.false&order=id&limit=20), as the service role (row-level security does \
             not apply: use it to check data, never to show it to users).",
            json!({"type": "object", "properties": {
                "table": {"type": "string"}, "query": {"type": "string"}
            }, "required": ["table"]}),
        ),
        tool(
            "deploy_site",
            "Deploy a directory of the workspace (for example dist after a build) as an immutable static \
             deployment; publish (default true) makes it the live site.",
            json!({"type": "object", "properties": {
                "dir": {"type": "string"}, "publish": {"type": "boolean"}
            }, "required": ["dir"]}),
        ),
        tool(
            "deploy_function",
            "Deploy a directory of the workspace as a new version of a cloud function (Node.js; dependencies \
             of its package.json are installed), invoked at /functions/v1/<name>.",
            json!({"type": "object", "properties": {
                "name": {"type": "string"}, "dir": {"type": "string"}
            }, "required": ["name", "dir"]}),
        ),
        tool(
            "deploy_app",
            "Run a directory of the workspace as a long-lived web server of the environment (a container app): \
             the command (e.g. `node server.js`) must listen on `port`; it starts on the first request and \
             scales to zero when idle.",
            json!({"type": "object", "properties": {
                "name": {"type": "string"}, "dir": {"type": "string"}, "command": {"type": "string"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535}
            }, "required": ["name", "dir", "command", "port"]}),
        ),
        tool(
            "read_logs",
            "The latest logs of a cloud function (its invocations of the last hour, with stdout and stderr) \
             or of a container app (its process output and restarts).",
            json!({"type": "object", "properties": {
                "kind": {"type": "string", "enum": ["function", "app"]}, "name": {"type": "string"}
            }, "required": ["kind", "name"]}),
        ),
        tool(
            "list_buckets",
            "The environment's storage buckets, with whether each is public and its upload limits.",
            json!({"type": "object", "properties": {}}),
        ),
        tool(
            "create_bucket",
            "Create a storage bucket (files served at /storage/v1). A public bucket's files are readable by \
             anyone at their public URL; who may upload, read or delete in any bucket is decided by \
             row-level security policies on storage.objects (write them with apply_migration).",
            json!({"type": "object", "properties": bucket_settings(true), "required": ["name"]}),
        ),
        tool(
            "update_bucket",
            "Change a bucket's settings; settings left out stay as they are (null removes a limit).",
            json!({"type": "object", "properties": bucket_settings(false), "required": ["name"]}),
        ),
        tool(
            "upload_file",
            "Upload a file of the workspace into a bucket as the object `path` (seed data, images); the \
             content type is guessed from the name unless given.",
            json!({"type": "object", "properties": {
                "bucket": {"type": "string"}, "path": {"type": "string", "description": "the object's name in the bucket"},
                "file": {"type": "string", "description": "the workspace file to upload"},
                "content_type": {"type": "string"}, "upsert": {"type": "boolean", "description": "replace an existing object"}
            }, "required": ["bucket", "path", "file"]}),
        ),
        tool(
            "list_objects",
            "List the folders and objects of a bucket directly under a prefix (folder).",
            json!({"type": "object", "properties": {
                "bucket": {"type": "string"}, "prefix": {"type": "string"}
            }, "required": ["bucket"]}),
        ),
    ];
    for t in &mut tools {
        if takes_sandbox(&t.name) {
            t.parameters["properties"]["sandbox"] = json!({
                "type": "string",
                "description": "The sandbox to run in (default main). Each name (1..=32 of a-z 0-9 -, at most 4 \
                                per session) is a sandbox of its own, started from the session's last checkpoint; \
                                calls to different sandboxes in one answer run in parallel."
            });
        }
    }
    tools
}

/// The settings of `create_bucket` and `update_bucket`.
fn bucket_settings(create: bool) -> Value {
    let nullable = |t: &str| if create { json!(t) } else { json!([t, "null"]) };
    json!({
        "name": {"type": "string"},
        "public": {"type": "boolean"},
        "file_size_limit": {"type": nullable("integer"), "minimum": 1, "description": "bytes"},
        "allowed_mime_types": {"type": nullable("array"), "items": {"type": "string"},
            "description": "for example [\"image/*\"]; any type when absent"}
    })
}

/// True for the tools whose effect a checkpoint records beyond the workspace (schema, deployments).
pub fn changes_backend(name: &str) -> bool {
    matches!(name, "apply_migration" | "deploy_site" | "deploy_function" | "deploy_app")
}

/// True when the tool can change the workspace (the turn then ends with a checkpoint).
pub fn mutates_workspace(name: &str) -> bool {
    matches!(name, "bash" | "write_file" | "edit_file" | "start_process")
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: &str) -> Result<T, Outcome> {
    let args = if arguments.trim().is_empty() { "{}" } else { arguments };
    serde_json::from_str(args).map_err(|e| Outcome::error(format!("invalid arguments: {e}")))
}

#[derive(Deserialize)]
struct BashArgs {
    command: String,
    timeout_seconds: Option<u64>,
}
#[derive(Deserialize)]
struct PathArgs {
    path: String,
}
#[derive(Deserialize)]
struct WriteArgs {
    path: String,
    content: String,
}
#[derive(Deserialize)]
struct EditArgs {
    path: String,
    old_string: String,
    new_string: String,
    #[serde(default)]
    replace_all: bool,
}
#[derive(Deserialize)]
struct GlobArgs {
    pattern: String,
}
#[derive(Deserialize)]
struct ProcessArgs {
    pid: u32,
}

/// Where background processes write their output, inside the sandbox.
const PROCESS_LOGS: &str = "/tmp/vb-processes";

#[derive(Deserialize)]
struct GrepArgs {
    pattern: String,
    path: Option<String>,
}

/// A sandbox that went away while a tool used it: the caller detaches it, and the next call gets a
/// fresh one.
#[derive(Debug)]
pub struct SandboxLost(pub String);

/// Runs a sandbox tool. `Err` only when the sandbox itself is gone.
pub async fn run_in_sandbox(client: &AgentClient, name: &str, arguments: &str) -> Result<Outcome, SandboxLost> {
    let outcome = match name {
        "bash" => match parse::<BashArgs>(arguments) {
            Ok(a) => {
                let secs = a.timeout_seconds.unwrap_or(120).clamp(1, MAX_BASH_SECONDS);
                exec(client, vec!["bash".into(), "-lc".into(), a.command], secs).await?
            }
            Err(o) => o,
        },
        "read_file" => match parse::<PathArgs>(arguments) {
            Ok(a) => match client.read_file(&a.path, MAX_OUTPUT + 1).await {
                Ok(bytes) => Outcome::ok(text_of(&bytes)),
                Err(e) => agent_error(e)?,
            },
            Err(o) => o,
        },
        "write_file" => match parse::<WriteArgs>(arguments) {
            Ok(a) => write(client, &a.path, a.content.as_bytes()).await?,
            Err(o) => o,
        },
        "edit_file" => match parse::<EditArgs>(arguments) {
            Ok(a) => edit(client, a).await?,
            Err(o) => o,
        },
        "glob" => match parse::<GlobArgs>(arguments) {
            Ok(a) => {
                // The pattern is an argument, never shell text: bash expands `$1` as a glob only.
                let script = "shopt -s globstar nullglob dotglob; for f in $1; do printf '%s\\n' \"$f\"; done";
                exec(client, vec!["bash".into(), "-c".into(), script.into(), "glob".into(), a.pattern], 60).await?
            }
            Err(o) => o,
        },
        // Background processes run in a session of their own (setsid), so the exec that started them
        // returns at once and stopping one stops its whole process group; output goes to a log file.
        "start_process" => match parse::<BashArgs>(arguments) {
            Ok(a) => {
                // The log is named before the process starts (the child opens it after the fork), and
                // `<pid>.log` links to it once the pid is known.
                let script = format!(
                    "mkdir -p {PROCESS_LOGS}; log={PROCESS_LOGS}/run-$$.log; \
                     setsid bash -lc \"$1\" > \"$log\" 2>&1 < /dev/null & \
                     pid=$!; ln -sf \"$log\" {PROCESS_LOGS}/$pid.log; echo $pid"
                );
                let argv = vec!["bash".into(), "-c".into(), script, "start".into(), a.command];
                match exec(client, argv, 30).await? {
                    o if o.is_error => o,
                    o => {
                        let pid = o.content.lines().last().unwrap_or_default().trim().to_owned();
                        Outcome::ok(format!("started process {pid}; read its output with process_output"))
                    }
                }
            }
            Err(o) => o,
        },
        "process_output" => match parse::<ProcessArgs>(arguments) {
            Ok(a) => {
                let pid = a.pid;
                let script = format!(
                    "if kill -0 {pid} 2>/dev/null; then echo running; else echo exited; fi; \
                     tail -c 16384 {PROCESS_LOGS}/{pid}.log 2>/dev/null || echo '(no log)'"
                );
                exec(client, vec!["bash".into(), "-c".into(), script], 30).await?
            }
            Err(o) => o,
        },
        "stop_process" => match parse::<ProcessArgs>(arguments) {
            Ok(a) => {
                let pid = a.pid;
                let script = format!("kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid}; echo stopped {pid}");
                exec(client, vec!["bash".into(), "-c".into(), script], 30).await?
            }
            Err(o) => o,
        },
        "grep" => match parse::<GrepArgs>(arguments) {
            Ok(a) => {
                let path = a.path.unwrap_or_else(|| ".".to_owned());
                let argv = vec![
                    "grep".into(),
                    "-rnE".into(),
                    "--exclude-dir=node_modules".into(),
                    "--".into(),
                    a.pattern,
                    path,
                ];
                exec(client, argv, 60).await?
            }
            Err(o) => o,
        },
        other => Outcome::error(format!("unknown tool {other:?}")),
    };
    Ok(outcome)
}

async fn exec(client: &AgentClient, argv: Vec<String>, timeout_secs: u64) -> Result<Outcome, SandboxLost> {
    let spec = ExecSpec {
        argv,
        env: BTreeMap::new(),
        cwd: None,
        stdin: false,
        timeout_ms: Some(Duration::from_secs(timeout_secs).as_millis() as u64),
        pty: None,
        tag: Some("agent".to_owned()),
    };
    match client.run(spec, None, OutputLimit(MAX_OUTPUT)).await {
        Ok(done) => {
            let mut text = format!("exit code: {}", done.exit_code);
            if done.timed_out {
                text.push_str(&format!(" (killed after {timeout_secs} s)"));
            }
            if !done.stdout.is_empty() {
                text.push_str("\nstdout:\n");
                text.push_str(&String::from_utf8_lossy(&done.stdout));
            }
            if !done.stderr.is_empty() {
                text.push_str("\nstderr:\n");
                text.push_str(&String::from_utf8_lossy(&done.stderr));
            }
            if done.truncated {
                text.push_str("\n[output truncated]");
            }
            let failed = done.exit_code != 0 || done.timed_out;
            Ok(Outcome { content: text, is_error: failed })
        }
        Err(e) => agent_error(e),
    }
}

async fn write(client: &AgentClient, path: &str, data: &[u8]) -> Result<Outcome, SandboxLost> {
    // The agent creates parent directories and renames into place (never a partial file).
    match client.write_file(path, data, None).await {
        Ok(_) => Ok(Outcome::ok(format!("wrote {} bytes to {path}", data.len()))),
        Err(e) => agent_error(e),
    }
}

async fn edit(client: &AgentClient, a: EditArgs) -> Result<Outcome, SandboxLost> {
    if a.old_string.is_empty() {
        return Ok(Outcome::error("old_string is empty"));
    }
    let bytes = match client.read_file(&a.path, 8 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return agent_error(e),
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return Ok(Outcome::error(format!("{} is not UTF-8 text", a.path)));
    };
    let count = text.matches(&a.old_string).count();
    let updated = match (count, a.replace_all) {
        (0, _) => return Ok(Outcome::error(format!("old_string does not occur in {}", a.path))),
        (1, _) | (_, true) => text.replace(&a.old_string, &a.new_string),
        (n, false) => {
            return Ok(Outcome::error(format!(
                "old_string occurs {n} times in {}; give more context or set replace_all",
                a.path
            )));
        }
    };
    match client.write_file(&a.path, updated.as_bytes(), None).await {
        Ok(_) => Ok(Outcome::ok(format!("replaced {count} occurrence(s) in {}", a.path))),
        Err(e) => agent_error(e),
    }
}

/// A file's text for the model, cut at [`MAX_OUTPUT`].
fn text_of(bytes: &[u8]) -> String {
    let cut = bytes.len() > MAX_OUTPUT;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]).into_owned();
    if cut {
        s.push_str("\n[file truncated]");
    }
    s
}

/// An agent error is the model's problem (file not found, …); a lost agent is the sandbox's death.
fn agent_error(e: sandbox::SandboxError) -> Result<Outcome, SandboxLost> {
    match e {
        sandbox::SandboxError::AgentLost(m) => Err(SandboxLost(m)),
        sandbox::SandboxError::NotFound => Err(SandboxLost("the sandbox is gone".to_owned())),
        other => Ok(Outcome::error(other.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_an_object_schema_and_a_placement() {
        for t in specs() {
            assert_eq!(t.parameters["type"], "object", "{}", t.name);
            assert!(placement(&t.name).is_some(), "{}", t.name);
        }
        assert_eq!(placement("bash"), Some(Placement::Sandbox));
        assert_eq!(placement("deploy_site"), Some(Placement::Backend { needs_sandbox: true }));
        assert_eq!(placement("apply_migration"), Some(Placement::Backend { needs_sandbox: false }));
        assert_eq!(placement("rm_rf_everything"), None);
        let names: Vec<String> = specs().into_iter().map(|t| t.name).collect();
        for n in SANDBOX_TOOLS.iter().chain(BACKEND_TOOLS.iter().map(|(n, _)| n)) {
            assert!(names.iter().any(|s| s == n), "{n} has no spec");
        }
        assert_eq!(names.len(), SANDBOX_TOOLS.len() + BACKEND_TOOLS.len());
    }

    #[test]
    fn sandbox_tools_take_a_hand_and_others_do_not() {
        for t in specs() {
            let has = t.parameters["properties"].get("sandbox").is_some();
            assert_eq!(has, takes_sandbox(&t.name), "{}", t.name);
        }
        assert!(takes_sandbox("upload_file") && takes_sandbox("bash") && !takes_sandbox("create_bucket"));
        let (hand, rest) = split_hand("bash", r#"{"command": "ls", "sandbox": "web-2"}"#).unwrap();
        assert_eq!((hand.as_deref(), rest.as_str()), (Some("web-2"), r#"{"command":"ls"}"#));
        let (hand, rest) = split_hand("bash", r#"{"command": "ls"}"#).unwrap();
        assert_eq!((hand.as_deref(), rest.as_str()), (Some("main"), r#"{"command":"ls"}"#));
        let (hand, rest) = split_hand("apply_migration", r#"{"sql": "x", "sandbox": "b"}"#).unwrap();
        assert_eq!((hand, rest.as_str()), (None, r#"{"sql": "x", "sandbox": "b"}"#));
        for bad in [r#""Web""#, r#""""#, "7", r#""a/b""#, &format!("\"{}\"", "a".repeat(33))] {
            let e = split_hand("bash", &format!(r#"{{"command": "ls", "sandbox": {bad}}}"#)).unwrap_err();
            assert!(e.is_error && e.content.contains("sandbox"), "{bad}: {e:?}");
        }
        assert_eq!(split_hand("bash", "not json").unwrap(), (Some("main".to_owned()), "not json".to_owned()));
    }

    #[test]
    fn bad_arguments_are_an_error_for_the_model() {
        let e = parse::<BashArgs>("{\"cmd\": 1}").err().unwrap();
        assert!(e.is_error && e.content.contains("invalid arguments"), "{e:?}");
        assert!(parse::<GlobArgs>("not json").is_err());
    }
}
