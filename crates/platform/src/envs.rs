//! Environments: the N of "N+1". Create, list, get, suspend, resume, delete.

use protocol::EnvId;
use protocol::api::{CreateEnvRequest, EnvKeys, EnvRecord, EnvStatus, EnvUrls, KeyKind, Page};
use store::{Conn, StoreError, Value};

use crate::audit::{self, Record};
use crate::webhooks;
use crate::{Actor, Platform, PlatformError, Result, runtime::rfc3339};

/// An env row as stored.
#[derive(Debug, Clone)]
pub struct EnvRow {
    pub id: EnvId,
    pub name: Option<String>,
    pub status: EnvStatus,
    pub created_at: i64,
}

const MAX_NAME_LEN: usize = 200;

fn row_to_env(r: &store::Row) -> Result<EnvRow> {
    let id = EnvId::parse(&r.text(0)?).map_err(|_| StoreError::Type(0))?;
    let status = EnvStatus::parse(&r.text(2)?).ok_or(StoreError::Type(2))?;
    Ok(EnvRow { id, name: r.opt_text(1)?, status, created_at: r.int(3)? })
}

/// Reads an env row inside a transaction.
pub fn load(conn: &mut dyn Conn, env: &str) -> Result<Option<EnvRow>> {
    conn.query_opt("SELECT id, name, status, created_at FROM envs WHERE id = $1", &[env.into()])?
        .map(|r| row_to_env(&r))
        .transpose()
}

impl Platform {
    /// The addresses of `env` (design.md's table): the site in host form, everything else in path form.
    pub fn env_urls(&self, env: &EnvId) -> EnvUrls {
        let c = self.config();
        let base = format!("{}/env/{env}", c.public_url.trim_end_matches('/'));
        EnvUrls {
            site: format!("{}://{env}.{}{}/", c.site_scheme, c.apps_domain, c.site_port_suffix),
            llm: format!("{base}/llm/v1"),
            e2b_api: format!("{base}/e2b"),
            e2b_sandbox: format!("{base}/e2b/envd"),
            mcp: format!("{base}/mcp"),
            api: base,
        }
    }

    fn env_record(&self, row: &EnvRow, publishable: String, secret: Option<String>) -> EnvRecord {
        EnvRecord {
            id: row.id.clone(),
            name: row.name.clone(),
            status: row.status,
            created_at: rfc3339(row.created_at),
            urls: self.env_urls(&row.id),
            keys: EnvKeys { publishable, secret },
        }
    }

    /// Picks an id for an env created without one.
    pub fn generate_env_id(&self) -> EnvId {
        loop {
            if let Ok(id) = EnvId::parse(&format!("e{}", self.random_id(11))) {
                return id;
            }
        }
    }

