//! Per-env quotas (hard: 402; soft: an alert and a webhook once per period) and request rate limits
//! (429 with Retry-After). Limits are cached for a second so the check on every request stays in memory.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use protocol::api::{EnvLimits, QuotaAlert, QuotaPeriod};
use protocol::{EnvId, Meter};
use store::Conn;
use time::OffsetDateTime;

use crate::audit::{self, Record};
use crate::{Actor, Platform, PlatformError, Result, runtime::rfc3339, webhooks};

const CACHE_TTL_MS: i64 = 1000;
/// The highest rate and burst an env may be given, per second.
pub const MAX_RATE: u32 = 1_000_000;

/// (env, meter, period start).
type PeriodKey = (String, Meter, i64);
/// (ledger total, fetched at ms).
type CachedTotal = (i64, i64);

/// Token buckets and cached limits of the envs that received traffic.
#[derive(Default)]
pub struct Limiter {
    limits: Mutex<HashMap<String, (EnvLimits, i64)>>,
    totals: Mutex<HashMap<PeriodKey, CachedTotal>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    last_ms: i64,
}

/// Start (ms) of the period containing `now_ms`.
pub fn period_start(period: QuotaPeriod, now_ms: i64) -> i64 {
    let floor = |unit: i64| now_ms - now_ms.rem_euclid(unit);
    match period {
        QuotaPeriod::Minute => floor(60_000),
        QuotaPeriod::Hour => floor(3_600_000),
        QuotaPeriod::Day => floor(86_400_000),
        QuotaPeriod::Month => {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let first = t.replace_day(1).unwrap_or(t).replace_time(time::Time::MIDNIGHT);
            (first.unix_timestamp_nanos() / 1_000_000) as i64
        }
    }
}

fn validate(limits: &EnvLimits) -> Result<()> {
    if limits.quotas.len() > 50 {
        return Err(PlatformError::invalid("invalid_limits", "at most 50 quotas"));
    }
    for q in &limits.quotas {
        if Meter::parse(&q.meter).is_none() {
            return Err(PlatformError::invalid("unknown_meter", format!("unknown meter {:?}", q.meter)));
        }
        if q.hard_limit.is_some_and(|l| l < 0) || q.soft_limit.is_some_and(|l| l < 0) {
            return Err(PlatformError::invalid("invalid_limits", "limits must not be negative"));
        }
    }
    let in_range = |v: Option<u32>| v.is_none_or(|v| (1..=MAX_RATE).contains(&v));
    if !in_range(limits.rate_limit_per_second) || !in_range(limits.rate_limit_burst) {
        return Err(PlatformError::invalid("invalid_limits", format!("rate limits must be 1..={MAX_RATE}")));
    }
    Ok(())
}

impl Platform {
    pub async fn get_env_limits(&self, env: &EnvId) -> Result<EnvLimits> {
        let now = self.clock().now_ms();
        if let Some((limits, at)) =
            self.inner.limiter.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(env.as_str())
            && now - at < CACHE_TTL_MS
        {
            return Ok(limits.clone());
        }
        let id = env.to_string();
        let body = self
            .db()
            .tx(move |conn| {
                Ok::<_, PlatformError>(
                    conn.query_opt("SELECT body FROM env_limits WHERE env_id = $1", &[id.into()])?
                        .map(|r| r.text(0))
                        .transpose()?,
                )
            })
            .await?;
        let limits: EnvLimits = body.and_then(|b| serde_json::from_str(&b).ok()).unwrap_or_default();
        self.inner
            .limiter
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(env.to_string(), (limits.clone(), now));
        Ok(limits)
    }

    pub async fn set_env_limits(&self, actor: &Actor, env: &EnvId, limits: EnvLimits) -> Result<EnvLimits> {
        validate(&limits)?;
        let body = serde_json::to_string(&limits).unwrap_or_default();
        let now = self.clock().now_ms();
        let (id, actor) = (env.to_string(), actor.clone());
        self.db()
            .tx(move |conn: &mut dyn Conn| {
                conn.execute(
                    "INSERT INTO env_limits (env_id, body) VALUES ($1, $2) ON CONFLICT (env_id) DO UPDATE SET body = excluded.body",
                    &[id.as_str().into(), body.into()],
                )?;
                audit::write(conn, now, &Record { actor: &actor, action: "limits:Set", env: Some(&id), target: None, result: "ok" })
            })
            .await?;
        self.forget_env_limits(env);
        Ok(limits)
    }

