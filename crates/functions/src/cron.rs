//! Scheduled invocations. A schedule is a 5-field cron expression in UTC (minute, hour, day of month,
//! month, day of week; `*`, `a-b`, `a,b`, `*/n`, `a-b/n`). Each function row holds its next due time;
//! an instance fires a due schedule only after moving `next_run_at` on with a conditional UPDATE that
//! names the old value, so with several instances on one database exactly one fires each time.

use std::time::Duration;

use protocol::EnvId;

use crate::{CallerAuth, Functions, Invocation};

/// A parsed schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    /// Both day fields restricted: either may match (cron's rule).
    day_or: bool,
}

fn field(text: &str, lo: u32, hi: u32, name: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("bad {name} field {text:?} (allowed {lo}-{hi})");
    let mut out = Vec::new();
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| bad())?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(bad());
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        } else {
            let v: u32 = range.parse().map_err(|_| bad())?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(bad());
        }
        out.extend((a..=b).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        if parts.len() != 5 || text.len() > 200 {
            return Err("a schedule has 5 fields: minute hour day-of-month month day-of-week".to_owned());
        }
        let mut weekdays = field(parts[4], 0, 7, "day-of-week")?;
        // 7 is Sunday too.
        if weekdays.contains(&7) {
            weekdays.retain(|d| *d != 7);
            if !weekdays.contains(&0) {
                weekdays.insert(0, 0);
            }
        }
        Ok(Self {
            minutes: field(parts[0], 0, 59, "minute")?,
            hours: field(parts[1], 0, 23, "hour")?,
            days: field(parts[2], 1, 31, "day-of-month")?,
            months: field(parts[3], 1, 12, "month")?,
            weekdays,
            day_or: parts[2] != "*" && parts[4] != "*",
        })
    }

    /// The first minute strictly after `ms` (Unix ms) that matches, within about five years.
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let mut minute = ms.div_euclid(60_000) + 1;
        let end = minute + 5 * 366 * 24 * 60;
        while minute < end {
            let days = minute.div_euclid(24 * 60);
            let (y, m, d) = civil(days);
            let weekday = u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0);
            let day_ok = if self.day_or {
                self.days.contains(&d) || self.weekdays.contains(&weekday)
            } else {
                self.days.contains(&d) && self.weekdays.contains(&weekday)
            };
            if !self.months.contains(&m) || !day_ok {
                minute = (days + 1) * 24 * 60;
                let _ = y;
                continue;
            }
            let in_day = u32::try_from(minute.rem_euclid(24 * 60)).unwrap_or(0);
            let (h, mi) = (in_day / 60, in_day % 60);
            if !self.hours.contains(&h) {
                minute += 60 - i64::from(mi);
                continue;
            }
            if self.minutes.contains(&mi) {
                return Some(minute * 60_000);
            }
            minute += 1;
        }
        None
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// How often each instance looks for due schedules.
pub const TICK: Duration = Duration::from_secs(5);

pub(crate) fn spawn(functions: &Functions) {
    let weak = std::sync::Arc::downgrade(&functions.inner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TICK).await;
            let Some(inner) = weak.upgrade() else { return };
            Functions { inner }.fire_due().await;
        }
    });
}

impl Functions {
    /// Claims and fires every due schedule (returns how many this instance fired).
    pub async fn fire_due(&self) -> usize {
        let now = self.inner.platform.clock().now_ms();
        let due = self
            .inner
            .platform
            .db()
            .tx(move |conn| {
                conn.query(
                    "SELECT env_id, name, schedule, next_run_at FROM functions \
                     WHERE next_run_at IS NOT NULL AND next_run_at <= $1 ORDER BY next_run_at LIMIT 100",
                    &[now.into()],
                )
            })
            .await;
        let rows = match due {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read due schedules");
                return 0;
            }
        };
        let mut fired = 0;
        for row in rows {
            let (Ok(env), Ok(name), Ok(Some(text)), Ok(Some(at))) =
                (row.text(0), row.text(1), row.opt_text(2), row.opt_int(3))
            else {
                continue;
            };
            let next = Schedule::parse(&text).ok().and_then(|s| s.next_after(now.max(at)));
            let (e, n) = (env.clone(), name.clone());
            // The claim: only the instance whose UPDATE still sees the old due time fires.
            let claimed = self
                .inner
                .platform
                .db()
                .tx(move |conn| {
                    conn.execute(
                        "UPDATE functions SET next_run_at = $4 WHERE env_id = $1 AND name = $2 AND next_run_at = $3",
                        &[e.into(), n.into(), at.into(), next.into()],
                    )
                })
                .await;
            if !matches!(claimed, Ok(1)) {
                continue;
            }
            let Ok(env) = EnvId::parse(&env) else { continue };
            fired += 1;
            let f = self.clone();
            tokio::spawn(async move {
                let body = serde_json::json!({"scheduled_at": platform::runtime::rfc3339(at)}).to_string();
                let inv = Invocation {
                    method: "POST".to_owned(),
                    subpath: String::new(),
                    query: String::new(),
                    query_params: Default::default(),
                    headers: vec![("content-type".to_owned(), "application/json".to_owned())],
                    body: body.into(),
                    auth: CallerAuth { role: "service_role".to_owned(), claims: serde_json::Value::Null },
                    trigger: "schedule",
                    request_id: format!("cron-{at}"),
                };
                if let Err(e) = f.invoke(&env, &name, inv).await {
                    tracing::info!(env = %env, function = %name, error = %e, "scheduled invocation failed");
                }
            });
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> i64 {
        platform::runtime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn next_times_follow_cron_semantics() {
        let every5 = Schedule::parse("*/5 * * * *").unwrap();
        assert_eq!(every5.next_after(at("2026-11-28T23:31:10Z")), Some(at("2026-11-28T23:35:00Z")));
        assert_eq!(every5.next_after(at("2026-11-28T23:35:00Z")), Some(at("2026-11-28T23:40:00Z")));
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        assert_eq!(nightly.next_after(at("2026-11-28T23:31:00Z")), Some(at("2026-11-29T02:30:00Z")));
        // 2026-12-01 is a Tuesday; Mondays at 09:00 → 2026-12-07.
        let mondays = Schedule::parse("0 9 * * 1").unwrap();
        assert_eq!(mondays.next_after(at("2026-12-01T00:00:00Z")), Some(at("2026-12-07T09:00:00Z")));
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(leap.next_after(at("2026-03-01T00:00:00Z")), Some(at("2028-02-29T00:00:00Z")));
        let sunday = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(sunday.next_after(at("2026-11-28T00:00:00Z")), Some(at("2026-11-29T00:00:00Z")));
    }

    #[test]
    fn bad_schedules_are_refused() {
        for bad in ["", "* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "5-1 * * * *", "a * * * *", "* * 0 * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Schedule::parse("0 0 31 2 *").unwrap().next_after(0), None, "never fires");
    }
}
