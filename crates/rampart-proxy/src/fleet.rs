//! Fleet mode: lockdown flags and fleet-wide quotas shared through Redis.
//!
//! **Flags.** The hash `<prefix>flags` holds every active flag (field = flag name,
//! value = the activation as JSON). A change made on any node is written there and
//! announced on the channel `<prefix>flags`; every node re-reads the hash on each
//! announcement and every `resync_interval`, so a missed message heals. A node
//! that cannot reach Redis keeps its last known flags (also persisted in its
//! local state file) and reports itself degraded.
//!
//! **Quotas.** A rule with `scope = "fleet"` keeps its bucket in Redis
//! (`<prefix>q:<rule>:<key>`, a token bucket updated by one Lua script with
//! Redis' own clock). A node leases up to `quota_batch` requests' worth of tokens
//! per round trip (more when more of its requests are waiting for that key: one
//! request refills, the others wait for it) and spends them locally for at most
//! one second. Leased tokens are taken from the shared bucket, so over time the
//! fleet never admits more than the budget; at any moment it may admit up to
//! `nodes × (lease − 1)` requests more than the bucket alone would, spent from
//! leases taken in the last second. A request waits on Redis only when its
//! node has no lease left, and never longer than `timeout`; then the rule's
//! failure mode decides (`open`, `closed`, or `local`: the node's own bucket at
//! `fleet_local_share` of the budget). When Redis says a bucket is empty, the
//! node refuses that key locally until the time the script said a token is
//! back: a flood of refused requests costs one Redis call per key per refill
//! time, not one per request (the lease table, `lease`).
//!
//! **Topologies.** Redis is one server, the master Redis Sentinel names, or a
//! Redis Cluster (Valkey alike): [`crate::redis_link`] hides which. In a
//! cluster the keys used together (flags, their origins, the epoch, node
//! reports, the escalation lease, bans) share the hash tag `{<prefix>}` and so
//! one slot ([`FleetKeys`]); each bucket is one key, on whichever master its
//! slot lands. Each master has its own circuit breaker ([`crate::circuit`]).
//! With Sentinel or a cluster, a flag write waits for one replica to hold it
//! (`WAIT`), so that a failover right after does not lose a change already
//! answered as made. A failover may lose a bucket's last writes (replication is
//! asynchronous); the bucket at worst restarts full, so each failover admits
//! at most one burst more per key than the budget.

use crate::circuit::{Breaker, Circuits, Transition};
use crate::lease::{Begin, LeaseTable};
use crate::lockdown::Activation;
use crate::metrics::{FleetOp, Metrics};
use crate::redis_link::{Conn, Lua, RedisLink};
use rampart_config::{FleetConfig, LimitConfig};
use rampart_policy::limits::LimitKey;
use rampart_policy::{FleetAnswer, FleetCheck};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Timeout for admin-path Redis operations (flag changes, resyncs).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after the writer read Redis' clock a flag write may still be
/// applied; shorter than [`ADMIN_TIMEOUT`], so a write the writer gave up on
/// can no longer be applied by the time it reports the failure.
const WRITE_WINDOW_MS: u64 = 1_000;
pub use crate::circuit::PROBE_INTERVAL;

const TAKE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate) end
local granted = math.min(want, math.floor(tokens / cost))
if want == 0 then
  -- A peek (explain): would one request fit? Nothing is written.
  if tokens >= cost then return {1, 0} end
  return {0, math.ceil((cost - tokens) / rate)}
end
tokens = tokens - granted * cost
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate) + 1000)
local wait = 0
if granted == 0 then wait = math.ceil((cost - tokens) / rate) end
return {granted, wait}
"#;

/// A flag write (or delete, with an empty value) that Redis applies only
/// before its deadline (Redis' own clock, read by the writer just before) and
/// only while the fleet epoch exists: a write delayed past its deadline (Redis
/// paused, a slow network) is refused by the script, never applied late.
const WRITE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return 'late' end
if redis.call('EXISTS', KEYS[2]) == 0 then return 'empty' end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 'ok'
"#;

/// Redis' clock (ms) on the node that holds KEYS[1]: in a cluster, `TIME`
/// alone would run on any node, whose clock the write script does not read.
const TIME_SCRIPT: &str = "return redis.call('TIME')";

/// How long a flag write waits for a replica to hold it (Sentinel, cluster).
const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// Puts a node's flags back into a Redis that lost its data (no epoch), and
/// starts a new epoch; does nothing when another node did it first.
const REPUBLISH_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[2])
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[1], '*')
return 1
"#;

/// Compare-and-set of one flag: from the value a failed write left (empty:
/// absent) back to the value before it (empty: absent).
const RESTORE_SCRIPT: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (cur or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"#;

/// How often each node reports itself in the fleet's node list.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// A node that has not reported for this long is dropped from the node list.
pub const NODE_FORGET_AFTER: Duration = Duration::from_secs(300);

/// Records a node's report and when Redis got it; forgets nodes silent for
/// longer than ARGV[3] ms.
const HEARTBEAT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], now)
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
  if now - tonumber(seen[i + 1]) > tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], seen[i])
    redis.call('HDEL', KEYS[2], seen[i])
  end
end
return now
"#;

/// One node of the fleet as its last report says.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetNode {
    /// Its name.
    pub node: String,
    /// Time since Redis got its last report, ms.
    pub age_ms: u64,
    /// What it reported (see `background::FleetHeartbeat`).
    pub report: serde_json::Value,
}

