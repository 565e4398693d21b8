//! Periodic work, as Pingora background services: swapping in changed GeoIP
//! files, and sweeping limiter stores (with their gauges).

use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often limiter stores are swept and their gauges updated.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Checks the GeoIP files every `geoip.check_interval` and swaps changed ones in.
#[derive(Debug)]
pub struct GeoRefresh {
    shared: Arc<Shared>,
}

impl GeoRefresh {
    /// A refresher for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for GeoRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self.shared.snapshot().config.geoip.check_interval;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.shared.refresh_geo_files().await {
                log::error!(
                    "GeoIP file changed but cannot be loaded, the old one keeps serving: {e}"
                );
            }
        }
    }
}

/// Checks the JWKS file of `[jwt]` every `jwt.check_interval` (its
/// modification time and size) and swaps a changed one in; a bad file is
/// logged and counted, and the old keys keep serving.
#[derive(Debug)]
pub struct JwtRefresh {
    shared: Arc<Shared>,
}

impl JwtRefresh {
    /// A refresher for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for JwtRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let every = self
                .shared
                .snapshot()
                .config
                .jwt
                .as_ref()
                .map_or(rampart_config::DEFAULT_JWT_CHECK_INTERVAL, |j| {
                    j.check_interval
                });
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.shared.refresh_jwt_keys().await {
                log::error!(
                    "JWKS file changed but cannot be loaded, the old keys keep serving: {e}"
                );
            }
        }
    }
}

/// Keeps this node's flags in line with the fleet: subscribes to flag changes
/// and re-reads all flags on each announcement and every `resync_interval`;
/// reconnects by itself. With Sentinel it also asks the sentinels every
/// `resync_interval` (and at once after an error that looks like a failover)
/// whether the master moved, and reconnects to the new one; in a cluster it
/// reads which master serves which slot as often (one circuit per master).
#[derive(Debug)]
pub struct FleetSync {
    shared: Arc<Shared>,
}

impl FleetSync {
    /// A sync service for `shared` (does nothing without `[fleet]`).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for FleetSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use futures_util::StreamExt;
        let Some(fleet) = self.shared.fleet.clone() else {
            return;
        };
        let every = fleet.config.resync_interval;
        loop {
            if let Err(e) = fleet.connect().await {
                self.shared.metrics.fleet_degraded(true);
                log::warn!("fleet: cannot connect to Redis: {e}; retrying");
                // Nothing to sync through while the connection in use fails
                // too; with Sentinel down but the master answering, the
                // connection in use serves on.
                if fleet.is_degraded() || !fleet.is_connected() {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    }
                    continue;
                }
            }
            fleet.refresh_topology(&self.shared.metrics).await;
            let pubsub = fleet.subscribe().await;
            let _ = self.shared.fleet_resync().await;
            match fleet.read_bans(&self.shared.metrics).await {
                Ok(bans) => self.shared.sync_fleet_bans(&bans),
                Err(e) => log::warn!("fleet: cannot read the fleet's bans: {e}"),
            }
            let mut messages = match pubsub {
                Ok(p) => Some(p.into_on_message()),
                Err(e) => {
                    log::warn!(
                        "fleet: cannot subscribe to flag changes: {e}; polling every {every:?}"
                    );
                    None
                }
            };
            let mut ticker = tokio::time::interval(every);
            loop {
                let message = async {
                    match messages.as_mut() {
                        Some(m) => m.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.changed() => return,
                    _ = ticker.tick() => {
                        if self.shared.fleet_resync().await.is_err() && messages.is_some() {
                            // Redis is gone: drop the subscription and reconnect.
                            break;
                        }
                        if messages.is_none() {
                            break;
                        }
                        // In a cluster: which master serves which slot, so
                        // that a failing master opens only its own circuit.
                        fleet.refresh_topology(&self.shared.metrics).await;
                        if fleet.master_moved().await {
                            // Sentinel names another master (a failover, or
                            // ours came back as a replica): switch to it.
                            break;
                        }
                    }
                    _ = fleet.rediscovery() => {
                        // An operation failed as if the Sentinel master had
                        // moved: ask the sentinels now, not at the next tick
                        // (unless an operation succeeded since: the call
                        // came from before the last reconnect).
                        if fleet.is_degraded() {
                            break;
                        }
                    }
                    m = message => {
                        let Some(m) = m else { break };
                        if m.get_channel_name() == fleet.bans_key() {
                            match serde_json::from_slice::<crate::fleet::FleetBan>(m.get_payload_bytes()) {
                                Ok(ban) => self.shared.apply_fleet_ban(&ban),
                                Err(e) => log::warn!("fleet: unreadable ban announcement ({e}); ignored"),
                            }
                        } else {
                            let _ = self.shared.fleet_resync().await;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
        }
    }
}

/// Reports this node in the fleet's node list every
/// [`crate::fleet::HEARTBEAT_INTERVAL`] (fleet mode only): its config
/// generation and the flags it applies, with their modes and expiries, so that
/// any node can show which nodes enforce what (`GET /fleet`, the console).
/// A change of its flags is reported within [`HEARTBEAT_CHECK`] rather than at
/// the next interval.
#[derive(Debug)]
pub struct FleetHeartbeat {
    shared: Arc<Shared>,
}

impl FleetHeartbeat {
    /// A heartbeat for `shared` (does nothing without `[fleet]`).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// What this node reports: its generation and the flags it applies now.
    pub fn report(shared: &Shared) -> serde_json::Value {
        let snapshot = shared.snapshot();
        let flags: serde_json::Map<String, serde_json::Value> = snapshot
            .flags
            .active
            .iter()
            .map(|(name, a)| {
                (
                    name.clone(),
                    serde_json::json!({
                        "mode": a.mode.as_str(),
                        "since_ms": a.since_ms,
                        "expires_ms": a.expires_ms,
                    }),
                )
            })
            .collect();
        serde_json::json!({"generation": snapshot.generation, "flags": flags})
    }
}

#[async_trait]
impl BackgroundService for FleetHeartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(fleet) = self.shared.fleet.clone() else {
            return;
        };
        let mut ticker = tokio::time::interval(HEARTBEAT_CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<(std::time::Instant, Arc<crate::lockdown::FlagState>)> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let flags = self.shared.snapshot().flags.clone();
            let due = match &reported {
                None => true,
                Some((at, last)) => {
                    at.elapsed() >= crate::fleet::HEARTBEAT_INTERVAL || !Arc::ptr_eq(last, &flags)
                }
            };
            if !due {
                continue;
            }
            reported = Some((std::time::Instant::now(), flags));
            let report = Self::report(&self.shared).to_string();
            // Failures mark the node degraded (like any Redis operation) and
            // are retried on the next tick.
            let _ = fleet
                .heartbeat(&self.shared.node, &report, &self.shared.metrics)
                .await;
        }
    }
}

/// How often the heartbeat looks for a change of this node's flags.
pub const HEARTBEAT_CHECK: Duration = Duration::from_millis(250);

/// How often flag expiries are checked.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(250);

/// Turns off lockdown flags whose TTL has passed (audited).
#[derive(Debug)]
pub struct FlagExpiry {
    shared: Arc<Shared>,
}

impl FlagExpiry {
    /// An expiry service for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for FlagExpiry {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            for flag in self.shared.expire_flags().await {
                log::warn!("lockdown flag {flag} expired and is off");
            }
        }
    }
}

