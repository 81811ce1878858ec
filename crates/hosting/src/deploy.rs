//! Deployments: create (a manifest of path → SHA-256; the answer lists what the env lacks), upload the
//! missing files, finalize (immutable from then on), publish and roll back by moving the env's alias.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use platform::audit::{self, Record};
use platform::runtime::rfc3339;
use platform::{Actor, webhooks};
use protocol::EnvId;
use protocol::hosting::{
    CONFIG_FILE, CreateDeploymentRequest, CreatedDeployment, DeploymentList, DeploymentRecord, DeploymentStatus,
    DeploymentUrls, MAX_DEPLOYMENT_FILES, MAX_SITE_FILE_BYTES,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use store::{Conn, Row};

use crate::compress::{self, Encoding};
use crate::config::SiteConfig;
use crate::path::{self, PathProblem};
use crate::{Hosting, HostingError, Result};

/// Which deployment a request is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The env's published site.
    Published,
    /// A deployment's own preview.
    Deployment(String),
}

/// How a publish is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// Moving the alias to a new deployment (`deployment.published`).
    Publish,
    /// Moving it back to an earlier one (`deployment.rolled_back`).
    Rollback,
}

/// One file of a ready deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredFile {
    pub sha: String,
    pub size: u64,
    /// Variants made at upload.
    #[serde(default)]
    pub br: bool,
    #[serde(default)]
    pub gz: bool,
}

impl StoredFile {
    pub fn has(&self, enc: Encoding) -> bool {
        match enc {
            Encoding::Identity => true,
            Encoding::Brotli => self.br,
            Encoding::Gzip => self.gz,
        }
    }
}

/// A ready deployment as the serving path needs it.
#[derive(Debug)]
pub struct Deployment {
    pub id: String,
    pub files: HashMap<String, StoredFile>,
    pub config: SiteConfig,
}

fn not_found() -> HostingError {
    HostingError::NotFound { what: "deployment" }
}

/// The checked manifest of a create request.
fn check_manifest(files: &BTreeMap<String, String>) -> Result<()> {
    if files.is_empty() {
        return Err(HostingError::invalid("empty_deployment", "a deployment needs at least one file"));
    }
    if files.len() > MAX_DEPLOYMENT_FILES {
        return Err(HostingError::too_large(
            "too_many_files",
            format!("a deployment holds at most {MAX_DEPLOYMENT_FILES} files"),
        ));
    }
    for (p, sha) in files {
        match path::check(p) {
            Ok(()) => {}
            Err(PathProblem::Unsafe) => {
                return Err(HostingError::invalid("invalid_path", format!("{p:?} is not a safe relative path")));
            }
            Err(PathProblem::Dotfile) => {
                return Err(HostingError::invalid("dotfile_refused", format!("{p:?}: dotfiles are never deployed")));
            }
        }
        if !path::is_sha256(sha) {
            return Err(HostingError::invalid("invalid_hash", format!("{p:?}: expected a lowercase hex SHA-256")));
        }
    }
    Ok(())
}

/// A deployment row: (status, manifest, config, file_count, total_bytes, created_at).
struct DeploymentRow {
    id: String,
    status: DeploymentStatus,
    manifest: String,
    config: Option<String>,
    file_count: i64,
    total_bytes: i64,
    created_at: i64,
}

const ROW_COLUMNS: &str = "id, status, manifest, config, file_count, total_bytes, created_at";
/// [`ROW_COLUMNS`] of `site_deployments d` in a join.
const D_ROW_COLUMNS: &str = "d.id, d.status, d.manifest, d.config, d.file_count, d.total_bytes, d.created_at";

fn parse_row(r: &Row) -> Result<DeploymentRow> {
    let status = match r.text(1)?.as_str() {
        "ready" => DeploymentStatus::Ready,
        _ => DeploymentStatus::Pending,
    };
    Ok(DeploymentRow {
        id: r.text(0)?,
        status,
        manifest: r.text(2)?,
        config: r.opt_text(3)?,
        file_count: r.int(4)?,
        total_bytes: r.int(5)?,
        created_at: r.int(6)?,
    })
}

fn load_row(conn: &mut dyn Conn, env: &str, id: &str) -> Result<Option<DeploymentRow>> {
    conn.query_opt(
        &format!("SELECT {ROW_COLUMNS} FROM site_deployments WHERE env_id = $1 AND id = $2"),
        &[env.into(), id.into()],
    )?
    .map(|r| parse_row(&r))
    .transpose()
}

