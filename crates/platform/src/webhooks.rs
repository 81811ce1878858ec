//! Webhooks: the integrating platform subscribes to events and receives signed deliveries, retried with
//! backoff, each attempt kept in a delivery log.
//!
//! Deliveries are written in the same transaction as the change they report, so an event is never lost
//! or invented. Signatures follow the Standard Webhooks scheme: headers `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256(secret, "id.timestamp.body")>`.

use base64::Engine;
use hmac::{Hmac, Mac};
use protocol::EnvId;
use protocol::api::{CreateWebhookRequest, DeliveryRecord, WebhookRecord};
use sha2::Sha256;
use store::{Conn, Value};

use crate::audit::{self, Record};
use crate::{Actor, Platform, PlatformError, Result, runtime::rfc3339};

pub use protocol::api::EVENT_TYPES;
/// Attempts before a delivery is marked failed.
pub const MAX_ATTEMPTS: i64 = 8;
const BASE_BACKOFF_MS: i64 = 1000;
/// How long a worker holds a claimed delivery before another may retry it.
const CLAIM_MS: i64 = 30_000;

/// An event to deliver.
#[derive(Debug, Clone)]
pub struct Event {
    /// Unique per event; a delivery's id is this plus the webhook's id.
    pub id: String,
    pub event_type: &'static str,
    pub env: Option<String>,
    pub data: serde_json::Value,
}

impl Platform {
    /// A new event with a fresh id, to pass to [`enqueue`].
    pub fn event(&self, event_type: &'static str, env: Option<&EnvId>, data: serde_json::Value) -> Event {
        Event { id: format!("evt_{}", self.random_id(20)), event_type, env: env.map(ToString::to_string), data }
    }
}

/// Queues `event` for every matching subscription, inside the caller's transaction.
pub fn enqueue(conn: &mut dyn Conn, now: i64, event: &Event) -> Result<()> {
    let hooks = conn.query("SELECT id, events, env_id FROM webhooks", &[])?;
    for hook in hooks {
        let events: Vec<String> = serde_json::from_str(&hook.text(1)?).unwrap_or_default();
        let env_match = match (hook.opt_text(2)?, &event.env) {
            (None, _) => true,
            (Some(h), Some(e)) => &h == e,
            (Some(_), None) => false,
        };
        if !env_match || !events.iter().any(|e| e == "*" || e == event.event_type) {
            continue;
        }
        let id = format!("{}_{}", event.id, hook.text(0)?);
        let payload = serde_json::json!({
            "id": id, "type": event.event_type, "env": event.env, "created_at": rfc3339(now), "data": event.data,
        });
        conn.execute(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_type, env_id, payload, status, attempts, created_at, next_attempt_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
            &[id.into(), hook.text(0)?.into(), event.event_type.into(), event.env.clone().into(), payload.to_string().into(), now.into()],
        )?;
    }
    Ok(())
}

/// The `webhook-signature` header value for a delivery.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    let key = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(key).unwrap_or_else(|_| key.as_bytes().to_vec());
    // HMAC takes keys of any length, so this never fails.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key) else { return String::new() };
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn hook_record(r: &store::Row) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: r.text(0)?,
        url: r.text(1)?,
        events: serde_json::from_str(&r.text(2)?).unwrap_or_default(),
        env: r.opt_text(3)?,
        created_at: rfc3339(r.int(4)?),
        secret: None,
    })
}