/// Sweeps every limiter rule every [`SWEEP_INTERVAL`] and updates its metrics.
#[derive(Debug)]
pub struct LimiterSweep {
    shared: Arc<Shared>,
}

impl LimiterSweep {
    /// A sweeper for `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// One sweep of the current snapshot's rules (fleet fallback buckets and
    /// leases included), then [`LimiterSweep::record`].
    pub fn sweep_once(shared: &Shared) {
        if let Some(fleet) = &shared.fleet {
            fleet.sweep();
        }
        let snapshot = shared.snapshot();
        snapshot.policy.sweep();
        if let Some(jwt) = &snapshot.jwt {
            jwt.verifier.sweep();
        }
        Self::record(shared);
    }

    /// Brings the limiter metrics up to date (no sweep).
    pub fn record(shared: &Shared) {
        use crate::metrics::LimiterKind;
        let snapshot = shared.snapshot();
        if let Some(jwt) = &snapshot.jwt {
            shared
                .metrics
                .jwt
                .set_state(jwt.verifier.keys().len(), jwt.verifier.cached_tokens());
        }
        let rate = snapshot
            .policy
            .rate_rules()
            .iter()
            .map(|r| (r, LimiterKind::Rate));
        let fallback = snapshot
            .policy
            .fallback_rules()
            .iter()
            .flatten()
            .map(|r| (r, LimiterKind::FleetFallback));
        for (rule, kind) in rate.chain(fallback) {
            shared.metrics.limiter(
                &rule.config.name,
                kind,
                rule.tracked_keys(),
                rule.config.max_keys.get(),
                rule.evicted(),
                rule.fallbacks(),
            );
        }
        for (rule, bans) in snapshot
            .policy
            .rate_rules()
            .iter()
            .zip(snapshot.policy.ban_tables())
        {
            let Some(bans) = bans else { continue };
            shared.metrics.limiter(
                &rule.config.name,
                LimiterKind::Ban,
                bans.tracked_keys(),
                bans.config.max_keys.get(),
                0,
                0,
            );
            shared
                .metrics
                .bans(&rule.config.name, bans.active_count(), bans.bans_total());
        }
        for rule in snapshot.policy.concurrency_rules() {
            shared.metrics.limiter(
                &rule.config.name,
                LimiterKind::Concurrency,
                rule.tracked_keys(),
                rule.config.max_keys.get(),
                0,
                rule.fallbacks(),
            );
        }
    }
}

#[async_trait]
impl BackgroundService for LimiterSweep {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let shared = self.shared.clone();
            // A sweep walks whole maps: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || LimiterSweep::sweep_once(&shared)).await;
        }
    }
}
