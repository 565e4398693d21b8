//! Runtime state: one immutable [`Snapshot`] (config, routes, pools, policy,
//! GeoIP databases, lockdown flags, generation) behind one swap, and the one
//! writer that replaces it.
//!
//! A request loads the snapshot once and decides on it from start to end:
//! config, GeoIP and flags always belong together, so nothing is patched per
//! request. Every change goes through [`Shared::apply`], which takes the
//! writer's lock, builds the next snapshot from the current one and a typed
//! [`Command`] (reload, flag change, expiry, GeoIP swap, fleet sync), and
//! commits it in one place: one swap, one write of the state file when the flags
//! changed, and exactly one audit record (and one
//! `rampart_lockdown_changes_total` count) per flag change.

use crate::lockdown::{self, Activation, AuditEntry, FlagState, Loaded, Mode};
use crate::metrics::{Metrics, PoolHandles, ProxiedHandles, UNMATCHED_ROUTE};
use crate::offenders::Offenders;
use crate::pool::{HealthRegistry, Pool, ResolvedServers};
use arc_swap::ArcSwap;
use rampart_config::{Config, ConfigError};
use rampart_policy::geo::{FileStamp, GeoError, GeoFile};
use rampart_policy::{GeoDb, Policy, Rejection};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What one config applies: built together on start-up and on each reload.
#[derive(Debug)]
pub struct Applied {
    /// The validated config.
    pub config: Config,
    /// Pools, indexed like `config.pools`.
    pub pools: Vec<Pool>,
    /// Routes, access rules, limiters and in-flight caps.
    pub policy: Policy,
    /// Proxied-request metric handles per route, plus one for unmatched requests.
    proxied: Vec<ProxiedHandles>,
    /// Origin metric handles, indexed like `pools`.
    pub pool_metrics: Vec<PoolHandles>,
}

impl Applied {
    fn new(
        config: Config,
        servers: &ResolvedServers,
        registry: &HealthRegistry,
        metrics: &Metrics,
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
            policy: Policy::new(&config, governor::clock::DefaultClock::default(), previous),
            pools,
            config,
        }
    }

    /// The proxied-request metric handles of route `route` (`None`: unmatched).
    pub fn proxied_handles(&self, route: Option<usize>) -> Option<&ProxiedHandles> {
        route
            .and_then(|r| self.proxied.get(r))
            .or_else(|| self.proxied.last())
    }

    /// The refusal for a request to pool `pool` when none of its servers is
    /// healthy.
    pub fn unhealthy_pool(&self, pool: usize) -> Option<Rejection> {
        let pool = self.pools.get(pool)?;
        (!pool.has_healthy()).then(|| Rejection::NoHealthyUpstream {
            pool: pool.name().to_string(),
        })
    }

    /// Whether every server of every pool has had its first health probe.
    pub fn is_ready(&self) -> bool {
        self.pools
            .iter()
            .all(|p| p.servers.iter().all(|s| s.health.is_probed()))
    }
}

/// Everything a request needs to be decided, frozen for its whole life.
/// Dereferences to its [`Applied`] config.
#[derive(Debug, Clone)]
pub struct Snapshot {
    applied: Arc<Applied>,
    /// The GeoIP databases.
    pub geo: Arc<GeoDb>,
    /// The lockdown flags, with their modes for this config.
    pub flags: Arc<FlagState>,
    /// The key set of `key = "jwt"` rules (`[jwt]`), swapped when the JWKS
    /// file changes.
    pub jwt: Option<Arc<crate::jwt::JwtLoaded>>,
    /// Increases by one with every successful reload.
    pub generation: u64,
}

impl std::ops::Deref for Snapshot {
    type Target = Applied;

    fn deref(&self) -> &Applied {
        &self.applied
    }
}

