//! Env keys and minted tokens: issue, list, rotate with an overlap window, revoke.

use protocol::EnvId;
use protocol::api::{KeyKind, KeyRecord, MintTokenRequest, MintedToken, RotateKeyRequest, RotatedKey};
use store::{Conn, Value};
use tenancy::credential::NewKey;

use crate::audit::{self, Record};
use crate::{Actor, Platform, PlatformError, Result, runtime::rfc3339};

use protocol::api::{MAX_OVERLAP_SECONDS, MAX_TOKEN_TTL_SECONDS};

/// Stores an env key. `value` is kept only for publishable keys, which are not secret.
pub fn insert_env_key(
    conn: &mut dyn Conn,
    id: &str,
    env: &EnvId,
    kind: KeyKind,
    key: &NewKey,
    value: Option<&str>,
    now: i64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO keys (id, kind, env_id, hash, hint, value, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            id.into(),
            kind.as_str().into(),
            env.as_str().into(),
            key.hash.as_str().into(),
            key.hint.as_str().into(),
            value.into(),
            now.into(),
        ],
    )?;
    Ok(())
}

/// The env's current publishable key (the one without an expiry).
pub fn current_publishable(conn: &mut dyn Conn, env: &str) -> Result<String> {
    Ok(conn
        .query_opt(
            "SELECT value FROM keys WHERE env_id = $1 AND kind = 'publishable' AND revoked_at IS NULL AND expires_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
            &[env.into()],
        )?
        .map(|r| r.opt_text(0))
        .transpose()?
        .flatten()
        .unwrap_or_default())
}

const KEY_COLUMNS: &str = "id, kind, hint, created_at, expires_at, revoked_at, value";

fn row_to_record(r: &store::Row) -> Result<KeyRecord> {
    Ok(KeyRecord {
        id: r.text(0)?,
        kind: KeyKind::parse(&r.text(1)?).ok_or(store::StoreError::Type(1))?,
        hint: r.text(2)?,
        created_at: rfc3339(r.int(3)?),
        expires_at: r.opt_int(4)?.map(rfc3339),
        revoked_at: r.opt_int(5)?.map(rfc3339),
        value: r.opt_text(6)?,
    })
}

impl Platform {
    /// Every key and token of an env that is still usable or was revoked or expired recently.
    pub async fn list_keys(&self, env: &EnvId) -> Result<Vec<KeyRecord>> {
        let env = env.to_string();
        self.db()
            .tx(move |conn| {
                conn.query(
                    &format!("SELECT {KEY_COLUMNS} FROM keys WHERE env_id = $1 ORDER BY created_at, id"),
                    &[env.into()],
                )?
                .iter()
                .map(row_to_record)
                .collect()
            })
            .await
    }

