//! The usage ledger, base of unified billing. Append-only, idempotent events keyed by
//! (env, source, event id), rolled up into minute buckets in the same transaction. High-rate meters
//! (one event per API request) are counted in memory and written in batches by [`flush_loop`]; each
//! batch carries an idempotency key, so a retried flush never counts twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use protocol::api::{UsageBucket, UsageEventInput, UsageReport, UsageTotal};
use protocol::{EnvId, Meter, MeterKind};
use store::{Conn, Value};

use crate::{Platform, PlatformError, Result, runtime::rfc3339};

/// A usage event to record.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub env: String,
    pub meter: Meter,
    pub quantity: i64,
    pub source: String,
    pub event_id: String,
    pub at_ms: i64,
    pub dimensions: BTreeMap<String, String>,
}

const MINUTE_MS: i64 = 60_000;
/// The largest quantity one usage event may carry.
pub const MAX_EVENT_QUANTITY: i64 = 1_000_000_000_000_000;

/// Writes one event and its minute bucket; returns false if the idempotency key was already recorded.
pub fn record_in(conn: &mut dyn Conn, e: &UsageEvent) -> Result<bool> {
    let dims = serde_json::to_string(&e.dimensions).unwrap_or_else(|_| "{}".to_owned());
    let inserted = conn.execute(
        "INSERT INTO usage_events (env_id, source, event_id, meter, quantity, at, dimensions) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT DO NOTHING",
        &[
            e.env.as_str().into(),
            e.source.as_str().into(),
            e.event_id.as_str().into(),
            e.meter.name().into(),
            e.quantity.into(),
            e.at_ms.into(),
            dims.into(),
        ],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let minute = e.at_ms - e.at_ms.rem_euclid(MINUTE_MS);
    let update = match e.meter.kind() {
        MeterKind::Counter => "quantity = usage_minutes.quantity + excluded.quantity",
        MeterKind::Gauge => "quantity = excluded.quantity",
    };
    conn.execute(
        &format!(
            "INSERT INTO usage_minutes (env_id, meter, minute, quantity) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (env_id, meter, minute) DO UPDATE SET {update}"
        ),
        &[e.env.as_str().into(), e.meter.name().into(), minute.into(), e.quantity.into()],
    )?;
    Ok(true)
}

/// What the buffer counts by: env, meter, one dimension (name, value), and the minute of the requests.
type BufferKey = (String, Meter, String, String, i64);

/// In-memory counts of high-rate meters not yet written.
#[derive(Default)]
pub struct MeterBuffer {
    counts: Mutex<HashMap<BufferKey, i64>>,
    flushes: std::sync::atomic::AtomicU64,
}

impl MeterBuffer {
    fn add(&self, env: &str, meter: Meter, dim: (&str, &str), quantity: i64, at_ms: i64) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry((env.to_owned(), meter, dim.0.to_owned(), dim.1.to_owned(), minute_of(at_ms))).or_insert(0) +=
            quantity;
    }

    /// Counted since `since_ms` but not yet written.
    pub fn pending(&self, env: &str, meter: Meter, since_ms: i64) -> i64 {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts
            .iter()
            .filter(|((e, m, _, _, minute), _)| e == env && *m == meter && *minute >= since_ms)
            .map(|(_, q)| q)
            .sum()
    }

    fn take(&self) -> HashMap<BufferKey, i64> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn put_back(&self, batch: HashMap<BufferKey, i64>) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (k, q) in batch {
            *counts.entry(k).or_insert(0) += q;
        }
    }
}

/// Start of the minute (in ms) containing `ms`.
pub fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(MINUTE_MS)
}

impl Platform {
    /// Counts one API request of `env` on `surface` (the platform core's meter).
    pub fn meter_api_request(&self, env: &EnvId, surface: &str) {
        self.inner.meters.add(env.as_str(), Meter::ApiRequests, ("surface", surface), 1, self.clock().now_ms());
    }

    /// Adds a quantity of a high-rate meter (e.g. `db_rows_read`) to the buffer the flusher writes.
    pub fn meter(&self, env: &EnvId, meter: Meter, dim: (&str, &str), quantity: i64) {
        if quantity > 0 {
            self.inner.meters.add(env.as_str(), meter, dim, quantity, self.clock().now_ms());
        }
    }

    /// Counted since `since_ms` but not yet in the ledger.
    pub fn pending_usage(&self, env: &str, meter: Meter, since_ms: i64) -> i64 {
        self.inner.meters.pending(env, meter, since_ms)
    }

    /// Writes buffered meters to the ledger. On failure they stay buffered for the next flush.
    pub async fn flush_meters(&self) -> Result<usize> {
        let batch = self.inner.meters.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let seq = self.inner.meters.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let events: Vec<UsageEvent> = batch
            .iter()
            .map(|((env, meter, dk, dv, minute), q)| UsageEvent {
                env: env.clone(),
                meter: *meter,
                quantity: *q,
                source: "platform".to_owned(),
                event_id: format!("{}-{seq}-{}-{dv}-{minute}", self.inner.instance, meter.name()),
                at_ms: *minute,
                dimensions: BTreeMap::from([(dk.clone(), dv.clone())]),
            })
            .collect();
        let n = events.len();
        let envs: Vec<(String, Meter)> = events.iter().map(|e| (e.env.clone(), e.meter)).collect();
        let result = self
            .db()
            .tx(move |conn: &mut dyn Conn| {
                for e in &events {
                    record_in(conn, e)?;
                }
                Ok::<_, PlatformError>(())
            })
            .await;
        if let Err(e) = result {
            self.inner.meters.put_back(batch);
            return Err(e);
        }
        for (env, meter) in envs {
            self.check_soft_limits(&env, meter).await?;
        }
        Ok(n)
    }

