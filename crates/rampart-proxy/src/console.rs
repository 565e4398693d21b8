//! The operator console: one page served on the admin listener (`GET
//! /console`), and the rate history it charts (`GET /console/api/rates`).
//!
//! **The page** is `console/page.html` with `console/page.css` and
//! `console/page.js` inlined, all compiled into the binary: no external asset,
//! no library. It holds no data, so it is served without the token; every call
//! it makes sends the bearer token the operator typed (kept in the tab's
//! `sessionStorage`, never in a cookie, so a cross-site request cannot carry
//! it). Its Content-Security-Policy allows exactly the inline script and style
//! by their SHA-256 hashes, connections to the admin listener itself, and no
//! framing.
//!
//! **The rate history** is a ring of [`SAMPLES`] samples taken every
//! [`SAMPLE_INTERVAL`] (5 minutes) by [`RateSampler`], a background service
//! that reads the existing counters (requests by route and verdict, refusals by
//! rule, preview matches by flag; see [`Metrics::console_counts`]). The
//! request path does nothing more for it. Rates are the differences of two
//! samples over the time between them. Series come from closed label sets;
//! the ring keeps at most [`MAX_SERIES`] of them (more are ignored and logged
//! once).
//!
//! [`Metrics::console_counts`]: crate::metrics::Metrics::console_counts

use crate::metrics::ConsoleSeries;
use crate::state::Shared;
use async_trait::async_trait;
use base64::Engine as _;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How often the counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: 150 × 2 s = the last 5 minutes.
pub const SAMPLES: usize = 150;
/// Most series the ring tracks (routes × verdicts, rules × reasons, flags).
pub const MAX_SERIES: usize = 2_000;

const PAGE_TEMPLATE: &str = include_str!("console/page.html");
const PAGE_CSS: &str = include_str!("console/page.css");
const PAGE_JS: &str = include_str!("console/page.js");

/// The console page and the Content-Security-Policy that goes with it.
#[derive(Debug)]
pub struct Page {
    /// The whole HTML document, script and style inlined.
    pub html: String,
    /// The `Content-Security-Policy` header value.
    pub csp: String,
}

fn sha256_source(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page, assembled once.
pub static PAGE: LazyLock<Page> = LazyLock::new(|| {
    Page {
    html: PAGE_TEMPLATE
        .replacen("/*STYLE*/", PAGE_CSS, 1)
        .replacen("/*SCRIPT*/", PAGE_JS, 1),
    csp: format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(PAGE_JS),
        sha256_source(PAGE_CSS)
    ),
}
});

/// One sample: when, and each series' value, indexed like [`Ring::names`]
/// (a series created after the sample was taken reads 0 in it).
#[derive(Debug)]
struct Sample {
    unix_ms: u64,
    at: Instant,
    values: Vec<u64>,
}

#[derive(Debug, Default)]
struct Ring {
    names: Vec<ConsoleSeries>,
    index: HashMap<ConsoleSeries, usize>,
    samples: VecDeque<Sample>,
    overflow_logged: bool,
}

/// The last [`SAMPLES`] samples of the console's counters.
#[derive(Debug, Default)]
pub struct RateHistory {
    ring: Mutex<Ring>,
}

/// Rounds a rate to two decimals (the page shows no more).
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl RateHistory {
    /// Adds a sample of `counts` taken at `at` (`unix_ms` for display), dropping
    /// the oldest beyond [`SAMPLES`].
    pub fn record(&self, counts: Vec<(ConsoleSeries, u64)>, unix_ms: u64, at: Instant) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        let mut values = vec![0; ring.names.len()];
        for (series, value) in counts {
            let slot = match ring.index.get(&series) {
                Some(&i) => i,
                None if ring.names.len() < MAX_SERIES => {
                    let i = ring.names.len();
                    ring.names.push(series.clone());
                    ring.index.insert(series, i);
                    values.push(0);
                    i
                }
                None => {
                    if !ring.overflow_logged {
                        ring.overflow_logged = true;
                        log::warn!(
                            "console: more than {MAX_SERIES} series; new ones are not charted"
                        );
                    }
                    continue;
                }
            };
            if let Some(v) = values.get_mut(slot) {
                *v = value;
            }
        }
        if ring.samples.len() == SAMPLES {
            ring.samples.pop_front();
        }
        ring.samples.push_back(Sample {
            unix_ms,
            at,
            values,
        });
    }

    /// The history as JSON: for each interval between two samples, its end
    /// (`times_ms`, Unix milliseconds) and each series' rate over it (per
    /// second). Request and refusal series without any activity in the window
    /// are left out; preview series are kept while their total is not 0, so a
    /// previewed flag's counter is always there. `total` is the counter's
    /// value at the last sample.
    pub fn to_json(&self) -> serde_json::Value {
        let Ok(ring) = self.ring.lock() else {
            return json!({"error": "rate history unavailable"});
        };
        let samples: Vec<&Sample> = ring.samples.iter().collect();
        let times: Vec<u64> = samples.iter().skip(1).map(|s| s.unix_ms).collect();
        let value = |s: &Sample, i: usize| s.values.get(i).copied().unwrap_or(0);
        let mut requests = Vec::new();
        let mut refusals = Vec::new();
        let mut previews = Vec::new();
        let mut order: Vec<usize> = (0..ring.names.len()).collect();
        order.sort_by(|a, b| ring.names[*a].cmp(&ring.names[*b]));
        for i in order {
            let rates: Vec<f64> = samples
                .windows(2)
                .map(|w| {
                    let secs = w[1].at.saturating_duration_since(w[0].at).as_secs_f64();
                    let delta = value(w[1], i).saturating_sub(value(w[0], i));
                    if secs > 0.0 {
                        round2(delta as f64 / secs)
                    } else {
                        0.0
                    }
                })
                .collect();
            let total = samples.last().map(|s| value(s, i)).unwrap_or(0);
            let active = rates.iter().any(|r| *r > 0.0);
            match &ring.names[i] {
                ConsoleSeries::Requests { route, verdict } if active => requests.push(json!({
                    "route": route, "verdict": verdict, "rates": rates, "total": total,
                })),
                ConsoleSeries::Refusals { rule, reason } if active => refusals.push(json!({
                    "rule": rule, "reason": reason, "rates": rates, "total": total,
                })),
                ConsoleSeries::Previews { flag } if total > 0 => previews.push(json!({
                    "flag": flag, "rates": rates, "total": total,
                })),
                _ => {}
            }
        }
        json!({
            "interval_seconds": SAMPLE_INTERVAL.as_secs(),
            "window_seconds": SAMPLE_INTERVAL.as_secs() * (SAMPLES as u64),
            "now_ms": crate::lockdown::now_unix_ms(),
            "times_ms": times,
            "requests": requests,
            "refusals": refusals,
            "previews": previews,
        })
    }
}

