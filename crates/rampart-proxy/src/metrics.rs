//! The Prometheus registry. Labels come from closed sets only: route and pool
//! names from config, verdict labels from [`rampart_policy::Rejection::label`],
//! status classes. Never a client address or a raw path.

use crate::state::Snapshot;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Route label for requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "_unmatched";

/// All metrics Rampart exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    reloads: IntCounterVec,
    config_generation: IntGauge,
    upstream_healthy: IntGaugeVec,
}

fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: T,
) -> T {
    // Names are literals below and registered once per registry.
    #[allow(clippy::expect_used)]
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    #[allow(clippy::expect_used)] // start-up only: the metric definitions are constants
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "rampart_http_requests_total",
                    "Requests by route, verdict and status class.",
                ),
                &["route", "verdict", "status_class"],
            )
            .expect("valid metric"),
        );
        let request_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "rampart_http_request_duration_seconds",
                    "Time from request start to the end of the response, by route and verdict.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0,
                ]),
                &["route", "verdict"],
            )
            .expect("valid metric"),
        );
        let reloads = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "rampart_config_reloads_total",
                    "Config reloads by result (success, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
        );
        let config_generation = registered(
            &registry,
            IntGauge::new(
                "rampart_config_generation",
                "Generation of the config in force; increases with each successful reload.",
            )
            .expect("valid metric"),
        );
        let upstream_healthy = registered(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "rampart_upstream_server_healthy",
                    "1 when the origin server is in rotation, 0 when health checks took it out.",
                ),
                &["pool", "server"],
            )
            .expect("valid metric"),
        );
        Self {
            registry,
            requests,
            request_duration,
            reloads,
            config_generation,
            upstream_healthy,
        }
    }

    /// Counts one finished request.
    pub fn request(&self, route: &str, verdict: &str, status: u16, seconds: f64) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "none",
        };
        self.requests
            .with_label_values(&[route, verdict, class])
            .inc();
        self.request_duration
            .with_label_values(&[route, verdict])
            .observe(seconds);
    }

    /// Counts one reload attempt.
    pub fn reloads(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Records a server's health.
    pub fn upstream_health(&self, pool: &str, server: &str, healthy: bool) {
        self.upstream_healthy
            .with_label_values(&[pool, server])
            .set(i64::from(healthy));
    }

    /// Resets per-config series after a (re)load.
    pub fn set_config_info(&self, snapshot: &Snapshot) {
        self.config_generation.set(snapshot.generation as i64);
        self.upstream_healthy.reset();
        for pool in &snapshot.pools {
            for s in &pool.servers {
                self.upstream_health(pool.name(), &s.addr.to_string(), s.health.is_healthy());
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {e}");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