    /// Records a usage event from an emitter. Idempotent on (env, source, event id).
    pub async fn record_usage(&self, env: &EnvId, input: UsageEventInput) -> Result<bool> {
        let meter = Meter::parse(&input.meter)
            .ok_or_else(|| PlatformError::invalid("unknown_meter", format!("unknown meter {:?}", input.meter)))?;
        // Bounded so that years of sums stay far from i64 overflow on either database.
        if !(0..=MAX_EVENT_QUANTITY).contains(&input.quantity) {
            return Err(PlatformError::invalid(
                "invalid_quantity",
                format!("quantity must be 0..={MAX_EVENT_QUANTITY}"),
            ));
        }
        for (what, v) in [("source", &input.source), ("event_id", &input.event_id)] {
            if v.is_empty() || v.len() > 200 {
                return Err(PlatformError::invalid(
                    "invalid_usage_event",
                    format!("{what} must be 1..=200 characters"),
                ));
            }
        }
        if input.dimensions.len() > 16 || input.dimensions.iter().any(|(k, v)| k.len() > 200 || v.chars().count() > 200)
        {
            return Err(PlatformError::invalid(
                "invalid_usage_event",
                "at most 16 dimensions of at most 200 characters",
            ));
        }
        let at_ms = match &input.at {
            None => self.clock().now_ms(),
            Some(s) => crate::runtime::parse_rfc3339(s)
                .ok_or_else(|| PlatformError::invalid("invalid_time", "at must be an RFC 3339 time"))?,
        };
        let event = UsageEvent {
            env: env.to_string(),
            meter,
            quantity: input.quantity,
            source: input.source,
            event_id: input.event_id,
            at_ms,
            dimensions: input.dimensions,
        };
        let recorded = self.db().tx(move |conn| record_in(conn, &event)).await?;
        if recorded {
            self.check_soft_limits(env.as_str(), meter).await?;
        }
        Ok(recorded)
    }

    /// Usage totals between `from` and `to` (ms), for one env or all; with minute buckets if asked.
    pub async fn usage(&self, env: Option<&EnvId>, from: i64, to: i64, buckets: bool) -> Result<UsageReport> {
        let env = env.map(ToString::to_string);
        let (totals, bucket_rows) = self
            .db()
            .tx(move |conn: &mut dyn Conn| {
                let env_filter = if env.is_some() { "AND env_id = $3" } else { "" };
                let mut params: Vec<Value> = vec![minute_of(from).into(), to.into()];
                if let Some(e) = &env {
                    params.push(e.as_str().into());
                }
                let totals = conn
                    .query(
                        &format!(
                            "SELECT env_id, meter, CAST(SUM(quantity) AS BIGINT) FROM usage_minutes \
                             WHERE minute >= $1 AND minute < $2 {env_filter} GROUP BY env_id, meter ORDER BY env_id, meter"
                        ),
                        &params,
                    )?
                    .iter()
                    .map(|r| Ok(UsageTotal { env: r.text(0)?, meter: r.text(1)?, quantity: r.int(2)? }))
                    .collect::<Result<Vec<_>>>()?;
                let bucket_rows = if buckets {
                    conn.query(
                        &format!(
                            "SELECT env_id, meter, minute, quantity FROM usage_minutes \
                             WHERE minute >= $1 AND minute < $2 {env_filter} ORDER BY env_id, meter, minute LIMIT 100000"
                        ),
                        &params,
                    )?
                    .iter()
                    .map(|r| Ok(UsageBucket { env: r.text(0)?, meter: r.text(1)?, minute: rfc3339(r.int(2)?), quantity: r.int(3)? }))
                    .collect::<Result<Vec<_>>>()?
                } else {
                    Vec::new()
                };
                Ok::<_, PlatformError>((totals, bucket_rows))
            })
            .await?;
        Ok(UsageReport { from: rfc3339(from), to: rfc3339(to), totals, buckets: bucket_rows })
    }

    /// The ledger total of `meter` for `env` since `since_ms` (minute-aligned), not counting the buffer.
    pub async fn usage_since(&self, env: &str, meter: Meter, since_ms: i64) -> Result<i64> {
        let env = env.to_owned();
        self.db()
            .tx(move |conn| {
                Ok(conn
                    .query_opt(
                        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM usage_minutes WHERE env_id = $1 AND meter = $2 AND minute >= $3",
                        &[env.into(), meter.name().into(), since_ms.into()],
                    )?
                    .map(|r| r.int(0))
                    .transpose()?
                    .unwrap_or(0))
            })
            .await
    }
}

/// CSV of a usage report: one line per bucket if present, else per total.
pub fn to_csv(report: &UsageReport) -> String {
    let mut out = String::new();
    if report.buckets.is_empty() {
        out.push_str("env,meter,from,to,quantity\n");
        for t in &report.totals {
            out.push_str(&format!("{},{},{},{},{}\n", t.env, t.meter, report.from, report.to, t.quantity));
        }
    } else {
        out.push_str("env,meter,minute,quantity\n");
        for b in &report.buckets {
            out.push_str(&format!("{},{},{},{}\n", b.env, b.meter, b.minute, b.quantity));
        }
    }
    out
}

/// Flushes buffered meters every `meter_flush_interval` until shutdown, then once more.
pub async fn flush_loop(platform: Platform, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(platform.config().meter_flush_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if let Err(e) = platform.flush_meters().await {
            tracing::warn!(error = %e, "meter flush failed; will retry");
        }
    }
    if let Err(e) = platform.flush_meters().await {
        tracing::error!(error = %e, "final meter flush failed");
    }
}