impl Snapshot {
    /// Where `key = "jwt"` rules get a request's verified identity.
    pub fn identity_source(&self) -> rampart_policy::IdentitySource<'_> {
        match &self.jwt {
            Some(j) => rampart_policy::IdentitySource::Verify(&j.verifier),
            None => rampart_policy::IdentitySource::None,
        }
    }

    /// This snapshot with `active` as its flags.
    fn with_flags(&self, active: BTreeMap<String, Activation>) -> Snapshot {
        Snapshot {
            flags: Arc::new(FlagState::new(active, &self.config.lockdown)),
            ..self.clone()
        }
    }
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
    /// The JWT keys of the new config cannot be loaded.
    #[error("{0}")]
    Jwt(#[from] crate::jwt::JwtLoadError),
    /// The new file no longer defines flags that are on: a reload must not
    /// lift a lockdown silently. Turn them off first.
    #[error("the new config no longer defines active lockdown flag(s) {}; disable them first (rampart lockdown disable NAME), then reload", .0.join(", "))]
    ActiveFlagRemoved(Vec<String>),
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

/// A change to the runtime state, applied by the one writer ([`Shared::apply`]).
#[derive(Debug, Clone)]
pub enum Command {
    /// Re-read the config file and swap it in (a bad file changes nothing).
    Reload,
    /// Turn a flag on (or change its mode, reason or expiry).
    EnableFlag {
        /// Flag name.
        flag: String,
        /// Enforce or preview.
        mode: Mode,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
        /// When it turns itself off, if ever.
        ttl: Option<Duration>,
    },
    /// Turn a flag off.
    DisableFlag {
        /// Flag name.
        flag: String,
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Turn off every flag whose expiry has passed.
    ExpireFlags,
    /// Swap in GeoIP files that changed on disk.
    RefreshGeo,
    /// Swap in a JWKS file that changed on disk.
    RefreshJwt,
    /// Bring the flags in line with Redis (fleet mode).
    FleetSync,
}

/// What a [`Command`] did.
#[derive(Debug)]
pub enum Outcome {
    /// The config was swapped in as this generation.
    Reloaded {
        /// The new generation.
        generation: u64,
    },
    /// The flag is on.
    Enabled {
        /// Its activation.
        activation: Activation,
        /// Whether the state file was written.
        persisted: bool,
    },
    /// The flag is off.
    Disabled {
        /// Whether it was on.
        was_active: bool,
        /// Whether the state file was written.
        persisted: bool,
    },
    /// These flags expired.
    Expired(Vec<String>),
    /// Whether GeoIP databases were swapped.
    GeoRefreshed(bool),
    /// Whether the JWT key set was swapped.
    JwtRefreshed(bool),
    /// Whether the fleet changed any flag.
    FleetSynced(bool),
}

/// Why a [`Command`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A reload was refused.
    #[error("{0}")]
    Reload(#[from] ReloadError),
    /// A flag change was refused.
    #[error("{0}")]
    Flag(#[from] FlagError),
    /// A GeoIP file changed but cannot be opened.
    #[error("{0}")]
    Geo(#[from] GeoError),
    /// The JWKS file changed but cannot be loaded.
    #[error("{0}")]
    Jwt(#[from] crate::jwt::JwtLoadError),
    /// Redis could not be read.
    #[error("{0}")]
    Fleet(#[from] crate::fleet::FleetError),
}

/// What happened to a flag, as audited and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagAction {
    /// Turned on (or changed) on this node.
    Enable,
    /// Turned off on this node.
    Disable,
    /// Its TTL passed; in fleet mode only the node whose script removed it
    /// from Redis records this, so one TTL gives one `expire` fleet-wide.
    Expire,
    /// Turned on or changed by another node, learned from Redis.
    FleetEnable,
    /// Turned off or expired by another node, learned from Redis.
    FleetDisable,
    /// Put back into a Redis that had lost its data (no fleet epoch).
    FleetRepublish,
    /// A change this node reported as failed had reached Redis after all (its
    /// answer was lost); it was undone.
    FleetRevert,
    /// Its TTL passed while Redis was unreachable: off on this node; the
    /// fleet-wide `expire` is recorded by whichever node removes it from Redis.
    LocalExpire,
    /// The state file could not be read at start-up.
    CorruptState,
}

impl FlagAction {
    /// The audit `action` and the metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            FlagAction::Enable => "enable",
            FlagAction::Disable => "disable",
            FlagAction::Expire => "expire",
            FlagAction::FleetEnable => "fleet_enable",
            FlagAction::FleetDisable => "fleet_disable",
            FlagAction::FleetRepublish => "fleet_republish",
            FlagAction::FleetRevert => "fleet_revert",
            FlagAction::LocalExpire => "expire_local",
            FlagAction::CorruptState => "corrupt_state",
        }
    }
}

/// One flag change, audited once by [`Shared::apply`].
#[derive(Debug, Clone)]
pub struct FlagChange {
    /// Which flag (empty for whole-state events).
    pub flag: String,
    /// What happened.
    pub action: FlagAction,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// The mode, when turned on.
    pub mode: Option<Mode>,
    /// Requested time to live, seconds.
    pub ttl_seconds: Option<u64>,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// For changes learned from the fleet: the node that made them, if known.
    pub origin_node: Option<String>,
}

impl FlagChange {
    fn off(flag: &str, action: FlagAction, actor: &str, reason: &str) -> Self {
        Self {
            flag: flag.to_string(),
            action,
            actor: actor.to_string(),
            reason: reason.to_string(),
            mode: None,
            ttl_seconds: None,
            expires: None,
            origin_node: None,
        }
    }

    fn on(flag: &str, action: FlagAction, a: &Activation, ttl: Option<Duration>) -> Self {
        Self {
            flag: flag.to_string(),
            action,
            actor: a.actor.clone(),
            reason: a.reason.clone(),
            mode: Some(a.mode),
            ttl_seconds: ttl.map(|t| t.as_secs()),
            expires: a.expires(),
            origin_node: None,
        }
    }
}

/// State shared by the proxy, the admin API and the background services.
#[derive(Debug)]
pub struct Shared {
    /// The config file that reloads re-read.
    pub config_path: PathBuf,
    snapshot: ArcSwap<Snapshot>,
    /// The one writer: every [`Command`] runs under it.
    writer: tokio::sync::Mutex<()>,
    /// This node's name in audit records (the host name).
    pub node: String,
    health: HealthRegistry,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The access log, when on.
    pub access_log: Option<crate::access_log::AccessLog>,
    /// Top sources of refused requests.
    pub offenders: Offenders,
    /// The console's rate history (sampled by `console::RateSampler`).
    pub rates: crate::console::RateHistory,
    /// Fleet mode (Redis), when configured.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// The public listeners this process started with, for `/readyz`.
    pub listeners: crate::listening::ListenerProbe,
    /// Applied to every config this process loads (start-up and reloads).
    pub overlay: Option<ConfigOverlay>,
    /// The request record, when on.
    pub recorder: Option<crate::record::Recorder>,
    /// The certificates of the TLS listeners, reloaded with the config and
    /// when their files change (see `crate::certs`).
    pub tls_certs: Vec<Arc<crate::certs::TlsCert>>,
}

/// A change applied to every loaded config: `rampart demo` trusts loopback as a
/// proxy for itself without the shipped file doing so.
pub type ConfigOverlay = fn(&mut Config);

/// What a command proposes: the next snapshot and the flag changes it makes.
struct Proposal {
    next: Snapshot,
    changes: Vec<FlagChange>,
}

impl Shared {
    /// State for a freshly loaded config and its resolved origin `servers`
    /// ([`crate::pool::resolve_servers`]); opens its GeoIP databases and
    /// restores the lockdown flags (audited).
    pub fn new(
        config_path: PathBuf,
        config: Config,
        servers: &ResolvedServers,
        access_log: Option<crate::access_log::AccessLog>,
    ) -> Result<Self, GeoError> {
        let geo = GeoDb::open(&config.geoip)?;
        let jwt = crate::jwt::JwtLoaded::open(&config)
            .map_err(|e| GeoError {
                path: e.path,
                reason: e.reason,
            })?
            .map(Arc::new);
        let health = HealthRegistry::default();
        let metrics = Metrics::new();
        if let Some(j) = &jwt {
            metrics.jwt.set_state(j.verifier.keys().len(), 0);
            log::info!(
                "JWT keys loaded: {} ({} JWKS entries left out)",
                j.verifier.keys().len(),
                j.verifier.keys().skipped()
            );
        }
        let fleet = match &config.fleet {
            Some(f) => Some(Arc::new(crate::fleet::Fleet::new(f.clone()).map_err(
                |reason| GeoError {
                    path: config_path.clone(),
                    reason,
                },
            )?)),
            None => None,
        };
        let node = config
            .fleet
            .as_ref()
            .and_then(|f| f.node.clone())
            .unwrap_or_else(node_name);
        let (active, loaded) = lockdown::load(&config);
        let mut changes = Vec::new();
        match &loaded {
            Loaded::Corrupt { moved_to, error } => {
                log::error!(
                    "LOCKDOWN STATE FILE {} IS CORRUPT ({error}); set aside as {}; starting with the flags config marks default_active",
                    config.lockdown.state_file.display(),
                    moved_to.display()
                );
                metrics.lockdown_state_error();
                changes.push(FlagChange::off(
                    "",
                    FlagAction::CorruptState,
                    "rampart",
                    error,
                ));
            }
            Loaded::Restored => log::info!(
                "lockdown state restored from {}: {} active flag(s)",
                config.lockdown.state_file.display(),
                active.len()
            ),
            Loaded::Missing => {}
        }
        if fleet.is_some() {
            metrics.fleet_degraded(true);
        }
        let (active, dropped) = settle_restored(active, &config);
        let rewrite = !dropped.is_empty();
        changes.extend(dropped);
        let listeners = crate::listening::ListenerProbe::new(
            config.listeners.iter().map(|l| l.address).collect(),
        );
        let applied = Applied::new(config, servers, &health, &metrics, None);
        let snapshot = Snapshot {
            flags: Arc::new(FlagState::new(active, &applied.config.lockdown)),
            applied: Arc::new(applied),
            geo: Arc::new(geo),
            jwt,
            generation: 1,
        };
        metrics.set_config_info(&snapshot);
        metrics.set_geo_info(&snapshot.geo);
        metrics.set_flags(&snapshot.flags, &snapshot.config.lockdown);
        let shared = Self {
            config_path,
            listeners,
            snapshot: ArcSwap::from_pointee(snapshot),
            writer: tokio::sync::Mutex::new(()),
            node,
            access_log,
            offenders: Offenders::default(),
            rates: crate::console::RateHistory::default(),
            fleet,
            health,
            metrics,
            overlay: None,
            recorder: None,
            tls_certs: Vec::new(),
        };
        if rewrite {
            shared.persist(&shared.snapshot());
        }
        shared.audit(&changes);
        Ok(shared)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Applies one command as the one writer: builds the next snapshot from the
    /// current one, then swaps it in, writes the state file if the flags changed
    /// and audits each flag change once. A refused command changes nothing.
    pub async fn apply(&self, command: Command) -> Result<Outcome, CommandError> {
        let _one_writer = self.writer.lock().await;
        let current = self.snapshot();
        let (proposal, outcome) = match command {
            Command::Reload => self.reload(&current).await?,
            Command::EnableFlag {
                flag,
                mode,
                actor,
                reason,
                ttl,
            } => {
                self.enable(&current, &flag, mode, &actor, &reason, ttl)
                    .await?
            }
            Command::DisableFlag {
                flag,
                actor,
                reason,
            } => self.disable(&current, &flag, &actor, &reason).await?,
            Command::ExpireFlags => self.expire(&current).await,
            Command::RefreshGeo => self.refresh_geo(&current).await?,
            Command::RefreshJwt => self.refresh_jwt(&current).await?,
            Command::FleetSync => self.fleet_sync(&current).await?,
        };
        let Some(proposal) = proposal else {
            return Ok(outcome);
        };
        let persisted = self.commit(&current, proposal);
        Ok(match outcome {
            Outcome::Enabled { activation, .. } => Outcome::Enabled {
                activation,
                persisted,
            },
            Outcome::Disabled { was_active, .. } => Outcome::Disabled {
                was_active,
                persisted,
            },
            other => other,
        })
    }

    /// Swaps `proposal` in; returns whether the state file holds its flags.
    fn commit(&self, current: &Snapshot, proposal: Proposal) -> bool {
        let Proposal { next, changes } = proposal;
        let flags_changed = next.flags.active != current.flags.active;
        let config_changed = !Arc::ptr_eq(&next.applied, &current.applied);
        let persisted = !flags_changed || self.persist(&next);
        if config_changed {
            self.metrics.set_config_info(&next);
        }
        if !Arc::ptr_eq(&next.geo, &current.geo) {
            self.metrics.set_geo_info(&next.geo);
        }
        let same_jwt = match (&next.jwt, &current.jwt) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same_jwt {
            let (keys, cached) = next.jwt.as_ref().map_or((0, 0), |j| {
                (j.verifier.keys().len(), j.verifier.cached_tokens())
            });
            self.metrics.jwt.set_state(keys, cached);
        }
        if flags_changed || config_changed {
            self.metrics.set_flags(&next.flags, &next.config.lockdown);
        }
        // Recorded before it takes effect: whoever sees the change can read
        // its audit record.
        self.audit_to(&next.config.lockdown.audit_log, &changes);
        self.snapshot.store(Arc::new(next));
        persisted
    }

    /// Writes the flags of `snapshot` to the state file.
    fn persist(&self, snapshot: &Snapshot) -> bool {
        let path = &snapshot.config.lockdown.state_file;
        match lockdown::persist(path, &snapshot.flags.active) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "cannot write the lockdown state file {}: {e}; the change is in force but will not survive a restart",
                    path.display()
                );
                self.metrics.lockdown_state_error();
                false
            }
        }
    }

    /// Audits `changes` to the current config's audit log.
    fn audit(&self, changes: &[FlagChange]) {
        let snapshot = self.snapshot();
        self.audit_to(&snapshot.config.lockdown.audit_log, changes);
    }

    /// The one place audit records are written: one per change.
    fn audit_to(&self, log: &std::path::Path, changes: &[FlagChange]) {
        if changes.is_empty() {
            return;
        }
        let time = lockdown::now_unix();
        for c in changes {
            if !c.flag.is_empty() {
                self.metrics.lockdown_change(&c.flag, c.action);
            }
            lockdown::audit(
                log,
                &AuditEntry {
                    time,
                    actor: &c.actor,
                    action: c.action.as_label(),
                    flag: &c.flag,
                    mode: c.mode.map(Mode::as_str),
                    reason: &c.reason,
                    ttl_seconds: c.ttl_seconds,
                    expires: c.expires,
                    node: &self.node,
                    origin_node: c.origin_node.as_deref(),
                },
            );
        }
    }

    /// Turns `flag` on. Returns the activation and whether it was persisted.
    pub async fn enable_flag(
        &self,
        flag: &str,
        mode: Mode,
        actor: &str,
        reason: &str,
        ttl: Option<Duration>,
    ) -> Result<(Activation, bool), CommandError> {
        let command = Command::EnableFlag {
            flag: flag.to_string(),
            mode,
            actor: actor.to_string(),
            reason: reason.to_string(),
            ttl,
        };
        match self.apply(command).await? {
            Outcome::Enabled {
                activation,
                persisted,
            } => Ok((activation, persisted)),
            other => Err(unexpected(other)),
        }
    }

    /// Turns `flag` off. Returns whether it was on, and whether the new state was persisted.
    pub async fn disable_flag(
        &self,
        flag: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(bool, bool), CommandError> {
        let command = Command::DisableFlag {
            flag: flag.to_string(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        };
        match self.apply(command).await? {
            Outcome::Disabled {
                was_active,
                persisted,
            } => Ok((was_active, persisted)),
            other => Err(unexpected(other)),
        }
    }

    async fn enable(
        &self,
        current: &Snapshot,
        flag: &str,
        mode: Mode,
        actor: &str,
        reason: &str,
        ttl: Option<Duration>,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        if current.config.lockdown.flag_index(flag).is_none() {
            return Err(FlagError::Unknown(known_flags(current)).into());
        }
        let since_ms = lockdown::now_unix_ms();
        let activation = Activation {
            mode,
            actor: actor.to_string(),
            reason: reason.to_string(),
            since_ms,
            expires_ms: ttl.map(|t| {
                since_ms.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
            }),
        };
        let mut changes = self.fleet_write(current, flag, Some(&activation)).await?;
        let mut active = current.flags.active.clone();
        active.insert(flag.to_string(), activation.clone());
        changes.push(FlagChange::on(flag, FlagAction::Enable, &activation, ttl));
        let proposal = Proposal {
            next: current.with_flags(active),
            changes,
        };
        Ok((
            Some(proposal),
            Outcome::Enabled {
                activation,
                persisted: false,
            },
        ))
    }

    async fn disable(
        &self,
        current: &Snapshot,
        flag: &str,
        actor: &str,
        reason: &str,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        if current.config.lockdown.flag_index(flag).is_none() {
            return Err(FlagError::Unknown(known_flags(current)).into());
        }
        let mut changes = self.fleet_write(current, flag, None).await?;
        let mut active = current.flags.active.clone();
        if active.remove(flag).is_none() {
            let proposal = Proposal {
                next: current.clone(),
                changes,
            };
            return Ok((
                Some(proposal),
                Outcome::Disabled {
                    was_active: false,
                    persisted: true,
                },
            ));
        }
        changes.push(FlagChange::off(flag, FlagAction::Disable, actor, reason));
        let proposal = Proposal {
            next: current.with_flags(active),
            changes,
        };
        Ok((
            Some(proposal),
            Outcome::Disabled {
                was_active: true,
                persisted: false,
            },
        ))
    }

    /// Writes a flag change to Redis (fleet mode), all or nothing. When Redis
    /// has lost its data, this node's flags are re-published first (one
    /// `fleet_republish` record each, returned) and the change written after.
    async fn fleet_write(
        &self,
        current: &Snapshot,
        flag: &str,
        value: Option<&Activation>,
    ) -> Result<Vec<FlagChange>, CommandError> {
        let Some(fleet) = &self.fleet else {
            return Ok(Vec::new());
        };
        let previous = current.flags.active.get(flag);
        let refused = |e: crate::fleet::FleetError| FlagError::Fleet(e.to_string());
        let mut changes = Vec::new();
        for attempt in 0..2 {
            if fleet
                .write_flag(&self.node, flag, value, previous, &self.metrics)
                .await
                .map_err(refused)?
            {
                return Ok(changes);
            }
            if attempt == 0 {
                changes = self.republish(current).await.map_err(refused)?;
            }
        }
        Err(FlagError::Fleet("Redis lost its data and could not be re-published".into()).into())
    }

    /// Re-publishes this node's flags into a Redis without a fleet epoch; one
    /// `fleet_republish` record per flag when this node did it.
    async fn republish(
        &self,
        current: &Snapshot,
    ) -> Result<Vec<FlagChange>, crate::fleet::FleetError> {
        let Some(fleet) = &self.fleet else {
            return Ok(Vec::new());
        };
        let active = &current.flags.active;
        if !fleet.republish(&self.node, active, &self.metrics).await? {
            return Ok(Vec::new());
        }
        log::warn!(
            "fleet: Redis had lost the fleet's flags (no epoch); re-published the {} flag(s) this node holds",
            active.len()
        );
        Ok(active
            .iter()
            .map(|(flag, a)| FlagChange {
                reason: format!("Redis had lost its data; re-published ({})", a.reason),
                ..FlagChange::on(flag, FlagAction::FleetRepublish, a, None)
            })
            .collect())
    }

    /// Applies a ban announced by the fleet (or read back on a resync) to this
    /// node's penalty box of that rule: imposes it, or lifts it (length 0).
    /// A rule or key this node does not know is ignored.
    pub fn apply_fleet_ban(&self, ban: &crate::fleet::FleetBan) {
        let snapshot = self.snapshot();
        let Some((table, _)) = snapshot.policy.ban_table(&ban.rule) else {
            return;
        };
        let Some(key) = rampart_policy::limits::LimitKey::parse_text(&ban.key) else {
            return;
        };
        if ban.ms == 0 {
            table.lift(&key);
        } else {
            table.impose(key, Duration::from_millis(ban.ms), ban.offenses);
        }
    }

    /// Makes this node's bans of fleet rules what Redis holds (read back on a
    /// (re)connect): imposes every ban listed, and lifts the fleet-rule bans
    /// Redis no longer has (a lift announced while this node was not
    /// listening).
    pub fn sync_fleet_bans(&self, bans: &[crate::fleet::FleetBan]) {
        for ban in bans {
            self.apply_fleet_ban(ban);
        }
        let snapshot = self.snapshot();
        for (rule, table) in snapshot
            .policy
            .rate_rules()
            .iter()
            .zip(snapshot.policy.ban_tables())
        {
            let Some(table) = table else { continue };
            if !matches!(rule.config.scope, rampart_config::LimitScope::Fleet { .. }) {
                continue;
            }
            for active in table.active(usize::MAX) {
                let text = active.key.text();
                let listed = bans
                    .iter()
                    .any(|b| b.rule == rule.config.name && b.key == text);
                if !listed {
                    table.lift(&active.key);
                }
            }
        }
    }

    /// Turns off every flag whose expiry has passed; returns their names.
    pub async fn expire_flags(&self) -> Vec<String> {
        let now_ms = lockdown::now_unix_ms();
        // Cheap check first: most ticks have nothing to do and take no lock.
        if !self
            .snapshot()
            .flags
            .active
            .values()
            .any(|a| a.is_due(now_ms))
        {
            return Vec::new();
        }
        match self.apply(Command::ExpireFlags).await {
            Ok(Outcome::Expired(flags)) => flags,
            _ => Vec::new(),
        }
    }

    async fn expire(&self, current: &Snapshot) -> (Option<Proposal>, Outcome) {
        let now_ms = lockdown::now_unix_ms();
        let mut active = current.flags.active.clone();
        let due: Vec<(String, Activation)> = active
            .iter()
            .filter(|(_, a)| a.is_due(now_ms))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        if due.is_empty() {
            return (None, Outcome::Expired(Vec::new()));
        }
        let mut changes = Vec::new();
        for (flag, a) in &due {
            // Fleet-wide, the node whose script removes the flag records the
            // expiry; the others record that they learned it from the fleet.
            let action = match &self.fleet {
                None => FlagAction::Expire,
                Some(fleet) => match fleet.expire_flag(flag, a, &self.metrics).await {
                    Ok(true) => FlagAction::Expire,
                    Ok(false) => FlagAction::FleetDisable,
                    Err(e) => {
                        log::error!("fleet: cannot expire {flag} in Redis ({e}); expired on this node, the fleet records it when Redis is back");
                        FlagAction::LocalExpire
                    }
                },
            };
            changes.push(FlagChange {
                expires: a.expires(),
                ..FlagChange::off(flag, action, "rampart", "ttl passed")
            });
            active.remove(flag);
        }
        let flags = due.into_iter().map(|(n, _)| n).collect();
        let proposal = Proposal {
            next: current.with_flags(active),
            changes,
        };
        (Some(proposal), Outcome::Expired(flags))
    }

    /// Brings the local flags in line with Redis (fleet mode). Returns whether
    /// anything changed. Each change learned is audited on this node, with the
    /// actor and reason of the node that made it.
    pub async fn fleet_resync(&self) -> Result<bool, CommandError> {
        match self.apply(Command::FleetSync).await? {
            Outcome::FleetSynced(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    async fn fleet_sync(
        &self,
        current: &Snapshot,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        let Some(fleet) = &self.fleet else {
            return Ok((None, Outcome::FleetSynced(false)));
        };
        let mut view = fleet.read_view(&self.metrics).await?;
        let mut changes = Vec::new();
        let undone = fleet.settle_failed_writes(&view, &self.metrics).await;
        if !undone.is_empty() {
            for flag in &undone {
                changes.push(FlagChange::off(
                    flag,
                    FlagAction::FleetRevert,
                    "rampart",
                    "a change reported as failed had reached Redis; undone",
                ));
            }
            view = fleet.read_view(&self.metrics).await?;
        }
        if view.epoch.is_none() {
            // Redis lost its data: never adopt the empty view; put back what
            // this node holds (or adopt what another node put back first, on
            // the next read).
            changes.extend(self.republish(current).await?);
            let proposal = (!changes.is_empty()).then(|| Proposal {
                next: current.clone(),
                changes,
            });
            return Ok((proposal, Outcome::FleetSynced(false)));
        }
        let mut remote = view.flags.clone();
        remote.retain(|name, _| current.config.lockdown.flag_index(name).is_some());
        // A flag whose TTL passed is not adopted; whichever node removes it from
        // Redis records the one `expire`.
        let now_ms = lockdown::now_unix_ms();
        let due: Vec<(String, Activation)> = remote
            .iter()
            .filter(|(_, a)| a.is_due(now_ms))
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        let mut expired_here = Vec::new();
        for (flag, a) in &due {
            remote.remove(flag);
            if fleet.expire_flag(flag, a, &self.metrics).await? {
                expired_here.push(flag.clone());
                changes.push(FlagChange {
                    expires: a.expires(),
                    ..FlagChange::off(flag, FlagAction::Expire, "rampart", "ttl passed")
                });
            }
        }
        let local = &current.flags.active;
        if remote == *local {
            let proposal = (!changes.is_empty()).then(|| Proposal {
                next: current.clone(),
                changes,
            });
            return Ok((proposal, Outcome::FleetSynced(false)));
        }
        for (flag, a) in &remote {
            if local.get(flag) != Some(a) {
                changes.push(FlagChange {
                    origin_node: view.origins.get(flag).cloned(),
                    ..FlagChange::on(flag, FlagAction::FleetEnable, a, None)
                });
            }
        }
        for flag in local.keys().filter(|f| !remote.contains_key(*f)) {
            if expired_here.contains(flag) {
                continue;
            }
            changes.push(FlagChange {
                origin_node: view.origins.get(flag).cloned(),
                ..FlagChange::off(
                    flag,
                    FlagAction::FleetDisable,
                    "fleet",
                    "turned off or expired on another node",
                )
            });
        }
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
        let proposal = Proposal {
            next: current.with_flags(remote),
            changes,
        };
        Ok((Some(proposal), Outcome::FleetSynced(true)))
    }

    /// Swaps in GeoIP files whose stamp changed on disk; requests in flight keep
    /// the databases they loaded. A file that cannot be opened is refused and
    /// the old one keeps serving. Returns whether a swap happened.
    pub async fn refresh_geo_files(&self) -> Result<bool, CommandError> {
        match self.apply(Command::RefreshGeo).await? {
            Outcome::GeoRefreshed(swapped) => Ok(swapped),
            other => Err(unexpected(other)),
        }
    }

    async fn refresh_geo(
        &self,
        current: &Snapshot,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        let Some(geo) = self.open_changed_geo(current, &current.config).await? else {
            return Ok((None, Outcome::GeoRefreshed(false)));
        };
        let proposal = Proposal {
            next: Snapshot {
                geo,
                ..current.clone()
            },
            changes: Vec::new(),
        };
        Ok((Some(proposal), Outcome::GeoRefreshed(true)))
    }

    /// Swaps in the JWKS file when it changed on disk; a bad file is refused
    /// (logged and counted by the caller) and the old keys keep serving.
    pub async fn refresh_jwt_keys(&self) -> Result<bool, CommandError> {
        match self.apply(Command::RefreshJwt).await? {
            Outcome::JwtRefreshed(swapped) => Ok(swapped),
            other => Err(unexpected(other)),
        }
    }

    async fn refresh_jwt(
        &self,
        current: &Snapshot,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        if !current.jwt.as_ref().is_some_and(|j| j.jwks_changed()) {
            return Ok((None, Outcome::JwtRefreshed(false)));
        }
        let jwt = self.open_jwt(&current.config).await?;
        let proposal = Proposal {
            next: Snapshot {
                jwt,
                ..current.clone()
            },
            changes: Vec::new(),
        };
        Ok((Some(proposal), Outcome::JwtRefreshed(true)))
    }

    /// Loads the JWT keys of `config` off the async workers, counting the
    /// attempt.
    async fn open_jwt(
        &self,
        config: &Config,
    ) -> Result<Option<Arc<crate::jwt::JwtLoaded>>, crate::jwt::JwtLoadError> {
        let config = config.clone();
        let opened = tokio::task::spawn_blocking(move || crate::jwt::JwtLoaded::open(&config))
            .await
            .map_err(|e| crate::jwt::JwtLoadError {
                path: PathBuf::new(),
                reason: format!("JWT key task failed: {e}"),
            })
            .and_then(|r| r);
        match opened {
            Ok(loaded) => {
                if let Some(j) = &loaded {
                    self.metrics.jwt.reload(crate::metrics::Attempt::Success);
                    log::info!(
                        "JWT keys loaded: {} ({} JWKS entries left out)",
                        j.verifier.keys().len(),
                        j.verifier.keys().skipped()
                    );
                }
                Ok(loaded.map(Arc::new))
            }
            Err(e) => {
                self.metrics.jwt.reload(crate::metrics::Attempt::Error);
                Err(e)
            }
        }
    }

    /// Opens the GeoIP databases of `config` when they differ from the current
    /// ones (other paths, or files changed on disk), off the async workers.
    async fn open_changed_geo(
        &self,
        current: &Snapshot,
        config: &Config,
    ) -> Result<Option<Arc<GeoDb>>, GeoError> {
        let geoip = config.geoip.clone();
        let changed = |file: &Option<GeoFile>, path: &Option<PathBuf>| match (file, path) {
            (Some(f), Some(p)) => f.path != *p || FileStamp::of(p) != Some(f.stamp),
            (None, None) => false,
            _ => true,
        };
        if !changed(&current.geo.country, &geoip.country_db)
            && !changed(&current.geo.asn, &geoip.asn_db)
        {
            return Ok(None);
        }
        let opened = tokio::task::spawn_blocking(move || GeoDb::open(&geoip))
            .await
            .map_err(|e| GeoError {
                path: PathBuf::new(),
                reason: format!("GeoIP open task failed: {e}"),
            })
            .and_then(|r| r);
        match opened {
            Ok(db) => {
                self.metrics.geo_reloads(crate::metrics::Attempt::Success);
                log::info!("GeoIP databases reloaded");
                Ok(Some(Arc::new(db)))
            }
            Err(e) => {
                self.metrics.geo_reloads(crate::metrics::Attempt::Error);
                Err(e)
            }
        }
    }

    /// Re-reads the config file and swaps it in. A bad file is refused and the
    /// old config keeps serving. Requests in flight finish on the snapshot they
    /// started with. Listener, admin and server settings only change on restart;
    /// a reload that changes them says so in the log.
    ///
    /// The TLS listeners' certificates and keys are read again first, each
    /// swapped in or kept on its own (see `crate::certs`), whatever becomes
    /// of the config.
    pub async fn reload_config(self: &Arc<Self>) -> Result<u64, CommandError> {
        crate::certs::reload_all(self).await;
        match self.apply(Command::Reload).await? {
            Outcome::Reloaded { generation } => Ok(generation),
            other => Err(unexpected(other)),
        }
    }

    async fn reload(
        &self,
        current: &Snapshot,
    ) -> Result<(Option<Proposal>, Outcome), CommandError> {
        let refused = |e: ReloadError| {
            self.metrics.reloads(crate::metrics::Attempt::Error);
            log::error!("config reload refused, old config keeps serving:\n{e}");
            CommandError::Reload(e)
        };
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
        .map_err(|e| refused(ReloadError::Task(e.to_string())))?;
        let (config, servers) = loaded.map_err(|e| refused(e.into()))?;
        let dropped: Vec<String> = current
            .flags
            .active
            .keys()
            .filter(|name| config.lockdown.flag_index(name).is_none())
            .cloned()
            .collect();
        if !dropped.is_empty() {
            return Err(refused(ReloadError::ActiveFlagRemoved(dropped)));
        }
        warn_restart_only_changes(&current.config, &config);
        let geo = match self.open_changed_geo(current, &config).await {
            Ok(Some(geo)) => geo,
            Ok(None) => current.geo.clone(),
            Err(e) => return Err(refused(e.into())),
        };
        let jwt = match &current.jwt {
            Some(j) if j.is_current(&config) => Some(j.clone()),
            _ if config.jwt.is_none() => None,
            _ => match self.open_jwt(&config).await {
                Ok(jwt) => jwt,
                Err(e) => return Err(refused(e.into())),
            },
        };
        let generation = current.generation + 1;
        let applied = Applied::new(
            config,
            &servers,
            &self.health,
            &self.metrics,
            Some(&current.policy),
        );
        let keep: Vec<_> = applied
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(|s| (p.name().to_string(), s.addr)))
            .collect();
        self.health.retain(&keep);
        let next = Snapshot {
            flags: Arc::new(FlagState::new(
                current.flags.active.clone(),
                &applied.config.lockdown,
            )),
            applied: Arc::new(applied),
            geo,
            jwt,
            generation,
        };
        self.metrics.reloads(crate::metrics::Attempt::Success);
        log::info!(
            "config reloaded from {} (generation {generation})",
            self.config_path.display()
        );
        Ok((
            Some(Proposal {
                next,
                changes: Vec::new(),
            }),
            Outcome::Reloaded { generation },
        ))
    }
}

/// The error for an outcome a command cannot give (a bug, reported rather
/// than panicking).
fn unexpected(outcome: Outcome) -> CommandError {
    CommandError::Reload(ReloadError::Task(format!("unexpected outcome {outcome:?}")))
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
/// while Rampart was down and flags the config no longer defines; returns the
/// flags kept and one change per drop (audited, and the state file rewritten,
/// by the caller).
fn settle_restored(
    mut active: BTreeMap<String, Activation>,
    config: &Config,
) -> (BTreeMap<String, Activation>, Vec<FlagChange>) {
    let now_ms = lockdown::now_unix_ms();
    let lockdown_config = &config.lockdown;
    let mut dropped = Vec::new();
    active.retain(|name, a| {
        let why = if a.is_due(now_ms) {
            Some((FlagAction::Expire, "ttl passed while Rampart was down"))
        } else if lockdown_config.flag_index(name).is_none() {
            Some((
                FlagAction::Disable,
                "no longer defined in the config at start-up",
            ))
        } else {
            None
        };
        if let Some((action, reason)) = why {
            log::warn!("lockdown state: flag \"{name}\" dropped at start-up: {reason}");
            dropped.push(FlagChange {
                expires: a.expires(),
                ..FlagChange::off(name, action, "rampart", reason)
            });
        }
        why.is_none()
    });
    (active, dropped)
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
