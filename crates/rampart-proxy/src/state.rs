//! Runtime state: the immutable policy snapshot that each request reads once, and
//! the one place that replaces it (reload).

use crate::lockdown::{self, Activation, AuditEntry, FlagState, Loaded, Mode};
use crate::metrics::{Metrics, PoolHandles, ProxiedHandles, UNMATCHED_ROUTE};
use crate::pool::{HealthRegistry, Pool, ResolvedServers};
use arc_swap::ArcSwap;
use rampart_config::{Config, ConfigError, GeoipConfig};
use rampart_policy::geo::{FileStamp, GeoError, GeoFile};
use rampart_policy::FlagMode;
use rampart_policy::{GeoDb, Policy, RouteTable};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Everything a request needs to be decided, frozen for its whole life.
#[derive(Debug)]
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// Route matching over `config.routes`.
    pub routes: RouteTable,
    /// Pools, indexed like `config.pools`.
    pub pools: Vec<Pool>,
    /// Access rules, limiters and in-flight caps.
    pub policy: Policy,
    /// Increases by one with every successful reload.
    pub generation: u64,
    /// Proxied-request metric handles per route, plus one for unmatched requests.
    proxied: Vec<ProxiedHandles>,
    /// Origin metric handles, indexed like `pools`.
    pub pool_metrics: Vec<PoolHandles>,
}

impl Snapshot {
    fn new(
        config: Config,
        servers: &ResolvedServers,
        registry: &HealthRegistry,
        metrics: &Metrics,
        generation: u64,
        previous: Option<&Policy>,
    ) -> Self {
        let pools: Vec<Pool> = config
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| Pool::new(p, servers.of_pool(i), registry))
            .collect();
        let proxied = config
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .chain([UNMATCHED_ROUTE])
            .map(|route| metrics.proxied_handles(route))
            .collect();
        let pool_metrics = pools
            .iter()
            .map(|p| metrics.pool_handles(p.name()))
            .collect();
        Self {
            proxied,
            pool_metrics,
            policy: Policy::new(&config, governor_clock(), previous),
            routes: RouteTable::new(&config),
            pools,
            config,
            generation,
        }
    }

    /// The proxied-request metric handles of route `route` (`None`: unmatched).
    pub fn proxied_handles(&self, route: Option<usize>) -> Option<&ProxiedHandles> {
        route
            .and_then(|r| self.proxied.get(r))
            .or_else(|| self.proxied.last())
    }

    /// Whether every server of every pool has had its first health probe.
    pub fn is_ready(&self) -> bool {
        self.pools
            .iter()
            .all(|p| p.servers.iter().all(|s| s.health.is_probed()))
    }
}