    /// Issues a new secret or publishable key; the current one keeps working for `overlap_seconds`.
    pub async fn rotate_key(&self, actor: &Actor, env: &EnvId, req: RotateKeyRequest) -> Result<RotatedKey> {
        if req.overlap_seconds > MAX_OVERLAP_SECONDS {
            return Err(PlatformError::invalid(
                "invalid_overlap",
                format!("overlap_seconds must be at most {MAX_OVERLAP_SECONDS}"),
            ));
        }
        let now = self.clock().now_ms();
        let key = self.new_key(req.kind.into());
        let id = self.random_id(16);
        let (env, actor, kind) = (env.clone(), actor.clone(), KeyKind::from(req.kind));
        let overlap_ms = (req.overlap_seconds * 1000) as i64;
        let record = self
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let e = env.as_str();
                let value = (kind == KeyKind::Publishable).then_some(key.key.as_str());
                // The keys being replaced: current ones of this kind. Overlap 0 revokes them now.
                if overlap_ms == 0 {
                    conn.execute(
                        "UPDATE keys SET revoked_at = $1 WHERE env_id = $2 AND kind = $3 AND revoked_at IS NULL AND expires_at IS NULL",
                        &[now.into(), e.into(), kind.as_str().into()],
                    )?;
                } else {
                    conn.execute(
                        "UPDATE keys SET expires_at = $1 WHERE env_id = $2 AND kind = $3 AND revoked_at IS NULL AND expires_at IS NULL",
                        &[(now + overlap_ms).into(), e.into(), kind.as_str().into()],
                    )?;
                }
                insert_env_key(conn, &id, &env, kind, &key, value, now)?;
                audit::write(conn, now, &Record { actor: &actor, action: "keys:Rotate", env: Some(e), target: Some(&id), result: "ok" })?;
                let row = conn
                    .query_opt(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"), &[id.as_str().into()])?
                    .ok_or(PlatformError::NotFound { what: "key" })?;
                Ok::<_, PlatformError>(RotatedKey { key: key.key.clone(), record: row_to_record(&row)? })
            })
            .await?;
        Ok(record)
    }

    /// Revokes one key or token of an env, effective for the next request.
    pub async fn revoke_key(&self, actor: &Actor, env: &EnvId, key_id: &str) -> Result<KeyRecord> {
        let now = self.clock().now_ms();
        let (env, actor, key_id) = (env.clone(), actor.clone(), key_id.to_owned());
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                let e = env.as_str();
                let changed = conn.execute(
                    "UPDATE keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 AND env_id = $3",
                    &[now.into(), key_id.as_str().into(), e.into()],
                )?;
                if changed == 0 {
                    return Err(PlatformError::NotFound { what: "key" });
                }
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "keys:Revoke", env: Some(e), target: Some(&key_id), result: "ok" },
                )?;
                let row = conn
                    .query_opt(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"), &[key_id.as_str().into()])?
                    .ok_or(PlatformError::NotFound { what: "key" })?;
                row_to_record(&row)
            })
            .await
    }

    /// Mints a short-lived token for the hands, bound to `env` (and a session, when given).
    pub async fn mint_token(&self, actor: &Actor, env: &EnvId, req: MintTokenRequest) -> Result<MintedToken> {
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&req.ttl_seconds) {
            return Err(PlatformError::invalid(
                "invalid_ttl",
                format!("ttl_seconds must be 1..={MAX_TOKEN_TTL_SECONDS}"),
            ));
        }
        if req.actions.len() > 100 {
            return Err(PlatformError::invalid("invalid_actions", "at most 100 actions"));
        }
        for text in [&req.session, &req.holder].into_iter().flatten() {
            if text.is_empty() || text.len() > 128 {
                return Err(PlatformError::invalid(
                    "invalid_token_request",
                    "session and holder must be 1..=128 characters",
                ));
            }
        }
        // Validates the action patterns now, so a bad pattern fails the mint rather than every later use.
        tenancy::authz::minted_policy(env, &req.actions)
            .map_err(|e| PlatformError::Invalid { code: "invalid_actions", message: e.to_string() })?;
        let now = self.clock().now_ms();
        let expires = now + (req.ttl_seconds * 1000) as i64;
        let key = self.new_key(KeyKind::Minted);
        let id = self.random_id(16);
        let actions = serde_json::to_string(&req.actions).unwrap_or_else(|_| "[]".to_owned());
        let (env, actor) = (env.clone(), actor.clone());
        let token = MintedToken { id: id.clone(), token: key.key.clone(), expires_at: rfc3339(expires) };
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                let e = env.as_str();
                conn.execute(
                    "INSERT INTO keys (id, kind, env_id, hash, hint, created_at, expires_at, session, holder, actions) \
                     VALUES ($1, 'minted', $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        id.as_str().into(),
                        e.into(),
                        key.hash.into(),
                        key.hint.into(),
                        now.into(),
                        expires.into(),
                        req.session.into(),
                        req.holder.into(),
                        actions.into(),
                    ],
                )?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "tokens:Mint", env: Some(e), target: Some(&id), result: "ok" },
                )
            })
            .await?;
        Ok(token)
    }

    /// Revokes every token minted for a session (the session ended).
    pub async fn revoke_session_tokens(&self, env: &EnvId, session: &str) -> Result<u64> {
        let now = self.clock().now_ms();
        let (env, session) = (env.to_string(), session.to_owned());
        self.db()
            .tx(move |conn| {
                Ok(conn.execute(
                    "UPDATE keys SET revoked_at = $1 WHERE env_id = $2 AND kind = 'minted' AND session = $3 AND revoked_at IS NULL \
                     AND expires_at > $1",
                    &[now.into(), env.into(), session.into()],
                )?)
            })
            .await
    }

    /// Drops expired minted tokens and expired rotated-out keys (housekeeping).
    pub async fn purge_expired_keys(&self) -> Result<u64> {
        let cutoff = self.clock().now_ms() - 7 * 24 * 3600 * 1000;
        self.db()
            .tx(move |conn| {
                Ok(conn.execute("DELETE FROM keys WHERE expires_at < $1 OR revoked_at < $1", &[Value::Int(cutoff)])?)
            })
            .await
    }
}

/// Purges long-expired and long-revoked keys once an hour until shutdown. They are kept a week first,
/// so a late request with one still gets `key_expired` / `key_revoked` rather than `invalid_key`.
pub async fn housekeeping_loop(platform: Platform, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match platform.purge_expired_keys().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "purged expired and revoked keys"),
            Err(e) => tracing::warn!(error = %e, "key purge failed; will retry"),
        }
    }
}
