//! The agent loop's backend tools, run with the loop's own authority over the same services the API
//! handlers use: the env and session come from the loop, never from the model, and errors read as the
//! API would answer them (code and message).

use std::future::Future;
use std::pin::Pin;

use agent::tools::{Backend, BackendCall, BackendPosition, Outcome};
use bytes::Bytes;
use platform::{Actor, Platform};
use serde::Deserialize;
use serde_json::json;

use crate::error::ApiError;

/// The services backend tools reach.
pub struct AgentBackend {
    pub platform: Platform,
    pub appdb: appdb::AppDbs,
    pub hosting: hosting::Hosting,
    pub storage: storage::Storage,
    pub sandboxes: Option<sandbox::Sandboxes>,
    pub functions: Option<functions::Functions>,
    pub apps: Option<functions::apps::Apps>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationArgs {
    sql: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppArgs {
    name: String,
    dir: String,
    command: String,
    port: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogArgs {
    kind: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryArgs {
    table: String,
    #[serde(default)]
    query: String,
}

/// The most of a query's answer the model gets back.
const MAX_QUERY_ANSWER: usize = 32 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteArgs {
    dir: String,
    publish: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionArgs {
    name: String,
    dir: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadArgs {
    bucket: String,
    path: String,
    file: String,
    content_type: Option<String>,
    #[serde(default)]
    upsert: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListObjectsArgs {
    bucket: String,
    #[serde(default)]
    prefix: String,
}

/// The largest workspace file `upload_file` carries (bigger files go through the storage API from the
/// sandbox, which streams them).
const MAX_TOOL_UPLOAD: usize = 50 * 1024 * 1024;
/// The most entries `list_objects` shows.
const MAX_LISTED: usize = 500;

/// The settings of `create_bucket` / `update_bucket`: the bucket's name, and its settings as the
/// storage API reads them.
fn bucket_args(arguments: &str) -> Result<(String, storage::BucketChange), Outcome> {
    let args = if arguments.trim().is_empty() { "{}" } else { arguments };
    let v: serde_json::Value =
        serde_json::from_str(args).map_err(|e| Outcome::error(format!("invalid arguments: {e}")))?;
    let Some(fields) = v.as_object() else { return Err(Outcome::error("invalid arguments: expected an object")) };
    if let Some(k) =
        fields.keys().find(|k| !["name", "public", "file_size_limit", "allowed_mime_types"].contains(&k.as_str()))
    {
        return Err(Outcome::error(format!("invalid arguments: unknown field `{k}`")));
    }
    let Some(name) = v.get("name").and_then(serde_json::Value::as_str) else {
        return Err(Outcome::error("invalid arguments: name must be a string"));
    };
    let change = crate::storage_api::bucket_settings(&v).map_err(refused)?;
    Ok((name.to_owned(), change))
}

/// A bucket in one line.
fn describe(b: &storage::Bucket) -> String {
    let mut line = format!("{} ({}", b.id, if b.public { "public" } else { "private" });
    if let Some(l) = b.file_size_limit {
        line.push_str(&format!(", files up to {l} bytes"));
    }
    if !b.allowed_mime_types.is_empty() {
        line.push_str(&format!(", types {}", b.allowed_mime_types.join(" ")));
    }
    line.push(')');
    line
}

fn parse<T: for<'de> Deserialize<'de>>(arguments: &str) -> Result<T, Outcome> {
    let args = if arguments.trim().is_empty() { "{}" } else { arguments };
    serde_json::from_str(args).map_err(|e| Outcome::error(format!("invalid arguments: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// The loop's authority over storage: the service role, as the env's secret key has it.
fn service_role() -> storage::Access {
    storage::Access::Request(appdb::RequestAuth::service_role())
}

/// An API error as the model reads it.
fn refused(e: impl Into<ApiError>) -> Outcome {
    let e = e.into();
    Outcome::error(format!("error {}: {}", e.code, e.message))
}

impl Backend for AgentBackend {
    fn call<'a>(&'a self, call: BackendCall<'a>) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move { self.run(call).await.unwrap_or_else(|o| o) })
    }

    fn publishable_key<'a>(
        &'a self,
        env: &'a protocol::EnvId,
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>> {
        Box::pin(async move {
            let record = self.platform.get_env(env).await.map_err(|e| ApiError::from(e).message)?;
            Ok(record.keys.publishable)
        })
    }

    fn position<'a>(
        &'a self,
        env: &'a protocol::EnvId,
    ) -> Pin<Box<dyn Future<Output = Result<BackendPosition, String>> + Send + 'a>> {
        Box::pin(async move {
            let migration = self.appdb.migration_position(env).await.map_err(|e| e.to_string())?;
            let deployment = self.hosting.published(env).await.map_err(|e| e.to_string())?;
            Ok(BackendPosition { migration, deployment })
        })
    }

    fn roll_back_site<'a>(
        &'a self,
        env: &'a protocol::EnvId,
        session: &'a str,
        deployment: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let actor = Actor { name: format!("agent:{session}"), request_id: format!("agent-{session}") };
            self.hosting
                .publish(&actor, env, deployment, hosting::deploy::PublishKind::Rollback)
                .await
                .map(drop)
                .map_err(|e| {
                    let e = ApiError::from(e);
                    format!("error {}: {}", e.code, e.message)
                })
        })
    }
}

impl AgentBackend {
    async fn run(&self, call: BackendCall<'_>) -> Result<Outcome, Outcome> {
        let actor = Actor { name: format!("agent:{}", call.session), request_id: format!("agent-{}", call.session) };
        let env = call.env;
        match call.tool {
            "env_info" => {
                let record = self.platform.get_env(env).await.map_err(refused)?;
                let info = json!({
                    "api_url": record.urls.api,
                    "publishable_key": record.keys.publishable,
                    "site_url": record.urls.site,
                });
                Ok(Outcome::ok(info.to_string()))
            }
            "apply_migration" => {
                let a: MigrationArgs = parse(call.arguments)?;
                if a.sql.chars().count() > crate::data::MAX_SQL_CHARS {
                    return Err(Outcome::error(format!(
                        "the migration is longer than {} characters",
                        crate::data::MAX_SQL_CHARS
                    )));
                }
                let options = appdb::migrate::MigrateOptions { require_rls: true };
                let applied = self
                    .appdb
                    .migrate_with(env, a.sql, options)
                    .await
                    .map_err(|e| refused(crate::data::migrate_error(e)))?;
                crate::data::audit_migration(&self.platform, &actor, env, applied.version).await;
                Ok(Outcome::ok(format!("applied migration {} ({} statements)", applied.version, applied.statements)))
            }
            "query_data" => {
                let a: QueryArgs = parse(call.arguments)?;
                if a.table.is_empty() || a.table.contains('/') || a.query.contains('\0') {
                    return Err(Outcome::error("table must name one table; query is a PostgREST query string"));
                }
                let request = appdb::api::RestRequest {
                    method: appdb::api::Method::Get,
                    table: a.table,
                    query: a.query.trim_start_matches('?').to_owned(),
                    prefer: None,
                    accept: None,
                    range: None,
                    body: Vec::new(),
                };
                let r = self.appdb.rest(env, appdb::RequestAuth::service_role(), request).await;
                self.platform.meter(env, protocol::Meter::DbRowsRead, ("surface", "agent"), r.rows_read);
                let mut body = r.body;
                if body.len() > MAX_QUERY_ANSWER {
                    let cut = (0..=MAX_QUERY_ANSWER).rev().find(|i| body.is_char_boundary(*i)).unwrap_or(0);
                    body.truncate(cut);
                    body.push_str("\n[answer truncated]");
                }
                if r.status >= 400 {
                    return Err(Outcome::error(format!("HTTP {}: {body}", r.status)));
                }
                Ok(Outcome::ok(body))
            }
            "deploy_app" => {
                let a: AppArgs = parse(call.arguments)?;
                let Some(apps) = &self.apps else {
                    return Err(Outcome::error("container apps are not available on this platform instance"));
                };
                let def = protocol::apps::PutAppRequest {
                    command: a.command,
                    port: a.port,
                    env: Default::default(),
                    health_check: None,
                    idle_timeout_seconds: None,
                    memory_mb: None,
                };
                apps.put(&actor, env, &a.name, def).await.map_err(refused)?;
                let archive = self.archive(&call, &a.dir, crate::apps_api::MAX_ARCHIVE_BYTES).await?;
                let app = apps.upload(&actor, env, &a.name, archive).await.map_err(refused)?;
                Ok(Outcome::ok(format!(
                    "deployed app {}: {} (path form {}); it starts on the first request",
                    app.name, app.urls.site, app.urls.path
                )))
            }
            "read_logs" => {
                let a: LogArgs = parse(call.arguments)?;
                let text = match a.kind.as_str() {
                    "function" => {
                        let Some(functions) = &self.functions else {
                            return Err(Outcome::error("functions are not available on this platform instance"));
                        };
                        let now = self.platform.clock().now_ms();
                        let logs = functions.logs(env, &a.name, now - 3_600_000, now + 1, 20).await.map_err(refused)?;
                        serde_json::to_string_pretty(&logs).unwrap_or_default()
                    }
                    "app" => {
                        let Some(apps) = &self.apps else {
                            return Err(Outcome::error("container apps are not available on this platform instance"));
                        };
                        let logs = apps.logs(env, &a.name, 200).await.map_err(refused)?;
                        logs.items
                            .iter()
                            .map(|l| format!("{} {} {}", l.at, l.stream, l.line))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                    other => return Err(Outcome::error(format!("kind is function or app, not {other:?}"))),
                };
                // The newest lines matter most: keep the end.
                let start = text.len().saturating_sub(MAX_QUERY_ANSWER);
                let start = (start..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
                Ok(Outcome::ok(if text.is_empty() { "(no logs)".to_owned() } else { text[start..].to_owned() }))
            }
            "deploy_site" => {
                let a: SiteArgs = parse(call.arguments)?;
                let archive = self.archive(&call, &a.dir, crate::sites::MAX_ARCHIVE_BYTES).await?;
                let unpacked = tokio::task::spawn_blocking(move || {
                    hosting::archive::unpack(&archive, hosting::archive::Limits::default())
                })
                .await
                .map_err(|_| Outcome::error("the deployment could not be unpacked"))?
                .map_err(refused)?;
                if unpacked.files.is_empty() {
                    return Err(Outcome::error(format!("{} holds no deployable files", a.dir)));
                }
                let publish = a.publish.unwrap_or(true);
                let d = self.hosting.deploy_files(&actor, env, unpacked.files, publish).await.map_err(refused)?;
                let live = if d.published { format!("; live at {}", d.urls.site) } else { String::new() };
                Ok(Outcome::ok(format!(
                    "deployment {} ({} files, {:?}); preview at {}{live}",
                    d.id, d.file_count, d.status, d.urls.preview
                )))
            }
            "deploy_function" => {
                let a: FunctionArgs = parse(call.arguments)?;
                let Some(functions) = &self.functions else {
                    return Err(Outcome::error("functions are not available on this platform instance"));
                };
                let archive = self.archive(&call, &a.dir, crate::functions_api::MAX_ARCHIVE_BYTES).await?;
                let v = functions
                    .deploy(&actor, env, &a.name, archive, functions::DeployOptions::default())
                    .await
                    .map_err(refused)?;
                Ok(Outcome::ok(format!(
                    "deployed function {} version {} (invoke at /functions/v1/{})",
                    a.name, v.version, a.name
                )))
            }
            "list_buckets" => {
                parse::<Empty>(call.arguments)?;
                self.storage_op(env);
                let buckets = self.storage.list_buckets(env, &service_role()).await.map_err(refused)?;
                if buckets.is_empty() {
                    return Ok(Outcome::ok("(no buckets)"));
                }
                Ok(Outcome::ok(buckets.iter().map(describe).collect::<Vec<_>>().join("\n")))
            }
            "create_bucket" => {
                let (name, c) = bucket_args(call.arguments)?;
                self.storage_op(env);
                let bucket = storage::NewBucket {
                    id: name.clone(),
                    public: c.public.unwrap_or(false),
                    file_size_limit: c.file_size_limit.flatten(),
                    allowed_mime_types: c.allowed_mime_types.flatten(),
                };
                self.storage.create_bucket(env, &service_role(), bucket).await.map_err(refused)?;
                let b = self.storage.get_bucket(env, &service_role(), &name).await.map_err(refused)?;
                let access = if b.public {
                    "anyone may read its files at their public URL (/storage/v1/object/public/<bucket>/<path>)"
                } else {
                    "reads need a key or a signed URL"
                };
                Ok(Outcome::ok(format!(
                    "created bucket {}; {access}; row-level security policies on storage.objects decide who may \
                     upload (apply_migration)",
                    describe(&b)
                )))
            }
            "update_bucket" => {
                let (name, change) = bucket_args(call.arguments)?;
                self.storage_op(env);
                self.storage.update_bucket(env, &service_role(), &name, change).await.map_err(refused)?;
                let b = self.storage.get_bucket(env, &service_role(), &name).await.map_err(refused)?;
                Ok(Outcome::ok(format!("updated bucket {}", describe(&b))))
            }
            "upload_file" => {
                let a: UploadArgs = parse(call.arguments)?;
                // Checked before anything is read from the sandbox.
                storage::names::bucket_id(&a.bucket).map_err(refused)?;
                storage::names::object_name(&a.path).map_err(refused)?;
                let bucket = self.storage.get_bucket(env, &service_role(), &a.bucket).await.map_err(refused)?;
                let (Some(sandboxes), Some(sandbox)) = (&self.sandboxes, call.sandbox) else {
                    return Err(Outcome::error("this platform instance cannot run sandboxes"));
                };
                let client = sandboxes.agent(env, sandbox).map_err(refused)?;
                let bytes = client
                    .read_file(&a.file, MAX_TOOL_UPLOAD)
                    .await
                    .map_err(|e| Outcome::error(format!("could not read {} from the workspace: {e}", a.file)))?;
                self.storage_op(env);
                let content_type =
                    a.content_type.unwrap_or_else(|| hosting::compress::content_type(&a.path).to_owned());
                let options = storage::UploadOptions {
                    content_type: content_type.clone(),
                    cache_control: "max-age=3600".to_owned(),
                    upsert: a.upsert,
                    user_metadata: None,
                    content_length: Some(bytes.len() as u64),
                    owner: None,
                };
                let size = bytes.len();
                let mut body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(bytes))]);
                self.storage
                    .upload(env, &service_role(), &a.bucket, &a.path, options, &mut body)
                    .await
                    .map_err(refused)?;
                let mut text = format!("uploaded {}/{} ({size} bytes, {content_type})", a.bucket, a.path);
                if bucket.public {
                    let record = self.platform.get_env(env).await.map_err(refused)?;
                    let api = record.urls.api.trim_end_matches('/');
                    text.push_str(&format!("; public URL {api}/storage/v1/object/public/{}/{}", a.bucket, a.path));
                }
                Ok(Outcome::ok(text))
            }
            "list_objects" => {
                let a: ListObjectsArgs = parse(call.arguments)?;
                self.storage_op(env);
                let options = storage::ListOptions {
                    prefix: a.prefix,
                    limit: MAX_LISTED + 1,
                    offset: 0,
                    search: String::new(),
                    sort_column: "name".to_owned(),
                    sort_desc: false,
                };
                let items = self.storage.list(env, &service_role(), &a.bucket, options).await.map_err(refused)?;
                if items.is_empty() {
                    return Ok(Outcome::ok("(nothing under this prefix)"));
                }
                let mut lines: Vec<String> = items
                    .iter()
                    .take(MAX_LISTED)
                    .map(|item| {
                        let name = item["name"].as_str().unwrap_or_default();
                        if item["id"].is_null() {
                            return format!("{name}/");
                        }
                        let meta = &item["metadata"];
                        let size = meta["size"].as_i64().unwrap_or(0);
                        format!("{name} ({size} bytes, {})", meta["mimetype"].as_str().unwrap_or("?"))
                    })
                    .collect();
                if items.len() > MAX_LISTED {
                    lines.push(format!("[more than {MAX_LISTED} entries; list a narrower prefix]"));
                }
                Ok(Outcome::ok(lines.join("\n")))
            }
            other => Err(Outcome::error(format!("there is no backend tool named {other:?}"))),
        }
    }

    /// One storage operation of the env, done by the loop.
    fn storage_op(&self, env: &protocol::EnvId) {
        self.platform.meter(env, protocol::Meter::StorageOps, ("surface", "agent"), 1);
    }

    /// A tar.gz of a directory of the session's sandbox, made inside the sandbox.
    async fn archive(&self, call: &BackendCall<'_>, dir: &str, limit: usize) -> Result<Bytes, Outcome> {
        if dir.is_empty() || dir.len() > 1024 || dir.starts_with('-') {
            return Err(Outcome::error("dir must be a directory of the workspace"));
        }
        let (Some(sandboxes), Some(sandbox)) = (&self.sandboxes, call.sandbox) else {
            return Err(Outcome::error("this platform instance cannot run sandboxes"));
        };
        let bytes = sandboxes.archive_dir(call.env, sandbox, dir, limit).await.map_err(refused)?;
        Ok(Bytes::from(bytes))
    }
}