/// The clock of every limiter.
fn governor_clock() -> governor::clock::DefaultClock {
    governor::clock::DefaultClock::default()
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new file is invalid; the old config keeps serving.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// A GeoIP database of the new config cannot be opened.
    #[error("{0}")]
    Geo(#[from] GeoError),
    /// The reload task could not run.
    #[error("reload task failed: {0}")]
    Task(String),
    /// The new file no longer defines flags that are on: a reload must not
    /// lift a lockdown silently. Turn them off first.
    #[error("the new config no longer defines active lockdown flag(s) {}; disable them first (rampart lockdown disable NAME), then reload", .0.join(", "))]
    ActiveFlagRemoved(Vec<String>),
}

/// State shared by the proxy, the admin API and the background services.
#[derive(Debug)]
pub struct Shared {
    /// The config file that reloads re-read.
    pub config_path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    geo: ArcSwap<GeoDb>,
    flags: ArcSwap<FlagState>,
    flag_lock: tokio::sync::Mutex<()>,
    /// This node's name in audit records (the host name).
    pub node: String,
    health: HealthRegistry,
    generation: AtomicU64,
    reload_lock: tokio::sync::Mutex<()>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The access log, when on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Top sources of rejected requests.
    pub offenders: std::sync::Mutex<Offenders>,
    /// Fleet mode (Redis), when configured.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The public listeners this process started with, for `/readyz`.
    pub listeners: crate::listening::ListenerProbe,
    /// Applied to every config this process loads (start-up and reloads).
    pub overlay: Option<ConfigOverlay>,
}

/// A change applied to every loaded config: `rampart demo` trusts loopback as a
/// proxy for itself without the shipped file doing so.
pub type ConfigOverlay = fn(&mut Config);

/// Keys per kind kept by the top-offender summaries.
pub const OFFENDER_CAPACITY: usize = 64;
/// Length of one epoch of the top-offender window (the window is two epochs).
pub const OFFENDER_EPOCH_SECS: u64 = 60;

/// Top sources of rejected requests by address, network and AS.
#[derive(Debug)]
pub struct Offenders {
    /// By client address.
    pub ips: rampart_policy::top::WindowedTop<std::net::IpAddr>,
    /// By /24 (IPv4) or /48 (IPv6).
    pub prefixes: rampart_policy::top::WindowedTop<ipnet::IpNet>,
    /// By AS number.
    pub asns: rampart_policy::top::WindowedTop<u32>,
}

impl Default for Offenders {
    fn default() -> Self {
        use rampart_policy::top::WindowedTop;
        Self {
            ips: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
            prefixes: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
            asns: WindowedTop::new(OFFENDER_CAPACITY, OFFENDER_EPOCH_SECS),
        }
    }
}

impl Shared {
    /// State for a freshly loaded config and its resolved origin `servers`
    /// ([`crate::pool::resolve_servers`]); opens its GeoIP databases.
    pub fn new(
        config_path: PathBuf,
        config: Config,
        servers: &ResolvedServers,
        access_log: Option<crate::access_log::AccessLog>,
    ) -> Result<Self, GeoError> {
        let geo = GeoDb::open(&config.geoip)?;
        let health = HealthRegistry::default();
        let metrics = Metrics::new();
        let snapshot = Snapshot::new(config, servers, &health, &metrics, 1, None);
        metrics.set_config_info(&snapshot);
        metrics.set_geo_info(&geo);
        let fleet = match &snapshot.config.fleet {
            Some(f) => Some(Arc::new(crate::fleet::Fleet::new(f.clone()).map_err(
                |reason| GeoError {
                    path: config_path.clone(),
                    reason,
                },
            )?)),
            None => None,
        };
        let node = snapshot
            .config
            .fleet
            .as_ref()
            .and_then(|f| f.node.clone())
            .unwrap_or_else(node_name);
        let (active, loaded) = lockdown::load(&snapshot.config);
        let lockdown_config = &snapshot.config.lockdown;
        match &loaded {
            Loaded::Corrupt { moved_to, error } => {
                log::error!(
                    "LOCKDOWN STATE FILE {} IS CORRUPT ({error}); set aside as {}; starting with the flags config marks default_active",
                    lockdown_config.state_file.display(),
                    moved_to.display()
                );
                metrics.lockdown_state_error();
                lockdown::audit(
                    &lockdown_config.audit_log,
                    &AuditEntry {
                        time: lockdown::now_unix(),
                        actor: "rampart",
                        action: "corrupt_state",
                        flag: "",
                        mode: None,
                        reason: error,
                        ttl_seconds: None,
                        expires: None,
                        node: &node,
                    },
                );
            }
            Loaded::Restored => log::info!(
                "lockdown state restored from {}: {} active flag(s)",
                lockdown_config.state_file.display(),
                active.len()
            ),
            Loaded::Missing => {}
        }
        if fleet.is_some() {
            metrics.fleet_degraded(true);
        }
        let active = settle_restored(active, &snapshot.config, &node, &metrics);
        let flags = FlagState::new(active, lockdown_config, 1);
        metrics.set_flags(&flags, lockdown_config);
        let listeners = crate::listening::ListenerProbe::new(
            snapshot
                .config
                .listeners
                .iter()
                .map(|l| l.address)
                .collect(),
        );
        Ok(Self {
            config_path,
            listeners,
            snapshot: ArcSwap::from_pointee(snapshot),
            geo: ArcSwap::from_pointee(geo),
            flags: ArcSwap::from_pointee(flags),
            flag_lock: tokio::sync::Mutex::new(()),
            node,
            access_log,
            offenders: std::sync::Mutex::new(Offenders::default()),
            fleet,
            health,
            generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
            metrics,
            overlay: None,
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The current flag state.
    pub fn flags(&self) -> arc_swap::Guard<Arc<FlagState>> {
        self.flags.load()
    }

    /// Flag modes for `snapshot`: the precomputed ones, or (in the instant after a
    /// reload, before they are recomputed) computed for this request.
    pub fn modes_for(&self, snapshot: &Snapshot, flags: &FlagState) -> Option<Vec<FlagMode>> {
        (flags.generation != snapshot.generation)
            .then(|| lockdown::modes_for(&flags.active, &snapshot.config.lockdown))
    }

    fn store_flags(&self, active: BTreeMap<String, Activation>) -> bool {
        let snapshot = self.snapshot();
        let lockdown_config = &snapshot.config.lockdown;
        let persisted = match lockdown::persist(&lockdown_config.state_file, &active) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "cannot write the lockdown state file {}: {e}; the change is in force but will not survive a restart",
                    lockdown_config.state_file.display()
                );
                self.metrics.lockdown_state_error();
                false
            }
        };
        let state = FlagState::new(active, lockdown_config, snapshot.generation);
        self.metrics.set_flags(&state, lockdown_config);
        self.flags.store(Arc::new(state));
        persisted
    }

    /// Turns `flag` on. Returns the activation and whether it was persisted.
    pub async fn enable_flag(
        &self,
        flag: &str,
        mode: Mode,
        actor: &str,
        reason: &str,
        ttl: Option<std::time::Duration>,
    ) -> Result<(Activation, bool), FlagError> {
        let _one_writer = self.flag_lock.lock().await;
        let snapshot = self.snapshot();
        if snapshot.config.lockdown.flag_index(flag).is_none() {
            return Err(FlagError::Unknown(known_flags(&snapshot)));
        }
        let since_ms = lockdown::now_unix_ms();
        let since = since_ms / 1000;
        let activation = Activation {
            mode,
            actor: actor.to_string(),
            reason: reason.to_string(),
            since_ms,
            expires_ms: ttl.map(|t| {
                since_ms.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
            }),
        };
        if let Some(fleet) = &self.fleet {
            fleet
                .write_flag(flag, &activation, &self.metrics)
                .await
                .map_err(|e| FlagError::Fleet(e.to_string()))?;
        }
        let mut active = self.flags().active.clone();
        active.insert(flag.to_string(), activation.clone());
        let persisted = self.store_flags(active);
        self.metrics.lockdown_change(flag, "enable");
        lockdown::audit(
            &snapshot.config.lockdown.audit_log,
            &AuditEntry {
                time: since,
                actor,
                action: "enable",
                flag,
                mode: Some(mode.as_str()),
                reason,
                ttl_seconds: ttl.map(|t| t.as_secs()),
                expires: activation.expires(),
                node: &self.node,
            },
        );
        Ok((activation, persisted))
    }

    /// Turns `flag` off. Returns whether it was on, and whether the new state was persisted.
    pub async fn disable_flag(
        &self,
        flag: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(bool, bool), FlagError> {
        let _one_writer = self.flag_lock.lock().await;
        let snapshot = self.snapshot();
        if snapshot.config.lockdown.flag_index(flag).is_none() {
            return Err(FlagError::Unknown(known_flags(&snapshot)));
        }
        if let Some(fleet) = &self.fleet {
            fleet
                .delete_flag(flag, &self.metrics)
                .await
                .map_err(|e| FlagError::Fleet(e.to_string()))?;
        }
        let mut active = self.flags().active.clone();
        if active.remove(flag).is_none() {
            return Ok((false, true));
        }
        let persisted = self.store_flags(active);
        self.metrics.lockdown_change(flag, "disable");
        lockdown::audit(
            &snapshot.config.lockdown.audit_log,
            &AuditEntry {
                time: lockdown::now_unix(),
                actor,
                action: "disable",
                flag,
                mode: None,
                reason,
                ttl_seconds: None,
                expires: None,
                node: &self.node,
            },
        );
        Ok((true, persisted))
    }

    /// Turns off every flag whose expiry has passed; returns their names.
    pub async fn expire_flags(&self) -> Vec<String> {
        let now_ms = lockdown::now_unix_ms();
        let now = now_ms / 1000;
        let due = |a: &Activation| a.is_due(now_ms);
        if !self.flags().active.values().any(due) {
            return Vec::new();
        }
        let _one_writer = self.flag_lock.lock().await;
        let mut active = self.flags().active.clone();
        let expired: Vec<String> = active
            .iter()
            .filter(|(_, a)| due(a))
            .map(|(n, _)| n.clone())
            .collect();
        if expired.is_empty() {
            return expired;
        }
        let mut audited = Vec::new();
        for flag in &expired {
            let Some(a) = active.get(flag) else { continue };
            // Fleet-wide, the node whose script removes the flag audits it, once.
            let ours = match &self.fleet {
                None => true,
                Some(fleet) => match fleet.expire_flag(flag, a, &self.metrics).await {
                    Ok(removed) => removed,
                    Err(e) => {
                        log::error!("fleet: cannot expire {flag} in Redis ({e}); expired locally");
                        true
                    }
                },
            };
            if ours {
                audited.push(flag.clone());
            }
        }
        active.retain(|_, a| !due(a));
        self.store_flags(active);
        let snapshot = self.snapshot();
        for flag in &audited {
            self.metrics.lockdown_change(flag, "expire");
            lockdown::audit(
                &snapshot.config.lockdown.audit_log,
                &AuditEntry {
                    time: now,
                    actor: "rampart",
                    action: "expire",
                    flag,
                    mode: None,
                    reason: "ttl passed",
                    ttl_seconds: None,
                    expires: None,
                    node: &self.node,
                },
            );
        }
        expired
    }

    /// Brings the local flags in line with Redis (fleet mode). Returns whether
    /// anything changed.
    pub async fn fleet_resync(&self) -> Result<bool, crate::fleet::FleetError> {
        let Some(fleet) = &self.fleet else {
            return Ok(false);
        };
        let mut remote = fleet.read_flags(&self.metrics).await?;
        let snapshot = self.snapshot();
        remote.retain(|name, _| snapshot.config.lockdown.flag_index(name).is_some());
        let _one_writer = self.flag_lock.lock().await;
        let local = self.flags().active.clone();
        if remote == local {
            return Ok(false);
        }
        let now_ms = lockdown::now_unix_ms();
        let newest = remote
            .iter()
            .filter(|(name, a)| local.get(*name) != Some(a))
            .map(|(_, a)| a.since_ms)
            .max();
        if let Some(since_ms) = newest {
            self.metrics
                .fleet_sync_lag(now_ms.saturating_sub(since_ms) as f64 / 1000.0);
        }
        log::info!(
            "fleet: flags changed elsewhere; now active: {:?}",
            remote.keys().collect::<Vec<_>>()
        );
        self.store_flags(remote);
        Ok(true)
    }

    /// The current GeoIP databases (cheap; read once per request).
    pub fn geo(&self) -> arc_swap::Guard<Arc<GeoDb>> {
        self.geo.load()
    }

    /// Reopens a GeoIP file whose stamp changed on disk and swaps the new reader
    /// in; requests in flight keep the reader they loaded. A file that cannot be
    /// opened is refused and the old reader keeps serving. Returns whether a swap
    /// happened.
    pub fn refresh_geo(&self, config: &GeoipConfig) -> Result<bool, GeoError> {
        let current = self.geo();
        let changed = |file: &Option<GeoFile>, path: &Option<PathBuf>| match (file, path) {
            (Some(f), Some(p)) => f.path != *p || FileStamp::of(p) != Some(f.stamp),
            (None, None) => false,
            _ => true,
        };
        if !changed(&current.country, &config.country_db) && !changed(&current.asn, &config.asn_db)
        {
            return Ok(false);
        }
        let fresh = GeoDb::open(config);
        match fresh {
            Ok(db) => {
                self.metrics.set_geo_info(&db);
                self.metrics.geo_reloads("success");
                self.geo.store(Arc::new(db));
                log::info!("GeoIP databases reloaded");
                Ok(true)
            }
            Err(e) => {
                self.metrics.geo_reloads("error");
                Err(e)
            }
        }
    }

    /// Re-reads the config file and swaps it in. A bad file is refused and the
    /// old config keeps serving. Requests in flight finish on the snapshot they
    /// started with. Listener, admin and server settings only change on restart;
    /// a reload that changes them says so in the log.
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let (path, overlay) = (self.config_path.clone(), self.overlay);
        // Origin names are resolved here too, off the runtime: a name that does
        // not resolve refuses the reload like any other config error.
        let loaded = tokio::task::spawn_blocking(move || {
            let mut config = rampart_config::load(&path)?;
            if let Some(overlay) = overlay {
                overlay(&mut config);
            }
            let servers = crate::pool::resolve_servers(&config, &path)?;
            Ok::<_, ConfigError>((config, servers))
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()));
        let (config, servers) = match loaded {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) => {
                self.metrics.reloads("error");
                log::error!("config reload refused, old config keeps serving:\n{e}");
                return Err(e.into());
            }
            Err(e) => {
                self.metrics.reloads("error");
                return Err(e);
            }
        };
        let dropped: Vec<String> = self
            .flags()
            .active
            .keys()
            .filter(|name| config.lockdown.flag_index(name).is_none())
            .cloned()
            .collect();
        if !dropped.is_empty() {
            self.metrics.reloads("error");
            let e = ReloadError::ActiveFlagRemoved(dropped);
            log::error!("config reload refused, old config keeps serving: {e}");
            return Err(e);
        }
        let old = self.snapshot();
        warn_restart_only_changes(&old.config, &config);
        if old.config.geoip != config.geoip {
            if let Err(e) = self.refresh_geo(&config.geoip) {
                self.metrics.reloads("error");
                log::error!("config reload refused, old config keeps serving: {e}");
                return Err(e.into());
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot = Snapshot::new(
            config,
            &servers,
            &self.health,
            &self.metrics,
            generation,
            Some(&old.policy),
        );
        let keep: Vec<_> = snapshot
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(|s| (p.name().to_string(), s.addr)))
            .collect();
        self.health.retain(&keep);
        self.metrics.set_config_info(&snapshot);
        let lockdown_config = snapshot.config.lockdown.clone();
        self.snapshot.store(Arc::new(snapshot));
        {
            // Recompute modes for the new flag order. A flag enabled between the
            // check above and here, and dropped by the file, cannot be: enabling
            // checks the snapshot, which was the old one then; keep it, loudly.
            let _one_writer = self.flag_lock.lock().await;
            let active = self.flags().active.clone();
            for name in active.keys() {
                if lockdown_config.flag_index(name).is_none() {
                    log::error!("reload: active flag \"{name}\" is not in the new config; it stays recorded and has no effect until it is defined again or disabled");
                }
            }
            self.store_flags(active);
        }
        self.metrics.reloads("success");
        log::info!(
            "config reloaded from {} (generation {generation})",
            self.config_path.display()
        );
        Ok(generation)
    }
}

/// Why a flag change was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// No such flag in the config; the known ones are listed.
    #[error("unknown flag (known: {})", .0.join(", "))]
    Unknown(Vec<String>),
    /// Fleet mode and Redis cannot be written: the change is not applied.
    #[error("the fleet store (Redis) is unreachable, nothing changed: {0}")]
    Fleet(String),
}