/// The nodes of the fleet and the escalation leader.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetNodes {
    /// Every node heard from in the last [`NODE_FORGET_AFTER`], by name.
    pub nodes: Vec<FleetNode>,
    /// The node holding the escalation lease, if any.
    pub leader: Option<String>,
}

/// How long the escalation leader's lease lasts without renewal.
const LEADER_LEASE_MS: u64 = 3_000;

/// Takes the escalation lease when free, or renews it for its holder.
const LEAD_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"#;

const EXPIRE_SCRIPT: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Not connected (yet, or any more).
    #[error("Redis is not connected")]
    NotConnected,
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Degraded and not this request's turn to probe: the failure mode applies
    /// without asking Redis.
    #[error("Redis is unreachable (circuit open; probing every {PROBE_INTERVAL:?})")]
    CircuitOpen,
    /// The write reached Redis after its deadline and was not applied.
    #[error("the change reached Redis after its deadline and was not applied")]
    Late,
}

/// Most bans read back from Redis on a resync.
pub const MAX_FLEET_BANS: usize = 100_000;

/// A ban as the fleet shares it: the rule's name, the key's text form
/// (`LimitKey::text`), its length (or time left) in ms, and the key's bans in
/// memory. A length of 0 announces a lift.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetBan {
    /// Rule name.
    pub rule: String,
    /// The key, as `LimitKey::text` writes it.
    pub key: String,
    /// Length or time left, ms; 0 lifts the ban.
    pub ms: u64,
    /// Bans of the key in memory.
    pub offenses: u32,
}

/// What Redis holds for the fleet's flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetView {
    /// The fleet epoch; `None` when Redis has lost its data (or never had any).
    pub epoch: Option<String>,
    /// Active flags.
    pub flags: BTreeMap<String, Activation>,
    /// The node that last changed each flag (set or deleted), where known.
    pub origins: BTreeMap<String, String>,
}

/// A flag write whose answer never came: it may have been applied just before
/// Redis stopped answering. The next successful read checks, and undoes it.
#[derive(Debug, Clone)]
struct FailedWrite {
    flag: String,
    /// The value it would have left (empty: deleted).
    landed: String,
    /// The value before it (empty: absent).
    previous: String,
}

/// The names of the fleet's Redis keys and channels. On one server and with
/// Sentinel they are `<prefix><name>`; in a cluster the keys that scripts and
/// transactions use together (flags, their origins, the epoch, node reports,
/// the escalation lease, bans) share the hash tag `{<prefix>}`, so that they
/// live on one slot. A bucket is one key (`<prefix>q:<rule>:<key>`), so its
/// script touches one slot wherever it lands: buckets spread over the cluster.
#[derive(Debug, Clone)]
pub struct FleetKeys {
    /// Hash and channel of the flags.
    pub flags: String,
    /// Hash naming the node that last changed each flag.
    pub origins: String,
    /// The fleet epoch.
    pub epoch: String,
    /// Hash of node reports.
    pub nodes: String,
    /// Hash of when Redis last heard from each node.
    pub nodes_seen: String,
    /// The escalation leader's lease.
    pub leader: String,
    /// Channel of ban announcements.
    pub bans: String,
    /// Start of each ban's key (`<ban>:<rule>:<key>`).
    pub ban: String,
    /// Start of each bucket's key.
    pub quota: String,
}

impl FleetKeys {
    /// The names for `prefix`, tagged for a cluster when `cluster`.
    pub fn new(prefix: &str, cluster: bool) -> Self {
        let control = |name: &str| {
            if cluster {
                format!("{{{prefix}}}{name}")
            } else {
                format!("{prefix}{name}")
            }
        };
        Self {
            flags: control("flags"),
            origins: control("flag-origins"),
            epoch: control("epoch"),
            nodes: control("nodes"),
            nodes_seen: control("nodes-seen"),
            leader: control("escalation-leader"),
            bans: control("bans"),
            ban: control("ban"),
            quota: format!("{prefix}q:"),
        }
    }
}

/// The fleet client of one node.
pub struct Fleet {
    /// Its config.
    pub config: FleetConfig,
    /// Its keys.
    pub keys: FleetKeys,
    link: RedisLink,
    /// Where Redis is, without credentials.
    described: String,
    /// One circuit breaker per master (see [`crate::circuit`]).
    circuits: Circuits,
    leases: LeaseTable,
    failed_writes: std::sync::Mutex<Vec<FailedWrite>>,
    /// [`WRITE_WINDOW_MS`] (tests set a deadline already past).
    write_window_ms: i64,
    take: Lua,
    expire: Lua,
    write: Lua,
    republish: Lua,
    restore: Lua,
    lead: Lua,
    heartbeat: Lua,
    time: Lua,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("redis", &self.described)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

impl Fleet {
    /// A client for `config`; connects later, in the background.
    pub fn new(config: FleetConfig) -> Result<Self, String> {
        let link = RedisLink::new(&config.redis, ADMIN_TIMEOUT)?;
        let keys = FleetKeys::new(
            &config.key_prefix,
            matches!(config.redis, rampart_config::FleetRedis::Cluster { .. }),
        );
        Ok(Self {
            described: config.redis.describe(),
            keys,
            config,
            link,
            circuits: Circuits::new(),
            leases: LeaseTable::default(),
            failed_writes: std::sync::Mutex::new(Vec::new()),
            write_window_ms: WRITE_WINDOW_MS as i64,
            take: Lua::new(TAKE_SCRIPT),
            expire: Lua::new(EXPIRE_SCRIPT),
            write: Lua::new(WRITE_SCRIPT),
            republish: Lua::new(REPUBLISH_SCRIPT),
            restore: Lua::new(RESTORE_SCRIPT),
            lead: Lua::new(LEAD_SCRIPT),
            heartbeat: Lua::new(HEARTBEAT_SCRIPT),
            time: Lua::new(TIME_SCRIPT),
        })
    }

