//! Budgets and metering. A call reserves its worst case (estimated input + the output tokens it may
//! produce) before it goes upstream, and settles on completion: the usage events are written to the
//! ledger first, then the reservation is released, so every admission sees each call either as a
//! reservation or as ledger usage (or both, never neither). Admissions of one env are serialized, so
//! concurrent calls cannot all pass on the same remaining budget; and the gateway asks the upstream for
//! no more output than the reservation covers.
//!
//! Per-env budgets are the env's hard quotas (platform limits API) on `llm_tokens_in`,
//! `llm_tokens_out` and `llm_cost`; per-session budgets come from the models file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use platform::Platform;
use platform::ledger::{UsageEvent, record_in};
use platform::limits::period_start;
use protocol::{EnvId, Meter};
use store::Conn;

use crate::config::{BudgetsConfig, ModelConfig};
use crate::error::GatewayError;
use crate::ir::Usage;

/// Who pays for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub env: EnvId,
    /// The session of a minted token (or the agent loop's session).
    pub session: Option<String>,
    /// The session's own caps, on top of the models file's per-session budgets (the lower one holds).
    pub caps: SessionCaps,
}

/// Caps of one session: tokens (in + out) and cost (micro-USD) over the session's whole life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCaps {
    pub tokens: Option<i64>,
    pub cost: Option<i64>,
}

/// The lower of two optional limits.
fn lower(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Amounts held for calls in flight.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    tokens_in: i64,
    tokens_out: i64,
    cost: i64,
}

#[derive(Debug, Default)]
struct SessionUse {
    loaded: bool,
    tokens: i64,
    cost: i64,
    held_tokens: i64,
    held_cost: i64,
}

/// A reservation: what a call may use at most.
#[derive(Debug, Clone)]
pub struct Reservation {
    pub bill: Bill,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost: i64,
}

const STRIPES: usize = 64;

pub struct Budgets {
    config: BudgetsConfig,
    held: Mutex<HashMap<String, Held>>,
    sessions: Mutex<HashMap<(String, String), SessionUse>>,
    admission: Vec<tokio::sync::Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The ledger source of the gateway's events.
pub const SOURCE: &str = "gateway";

/// Short stable tag of a session for event ids (sessions may be long or contain any character).
fn session_tag(session: Option<&str>) -> String {
    use sha2::Digest as _;
    match session {
        None => "-".to_owned(),
        Some(s) => hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8]),
    }
}

fn over(which: &str) -> GatewayError {
    GatewayError::new(
        402,
        format!("budget_exceeded_{which}"),
        format!("the {} budget is used up", which.replace('_', " ")),
    )
}