    /// Drops cached limits and counters of an env (after a change or a delete).
    pub fn forget_env_limits(&self, env: &EnvId) {
        let l = &self.inner.limiter;
        l.limits.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(env.as_str());
        l.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(env.as_str());
        l.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|(e, _, _), _| e != env.as_str());
    }

    /// Takes one request from the env's token bucket, or says how long to wait.
    pub async fn check_rate(&self, env: &EnvId) -> Result<()> {
        let limits = self.get_env_limits(env).await?;
        let rate = f64::from(limits.rate_limit_per_second.unwrap_or(self.config().default_rate_per_second));
        let burst = f64::from(limits.rate_limit_burst.unwrap_or((rate * 2.0) as u32).max(1));
        let now = self.clock().now_ms();
        let mut buckets = self.inner.limiter.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = buckets.entry(env.to_string()).or_insert(Bucket { tokens: burst, last_ms: now });
        b.tokens = (b.tokens + (now - b.last_ms).max(0) as f64 / 1000.0 * rate).min(burst);
        b.last_ms = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / rate).max(0.001);
            Err(PlatformError::RateLimited { retry_after: Duration::from_secs_f64(wait) })
        }
    }

    /// Fails with 402 if a hard quota on `meter` is used up for the current period.
    pub async fn check_quota(&self, env: &EnvId, meter: Meter) -> Result<()> {
        let limits = self.get_env_limits(env).await?;
        for q in limits.quotas.iter().filter(|q| q.meter == meter.name()) {
            let Some(limit) = q.hard_limit else { continue };
            let used = self.period_usage(env.as_str(), meter, q.period).await?;
            if used >= limit {
                return Err(PlatformError::QuotaExceeded {
                    meter: meter.name().to_owned(),
                    used,
                    limit,
                    period: q.period.as_str(),
                });
            }
        }
        Ok(())
    }

    /// Usage of `meter` in the current `period`: ledger (cached for a second) plus the unflushed buffer.
    async fn period_usage(&self, env: &str, meter: Meter, period: QuotaPeriod) -> Result<i64> {
        let now = self.clock().now_ms();
        let start = period_start(period, now);
        let key = (env.to_owned(), meter, start);
        let cached =
            self.inner.limiter.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key).copied();
        let ledger = match cached {
            Some((total, at)) if now - at < CACHE_TTL_MS => total,
            _ => {
                let total = self.usage_since(env, meter, start).await?;
                self.inner
                    .limiter
                    .totals
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(key, (total, now));
                total
            }
        };
        Ok(ledger + self.pending_usage(env, meter, start))
    }

    /// Records an alert (and fires `quota.alert`) the first time a soft limit is crossed in a period.
    pub async fn check_soft_limits(&self, env: &str, meter: Meter) -> Result<()> {
        let Ok(env_id) = EnvId::parse(env) else { return Ok(()) };
        let limits = self.get_env_limits(&env_id).await?;
        for q in limits.quotas.iter().filter(|q| q.meter == meter.name()) {
            let Some(soft) = q.soft_limit else { continue };
            let now = self.clock().now_ms();
            let start = period_start(q.period, now);
            let observed = self.usage_since(env, meter, start).await?;
            if observed < soft {
                continue;
            }
            let event = self.event(
                "quota.alert",
                Some(&env_id),
                serde_json::json!({"env": env, "meter": meter.name(), "period": q.period.as_str(),
                    "period_start": rfc3339(start), "soft_limit": soft, "observed": observed}),
            );
            let (env, meter_name) = (env.to_owned(), meter.name());
            self.db()
                .tx(move |conn: &mut dyn Conn| {
                    let inserted = conn.execute(
                        "INSERT INTO quota_alerts (env_id, meter, period_start, soft_limit, observed, at) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT DO NOTHING",
                        &[env.into(), meter_name.into(), start.into(), soft.into(), observed.into(), now.into()],
                    )?;
                    if inserted > 0 {
                        webhooks::enqueue(conn, now, &event)?;
                    }
                    Ok::<_, PlatformError>(())
                })
                .await?;
        }
        Ok(())
    }

    /// Soft-limit alerts of an env, newest first.
    pub async fn quota_alerts(&self, env: &EnvId) -> Result<Vec<QuotaAlert>> {
        let id = env.to_string();
        self.db()
            .tx(move |conn| {
                conn.query(
                    "SELECT env_id, meter, period_start, soft_limit, observed, at FROM quota_alerts WHERE env_id = $1 ORDER BY at DESC LIMIT 1000",
                    &[id.into()],
                )?
                .iter()
                .map(|r| {
                    Ok(QuotaAlert {
                        env: r.text(0)?,
                        meter: r.text(1)?,
                        period_start: rfc3339(r.int(2)?),
                        soft_limit: r.int(3)?,
                        observed: r.int(4)?,
                        at: rfc3339(r.int(5)?),
                    })
                })
                .collect()
            })
            .await
    }
}
