//! Prometheus metrics in text format. No per-env labels: env ids are tenant data, and per-env series
//! would grow with the number of tenants.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use http::StatusCode;

use crate::surface::Surface;

/// (count, total seconds).
type Observed = (u64, f64);

#[derive(Default)]
pub struct Metrics {
    /// (surface, status) → (count, total seconds).
    requests: Mutex<BTreeMap<(&'static str, u16), Observed>>,
}

impl Metrics {
    pub fn observe(&self, surface: Surface, status: StatusCode, elapsed: Duration) {
        let mut m = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let e = m.entry((surface.name(), status.as_u16())).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += elapsed.as_secs_f64();
    }

    /// The exposition text; `envs` is the current number of environments.
    pub fn render(&self, envs: i64) -> String {
        let mut out = String::new();
        let m = self.requests.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        out.push_str(
            "# HELP http_requests_total HTTP requests by surface and status.\n# TYPE http_requests_total counter\n",
        );
        for ((surface, status), (count, _)) in m.iter() {
            let _ = writeln!(out, "http_requests_total{{surface=\"{surface}\",status=\"{status}\"}} {count}");
        }
        out.push_str("# HELP http_request_duration_seconds_sum Time spent serving requests.\n# TYPE http_request_duration_seconds_sum counter\n");
        for ((surface, status), (_, secs)) in m.iter() {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{surface=\"{surface}\",status=\"{status}\"}} {secs:.6}"
            );
        }
        out.push_str("# HELP environments Environments on this platform.\n# TYPE environments gauge\n");
        let _ = writeln!(out, "environments {envs}");
        out
    }
}