impl Platform {
    pub async fn create_webhook(&self, actor: &Actor, req: CreateWebhookRequest) -> Result<WebhookRecord> {
        let url_ok = (req.url.starts_with("http://") || req.url.starts_with("https://"))
            && req.url.len() <= 2048
            && reqwest::Url::parse(&req.url).is_ok_and(|u| u.host_str().is_some());
        if !url_ok {
            return Err(PlatformError::invalid("invalid_url", "url must be an absolute http(s) URL"));
        }
        if req.events.is_empty() || req.events.len() > 50 {
            return Err(PlatformError::invalid("invalid_events", "events must list 1..=50 event types"));
        }
        if let Some(bad) = req.events.iter().find(|e| *e != "*" && !EVENT_TYPES.contains(&e.as_str())) {
            return Err(PlatformError::invalid("invalid_events", format!("unknown event type {bad:?}")));
        }
        let now = self.clock().now_ms();
        let id = format!("wh{}", self.random_id(14));
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(self.inner.entropy.seed()));
        let events = serde_json::to_string(&req.events).unwrap_or_default();
        let env = req.env.as_ref().map(ToString::to_string);
        let record = WebhookRecord {
            id: id.clone(),
            url: req.url.clone(),
            events: req.events.clone(),
            env: env.clone(),
            created_at: rfc3339(now),
            secret: Some(secret.clone()),
        };
        let actor = actor.clone();
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                if let Some(e) = &env {
                    crate::envs::load(conn, e)?.ok_or(PlatformError::NotFound { what: "env" })?;
                }
                conn.execute(
                    "INSERT INTO webhooks (id, url, events, env_id, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[id.as_str().into(), req.url.into(), events.into(), env.clone().into(), secret.into(), now.into()],
                )?;
                audit::write(conn, now, &Record { actor: &actor, action: "webhooks:Create", env: env.as_deref(), target: Some(&id), result: "ok" })
            })
            .await?;
        Ok(record)
    }

    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        self.db()
            .tx(|conn| {
                conn.query("SELECT id, url, events, env_id, created_at FROM webhooks ORDER BY created_at, id", &[])?
                    .iter()
                    .map(hook_record)
                    .collect()
            })
            .await
    }

    pub async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<()> {
        let now = self.clock().now_ms();
        let (id, actor) = (id.to_owned(), actor.clone());
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                if conn.execute("DELETE FROM webhooks WHERE id = $1", &[id.as_str().into()])? == 0 {
                    return Err(PlatformError::NotFound { what: "webhook" });
                }
                conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = $1", &[id.as_str().into()])?;
                audit::write(
                    conn,
                    now,
                    &Record { actor: &actor, action: "webhooks:Delete", env: None, target: Some(&id), result: "ok" },
                )
            })
            .await
    }

    /// The delivery log of one webhook, newest first.
    pub async fn webhook_deliveries(&self, id: &str) -> Result<Vec<DeliveryRecord>> {
        let id = id.to_owned();
        self.db()
            .tx(move |conn| {
                if conn.query_opt("SELECT 1 FROM webhooks WHERE id = $1", &[id.as_str().into()])?.is_none() {
                    return Err(PlatformError::NotFound { what: "webhook" });
                }
                conn.query(
                    "SELECT id, webhook_id, event_type, env_id, status, attempts, last_status_code, last_error, created_at, next_attempt_at \
                     FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1000",
                    &[id.into()],
                )?
                .iter()
                .map(|r| {
                    Ok(DeliveryRecord {
                        id: r.text(0)?,
                        webhook: r.text(1)?,
                        event_type: r.text(2)?,
                        env: r.opt_text(3)?,
                        status: r.text(4)?,
                        attempts: r.int(5)?,
                        last_status_code: r.opt_int(6)?,
                        last_error: r.opt_text(7)?,
                        created_at: rfc3339(r.int(8)?),
                        next_attempt_at: r.opt_int(9)?.map(rfc3339),
                    })
                })
                .collect()
            })
            .await
    }

    /// Sends every due delivery once. Returns how many were attempted.
    pub async fn deliver_due_webhooks(&self, client: &reqwest::Client) -> Result<usize> {
        let now = self.clock().now_ms();
        // Claim due deliveries by pushing their next attempt out; a crashed worker's claims expire.
        let due = self
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let rows = conn.query(
                    "SELECT d.id, d.payload, d.attempts, w.url, w.secret FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                     WHERE d.status = 'pending' AND d.next_attempt_at <= $1 ORDER BY d.next_attempt_at LIMIT 32",
                    &[now.into()],
                )?;
                let mut claimed = Vec::new();
                for r in rows {
                    let id = r.text(0)?;
                    let n = conn.execute(
                        "UPDATE webhook_deliveries SET next_attempt_at = $1 WHERE id = $2 AND status = 'pending' AND next_attempt_at <= $3",
                        &[(now + CLAIM_MS).into(), id.as_str().into(), now.into()],
                    )?;
                    if n == 1 {
                        claimed.push((id, r.text(1)?, r.int(2)?, r.text(3)?, r.text(4)?));
                    }
                }
                Ok::<_, PlatformError>(claimed)
            })
            .await?;
        let count = due.len();
        for (id, payload, attempts, url, secret) in due {
            let ts = now / 1000;
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sign(&secret, &id, ts, &payload))
                .body(payload)
                .send()
                .await;
            let (code, error) = match result {
                Ok(r) => (
                    Some(i64::from(r.status().as_u16())),
                    (!r.status().is_success()).then(|| format!("HTTP {}", r.status())),
                ),
                Err(e) => {
                    (None, Some(if e.is_timeout() { "timeout".to_owned() } else { "connection failed".to_owned() }))
                }
            };
            let attempts = attempts + 1;
            let finished = self.clock().now_ms();
            let (status, next): (&str, Value) = match (&error, attempts >= MAX_ATTEMPTS) {
                (None, _) => ("delivered", Value::Null),
                (Some(_), true) => ("failed", Value::Null),
                (Some(_), false) => ("pending", (finished + (BASE_BACKOFF_MS << (attempts - 1).min(12))).into()),
            };
            self.db()
                .tx(move |conn| {
                    conn.execute(
                        "UPDATE webhook_deliveries SET status = $1, attempts = $2, last_status_code = $3, last_error = $4, next_attempt_at = $5 WHERE id = $6",
                        &[status.into(), attempts.into(), code.into(), error.into(), next, id.into()],
                    )?;
                    Ok::<_, PlatformError>(())
                })
                .await?;
        }
        Ok(count)
    }
}

/// Delivers due webhooks every `webhook_poll_interval` until shutdown.
pub async fn delivery_loop(platform: Platform, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let client = match reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client could not start; deliveries stay queued");
            return;
        }
    };
    let mut tick = tokio::time::interval(platform.config().webhook_poll_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = platform.deliver_due_webhooks(&client).await {
            tracing::warn!(error = %e, "webhook delivery round failed");
        }
    }
}
