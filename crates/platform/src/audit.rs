//! The audit log: one row per control-plane mutation (who, what, which env, when, result).

use protocol::api::{AuditEntry, Page};
use store::{Conn, Value};

use crate::{Actor, Platform, Result, runtime::rfc3339};

/// One audit row to write.
pub struct Record<'a> {
    pub actor: &'a Actor,
    pub action: &'a str,
    pub env: Option<&'a str>,
    pub target: Option<&'a str>,
    pub result: &'a str,
}

/// Writes an audit row inside the caller's transaction, so a mutation and its audit row commit together.
pub fn write(conn: &mut dyn Conn, at_ms: i64, r: &Record<'_>) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (at, actor, action, env_id, target, result, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            at_ms.into(),
            r.actor.name.as_str().into(),
            r.action.into(),
            r.env.into(),
            r.target.into(),
            r.result.into(),
            r.actor.request_id.as_str().into(),
        ],
    )?;
    Ok(())
}

impl Platform {
    /// Records a mutation that failed (successful ones are written with the mutation itself).
    pub async fn audit_failure(&self, actor: Actor, action: String, env: Option<String>, code: String) -> Result<()> {
        let at = self.clock().now_ms();
        self.db()
            .tx(move |conn| {
                write(
                    conn,
                    at,
                    &Record { actor: &actor, action: &action, env: env.as_deref(), target: None, result: &code },
                )
            })
            .await
    }

    /// Records a successful action on something that lives outside the platform store (a sandbox, a
    /// process), where there is no transaction to write it in.
    pub async fn audit_ok(&self, actor: &Actor, action: &str, env: &str, target: &str) -> Result<()> {
        let at = self.clock().now_ms();
        let (actor, action, env, target) = (actor.clone(), action.to_owned(), env.to_owned(), target.to_owned());
        self.db()
            .tx(move |conn| {
                write(
                    conn,
                    at,
                    &Record { actor: &actor, action: &action, env: Some(&env), target: Some(&target), result: "ok" },
                )
            })
            .await
    }

    /// The audit log of one env (live or deleted) or of the whole platform, newest first. `cursor` is
    /// the `seq` to continue below.
    pub async fn audit_log(&self, env: Option<&str>, cursor: Option<i64>, limit: u32) -> Result<Page<AuditEntry>> {
        let env = env.map(str::to_owned);
        let limit = i64::from(limit.clamp(1, 1000));
        self.db()
            .tx(move |conn| {
                let mut params = vec![Value::Int(cursor.unwrap_or(i64::MAX)), Value::Int(limit + 1)];
                let env_filter = match env {
                    Some(e) => {
                        params.push(e.into());
                        "AND env_id = $3"
                    }
                    None => "",
                };
                let rows = conn.query(
                    &format!(
                        "SELECT seq, at, actor, action, env_id, target, result, request_id FROM audit \
                         WHERE seq < $1 {env_filter} ORDER BY seq DESC LIMIT $2"
                    ),
                    &params,
                )?;
                let mut items = rows
                    .iter()
                    .map(|r| {
                        Ok(AuditEntry {
                            seq: r.int(0)?,
                            at: rfc3339(r.int(1)?),
                            actor: r.text(2)?,
                            action: r.text(3)?,
                            env: r.opt_text(4)?,
                            target: r.opt_text(5)?,
                            result: r.text(6)?,
                            request_id: r.text(7)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let next_cursor = if items.len() as i64 > limit {
                    items.truncate(limit as usize);
                    items.last().map(|e| e.seq.to_string())
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            })
            .await
    }
}
