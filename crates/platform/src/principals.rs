//! CAM-style sub-accounts: principals whose power is exactly their policy.

use protocol::api::{CreatePrincipalRequest, KeyKind, PrincipalRecord};
use store::Conn;
use tenancy::policy::Policy;

use crate::audit::{self, Record};
use crate::{Actor, Platform, PlatformError, Result, runtime::rfc3339};

fn validate_policy(policy: &serde_json::Value) -> Result<String> {
    let parsed =
        Policy::parse(policy).map_err(|e| PlatformError::Invalid { code: e.code(), message: e.to_string() })?;
    Ok(parsed.to_json().to_string())
}

fn row_to_record(r: &store::Row) -> Result<PrincipalRecord> {
    Ok(PrincipalRecord {
        id: r.text(0)?,
        name: r.text(1)?,
        policy: serde_json::from_str(&r.text(2)?).unwrap_or(serde_json::Value::Null),
        created_at: rfc3339(r.int(3)?),
        key: None,
    })
}

impl Platform {
    /// Creates a sub-account and its key (returned once).
    pub async fn create_principal(&self, actor: &Actor, req: CreatePrincipalRequest) -> Result<PrincipalRecord> {
        if req.name.is_empty() || req.name.chars().count() > 100 {
            return Err(PlatformError::invalid("invalid_name", "name must be 1..=100 characters"));
        }
        let policy = validate_policy(&req.policy)?;
        let now = self.clock().now_ms();
        let id = format!("p{}", self.random_id(15));
        let key = self.new_key(KeyKind::Principal);
        let key_id = self.random_id(16);
        let actor = actor.clone();
        let record = PrincipalRecord {
            id: id.clone(),
            name: req.name.clone(),
            policy: serde_json::from_str(&policy).unwrap_or(serde_json::Value::Null),
            created_at: rfc3339(now),
            key: Some(key.key.clone()),
        };
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                conn.execute(
                    "INSERT INTO principals (id, name, policy, created_at) VALUES ($1, $2, $3, $4)",
                    &[id.as_str().into(), req.name.into(), policy.into(), now.into()],
                )?;
                conn.execute(
                    "INSERT INTO keys (id, kind, principal_id, hash, hint, created_at) VALUES ($1, 'principal', $2, $3, $4, $5)",
                    &[key_id.into(), id.as_str().into(), key.hash.into(), key.hint.into(), now.into()],
                )?;
                audit::write(conn, now, &Record { actor: &actor, action: "principals:Create", env: None, target: Some(&id), result: "ok" })
            })
            .await?;
        Ok(record)
    }

    pub async fn list_principals(&self) -> Result<Vec<PrincipalRecord>> {
        self.db()
            .tx(|conn| {
                conn.query("SELECT id, name, policy, created_at FROM principals ORDER BY created_at, id", &[])?
                    .iter()
                    .map(row_to_record)
                    .collect()
            })
            .await
    }

    pub async fn get_principal(&self, id: &str) -> Result<PrincipalRecord> {
        let id = id.to_owned();
        self.db()
            .tx(move |conn| {
                let row = conn
                    .query_opt("SELECT id, name, policy, created_at FROM principals WHERE id = $1", &[id.into()])?
                    .ok_or(PlatformError::NotFound { what: "principal" })?;
                row_to_record(&row)
            })
            .await
    }

    /// Replaces a sub-account's policy; effective for its next request.
    pub async fn set_principal_policy(
        &self,
        actor: &Actor,
        id: &str,
        policy: &serde_json::Value,
    ) -> Result<PrincipalRecord> {
        let policy = validate_policy(policy)?;
        let now = self.clock().now_ms();
        let (id, actor) = (id.to_owned(), actor.clone());
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                if conn
                    .execute("UPDATE principals SET policy = $1 WHERE id = $2", &[policy.into(), id.as_str().into()])?
                    == 0
                {
                    return Err(PlatformError::NotFound { what: "principal" });
                }
                audit::write(
                    conn,
                    now,
                    &Record {
                        actor: &actor,
                        action: "principals:SetPolicy",
                        env: None,
                        target: Some(&id),
                        result: "ok",
                    },
                )?;
                let row = conn
                    .query_opt(
                        "SELECT id, name, policy, created_at FROM principals WHERE id = $1",
                        &[id.as_str().into()],
                    )?
                    .ok_or(PlatformError::NotFound { what: "principal" })?;
                row_to_record(&row)
            })
            .await
    }

    /// Deletes a sub-account and its keys.
    pub async fn delete_principal(&self, actor: &Actor, id: &str) -> Result<()> {
        let now = self.clock().now_ms();
        let (id, actor) = (id.to_owned(), actor.clone());
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                if conn.execute("DELETE FROM principals WHERE id = $1", &[id.as_str().into()])? == 0 {
                    return Err(PlatformError::NotFound { what: "principal" });
                }
                conn.execute("DELETE FROM keys WHERE principal_id = $1", &[id.as_str().into()])?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "principals:Delete", env: None, target: Some(&id), result: "ok" },
                )
            })
            .await
    }
}