    /// Where Redis is (topology and addresses, without credentials); with
    /// Sentinel, the master in use.
    pub fn describe(&self) -> String {
        match self.link.master_address() {
            Some(master) => format!("{} (master {master})", self.described),
            None => self.described.clone(),
        }
    }

    /// Whether this node has a connection to Redis (it may not answer).
    pub fn is_connected(&self) -> bool {
        self.link.connection().is_some()
    }

    /// Whether the last Redis operation on some master failed (in a
    /// cluster: on any of its masters).
    pub fn is_degraded(&self) -> bool {
        self.circuits.any_open()
    }

    /// Records an operation's outcome on the circuit of the master it went
    /// to, and logs the change it makes.
    fn mark(
        &self,
        ok: bool,
        metrics: &Metrics,
        what: FleetOp,
        error: Option<&FleetError>,
        breaker: &Breaker,
    ) {
        if let Some(FleetError::Redis(e)) = error {
            self.link.failed(e);
        }
        let change = breaker.record(ok);
        metrics.fleet_degraded(self.is_degraded());
        let master = match breaker.name() {
            "" => String::new(),
            name => format!(", master {name}"),
        };
        match change {
            Some(Transition::Closed) => log::warn!(
                "fleet: Redis reachable again ({}{master}, {}); no longer degraded",
                self.describe(),
                what.as_label()
            ),
            Some(Transition::Opened) => log::error!(
                "fleet: DEGRADED, Redis unreachable during {}{master}: {}; keeping the last known flags and applying each fleet rule's failure mode",
                what.as_label(),
                error.map(|e| e.to_string()).unwrap_or_default()
            ),
            None => {}
        }
    }

    /// In a cluster: reads which master serves which slot (`CLUSTER SLOTS`),
    /// so that each master has its own circuit. Nothing to do otherwise.
    pub async fn refresh_topology(&self, metrics: &Metrics) {
        if !matches!(
            self.config.redis,
            rampart_config::FleetRedis::Cluster { .. }
        ) {
            return;
        }
        let Ok(mut conn) = self.connection() else {
            return;
        };
        // Any node answers; its failure says nothing of a master's, so it
        // opens no circuit (the next read tries another node).
        let start = Instant::now();
        let slots = tokio::time::timeout(
            ADMIN_TIMEOUT,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<redis::Value>(&mut conn),
        )
        .await;
        metrics.fleet_redis(
            FleetOp::Resync,
            start.elapsed().as_secs_f64(),
            matches!(slots, Ok(Ok(_))),
        );
        if let Ok(Ok(value)) = slots {
            let ranges = slot_ranges(&value);
            if self.circuits.set_topology(&ranges) {
                log::info!(
                    "fleet: cluster topology: {} slot ranges on {} masters",
                    ranges.len(),
                    ranges
                        .iter()
                        .map(|r| r.2.as_str())
                        .collect::<std::collections::BTreeSet<_>>()
                        .len()
                );
            }
        }
    }

    /// Connects (or reconnects) the shared connection; with Sentinel, asks
    /// the sentinels for the master first. Called by the sync service.
    pub async fn connect(&self) -> Result<(), FleetError> {
        Ok(self.link.connect().await?)
    }

    /// With Sentinel: whether the sentinels name another master than the one
    /// in use (then the sync service reconnects). `false` otherwise.
    pub async fn master_moved(&self) -> bool {
        self.link.master_moved().await
    }

    /// Completes when an operation failed in a way that says the Sentinel
    /// master may have moved (never for the other topologies).
    pub async fn rediscovery(&self) {
        self.link.rediscovery().await
    }

    fn connection(&self) -> Result<Conn, FleetError> {
        self.link.connection().ok_or(FleetError::NotConnected)
    }

    /// Runs `op` (on the master holding `key`) within `limit`; records its
    /// time and outcome.
    async fn timed<T>(
        &self,
        metrics: &Metrics,
        what: FleetOp,
        key: &str,
        limit: Duration,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let deadline = tokio::time::Instant::now() + limit;
        self.timed_until(metrics, what, key, deadline, op).await
    }

    async fn timed_until<T>(
        &self,
        metrics: &Metrics,
        what: FleetOp,
        key: &str,
        deadline: tokio::time::Instant,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let start = Instant::now();
        let generation = self.link.generation();
        let result = match tokio::time::timeout_at(deadline, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(FleetError::Redis(e)),
            Err(_) => Err(FleetError::Timeout(
                deadline.into_std().saturating_duration_since(start),
            )),
        };
        metrics.fleet_redis(what, start.elapsed().as_secs_f64(), result.is_ok());
        // A failure on a connection replaced meanwhile (the old Sentinel
        // master, a cluster connection made anew) says nothing of the new one.
        if result.is_ok() || self.link.generation() == generation {
            let breaker = self.circuits.for_key(key);
            self.mark(
                result.is_ok(),
                metrics,
                what,
                result.as_ref().err(),
                &breaker,
            );
        }
        result
    }

