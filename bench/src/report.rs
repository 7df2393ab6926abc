//! Figures and the small statistics behind them. Every figure is one JSON line on stdout, so a
//! run can be piped into `jq` or appended to a log; progress notes go to stderr.

use serde_json::json;
use std::borrow::Cow;
use std::time::Duration;

/// One published number.
pub struct Figure {
    pub scenario: &'static str,
    /// Fixed for most scenarios; `cluster` names the target in it (`polls_per_s_nginx3`).
    pub metric: Cow<'static, str>,
    pub value: f64,
    pub unit: &'static str,
    /// The same measurement of the reference (bare handler), where there is one.
    pub baseline: Option<f64>,
}

impl Figure {
    pub fn new(
        scenario: &'static str,
        metric: impl Into<Cow<'static, str>>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Figure {
            scenario,
            metric: metric.into(),
            value,
            unit,
            baseline: None,
        }
    }

    pub fn against(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    /// The JSON line, keys in the documented order: scenario, metric, value, unit, then
    /// baseline and ratio when there is a baseline.
    pub fn to_json(&self) -> String {
        let mut out = format!(
            "{{\"scenario\":{},\"metric\":{},\"value\":{},\"unit\":{}",
            json!(self.scenario),
            json!(self.metric),
            json!(round(self.value)),
            json!(self.unit)
        );
        if let Some(b) = self.baseline {
            let ratio = if b == 0.0 { 0.0 } else { round(self.value / b) };
            out.push_str(&format!(
                ",\"baseline\":{},\"ratio\":{}",
                json!(round(b)),
                json!(ratio)
            ));
        }
        out.push('}');
        out
    }

    /// Prints the figure as one JSON line (flushed at once, so a long run shows progress).
    pub fn print(&self) {
        println!("{}", self.to_json());
    }
}

/// Three significant decimals are more than any of these measurements can carry.
fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A progress note for the person watching the run.
pub fn note(scenario: &str, msg: impl AsRef<str>) {
    eprintln!("[{scenario}] {}", msg.as_ref());
}

/// Latencies of one measurement, in microseconds.
#[derive(Default)]
pub struct Latencies(Vec<u64>);

impl Latencies {
    pub fn record(&mut self, d: Duration) {
        self.0
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn push_micros(&mut self, us: u64) {
        self.0.push(us);
    }

    pub fn merge(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (nearest rank) in milliseconds; 0 when nothing was recorded.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1000.0
    }
}

/// Resident set size of this process, in bytes (Linux `/proc/self/status`, `VmRSS`).
pub fn rss_bytes() -> anyhow::Result<u64> {
    rss_at("/proc/self/status")
}

/// Resident set size of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> anyhow::Result<u64> {
    rss_at(&format!("/proc/{pid}/status"))
}

fn rss_at(path: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(path)?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for us in 1..=100 {
            l.push_micros(us * 1000);
        }
        assert_eq!(l.quantile_ms(0.5), 50.0);
        assert_eq!(l.quantile_ms(0.99), 99.0);
        assert_eq!(l.quantile_ms(1.0), 100.0);
        assert_eq!(Latencies::default().quantile_ms(0.99), 0.0);
    }

    #[test]
    fn ratio_is_value_over_baseline() {
        let line = Figure::new("polls", "polls_per_s", 50.0, "1/s")
            .against(200.0)
            .to_json();
        assert_eq!(
            line,
            r#"{"scenario":"polls","metric":"polls_per_s","value":50.0,"unit":"1/s","baseline":200.0,"ratio":0.25}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["ratio"], json!(0.25));
        let plain = Figure::new("plan", "plan_ms", 1.0, "ms").to_json();
        assert_eq!(
            plain,
            r#"{"scenario":"plan","metric":"plan_ms","value":1.0,"unit":"ms"}"#
        );
    }
}