impl Budgets {
    pub fn new(config: BudgetsConfig) -> Self {
        Self {
            config,
            held: Mutex::default(),
            sessions: Mutex::default(),
            admission: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn stripe(&self, env: &EnvId) -> &tokio::sync::Mutex<()> {
        let h = env.as_str().bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b)));
        &self.admission[h % STRIPES]
    }

    /// Reserves `input` tokens and up to `want_out` output tokens; returns the reservation and the
    /// output tokens granted (at most `want_out`, fewer when a budget has less left), or 402 naming the
    /// budget that is used up.
    pub async fn reserve(
        &self,
        platform: &Platform,
        bill: &Bill,
        model: &ModelConfig,
        input: u64,
        want_out: u64,
    ) -> Result<(Reservation, u64), GatewayError> {
        let limits = platform.get_env_limits(&bill.env).await.map_err(GatewayError::from_platform)?;
        let quotas: Vec<_> = limits
            .quotas
            .iter()
            .filter_map(|q| {
                let meter = Meter::parse(&q.meter)?;
                let limit = q.hard_limit?;
                matches!(meter, Meter::LlmTokensIn | Meter::LlmTokensOut | Meter::LlmCost)
                    .then_some((meter, q.period, limit))
            })
            .collect();
        let session_tokens = lower(self.config.session_tokens, bill.caps.tokens);
        let session_cost = lower(self.config.session_cost, bill.caps.cost);
        let session_limits = bill.session.is_some() && (session_tokens.is_some() || session_cost.is_some());
        let input_i = i64::try_from(input).unwrap_or(i64::MAX);
        let in_cost = model.cost(input, 0);
        let per_out = model.output_price;
        let mut out = want_out;
        let _admit =
            if quotas.is_empty() && !session_limits { None } else { Some(self.stripe(&bill.env).lock().await) };
        // Held first, ledger second (see the module note).
        let held = lock(&self.held).get(bill.env.as_str()).copied().unwrap_or_default();
        let now = platform.clock().now_ms();
        for (meter, period, limit) in &quotas {
            let used = platform
                .usage_since(bill.env.as_str(), *meter, period_start(*period, now))
                .await
                .map_err(GatewayError::from_platform)?;
            match meter {
                Meter::LlmTokensIn => {
                    if used + held.tokens_in + input_i > *limit {
                        return Err(over("env_tokens_in"));
                    }
                }
                Meter::LlmTokensOut => {
                    let left = limit - used - held.tokens_out;
                    if left < 1 {
                        return Err(over("env_tokens_out"));
                    }
                    out = out.min(left as u64);
                }
                _ => {
                    let left = limit - used - held.cost - in_cost;
                    if left < 1 && (left < 0 || per_out > 0.0) {
                        return Err(over("env_cost"));
                    }
                    if per_out > 0.0 {
                        out = out.min((left as f64 / per_out).floor() as u64);
                        if out == 0 {
                            return Err(over("env_cost"));
                        }
                    }
                }
            }
        }
        if let Some(session) = bill.session.as_deref().filter(|_| session_limits) {
            let key = (bill.env.to_string(), session.to_owned());
            let loaded = lock(&self.sessions).get(&key).is_some_and(|s| s.loaded);
            if !loaded {
                let (tokens, cost) = session_usage(platform, &bill.env, session).await?;
                let mut sessions = lock(&self.sessions);
                let s = sessions.entry(key.clone()).or_default();
                if !s.loaded {
                    // Settlements that finished while loading are in the ledger total already.
                    s.tokens = tokens;
                    s.cost = cost;
                    s.loaded = true;
                }
            }
            let sessions = lock(&self.sessions);
            let s = sessions.get(&key).map_or((0, 0, 0, 0), |s| (s.tokens, s.cost, s.held_tokens, s.held_cost));
            if let Some(limit) = session_tokens {
                let left = limit - s.0 - s.2 - input_i;
                if left < 1 {
                    return Err(over("session_tokens"));
                }
                out = out.min(left as u64);
            }
            if let Some(limit) = session_cost {
                let left = limit - s.1 - s.3 - in_cost;
                if left < 0 || (left < 1 && per_out > 0.0) {
                    return Err(over("session_cost"));
                }
                if per_out > 0.0 {
                    out = out.min((left as f64 / per_out).floor() as u64);
                    if out == 0 {
                        return Err(over("session_cost"));
                    }
                }
            }
        }
        let out_i = i64::try_from(out).unwrap_or(i64::MAX);
        let r = Reservation { bill: bill.clone(), tokens_in: input_i, tokens_out: out_i, cost: model.cost(input, out) };
        self.hold(&r, 1);
        Ok((r, out))
    }

    fn hold(&self, r: &Reservation, sign: i64) {
        {
            let mut held = lock(&self.held);
            let h = held.entry(r.bill.env.to_string()).or_default();
            h.tokens_in += sign * r.tokens_in;
            h.tokens_out += sign * r.tokens_out;
            h.cost += sign * r.cost;
            if sign < 0 && h.tokens_in <= 0 && h.tokens_out <= 0 && h.cost <= 0 {
                held.remove(r.bill.env.as_str());
            }
        }
        if let Some(session) = &r.bill.session {
            let mut sessions = lock(&self.sessions);
            let s = sessions.entry((r.bill.env.to_string(), session.clone())).or_default();
            s.held_tokens += sign * (r.tokens_in + r.tokens_out);
            s.held_cost += sign * r.cost;
        }
    }

    /// Records the call's usage in the ledger (the three model meters), then releases the reservation.
    /// The reservation is released even if the write fails (the failure is logged and returned).
    pub async fn settle(
        &self,
        platform: &Platform,
        r: &Reservation,
        call_id: &str,
        model: &str,
        usage: Usage,
        cost: i64,
    ) -> Result<(), GatewayError> {
        let at_ms = platform.clock().now_ms();
        let mut dims = BTreeMap::from([("model".to_owned(), model.to_owned())]);
        if let Some(s) = &r.bill.session {
            dims.insert("session".to_owned(), s.clone());
        }
        let tag = session_tag(r.bill.session.as_deref());
        let quantity = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let events: Vec<UsageEvent> = [
            (Meter::LlmTokensIn, quantity(usage.input_tokens)),
            (Meter::LlmTokensOut, quantity(usage.output_tokens)),
            (Meter::LlmCost, cost),
        ]
        .into_iter()
        .map(|(meter, quantity)| UsageEvent {
            env: r.bill.env.to_string(),
            meter,
            quantity,
            source: SOURCE.to_owned(),
            event_id: format!("{tag}.{call_id}.{}", meter.name()),
            at_ms,
            dimensions: dims.clone(),
        })
        .collect();
        let result = platform
            .db()
            .tx(move |conn: &mut dyn Conn| {
                for e in &events {
                    record_in(conn, e)?;
                }
                Ok::<_, platform::PlatformError>(())
            })
            .await;
        if let Some(session) = &r.bill.session {
            let mut sessions = lock(&self.sessions);
            if let Some(s) = sessions.get_mut(&(r.bill.env.to_string(), session.clone()))
                && s.loaded
            {
                s.tokens += quantity(usage.input_tokens) + quantity(usage.output_tokens);
                s.cost += cost;
            }
        }
        self.hold(r, -1);
        if let Err(e) = result {
            tracing::error!(error = %e, env = %r.bill.env, call_id, "could not record model usage");
            return Err(GatewayError::from_platform(e));
        }
        for meter in [Meter::LlmTokensIn, Meter::LlmTokensOut, Meter::LlmCost] {
            if let Err(e) = platform.check_soft_limits(r.bill.env.as_str(), meter).await {
                tracing::warn!(error = %e, "soft-limit check after model usage failed");
            }
        }
        Ok(())
    }

    /// Releases a reservation of a call that never reached an upstream (nothing to bill).
    pub fn release(&self, r: &Reservation) {
        self.hold(r, -1);
    }
}