    /// Charges `cost` cells of fleet rule `rule` (index `index`) for `key`:
    /// from this node's lease when it has one, locally refused while Redis said
    /// the bucket is empty, otherwise one Redis round trip (shared with the
    /// requests that arrive while it is under way).
    /// Waits (for another request's refill, or for Redis) until `deadline` at
    /// most; while degraded, only a probe asks Redis.
    pub async fn take(
        &self,
        index: usize,
        rule: &LimitConfig,
        key: &LimitKey,
        cost: u32,
        deadline: tokio::time::Instant,
        metrics: &Metrics,
    ) -> Result<FleetAnswer, FleetError> {
        let batch = self.config.quota_batch;
        let mut waited = false;
        let (want, owner) = loop {
            match self.leases.begin(index, *key, batch, waited) {
                Begin::Answered(answer) => return Ok(answer),
                Begin::Refill { want, owner } => break (want, owner),
                // While the circuit is open the refill under way is a probe:
                // the others take the failure mode at once instead of
                // waiting for it.
                Begin::Wait(_) if self.circuits.for_key(&self.bucket(rule, key)).is_open() => {
                    return Err(FleetError::CircuitOpen)
                }
                Begin::Wait(notified) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Err(FleetError::Timeout(self.config.timeout));
                    }
                    waited = true;
                }
            }
        };
        if !self.circuits.for_key(&self.bucket(rule, key)).may_ask() {
            self.leases.finish(index, *key, None, owner);
            return Err(FleetError::CircuitOpen);
        }
        let result = self.script(rule, key, cost, want, deadline, metrics).await;
        let answer = match &result {
            Ok((granted, wait)) => Some((*granted, *wait)),
            Err(_) => None,
        };
        self.leases.finish(index, *key, answer, owner);
        let (granted, wait) = result?;
        Ok(if granted == 0 {
            FleetAnswer::Limited { retry_after: wait }
        } else {
            FleetAnswer::Allowed
        })
    }

    /// The key of `rule`'s bucket for `key`: `<prefix>q:<rule>:<key>`.
    fn bucket(&self, rule: &LimitConfig, key: &LimitKey) -> String {
        format!("{}{}:{}", self.keys.quota, rule.name, describe(key))
    }

    /// One round trip of the bucket script: takes up to `want` requests' worth
    /// of tokens (none: a peek) and returns how many it granted and, when none,
    /// how long until one fits.
    async fn script(
        &self,
        rule: &LimitConfig,
        key: &LimitKey,
        cost: u32,
        want: u32,
        deadline: tokio::time::Instant,
        metrics: &Metrics,
    ) -> Result<(u32, Duration), FleetError> {
        let op = if want == 0 {
            FleetOp::Peek
        } else {
            FleetOp::Quota
        };
        let bucket = self.bucket(rule, key);
        let mut conn = self.connection().inspect_err(|e| {
            self.mark(false, metrics, op, Some(e), &self.circuits.for_key(&bucket))
        })?;
        let rate_per_ms =
            f64::from(rule.rate.count.get()) / rule.rate.per.as_millis().max(1) as f64;
        let mut invocation = self.take.call(&[&bucket]);
        invocation
            .arg(format!("{rate_per_ms:.12}"))
            .arg(rule.burst.get())
            .arg(want)
            .arg(cost.max(1));
        let (granted, wait_ms): (u32, u64) = self
            .timed_until(metrics, op, &bucket, deadline, invocation.invoke(&mut conn))
            .await?;
        Ok((granted, Duration::from_millis(wait_ms)))
    }

    /// Answers the fleet checks of one request, all at once: each is charged
    /// (through its lease, or one Redis round trip) concurrently, so a route
    /// with several fleet rules waits on Redis once, never longer than
    /// `timeout`. A check that fails is [`FleetAnswer::Unavailable`]; the
    /// policy applies the rule's failure mode.
    pub async fn answer(
        &self,
        limits: &[LimitConfig],
        checks: &[FleetCheck],
        metrics: &Metrics,
    ) -> Vec<FleetAnswer> {
        let deadline = tokio::time::Instant::now() + self.config.timeout;
        match checks {
            [check] => vec![
                self.answer_one(limits, check, deadline, metrics, false)
                    .await,
            ],
            _ => {
                futures_util::future::join_all(
                    checks
                        .iter()
                        .map(|c| self.answer_one(limits, c, deadline, metrics, false)),
                )
                .await
            }
        }
    }

    /// One check: charged through the lease table, or peeked at (`peek`).
    async fn answer_one(
        &self,
        limits: &[LimitConfig],
        check: &FleetCheck,
        deadline: tokio::time::Instant,
        metrics: &Metrics,
        peek: bool,
    ) -> FleetAnswer {
        let Some(rule) = limits.get(check.rule) else {
            return FleetAnswer::Unavailable;
        };
        let answer = if peek {
            self.script(rule, &check.key, check.cost, 0, deadline, metrics)
                .await
                .map(|(granted, wait)| {
                    if granted == 0 {
                        FleetAnswer::Limited { retry_after: wait }
                    } else {
                        FleetAnswer::Allowed
                    }
                })
        } else {
            self.take(check.rule, rule, &check.key, check.cost, deadline, metrics)
                .await
        };
        answer.unwrap_or(FleetAnswer::Unavailable)
    }

    /// What the fleet buckets of `checks` would say now, charging nothing (for
    /// explain): one script call per check, no lease taken or spent.
    pub async fn peek(
        &self,
        limits: &[LimitConfig],
        checks: &[FleetCheck],
        metrics: &Metrics,
    ) -> Vec<FleetAnswer> {
        let deadline = tokio::time::Instant::now() + ADMIN_TIMEOUT;
        futures_util::future::join_all(
            checks
                .iter()
                .map(|c| self.answer_one(limits, c, deadline, metrics, true)),
        )
        .await
    }

    /// Drops spent and expired leases (not those being refilled).
    pub fn sweep(&self) {
        self.leases.sweep();
    }

    /// What Redis holds: the epoch and every flag, read in one transaction.
    pub async fn read_view(&self, metrics: &Metrics) -> Result<FleetView, FleetError> {
        let mut conn = self.connection()?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .get(&self.keys.epoch)
            .hgetall(&self.keys.flags)
            .hgetall(&self.keys.origins);
        let (epoch, raw, origins): (
            Option<String>,
            HashMap<String, String>,
            BTreeMap<String, String>,
        ) = self
            .timed(
                metrics,
                FleetOp::Resync,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                pipe.query_async(&mut conn),
            )
            .await?;
        let mut flags = BTreeMap::new();
        for (flag, json) in raw {
            match serde_json::from_str::<Activation>(&json) {
                Ok(a) => {
                    flags.insert(flag, a);
                }
                Err(e) => log::error!("fleet: flag {flag} in Redis is not readable ({e}); ignored"),
            }
        }
        Ok(FleetView {
            epoch,
            flags,
            origins,
        })
    }

    /// Writes flag `flag` (`None`: deletes it) and announces it, all or
    /// nothing: the writer reads Redis' clock, and the script applies the
    /// change only before that time plus [`WRITE_WINDOW_MS`]. An answer that
    /// never comes is a failure that cannot be applied later (the deadline has
    /// passed by the time the writer gives up); if the change was applied just
    /// before Redis stopped answering, the next read after it undoes it
    /// ([`Fleet::settle_failed_writes`]). `Ok(false)`: Redis has no epoch (it
    /// lost its data) and nothing was written; re-publish, then write again.
    pub async fn write_flag(
        &self,
        node: &str,
        flag: &str,
        value: Option<&Activation>,
        previous: Option<&Activation>,
        metrics: &Metrics,
    ) -> Result<bool, FleetError> {
        let mut conn = self.connection()?;
        // Redis' clock where the flags live (in a cluster, the node of their
        // slot, whose clock the script reads too).
        let (secs, micros): (u64, u64) = self
            .timed(
                metrics,
                FleetOp::FlagWrite,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                self.time.call(&[&self.keys.flags]).invoke(&mut conn),
            )
            .await?;
        let deadline_ms = (secs * 1000 + micros / 1000).saturating_add_signed(self.write_window_ms);
        let json = |a: Option<&Activation>| {
            a.map(|a| serde_json::to_string(a).unwrap_or_default())
                .unwrap_or_default()
        };
        let landed = json(value);
        let mut invocation =
            self.write
                .call(&[&self.keys.flags, &self.keys.epoch, &self.keys.origins]);
        invocation.arg(deadline_ms).arg(flag).arg(&landed).arg(node);
        let answer: Result<String, FleetError> = self
            .timed(
                metrics,
                FleetOp::FlagWrite,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                invocation.invoke(&mut conn),
            )
            .await;
        match answer.as_deref() {
            Ok("ok") => {
                self.await_replica(&mut conn, &format!("the change of {flag}"))
                    .await;
                Ok(true)
            }
            Ok("empty") => Ok(false),
            Ok(_) => Err(FleetError::Late),
            Err(_) => {
                if let Ok(mut failed) = self.failed_writes.lock() {
                    failed.push(FailedWrite {
                        flag: flag.to_string(),
                        landed,
                        previous: json(previous),
                    });
                }
                answer.map(|_| false)
            }
        }
    }

    /// With Sentinel or a cluster, after a flag write: waits (at most
    /// [`REPLICA_WAIT`]) until a replica of the node holding the flags has
    /// it, so that a failover right after does not lose a change already
    /// answered as made. When none has it by then the change stands (every
    /// node may already apply it) and the log says a failover now could lose
    /// it.
    async fn await_replica(&self, conn: &mut Conn, what: &str) {
        if !self.link.replicated() {
            return;
        }
        let wait = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .clone();
        let acked = tokio::time::timeout(
            REPLICA_WAIT + Duration::from_millis(500),
            conn.query_at::<i64>(&self.keys.flags, &wait),
        )
        .await;
        if !matches!(acked, Ok(Ok(n)) if n >= 1) {
            log::warn!(
                "fleet: no replica confirmed {what} within {REPLICA_WAIT:?} (it is on the Redis master); a failover now could lose it"
            );
        }
    }

    /// Puts `active` back into a Redis that has no epoch (it lost its data),
    /// with a new epoch named after this node; `false` when another node
    /// re-published first (then its flags are the fleet's).
    pub async fn republish(
        &self,
        node: &str,
        active: &BTreeMap<String, Activation>,
        metrics: &Metrics,
    ) -> Result<bool, FleetError> {
        let mut conn = self.connection()?;
        let epoch = format!("{node}@{}", crate::lockdown::now_unix_ms());
        let mut invocation =
            self.republish
                .call(&[&self.keys.flags, &self.keys.epoch, &self.keys.origins]);
        invocation.arg(epoch).arg(node);
        for (flag, a) in active {
            invocation
                .arg(flag)
                .arg(serde_json::to_string(a).unwrap_or_default());
        }
        let done: i64 = self
            .timed(
                metrics,
                FleetOp::FlagWrite,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                invocation.invoke(&mut conn),
            )
            .await?;
        if done == 1 {
            self.await_replica(&mut conn, "the re-published flags")
                .await;
        }
        Ok(done == 1)
    }

    /// After a successful read: undoes each write this node reported as failed
    /// but that was applied after all (its value is in `view`), and forgets the
    /// others (their deadline has passed: they can no longer be applied).
    /// Returns the flags undone.
    pub async fn settle_failed_writes(&self, view: &FleetView, metrics: &Metrics) -> Vec<String> {
        let failed = match self.failed_writes.lock() {
            Ok(mut f) => std::mem::take(&mut *f),
            Err(_) => return Vec::new(),
        };
        let mut undone = Vec::new();
        for w in failed {
            let now = view
                .flags
                .get(&w.flag)
                .map(|a| serde_json::to_string(a).unwrap_or_default())
                .unwrap_or_default();
            if now != w.landed {
                continue;
            }
            let Ok(mut conn) = self.connection() else {
                continue;
            };
            let mut invocation = self.restore.call(&[&self.keys.flags]);
            invocation.arg(&w.flag).arg(&w.landed).arg(&w.previous);
            let restored: Result<i64, _> = self
                .timed(
                    metrics,
                    FleetOp::FlagWrite,
                    &self.keys.flags,
                    ADMIN_TIMEOUT,
                    invocation.invoke(&mut conn),
                )
                .await;
            if restored.is_ok_and(|n| n == 1) {
                log::warn!(
                    "fleet: a change of {} reported as failed had been applied; undone",
                    w.flag
                );
                undone.push(w.flag);
            }
        }
        undone
    }

    /// Removes an expired flag if it is still the same activation; returns
    /// whether this node was the one that removed it (and so audits it).
    pub async fn expire_flag(
        &self,
        flag: &str,
        activation: &Activation,
        metrics: &Metrics,
    ) -> Result<bool, FleetError> {
        let mut conn = self.connection()?;
        let json = serde_json::to_string(activation).unwrap_or_default();
        let mut invocation = self.expire.call(&[&self.keys.flags]);
        invocation.arg(flag).arg(json);
        let removed: i64 = self
            .timed(
                metrics,
                FleetOp::FlagExpire,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                invocation.invoke(&mut conn),
            )
            .await?;
        Ok(removed == 1)
    }

    /// A fresh subscription to the flags and bans channels (see
    /// [`RedisLink::pubsub`] for the node it is made on).
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub, FleetError> {
        let mut pubsub = self.link.pubsub().await?;
        let channels = [self.keys.flags.as_str(), self.keys.bans.as_str()];
        tokio::time::timeout(ADMIN_TIMEOUT, pubsub.subscribe(&channels[..]))
            .await
            .map_err(|_| FleetError::Timeout(ADMIN_TIMEOUT))??;
        Ok(pubsub)
    }

    /// Takes or renews the escalation lease for `node` (3 s, renewed every
    /// tick); whether this node leads. Without Redis nobody leads: flag
    /// changes could not be made anyway.
    pub async fn lead(&self, node: &str, metrics: &Metrics) -> bool {
        let Ok(mut conn) = self.connection() else {
            return false;
        };
        let mut invocation = self.lead.call(&[&self.keys.leader]);
        invocation.arg(node).arg(LEADER_LEASE_MS);
        self.timed(
            metrics,
            FleetOp::Resync,
            &self.keys.flags,
            self.config.timeout.max(Duration::from_millis(200)),
            invocation.invoke::<i64>(&mut conn),
        )
        .await
        .is_ok_and(|n| n == 1)
    }

    /// Reports this node (`report`: what it enforces, as JSON) in the fleet's
    /// node list, timed by Redis' clock; nodes silent for [`NODE_FORGET_AFTER`]
    /// are dropped from it in the same script.
    pub async fn heartbeat(
        &self,
        node: &str,
        report: &str,
        metrics: &Metrics,
    ) -> Result<(), FleetError> {
        let mut conn = self.connection()?;
        let mut invocation = self
            .heartbeat
            .call(&[&self.keys.nodes, &self.keys.nodes_seen]);
        invocation
            .arg(node)
            .arg(report)
            .arg(NODE_FORGET_AFTER.as_millis() as u64);
        self.timed(
            metrics,
            FleetOp::Node,
            &self.keys.flags,
            ADMIN_TIMEOUT,
            invocation.invoke::<i64>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    /// Every node that reported in the last [`NODE_FORGET_AFTER`], with the
    /// time since its last report (by Redis' clock), and the node that holds
    /// the escalation lease.
    pub async fn read_nodes(&self, metrics: &Metrics) -> Result<FleetNodes, FleetError> {
        let mut conn = self.connection()?;
        let mut pipe = redis::pipe();
        // TIME has no key: in a cluster it runs on the node the keys after it
        // choose, in the same transaction.
        pipe.atomic()
            .cmd("TIME")
            .hgetall(&self.keys.nodes)
            .hgetall(&self.keys.nodes_seen)
            .get(&self.keys.leader);
        #[allow(clippy::type_complexity)]
        let ((secs, micros), reports, seen, leader): (
            (u64, u64),
            BTreeMap<String, String>,
            HashMap<String, u64>,
            Option<String>,
        ) = self
            .timed(
                metrics,
                FleetOp::Node,
                &self.keys.flags,
                ADMIN_TIMEOUT,
                pipe.query_async(&mut conn),
            )
            .await?;
        let now_ms = secs * 1000 + micros / 1000;
        let nodes = reports
            .into_iter()
            .map(|(node, report)| FleetNode {
                age_ms: seen
                    .get(&node)
                    .map(|at| now_ms.saturating_sub(*at))
                    .unwrap_or(u64::MAX),
                report: serde_json::from_str(&report).unwrap_or(serde_json::Value::Null),
                node,
            })
            .collect();
        Ok(FleetNodes { nodes, leader })
    }

    /// The channel bans are announced on.
    pub fn bans_key(&self) -> String {
        self.keys.bans.clone()
    }

    /// The key of a ban: `<prefix>ban:<rule>:<key>` (in a cluster, on the
    /// slot of the fleet's other keys, so that one `SCAN` finds them all).
    fn ban_key(&self, ban: &FleetBan) -> String {
        format!("{}:{}:{}", self.keys.ban, ban.rule, ban.key)
    }

    /// Records a ban in Redis (expiring with it) and announces it to every node.
    pub async fn publish_ban(&self, ban: &FleetBan, metrics: &Metrics) -> Result<(), FleetError> {
        let mut conn = self.connection()?;
        let json = serde_json::to_string(ban).unwrap_or_default();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.ban_key(ban))
            .arg(&json)
            .arg("PX")
            .arg(ban.ms.max(1))
            .ignore()
            .publish(self.bans_key(), &json)
            .ignore();
        self.timed(
            metrics,
            FleetOp::Ban,
            &self.keys.bans,
            ADMIN_TIMEOUT,
            pipe.query_async::<()>(&mut conn),
        )
        .await
    }

    /// Removes a ban from Redis and announces the lift.
    pub async fn lift_ban(
        &self,
        rule: &str,
        key: &str,
        metrics: &Metrics,
    ) -> Result<(), FleetError> {
        let mut conn = self.connection()?;
        let ban = FleetBan {
            rule: rule.to_string(),
            key: key.to_string(),
            ms: 0,
            offenses: 0,
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(self.ban_key(&ban))
            .ignore()
            .publish(
                self.bans_key(),
                serde_json::to_string(&ban).unwrap_or_default(),
            )
            .ignore();
        self.timed(
            metrics,
            FleetOp::Ban,
            &self.keys.bans,
            ADMIN_TIMEOUT,
            pipe.query_async::<()>(&mut conn),
        )
        .await
    }

    /// Every ban in Redis, with its time left (at most [`MAX_FLEET_BANS`]).
    pub async fn read_bans(&self, metrics: &Metrics) -> Result<Vec<FleetBan>, FleetError> {
        let mut conn = self.connection()?;
        let pattern = format!("{}:*", self.keys.ban);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .timed(
                    metrics,
                    FleetOp::Ban,
                    &self.keys.bans,
                    ADMIN_TIMEOUT,
                    conn.query_at(
                        &self.keys.bans,
                        redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000),
                    ),
                )
                .await?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= MAX_FLEET_BANS {
                break;
            }
        }
        keys.truncate(MAX_FLEET_BANS);
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.get(k).pttl(k);
        }
        let raw: Vec<(Option<String>, i64)> = if keys.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<redis::Value> = self
                .timed(
                    metrics,
                    FleetOp::Ban,
                    &self.keys.bans,
                    ADMIN_TIMEOUT,
                    pipe.query_async(&mut conn),
                )
                .await?;
            flat.chunks(2)
                .map(|pair| {
                    let json = match pair.first() {
                        Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                        _ => None,
                    };
                    let ttl = match pair.get(1) {
                        Some(redis::Value::Int(n)) => *n,
                        _ => -2,
                    };
                    (json, ttl)
                })
                .collect()
        };
        Ok(raw
            .into_iter()
            .filter_map(|(json, ttl)| {
                let mut ban: FleetBan = serde_json::from_str(&json?).ok()?;
                ban.ms = u64::try_from(ttl).ok().filter(|&t| t > 0)?;
                Some(ban)
            })
            .collect())
    }
}

