//! Sessions and their append-only event logs in the platform store (`agent_sessions`, `agent_events`),
//! and the lease that says which instance drives a session. Every write of a run is conditioned on
//! holding the lease, so an instance that lost it (it stalled past the lease's expiry and another one
//! resumed the session) cannot interleave events with the new holder.

use protocol::EnvId;
use store::{Conn, Db, Row, StoreError, Value};

use crate::AgentError;
use crate::event::Event;

/// Caps over a session's life: model calls, tokens (in + out), cost (micro-USD).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub max_turns: Option<i64>,
    pub max_tokens: Option<i64>,
    pub max_cost: Option<i64>,
}

/// What a new session is made of.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub id: String,
    pub title: Option<String>,
    pub model: Option<String>,
    pub caps: Caps,
    /// Tools that wait for a person's decision before they run.
    pub approval_tools: Vec<String>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub env: String,
    pub title: Option<String>,
    /// The model the next message uses unless it names one.
    pub model: Option<String>,
    /// `idle` or `running`.
    pub status: String,
    /// Sequence number of the newest event (0: none yet).
    pub last_seq: i64,
    /// The run in progress or the last one.
    pub run_id: Option<String>,
    /// The sandbox attached to the session's main hand, if one is (other hands: [`Log::bindings`]).
    pub sandbox_id: Option<String>,
    /// The workspace snapshot a fresh sandbox is restored from.
    pub workspace_snapshot: Option<String>,
    pub caps: Caps,
    /// Tools that wait for a person's decision before they run.
    pub approval_tools: Vec<String>,
    /// Tools a person allowed for the rest of the session.
    pub always_allowed: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, env_id, title, model, status, last_seq, run_id, sandbox_id, workspace_snapshot, \
                       created_at, updated_at, max_turns, max_tokens, max_cost, approval_tools, always_allowed";

impl Session {
    /// The API's view (times as RFC 3339).
    pub fn record(&self) -> protocol::agent::SessionRecord {
        protocol::agent::SessionRecord {
            id: self.id.clone(),
            env: self.env.clone(),
            title: self.title.clone(),
            model: self.model.clone(),
            status: self.status.clone(),
            last_seq: self.last_seq,
            run_id: self.run_id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            max_turns: self.caps.max_turns.map(|n| n as u64),
            max_tokens: self.caps.max_tokens.map(|n| n as u64),
            max_cost: self.caps.max_cost.map(|n| n as u64),
            require_approval: self.approval_tools.clone(),
            always_allowed: self.always_allowed.clone(),
            created_at: platform::runtime::rfc3339(self.created_at),
            updated_at: platform::runtime::rfc3339(self.updated_at),
        }
    }
}

fn record(r: &Row) -> Result<Session, StoreError> {
    Ok(Session {
        id: r.text(0)?,
        env: r.text(1)?,
        title: r.opt_text(2)?,
        model: r.opt_text(3)?,
        status: r.text(4)?,
        last_seq: r.int(5)?,
        run_id: r.opt_text(6)?,
        sandbox_id: r.opt_text(7)?,
        workspace_snapshot: r.opt_text(8)?,
        created_at: r.int(9)?,
        updated_at: r.int(10)?,
        caps: Caps { max_turns: r.opt_int(11)?, max_tokens: r.opt_int(12)?, max_cost: r.opt_int(13)? },
        approval_tools: serde_json::from_str(&r.text(14)?).unwrap_or_default(),
        always_allowed: serde_json::from_str(&r.text(15)?).unwrap_or_default(),
    })
}

/// The sandboxes a session's hands hold, and the workspace a new one starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    /// (hand, sandbox), sorted by hand.
    pub hands: Vec<(String, String)>,
    pub snapshot: Option<String>,
}

/// Session ids are AG-UI thread ids chosen by clients: 1..=128 of `A-Z a-z 0-9 - _ . :`.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The store side of sessions.
#[derive(Clone)]
pub struct Log {
    db: Db,
}