/// A session's total tokens and cost so far, from the ledger.
async fn session_usage(platform: &Platform, env: &EnvId, session: &str) -> Result<(i64, i64), GatewayError> {
    let prefix = format!("{}.%", session_tag(Some(session)));
    let env = env.to_string();
    let session = session.to_owned();
    platform
        .db()
        .tx(move |conn: &mut dyn Conn| {
            let rows = conn.query(
                "SELECT meter, quantity, dimensions FROM usage_events WHERE env_id = $1 AND source = $2 AND event_id LIKE $3",
                &[env.into(), SOURCE.into(), prefix.into()],
            )?;
            let (mut tokens, mut cost) = (0i64, 0i64);
            for r in &rows {
                let dims: BTreeMap<String, String> = serde_json::from_str(&r.text(2)?).unwrap_or_default();
                if dims.get("session").map(String::as_str) != Some(session.as_str()) {
                    continue;
                }
                match Meter::parse(&r.text(0)?) {
                    Some(Meter::LlmTokensIn | Meter::LlmTokensOut) => tokens += r.int(1)?,
                    Some(Meter::LlmCost) => cost += r.int(1)?,
                    _ => {}
                }
            }
            Ok::<_, platform::PlatformError>((tokens, cost))
        })
        .await
        .map_err(GatewayError::from_platform)
}