    /// Creates an env with its secret and publishable keys. The secret is in the answer and nowhere else.
    pub async fn create_env(&self, actor: &Actor, req: CreateEnvRequest, id: EnvId) -> Result<EnvRecord> {
        if req.name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_LEN) {
            return Err(PlatformError::invalid(
                "invalid_name",
                format!("name is longer than {MAX_NAME_LEN} characters"),
            ));
        }
        let now = self.clock().now_ms();
        let secret = self.new_key(KeyKind::Secret);
        let publishable = self.new_key(KeyKind::Publishable);
        let (secret_id, publishable_id) = (self.random_id(16), self.random_id(16));
        let row = EnvRow { id: id.clone(), name: req.name.clone(), status: EnvStatus::Active, created_at: now };
        let actor = actor.clone();
        let record = self.env_record(&row, publishable.key.clone(), Some(secret.key.clone()));
        let event = self.event("env.created", Some(&id), serde_json::json!({"env": id, "name": req.name}));
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                // Audit rows outlive their env, so they tell whether an id was ever used. Reusing one
                // would merge a new tenant's bill with a deleted one's.
                if conn
                    .query_opt(
                        "SELECT 1 FROM audit WHERE env_id = $1 AND action = 'env:Create' AND result = 'ok' LIMIT 1",
                        &[id.as_str().into()],
                    )?
                    .is_some()
                    && load(conn, id.as_str())?.is_none()
                {
                    return Err(PlatformError::Conflict {
                        code: "env_id_retired",
                        message: format!("environment id {id} belonged to a deleted environment"),
                    });
                }
                let inserted = conn.execute(
                    "INSERT INTO envs (id, name, status, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[id.as_str().into(), row.name.clone().into(), EnvStatus::Active.as_str().into(), now.into()],
                )?;
                if inserted == 0 {
                    return Err(PlatformError::Conflict {
                        code: "env_exists",
                        message: format!("environment {id} already exists"),
                    });
                }
                crate::keys::insert_env_key(conn, &secret_id, &id, KeyKind::Secret, &secret, None, now)?;
                crate::keys::insert_env_key(
                    conn,
                    &publishable_id,
                    &id,
                    KeyKind::Publishable,
                    &publishable,
                    Some(&publishable.key),
                    now,
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "env:Create", env: Some(id.as_str()), target: None, result: "ok" },
                )?;
                webhooks::enqueue(conn, now, &event)?;
                Ok(())
            })
            .await?;
        Ok(record)
    }

    /// One env, with its publishable key (never its secret).
    pub async fn get_env(&self, env: &EnvId) -> Result<EnvRecord> {
        let id = env.clone();
        let (row, publishable) = self
            .db()
            .tx(move |conn| {
                let row = load(conn, id.as_str())?.ok_or(PlatformError::NotFound { what: "env" })?;
                let publishable = crate::keys::current_publishable(conn, id.as_str())?;
                Ok::<_, PlatformError>((row, publishable))
            })
            .await?;
        Ok(self.env_record(&row, publishable, None))
    }

    /// Envs in id order after `cursor`; `filter` drops those the caller may not see.
    pub async fn list_envs(
        &self,
        cursor: Option<String>,
        limit: u32,
        filter: &(dyn Fn(&EnvId) -> bool + Sync),
    ) -> Result<Page<EnvRecord>> {
        let limit = i64::from(limit.clamp(1, 1000));
        let rows = self
            .db()
            .tx(move |conn| {
                let rows = conn.query(
                    "SELECT e.id, e.name, e.status, e.created_at, k.value FROM envs e \
                     LEFT JOIN keys k ON k.env_id = e.id AND k.kind = 'publishable' AND k.revoked_at IS NULL AND k.expires_at IS NULL \
                     WHERE e.id > $1 ORDER BY e.id LIMIT $2",
                    &[cursor.unwrap_or_default().into(), Value::Int(limit + 1)],
                )?;
                rows.iter().map(|r| Ok((row_to_env(r)?, r.opt_text(4)?.unwrap_or_default()))).collect::<Result<Vec<_>>>()
            })
            .await?;
        let has_more = rows.len() as i64 > limit;
        let rows = &rows[..rows.len().min(limit as usize)];
        let next_cursor = if has_more { rows.last().map(|(r, _)| r.id.to_string()) } else { None };
        let items =
            rows.iter().filter(|(r, _)| filter(&r.id)).map(|(r, pk)| self.env_record(r, pk.clone(), None)).collect();
        Ok(Page { items, next_cursor })
    }

    /// Suspends or resumes an env.
    pub async fn set_env_status(&self, actor: &Actor, env: &EnvId, status: EnvStatus) -> Result<EnvRecord> {
        let (id, actor) = (env.clone(), actor.clone());
        let (action, event_type) = match status {
            EnvStatus::Active => ("env:Resume", "env.resumed"),
            EnvStatus::Suspended => ("env:Suspend", "env.suspended"),
            EnvStatus::Deleting => {
                return Err(PlatformError::invalid("invalid_status", "use delete to delete an environment"));
            }
        };
        let now = self.clock().now_ms();
        let event = self.event(event_type, Some(env), serde_json::json!({"env": env}));
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                let row = load(conn, id.as_str())?.ok_or(PlatformError::NotFound { what: "env" })?;
                if row.status == EnvStatus::Deleting {
                    return Err(PlatformError::NotFound { what: "env" });
                }
                conn.execute(
                    "UPDATE envs SET status = $1 WHERE id = $2",
                    &[status.as_str().into(), id.as_str().into()],
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action, env: Some(id.as_str()), target: None, result: "ok" },
                )?;
                if row.status != status {
                    webhooks::enqueue(conn, now, &event)?;
                }
                Ok(())
            })
            .await?;
        self.get_env(env).await
    }

    /// Deletes an env and everything it owns: keys and tokens (so its credentials die at once), limits,
    /// env-scoped webhooks, its objects and its data directory. Its usage-ledger and audit rows stay,
    /// under the deleted id, for billing. The env is marked `deleting` first, so a crash half-way leaves
    /// an env that refuses traffic and that a repeated delete finishes.
    pub async fn delete_env(&self, actor: &Actor, env: &EnvId) -> Result<()> {
        let id = env.clone();
        self.db()
            .tx(move |conn| {
                load(conn, id.as_str())?.ok_or(PlatformError::NotFound { what: "env" })?;
                conn.execute("UPDATE envs SET status = 'deleting' WHERE id = $1", &[id.as_str().into()])?;
                // Credentials die first and at once.
                conn.execute("DELETE FROM keys WHERE env_id = $1", &[id.as_str().into()])?;
                Ok::<_, PlatformError>(())
            })
            .await?;
        let layout = self.layout(env);
        for hook in self.env_delete_hooks() {
            hook(env.clone()).await.map_err(|e| PlatformError::Io {
                context: format!("remove what env {env} owns"),
                source: std::io::Error::other(e),
            })?;
        }
        self.blobs().delete_prefix(&layout.object_prefix).await?;
        match tokio::fs::remove_dir_all(&layout.data_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(PlatformError::Io { context: format!("remove {}", layout.data_dir.display()), source: e });
            }
        }
        self.forget_env_limits(env);
        let (id, actor) = (env.clone(), actor.clone());
        let now = self.clock().now_ms();
        let event = self.event("env.deleted", Some(env), serde_json::json!({"env": env}));
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                let e = id.as_str();
                conn.execute("DELETE FROM env_limits WHERE env_id = $1", &[e.into()])?;
                conn.execute("DELETE FROM quota_alerts WHERE env_id = $1", &[e.into()])?;
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE webhook_id IN (SELECT id FROM webhooks WHERE env_id = $1)",
                    &[e.into()],
                )?;
                conn.execute("DELETE FROM webhooks WHERE env_id = $1", &[e.into()])?;
                conn.execute("DELETE FROM envs WHERE id = $1", &[e.into()])?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "env:Delete", env: Some(e), target: None, result: "ok" },
                )?;
                webhooks::enqueue(conn, now, &event)?;
                Ok(())
            })
            .await
    }

    /// Counts envs (for metrics).
    pub async fn count_envs(&self) -> Result<i64> {
        self.db()
            .tx(|conn| {
                Ok(conn
                    .query_opt("SELECT CAST(COUNT(*) AS BIGINT) FROM envs", &[])?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(0))
            })
            .await
    }
}