/// Samples the console's counters every [`SAMPLE_INTERVAL`] into
/// `Shared::rates`.
#[derive(Debug)]
pub struct RateSampler {
    shared: Arc<Shared>,
}

impl RateSampler {
    /// A sampler for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Takes one sample now.
    pub fn sample(shared: &Shared) {
        shared.rates.record(
            shared.metrics.console_counts(),
            crate::lockdown::now_unix_ms(),
            Instant::now(),
        );
    }
}

#[async_trait]
impl BackgroundService for RateSampler {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(SAMPLE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => RateSampler::sample(&self.shared),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(route: &str, verdict: &str) -> ConsoleSeries {
        ConsoleSeries::Requests {
            route: route.into(),
            verdict: verdict.into(),
        }
    }

    #[test]
    fn rates_are_deltas_over_the_time_between_samples_and_the_ring_keeps_five_minutes() {
        let history = RateHistory::default();
        let start = Instant::now();
        for i in 0..(SAMPLES as u64 + 10) {
            let at = start + Duration::from_secs(2 * i);
            // 10 proxied requests per interval; a refusal series that appears
            // at sample 100; a flag previewed once, long ago.
            let mut counts = vec![(req("register", "proxied"), 10 * i)];
            if i >= 100 {
                counts.push((
                    ConsoleSeries::Refusals {
                        rule: "registration_cn_mobile_only".into(),
                        reason: "body_refused".into(),
                    },
                    4 * (i - 100),
                ));
            }
            counts.push((ConsoleSeries::Previews { flag: "f".into() }, 3));
            history.record(counts, 1_000 * i, at);
        }
        let v = history.to_json();
        let times = v["times_ms"].as_array().unwrap();
        assert_eq!(times.len(), SAMPLES - 1);
        assert_eq!(times.last().unwrap(), &json!(1_000 * (SAMPLES as u64 + 9)));
        let requests = v["requests"].as_array().unwrap();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["route"], "register");
        assert!(requests[0]["rates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == &json!(5.0)));
        assert_eq!(requests[0]["total"], json!(10 * (SAMPLES as u64 + 9)));
        let refusals = v["refusals"].as_array().unwrap();
        assert_eq!(refusals[0]["rule"], "registration_cn_mobile_only");
        let rates = refusals[0]["rates"].as_array().unwrap();
        assert_eq!(rates.last().unwrap(), &json!(2.0));
        // A flag with matches long ago is still listed, at 0 per second.
        let previews = v["previews"].as_array().unwrap();
        assert_eq!(previews[0]["total"], 3);
        assert!(previews[0]["rates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r == &json!(0.0)));
    }

    #[test]
    fn a_counter_that_goes_back_reads_zero_and_quiet_series_are_left_out() {
        let history = RateHistory::default();
        let start = Instant::now();
        history.record(
            vec![(req("a", "proxied"), 50), (req("b", "proxied"), 7)],
            0,
            start,
        );
        history.record(
            vec![(req("a", "proxied"), 10), (req("b", "proxied"), 7)],
            2_000,
            start + Duration::from_secs(2),
        );
        let v = history.to_json();
        assert_eq!(v["requests"], json!([]));
        assert_eq!(v["times_ms"], json!([2_000]));
    }

    #[test]
    fn the_page_inlines_its_script_and_style_and_the_policy_names_their_hashes() {
        let page = &*PAGE;
        assert!(page.html.contains(PAGE_JS) && page.html.contains(PAGE_CSS));
        assert!(!page.html.contains("/*SCRIPT*/") && !page.html.contains("/*STYLE*/"));
        // Nothing loaded from elsewhere.
        for external in ["src=\"http", "href=\"http", "url(", "@import", "src=\"//"] {
            assert!(!page.html.contains(external), "{external}");
        }
        assert!(page
            .csp
            .starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(page.csp.contains("frame-ancestors 'none'"));
        assert!(!page.csp.contains("unsafe"));
    }
}