/// A stable text form of a limit key for Redis key names.
fn describe(key: &LimitKey) -> String {
    match key {
        LimitKey::Ip(ip) => ip.to_string(),
        LimitKey::Net(net) => net.to_string(),
        LimitKey::Asn(n) => format!("as{n}"),
        LimitKey::Country(c) => c.to_string(),
        LimitKey::Hashed(h) => format!("h{h:016x}"),
        LimitKey::Ja4(j) => j.to_string(),
        LimitKey::Whole => "all".into(),
        LimitKey::Overflow => "overflow".into(),
    }
}

/// The `(first slot, last slot, master address)` ranges of a `CLUSTER SLOTS`
/// reply; entries it cannot read are skipped.
fn slot_ranges(reply: &redis::Value) -> Vec<(u16, u16, String)> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let first = int(fields.first()?)?;
            let last = int(fields.get(1)?)?;
            let Value::Array(master) = fields.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = int(master.get(1)?)?;
            Some((first, last, format!("{host}:{port}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_testkit::redis::RedisServer;

    fn fleet(redis: &RedisServer) -> Fleet {
        Fleet::new(FleetConfig {
            redis: rampart_config::FleetRedis::Single { url: redis.url() },
            key_prefix: "t:".into(),
            node: None,
            timeout: Duration::from_millis(200),
            resync_interval: Duration::from_secs(1),
            quota_batch: 3,
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn activation() -> Activation {
        Activation {
            mode: crate::lockdown::Mode::Enforce,
            actor: "a".into(),
            reason: "r".into(),
            since_ms: 1,
            expires_ms: None,
        }
    }

    #[tokio::test]
    async fn in_a_cluster_bans_are_read_only_from_the_master_that_serves_them() {
        let mut cluster = rampart_testkit::redis::RedisCluster::start(3, 0).await;
        let metrics = Metrics::new();
        let f = Fleet::new(FleetConfig {
            redis: rampart_config::FleetRedis::Cluster {
                urls: cluster.urls(),
            },
            key_prefix: "t:".into(),
            node: None,
            timeout: Duration::from_millis(200),
            resync_interval: Duration::from_secs(1),
            quota_batch: 3,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        f.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let ban = FleetBan {
            rule: "r".into(),
            key: "192.0.2.1".into(),
            ms: 60_000,
            offenses: 1,
        };
        f.publish_ban(&ban, &metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let read = f
            .read_bans(&metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.len(), 1, "{read:?}");
        // Its master gone (no replica here): reading fails every time. Never
        // an empty list from another master, which would lift every ban.
        let home = cluster.master_of("{t:}bans").expect("a master");
        cluster.kill(home);
        // A connection made now has none to the dead master (the sync service
        // reconnects when a resync fails).
        let _ = f.connect().await;
        for _ in 0..10 {
            let read = f.read_bans(&metrics).await;
            assert!(read.is_err(), "{read:?}");
        }
    }

    #[tokio::test]
    async fn writes_need_the_epoch_and_a_write_past_its_deadline_is_not_applied() {
        let redis = RedisServer::start().await;
        let metrics = Metrics::new();
        let mut f = fleet(&redis);
        f.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let a = activation();
        // No epoch yet: nothing is written, the caller re-publishes first.
        let written = f.write_flag("n", "x", Some(&a), None, &metrics).await;
        assert!(matches!(written, Ok(false)), "{written:?}");
        assert_eq!(redis.cli(&["HEXISTS", "t:flags", "x"]), "0");
        assert!(f
            .republish("n", &BTreeMap::new(), &metrics)
            .await
            .unwrap_or(false));
        assert!(!f
            .republish("m", &BTreeMap::new(), &metrics)
            .await
            .unwrap_or(true));
        assert!(matches!(
            f.write_flag("n", "x", Some(&a), None, &metrics).await,
            Ok(true)
        ));
        assert_eq!(redis.cli(&["HEXISTS", "t:flags", "x"]), "1");
        // A deadline already past when the script runs: refused, not applied.
        f.write_window_ms = -1_000;
        let late = f.write_flag("n", "y", Some(&a), None, &metrics).await;
        assert!(matches!(late, Err(FleetError::Late)), "{late:?}");
        assert_eq!(redis.cli(&["HEXISTS", "t:flags", "y"]), "0");
        let late = f.write_flag("n", "x", None, Some(&a), &metrics).await;
        assert!(matches!(late, Err(FleetError::Late)), "{late:?}");
        assert_eq!(redis.cli(&["HEXISTS", "t:flags", "x"]), "1");
    }

    #[tokio::test]
    async fn a_write_reported_failed_that_landed_after_all_is_undone() {
        let redis = RedisServer::start().await;
        let metrics = Metrics::new();
        let f = fleet(&redis);
        f.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let a = activation();
        assert!(f
            .republish("n", &BTreeMap::new(), &metrics)
            .await
            .unwrap_or(false));
        assert!(matches!(
            f.write_flag("n", "x", Some(&a), None, &metrics).await,
            Ok(true)
        ));
        // As if its answer had been lost: the writer reported a failure.
        f.failed_writes
            .lock()
            .map(|mut w| {
                w.push(FailedWrite {
                    flag: "x".into(),
                    landed: serde_json::to_string(&a).unwrap_or_default(),
                    previous: String::new(),
                })
            })
            .unwrap_or_else(|e| panic!("{e}"));
        // A write that did not land is forgotten, not undone.
        f.failed_writes
            .lock()
            .map(|mut w| {
                w.push(FailedWrite {
                    flag: "z".into(),
                    landed: "{}".into(),
                    previous: String::new(),
                })
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let view = f
            .read_view(&metrics)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(view.epoch.is_some());
        assert_eq!(
            f.settle_failed_writes(&view, &metrics).await,
            vec!["x".to_string()]
        );
        assert_eq!(redis.cli(&["HEXISTS", "t:flags", "x"]), "0");
        assert!(f
            .failed_writes
            .lock()
            .map(|w| w.is_empty())
            .unwrap_or(false));
    }
}