fn known_flags(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .config
        .lockdown
        .flags
        .iter()
        .map(|f| f.name.clone())
        .collect()
}

/// Drops, before the first request is served, restored flags whose expiry passed
/// while Rampart was down and flags the config no longer defines; each drop is
/// audited and the state file rewritten.
fn settle_restored(
    mut active: BTreeMap<String, Activation>,
    config: &Config,
    node: &str,
    metrics: &Metrics,
) -> BTreeMap<String, Activation> {
    let now_ms = lockdown::now_unix_ms();
    let lockdown_config = &config.lockdown;
    let mut dropped = Vec::new();
    active.retain(|name, a| {
        let why = if a.is_due(now_ms) {
            Some(("expire", "ttl passed while Rampart was down"))
        } else if lockdown_config.flag_index(name).is_none() {
            Some(("disable", "no longer defined in the config at start-up"))
        } else {
            None
        };
        if let Some((action, reason)) = why {
            dropped.push((name.clone(), action, reason, a.expires()));
        }
        why.is_none()
    });
    for (flag, action, reason, expires) in &dropped {
        log::warn!("lockdown state: flag \"{flag}\" dropped at start-up: {reason}");
        metrics.lockdown_change(flag, action);
        lockdown::audit(
            &lockdown_config.audit_log,
            &AuditEntry {
                time: now_ms / 1000,
                actor: "rampart",
                action,
                flag,
                mode: None,
                reason,
                ttl_seconds: None,
                expires: *expires,
                node,
            },
        );
    }
    if !dropped.is_empty() {
        if let Err(e) = lockdown::persist(&lockdown_config.state_file, &active) {
            log::error!("cannot rewrite the lockdown state file: {e}");
            metrics.lockdown_state_error();
        }
    }
    active
}

/// The host name, for audit records.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rampart".to_string())
}

fn warn_restart_only_changes(old: &Config, new: &Config) {
    let listeners = |c: &Config| -> Vec<String> {
        c.listeners
            .iter()
            .map(|l| format!("{}/{}/{}", l.address, l.h2c, l.tls.is_some()))
            .collect()
    };
    if listeners(old) != listeners(new) {
        log::warn!("reload: [[listeners]] changed; listeners only change on restart");
    }
    if old.admin.address != new.admin.address || old.admin.token != new.admin.token {
        log::warn!("reload: [admin] changed; the admin listener only changes on restart");
    }
    if old.server.threads != new.server.threads
        || old.server.work_stealing != new.server.work_stealing
        || old.server.upstream_keepalive_pool_size != new.server.upstream_keepalive_pool_size
    {
        log::warn!("reload: [server] changed; server settings only change on restart");
    }
}