impl Log {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a session; `Ok(None)` when the id is taken in this env.
    pub async fn create(&self, env: &EnvId, new: NewSession, now: i64) -> Result<Option<Session>, AgentError> {
        let NewSession { id, title, model, caps, approval_tools } = new;
        let env = env.to_string();
        let approval_tools = serde_json::to_string(&approval_tools).unwrap_or_else(|_| "[]".to_owned());
        let rec = self
            .db
            .tx(move |c: &mut dyn Conn| {
                let n = c.execute(
                    "INSERT INTO agent_sessions (env_id, id, title, model, status, last_seq, interrupt_requested, \
                     created_at, updated_at, max_turns, max_tokens, max_cost, approval_tools, always_allowed) \
                     VALUES ($1, $2, $3, $4, 'idle', 0, 0, $5, $5, $6, $7, $8, $9, '[]') ON CONFLICT DO NOTHING",
                    &[
                        env.as_str().into(),
                        id.as_str().into(),
                        title.into(),
                        model.into(),
                        now.into(),
                        caps.max_turns.into(),
                        caps.max_tokens.into(),
                        caps.max_cost.into(),
                        approval_tools.into(),
                    ],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                get_in(c, &env, &id)
            })
            .await?;
        Ok(rec)
    }

    pub async fn get(&self, env: &EnvId, id: &str) -> Result<Option<Session>, AgentError> {
        let (env, id) = (env.to_string(), id.to_owned());
        Ok(self.db.tx(move |c: &mut dyn Conn| get_in(c, &env, &id)).await?)
    }

    /// Sessions of `env`, newest first, at most `limit`, older than the cursor `before` (a session id).
    pub async fn list(&self, env: &EnvId, limit: i64) -> Result<Vec<Session>, AgentError> {
        let env = env.to_string();
        let rows = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.query(
                    &format!(
                        "SELECT {COLUMNS} FROM agent_sessions WHERE env_id = $1 ORDER BY created_at DESC, id LIMIT $2"
                    ),
                    &[env.as_str().into(), limit.into()],
                )?
                .iter()
                .map(record)
                .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        Ok(rows)
    }

    /// Events after `after`, at most `limit`, in order.
    pub async fn read(&self, env: &EnvId, id: &str, after: i64, limit: i64) -> Result<Vec<(i64, Event)>, AgentError> {
        let (env, id) = (env.to_string(), id.to_owned());
        let rows = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.query(
                    "SELECT seq, body FROM agent_events WHERE env_id = $1 AND session_id = $2 AND seq > $3 \
                     ORDER BY seq LIMIT $4",
                    &[env.as_str().into(), id.as_str().into(), after.into(), limit.into()],
                )
            })
            .await?;
        rows.iter()
            .map(|r| {
                let body = r.text(1)?;
                let event = serde_json::from_str(&body).map_err(|e| AgentError::Corrupt(e.to_string()))?;
                Ok((r.int(0)?, event))
            })
            .collect()
    }

    /// Every event of a session.
    pub async fn read_all(&self, env: &EnvId, id: &str) -> Result<Vec<(i64, Event)>, AgentError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |(s, _)| *s);
            let page = self.read(env, id, after, 1000).await?;
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Appends `events` as the lease holder `holder`; returns the sequence number of the last one.
    /// Fails with [`AgentError::LeaseLost`] when `holder` no longer holds the session.
    pub async fn append(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        events: Vec<Event>,
        now: i64,
    ) -> Result<i64, AgentError> {
        self.write(env, id, holder, events, now, None).await
    }

    /// Appends the event that ends a run, releases the lease and queues the run's webhook in one
    /// transaction, so a client that saw the run end can start the next one at once.
    pub async fn finish(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        end: Event,
        hook: platform::webhooks::Event,
        now: i64,
    ) -> Result<i64, AgentError> {
        self.write(env, id, holder, vec![end], now, Some(hook)).await
    }

    async fn write(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        events: Vec<Event>,
        now: i64,
        finish: Option<platform::webhooks::Event>,
    ) -> Result<i64, AgentError> {
        let (env, id, holder) = (env.to_string(), id.to_owned(), holder.to_owned());
        let bodies = events
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AgentError::Corrupt(e.to_string()))?;
        let n = bodies.len() as i64;
        let meters: Vec<Option<protocol::Meter>> = events.iter().map(Event::meter).collect();
        self.db
            .tx(move |c: &mut dyn Conn| {
                let Some(row) = c.query_opt(
                    "UPDATE agent_sessions SET last_seq = last_seq + $4, updated_at = $5 \
                     WHERE env_id = $1 AND id = $2 AND lease_holder = $3 RETURNING last_seq",
                    &[env.as_str().into(), id.as_str().into(), holder.as_str().into(), n.into(), now.into()],
                )?
                else {
                    return Err(AgentError::LeaseLost);
                };
                let last = row.int(0)?;
                for (i, (body, meter)) in bodies.into_iter().zip(meters.iter()).enumerate() {
                    let seq = last - n + 1 + i as i64;
                    c.execute(
                        "INSERT INTO agent_events (env_id, session_id, seq, at, body) VALUES ($1, $2, $3, $4, $5)",
                        &[env.as_str().into(), id.as_str().into(), seq.into(), now.into(), body.into()],
                    )?;
                    // Metered with the event, in its transaction: exactly once, keyed by its place in the log.
                    if let Some(meter) = meter {
                        let usage = platform::ledger::UsageEvent {
                            env: env.clone(),
                            meter: *meter,
                            quantity: 1,
                            source: "agent".to_owned(),
                            event_id: format!("{id}:{seq}"),
                            at_ms: now,
                            dimensions: std::collections::BTreeMap::from([("session".to_owned(), id.clone())]),
                        };
                        platform::ledger::record_in(c, &usage).map_err(|e| AgentError::Corrupt(e.to_string()))?;
                    }
                }
                if let Some(hook) = &finish {
                    release_in(c, &env, &id, &holder, now)?;
                    platform::webhooks::enqueue(c, now, hook).map_err(|e| AgentError::Corrupt(e.to_string()))?;
                }
                Ok(last)
            })
            .await
    }

    /// Takes the lease of a session for `holder` until `until` when it is free, expired or already
    /// `holder`'s. `run` (when given) starts a run: status `running`, run id set, interrupt cleared.
    pub async fn acquire(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        now: i64,
        until: i64,
        run: Option<&str>,
    ) -> Result<bool, AgentError> {
        let (env, id, holder, run) = (env.to_string(), id.to_owned(), holder.to_owned(), run.map(str::to_owned));
        let n = self
            .db
            .tx(move |c: &mut dyn Conn| {
                let params: Vec<Value> = vec![
                    env.as_str().into(),
                    id.as_str().into(),
                    holder.as_str().into(),
                    now.into(),
                    until.into(),
                    run.clone().into(),
                ];
                c.execute(
                    "UPDATE agent_sessions SET lease_holder = $3, lease_until = $5, \
                     status = CASE WHEN CAST($6 AS TEXT) IS NULL THEN status ELSE 'running' END, \
                     run_id = COALESCE(CAST($6 AS TEXT), run_id), \
                     interrupt_requested = CASE WHEN CAST($6 AS TEXT) IS NULL THEN interrupt_requested ELSE 0 END \
                     WHERE env_id = $1 AND id = $2 \
                     AND (lease_holder IS NULL OR lease_holder = $3 OR lease_until < $4) \
                     AND (CAST($6 AS TEXT) IS NULL OR status = 'idle')",
                    &params,
                )
            })
            .await?;
        Ok(n == 1)
    }

    /// Extends `holder`'s lease; returns whether it still holds it and whether an interrupt was asked.
    pub async fn heartbeat(&self, env: &EnvId, id: &str, holder: &str, until: i64) -> Result<Option<bool>, AgentError> {
        let (env, id, holder) = (env.to_string(), id.to_owned(), holder.to_owned());
        let row = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.query_opt(
                    "UPDATE agent_sessions SET lease_until = $4 WHERE env_id = $1 AND id = $2 AND lease_holder = $3 \
                     RETURNING interrupt_requested",
                    &[env.as_str().into(), id.as_str().into(), holder.as_str().into(), until.into()],
                )
            })
            .await?;
        Ok(row.map(|r| r.int(0)).transpose()?.map(|i| i != 0))
    }

    /// Ends `holder`'s run and lease: the session is idle again.
    pub async fn release(&self, env: &EnvId, id: &str, holder: &str, now: i64) -> Result<(), AgentError> {
        let (env, id, holder) = (env.to_string(), id.to_owned(), holder.to_owned());
        self.db.tx(move |c: &mut dyn Conn| release_in(c, &env, &id, &holder, now)).await?;
        Ok(())
    }

    /// Asks the run of a session to stop; false when no run is in progress.
    pub async fn request_interrupt(&self, env: &EnvId, id: &str) -> Result<bool, AgentError> {
        let (env, id) = (env.to_string(), id.to_owned());
        let n = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.execute(
                    "UPDATE agent_sessions SET interrupt_requested = 1 WHERE env_id = $1 AND id = $2 AND status = 'running'",
                    &[env.as_str().into(), id.as_str().into()],
                )
            })
            .await?;
        Ok(n == 1)
    }

    /// Records the session's sandbox (or none) and, when given, the workspace snapshot to restore from.
    pub async fn set_sandbox(
        &self,
        env: &EnvId,
        id: &str,
        sandbox: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<(), AgentError> {
        let (env, id) = (env.to_string(), id.to_owned());
        let (sandbox, snapshot) = (sandbox.map(str::to_owned), snapshot.map(str::to_owned));
        self.db
            .tx(move |c: &mut dyn Conn| {
                c.execute(
                    "UPDATE agent_sessions SET sandbox_id = $3, workspace_snapshot = COALESCE($4, workspace_snapshot) \
                     WHERE env_id = $1 AND id = $2",
                    &[env.as_str().into(), id.as_str().into(), sandbox.into(), snapshot.into()],
                )
            })
            .await?;
        Ok(())
    }

    /// The session's attached hands: the main hand's sandbox is the session's `sandbox_id` (as before
    /// there were several), the others are rows of `agent_hands`.
    pub async fn bindings(&self, env: &EnvId, id: &str) -> Result<Bindings, AgentError> {
        let (env, id) = (env.to_string(), id.to_owned());
        let bindings = self
            .db
            .tx(move |c: &mut dyn Conn| {
                let params: [Value; 2] = [env.as_str().into(), id.as_str().into()];
                let Some(row) = c.query_opt(
                    "SELECT sandbox_id, workspace_snapshot FROM agent_sessions WHERE env_id = $1 AND id = $2",
                    &params,
                )?
                else {
                    return Ok(None);
                };
                let mut hands: Vec<(String, String)> =
                    row.opt_text(0)?.map(|sb| (crate::tools::MAIN_HAND.to_owned(), sb)).into_iter().collect();
                for r in c.query(
                    "SELECT hand, sandbox_id FROM agent_hands WHERE env_id = $1 AND session_id = $2 ORDER BY hand",
                    &params,
                )? {
                    hands.push((r.text(0)?, r.text(1)?));
                }
                hands.sort();
                Ok::<_, StoreError>(Some(Bindings { hands, snapshot: row.opt_text(1)? }))
            })
            .await?;
        bindings.ok_or(AgentError::NotFound)
    }

    /// Binds `hand` of a session to `sandbox` (or to none).
    pub async fn set_hand(
        &self,
        env: &EnvId,
        id: &str,
        hand: &str,
        sandbox: Option<&str>,
        now: i64,
    ) -> Result<(), AgentError> {
        if hand == crate::tools::MAIN_HAND {
            return self.set_sandbox(env, id, sandbox, None).await;
        }
        let (env, id, hand, sandbox) = (env.to_string(), id.to_owned(), hand.to_owned(), sandbox.map(str::to_owned));
        self.db
            .tx(move |c: &mut dyn Conn| {
                let key: [Value; 3] = [env.as_str().into(), id.as_str().into(), hand.as_str().into()];
                c.execute("DELETE FROM agent_hands WHERE env_id = $1 AND session_id = $2 AND hand = $3", &key)?;
                if let Some(sb) = sandbox {
                    c.execute(
                        "INSERT INTO agent_hands (env_id, session_id, hand, sandbox_id, attached_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[env.as_str().into(), id.as_str().into(), hand.as_str().into(), sb.into(), now.into()],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        Ok(())
    }

    /// Detaches every hand of the session and sets the workspace its next sandbox starts from (`None`: an
    /// empty one), as `holder` (a revert holds the lease).
    pub async fn restore_workspace(
        &self,
        env: &EnvId,
        id: &str,
        holder: &str,
        snapshot: Option<&str>,
    ) -> Result<(), AgentError> {
        let (env, id, holder, snapshot) =
            (env.to_string(), id.to_owned(), holder.to_owned(), snapshot.map(str::to_owned));
        let n = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.execute(
                    "UPDATE agent_sessions SET sandbox_id = NULL, workspace_snapshot = $4 \
                     WHERE env_id = $1 AND id = $2 AND lease_holder = $3",
                    &[env.as_str().into(), id.as_str().into(), holder.as_str().into(), snapshot.into()],
                )
            })
            .await?;
        if n == 1 { Ok(()) } else { Err(AgentError::LeaseLost) }
    }

    /// Sets the model of the session's next messages.
    pub async fn set_model(&self, env: &EnvId, id: &str, model: &str) -> Result<(), AgentError> {
        let (env, id, model) = (env.to_string(), id.to_owned(), model.to_owned());
        self.db
            .tx(move |c: &mut dyn Conn| {
                c.execute(
                    "UPDATE agent_sessions SET model = $3 WHERE env_id = $1 AND id = $2",
                    &[env.as_str().into(), id.as_str().into(), model.into()],
                )
            })
            .await?;
        Ok(())
    }

    /// Records a person's decision on a tool call; false when it was decided already. `allow_always`
    /// also allows `tool` for the rest of the session, in the same transaction.
    pub async fn decide(
        &self,
        env: &EnvId,
        id: &str,
        call: &str,
        decision: &str,
        tool: &str,
        now: i64,
    ) -> Result<bool, AgentError> {
        let (env, id, call, decision, tool) =
            (env.to_string(), id.to_owned(), call.to_owned(), decision.to_owned(), tool.to_owned());
        self.db
            .tx(move |c: &mut dyn Conn| {
                let n = c.execute(
                    "INSERT INTO agent_approvals (env_id, session_id, call_id, decision, decided_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        env.as_str().into(),
                        id.as_str().into(),
                        call.as_str().into(),
                        decision.as_str().into(),
                        now.into(),
                    ],
                )?;
                if n == 1 && decision == "allow_always" {
                    let row = c.query_opt(
                        "SELECT always_allowed FROM agent_sessions WHERE env_id = $1 AND id = $2",
                        &[env.as_str().into(), id.as_str().into()],
                    )?;
                    let mut allowed: Vec<String> = row
                        .map(|r| r.text(0))
                        .transpose()?
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or_default();
                    if !allowed.contains(&tool) {
                        allowed.push(tool.clone());
                    }
                    c.execute(
                        "UPDATE agent_sessions SET always_allowed = $3 WHERE env_id = $1 AND id = $2",
                        &[
                            env.as_str().into(),
                            id.as_str().into(),
                            serde_json::to_string(&allowed).unwrap_or_default().into(),
                        ],
                    )?;
                }
                Ok::<_, StoreError>(n == 1)
            })
            .await
            .map_err(AgentError::from)
    }

    /// The decision on a tool call, if a person gave one.
    pub async fn decision(&self, env: &EnvId, id: &str, call: &str) -> Result<Option<String>, AgentError> {
        let (env, id, call) = (env.to_string(), id.to_owned(), call.to_owned());
        let row = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.query_opt(
                    "SELECT decision FROM agent_approvals WHERE env_id = $1 AND session_id = $2 AND call_id = $3",
                    &[env.as_str().into(), id.as_str().into(), call.as_str().into()],
                )
            })
            .await?;
        Ok(row.map(|r| r.text(0)).transpose()?)
    }

    /// Running sessions whose driver's lease has expired (its instance died or stalled).
    pub async fn orphaned(&self, now: i64) -> Result<Vec<(String, String)>, AgentError> {
        let rows = self
            .db
            .tx(move |c: &mut dyn Conn| {
                c.query(
                    "SELECT env_id, id FROM agent_sessions WHERE status = 'running' \
                     AND (lease_until IS NULL OR lease_until < $1) LIMIT 100",
                    &[now.into()],
                )
            })
            .await?;
        rows.iter().map(|r| Ok((r.text(0)?, r.text(1)?))).collect()
    }

    /// Removes every session of `env` (the env is being deleted).
    pub async fn delete_env(&self, env: &EnvId) -> Result<(), AgentError> {
        Ok(self
            .db
            .delete_env_rows(env.as_str(), &["agent_events", "agent_approvals", "agent_hands", "agent_sessions"])
            .await?)
    }
}

fn release_in(c: &mut dyn Conn, env: &str, id: &str, holder: &str, now: i64) -> Result<(), StoreError> {
    c.execute(
        "UPDATE agent_sessions SET lease_holder = NULL, lease_until = NULL, status = 'idle', \
         interrupt_requested = 0, updated_at = $4 WHERE env_id = $1 AND id = $2 AND lease_holder = $3",
        &[env.into(), id.into(), holder.into(), now.into()],
    )?;
    Ok(())
}

fn get_in(c: &mut dyn Conn, env: &str, id: &str) -> Result<Option<Session>, StoreError> {
    c.query_opt(
        &format!("SELECT {COLUMNS} FROM agent_sessions WHERE env_id = $1 AND id = $2"),
        &[env.into(), id.into()],
    )?
    .map(|r| record(&r))
    .transpose()
}