fn published_id(conn: &mut dyn Conn, env: &str) -> Result<Option<String>> {
    Ok(conn
        .query_opt("SELECT deployment_id FROM site_aliases WHERE env_id = $1", &[env.into()])?
        .map(|r| r.text(0))
        .transpose()?)
}

fn pending_manifest(row: &DeploymentRow) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(&row.manifest).map_err(|_| HostingError::conflict("deployment_corrupt", "unreadable manifest"))
}

fn internal(e: impl std::fmt::Display) -> HostingError {
    HostingError::Platform(platform::PlatformError::Io {
        context: "hosting".to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}

impl Hosting {
    /// The object key of a file variant of `env` (under the env's own prefix).
    pub fn file_key(&self, env: &EnvId, sha: &str, enc: Encoding) -> String {
        format!("{}site/files/{sha}{}", self.platform.layout(env).object_prefix, enc.suffix())
    }

    fn record(&self, env: &EnvId, row: &DeploymentRow, published: Option<&str>) -> DeploymentRecord {
        let c = self.platform.config();
        let id = &row.id;
        DeploymentRecord {
            id: id.clone(),
            env: env.to_string(),
            status: row.status,
            published: published == Some(id.as_str()),
            file_count: u64::try_from(row.file_count).unwrap_or(0),
            total_bytes: u64::try_from(row.total_bytes).unwrap_or(0),
            created_at: rfc3339(row.created_at),
            urls: DeploymentUrls {
                preview: format!("{}://{id}--{env}.{}{}/", c.site_scheme, c.apps_domain, c.site_port_suffix),
                preview_path: format!("{}/env/{env}/deployments/{id}/", c.public_url.trim_end_matches('/')),
                site: self.platform.env_urls(env).site,
            },
        }
    }

    /// Starts a deployment from a manifest; answers which hashes the env does not hold yet.
    pub async fn create(&self, actor: &Actor, env: &EnvId, req: CreateDeploymentRequest) -> Result<CreatedDeployment> {
        check_manifest(&req.files)?;
        let id = format!("dpl{}", self.platform.random_id(10));
        let now = self.platform.clock().now_ms();
        let manifest = serde_json::to_string(&req.files).map_err(internal)?;
        let (e, dpl, actor) = (env.to_string(), id.clone(), actor.clone());
        let wanted: HashSet<String> = req.files.values().cloned().collect();
        let count = i64::try_from(req.files.len()).unwrap_or(i64::MAX);
        let (row, missing) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let held: HashSet<String> = conn
                    .query("SELECT sha256 FROM site_files WHERE env_id = $1", &[e.as_str().into()])?
                    .iter()
                    .map(|r| r.text(0))
                    .collect::<Result<_, _>>()?;
                let mut missing: Vec<String> = wanted.difference(&held).cloned().collect();
                missing.sort();
                // Strictly increasing per env, so "newest first" is exact even within a millisecond.
                let last = conn
                    .query_opt(
                        "SELECT CAST(COALESCE(MAX(created_at), 0) AS BIGINT) FROM site_deployments WHERE env_id = $1",
                        &[e.as_str().into()],
                    )?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(0);
                let now = now.max(last + 1);
                conn.execute(
                    "INSERT INTO site_deployments (env_id, id, status, manifest, config, file_count, total_bytes, created_at) \
                     VALUES ($1, $2, 'pending', $3, NULL, $4, 0, $5)",
                    &[e.as_str().into(), dpl.as_str().into(), manifest.into(), count.into(), now.into()],
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "site:Deploy", env: Some(&e), target: Some(&dpl), result: "ok" },
                )?;
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                Ok::<_, HostingError>((row, missing))
            })
            .await?;
        Ok(CreatedDeployment { deployment: self.record(env, &row, None), missing })
    }

    /// Stores one file of a pending deployment after checking its hash; a file the env already holds
    /// is accepted without being stored again.
    pub async fn upload(&self, env: &EnvId, deployment: &str, sha: &str, data: Bytes) -> Result<()> {
        if !path::is_sha256(sha) {
            return Err(HostingError::invalid("invalid_hash", "expected a lowercase hex SHA-256"));
        }
        if data.len() > MAX_SITE_FILE_BYTES {
            return Err(HostingError::too_large(
                "file_too_large",
                format!("files are at most {MAX_SITE_FILE_BYTES} bytes"),
            ));
        }
        let (e, dpl, s) = (env.to_string(), deployment.to_owned(), sha.to_owned());
        let (row, held) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                let held = conn
                    .query_opt("SELECT 1 FROM site_files WHERE env_id = $1 AND sha256 = $2", &[e.into(), s.into()])?
                    .is_some();
                Ok::<_, HostingError>((row, held))
            })
            .await?;
        if row.status != DeploymentStatus::Pending {
            return Err(HostingError::conflict("deployment_finalized", "the deployment is already finalized"));
        }
        let manifest = pending_manifest(&row)?;
        let paths: Vec<&String> = manifest.iter().filter(|(_, h)| *h == sha).map(|(p, _)| p).collect();
        if paths.is_empty() {
            return Err(HostingError::invalid("file_not_in_manifest", "this hash is not part of the deployment"));
        }
        let compressible = paths.iter().any(|p| compress::compressible(compress::content_type(p)));
        let got = hex::encode(Sha256::digest(&data));
        if got != sha {
            return Err(HostingError::invalid("hash_mismatch", format!("the body's SHA-256 is {got}")));
        }
        if held {
            return Ok(());
        }
        self.store_file(env, sha, data, compressible).await
    }

    /// Writes a file's variants, then its row: a row always means every listed variant exists.
    async fn store_file(&self, env: &EnvId, sha: &str, data: Bytes, compressible: bool) -> Result<()> {
        let variants = if compressible {
            let d = data.clone();
            tokio::task::spawn_blocking(move || compress::variants(&d)).await.map_err(internal)?
        } else {
            Vec::new()
        };
        let blobs = self.platform.blobs();
        let encodings: Vec<&str> = variants.iter().map(|(e, _)| e.token()).collect();
        let encodings = encodings.join(",");
        for (enc, bytes) in variants {
            blobs.put(&self.file_key(env, sha, enc), Bytes::from(bytes)).await?;
        }
        let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
        blobs.put(&self.file_key(env, sha, Encoding::Identity), data).await?;
        let (e, s, now) = (env.to_string(), sha.to_owned(), self.platform.clock().now_ms());
        self.platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                conn.execute(
                    "INSERT INTO site_files (env_id, sha256, size, encodings, created_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (env_id, sha256) DO NOTHING",
                    &[e.into(), s.into(), size.into(), encodings.into(), now.into()],
                )?;
                Ok::<_, HostingError>(())
            })
            .await
    }

    /// Completes a deployment: every file must be held by the env; `vibebase.json` is checked and kept.
    /// From here on the deployment never changes. Fires `deployment.created` (and `deployment.published`).
    pub async fn finalize(
        &self,
        actor: &Actor,
        env: &EnvId,
        deployment: &str,
        publish: bool,
    ) -> Result<DeploymentRecord> {
        let (e, dpl) = (env.to_string(), deployment.to_owned());
        let (row, held) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                let held: HashMap<String, (i64, String)> = conn
                    .query("SELECT sha256, size, encodings FROM site_files WHERE env_id = $1", &[e.into()])?
                    .iter()
                    .map(|r| Ok((r.text(0)?, (r.int(1)?, r.text(2)?))))
                    .collect::<Result<_, store::StoreError>>()?;
                Ok::<_, HostingError>((row, held))
            })
            .await?;
        if row.status != DeploymentStatus::Pending {
            return Err(HostingError::conflict("deployment_finalized", "the deployment is already finalized"));
        }
        let manifest = pending_manifest(&row)?;
        let mut files = BTreeMap::new();
        let mut missing = 0usize;
        let mut total: i64 = 0;
        for (p, sha) in &manifest {
            let Some((size, enc)) = held.get(sha) else {
                missing += 1;
                continue;
            };
            total = total.saturating_add(*size);
            let stored = StoredFile {
                sha: sha.clone(),
                size: u64::try_from(*size).unwrap_or(0),
                br: enc.split(',').any(|t| t == "br"),
                gz: enc.split(',').any(|t| t == "gzip"),
            };
            files.insert(p.clone(), stored);
        }
        if missing > 0 {
            return Err(HostingError::conflict("files_missing", format!("{missing} files were not uploaded")));
        }
        let config =
            match files.remove(CONFIG_FILE) {
                Some(f) => {
                    let bytes =
                        self.platform.blobs().get(&self.file_key(env, &f.sha, Encoding::Identity)).await?.ok_or_else(
                            || HostingError::conflict("files_missing", "the config file was not uploaded"),
                        )?;
                    Some(serde_json::to_string(&SiteConfig::parse(&bytes)?).map_err(internal)?)
                }
                None => None,
            };
        let manifest = serde_json::to_string(&files).map_err(internal)?;
        let now = self.platform.clock().now_ms();
        let (e, dpl, actor) = (env.to_string(), deployment.to_owned(), actor.clone());
        let created = self.platform.event(
            "deployment.created",
            Some(env),
            serde_json::json!({"deployment": deployment, "files": files.len()}),
        );
        let published_event = publish.then(|| {
            self.platform.event("deployment.published", Some(env), serde_json::json!({"deployment": deployment}))
        });
        let (row, published) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let changed = conn.execute(
                    "UPDATE site_deployments SET status = 'ready', manifest = $3, config = $4, total_bytes = $5 \
                     WHERE env_id = $1 AND id = $2 AND status = 'pending'",
                    &[e.as_str().into(), dpl.as_str().into(), manifest.into(), config.into(), total.into()],
                )?;
                if changed == 0 {
                    return Err(HostingError::conflict("deployment_finalized", "the deployment is already finalized"));
                }
                webhooks::enqueue(conn, now, &created)?;
                if let Some(ev) = &published_event {
                    set_alias(conn, &e, &dpl, now)?;
                    audit::write(
                        conn,
                        now,
                        &Record {
                            actor: &actor,
                            action: "site:Publish",
                            env: Some(&e),
                            target: Some(&dpl),
                            result: "ok",
                        },
                    )?;
                    webhooks::enqueue(conn, now, ev)?;
                }
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                Ok::<_, HostingError>((row, published_id(conn, &e)?))
            })
            .await?;
        if publish {
            self.caches.set_alias(env, Some(deployment.to_owned()));
        }
        Ok(self.record(env, &row, published.as_deref()))
    }

    /// Points the env's site at a ready deployment, atomically; nothing is copied or uploaded.
    pub async fn publish(
        &self,
        actor: &Actor,
        env: &EnvId,
        deployment: &str,
        kind: PublishKind,
    ) -> Result<DeploymentRecord> {
        let (action, event_type) = match kind {
            PublishKind::Publish => ("site:Publish", "deployment.published"),
            PublishKind::Rollback => ("site:Rollback", "deployment.rolled_back"),
        };
        let now = self.platform.clock().now_ms();
        let (e, dpl, actor) = (env.to_string(), deployment.to_owned(), actor.clone());
        let event = self.platform.event(event_type, Some(env), serde_json::json!({"deployment": deployment}));
        let row = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                if row.status != DeploymentStatus::Ready {
                    return Err(HostingError::conflict("deployment_not_ready", "finalize the deployment first"));
                }
                let previous = published_id(conn, &e)?;
                set_alias(conn, &e, &dpl, now)?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action, env: Some(&e), target: Some(&dpl), result: "ok" },
                )?;
                let mut event = event;
                event.data["previous"] = serde_json::json!(previous);
                webhooks::enqueue(conn, now, &event)?;
                Ok::<_, HostingError>(row)
            })
            .await?;
        self.caches.set_alias(env, Some(deployment.to_owned()));
        Ok(self.record(env, &row, Some(deployment)))
    }

    /// The env's published deployment, if any.
    pub async fn published(&self, env: &EnvId) -> Result<Option<String>> {
        let e = env.to_string();
        self.platform.db().tx(move |conn: &mut dyn Conn| published_id(conn, &e)).await
    }

    /// The env's deployments, newest first.
    pub async fn list(&self, env: &EnvId, limit: u32) -> Result<DeploymentList> {
        let e = env.to_string();
        let (rows, published) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let rows = conn
                    .query(
                        &format!(
                            "SELECT {ROW_COLUMNS} FROM site_deployments WHERE env_id = $1 \
                             ORDER BY created_at DESC, id DESC LIMIT $2"
                        ),
                        &[e.as_str().into(), i64::from(limit).into()],
                    )?
                    .iter()
                    .map(parse_row)
                    .collect::<Result<Vec<_>>>()?;
                Ok::<_, HostingError>((rows, published_id(conn, &e)?))
            })
            .await?;
        Ok(DeploymentList { items: rows.iter().map(|r| self.record(env, r, published.as_deref())).collect() })
    }

    pub async fn get(&self, env: &EnvId, deployment: &str) -> Result<DeploymentRecord> {
        let (e, dpl) = (env.to_string(), deployment.to_owned());
        let (row, published) = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let row = load_row(conn, &e, &dpl)?.ok_or_else(not_found)?;
                Ok::<_, HostingError>((row, published_id(conn, &e)?))
            })
            .await?;
        Ok(self.record(env, &row, published.as_deref()))
    }

    /// Deploys a set of files in one call (archives, sandbox workspaces): create, store what the env
    /// lacks, finalize.
    pub async fn deploy_files(
        &self,
        actor: &Actor,
        env: &EnvId,
        files: Vec<(String, Bytes)>,
        publish: bool,
    ) -> Result<DeploymentRecord> {
        let mut manifest = BTreeMap::new();
        let mut by_sha: HashMap<String, (Bytes, bool)> = HashMap::new();
        for (p, data) in files {
            let sha = hex::encode(Sha256::digest(&data));
            let compressible = compress::compressible(compress::content_type(&p));
            let entry = by_sha.entry(sha.clone()).or_insert((data, false));
            entry.1 |= compressible;
            manifest.insert(p, sha);
        }
        let created = self.create(actor, env, CreateDeploymentRequest { files: manifest }).await?;
        for sha in &created.missing {
            if let Some((data, compressible)) = by_sha.remove(sha) {
                self.store_file(env, sha, data, compressible).await?;
            }
        }
        self.finalize(actor, env, &created.deployment.id, publish).await
    }

    /// The deployment a request is served from, if any: the env's published one (its alias cached for
    /// at most [`crate::cache::ALIAS_TTL`]) or a named ready one. Suspended envs serve nothing.
    pub async fn resolve(&self, env: &EnvId, target: &Target) -> Result<Option<Arc<Deployment>>> {
        let id = match target {
            Target::Deployment(id) => {
                if !path::is_deployment_id(id) {
                    return Ok(None);
                }
                id.clone()
            }
            Target::Published => match self.caches.alias(env) {
                Some(Some(id)) => id,
                Some(None) => return Ok(None),
                None => {
                    let e = env.to_string();
                    let id = self
                        .platform
                        .db()
                        .tx(move |conn: &mut dyn Conn| {
                            Ok::<_, HostingError>(
                                conn.query_opt(
                                    "SELECT a.deployment_id FROM site_aliases a JOIN envs e ON e.id = a.env_id \
                                     WHERE a.env_id = $1 AND e.status = 'active'",
                                    &[e.into()],
                                )?
                                .map(|r| r.text(0))
                                .transpose()?,
                            )
                        })
                        .await?;
                    self.caches.set_alias(env, id.clone());
                    match id {
                        Some(id) => id,
                        None => return Ok(None),
                    }
                }
            },
        };
        if let Some(d) = self.caches.deployment(env, &id) {
            return Ok(Some(d));
        }
        let (e, dpl) = (env.to_string(), id.clone());
        let row = self
            .platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let row = conn.query_opt(
                    &format!(
                        "SELECT {D_ROW_COLUMNS} FROM site_deployments d JOIN envs e ON e.id = d.env_id \
                         WHERE d.env_id = $1 AND d.id = $2 AND d.status = 'ready' AND e.status = 'active'"
                    ),
                    &[e.into(), dpl.into()],
                )?;
                row.map(|r| parse_row(&r)).transpose()
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let files: HashMap<String, StoredFile> = serde_json::from_str(&row.manifest).map_err(internal)?;
        let config = match &row.config {
            Some(c) => serde_json::from_str(c).map_err(internal)?,
            None => SiteConfig::default(),
        };
        let d = Arc::new(Deployment { id, files, config });
        self.caches.put_deployment(env, d.clone());
        Ok(Some(d))
    }

    /// The bytes of one variant of a file (from memory when hot).
    pub async fn file_bytes(&self, env: &EnvId, sha: &str, enc: Encoding) -> Result<Option<Bytes>> {
        if let Some(b) = self.caches.file(env, sha, enc) {
            return Ok(Some(b));
        }
        let Some(b) = self.platform.blobs().get(&self.file_key(env, sha, enc)).await? else { return Ok(None) };
        self.caches.put_file(env, sha, enc, b.clone());
        Ok(Some(b))
    }
}

fn set_alias(conn: &mut dyn Conn, env: &str, deployment: &str, now: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO site_aliases (env_id, deployment_id, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (env_id) DO UPDATE SET deployment_id = excluded.deployment_id, updated_at = excluded.updated_at",
        &[env.into(), deployment.into(), now.into()],
    )?;
    Ok(())
}
