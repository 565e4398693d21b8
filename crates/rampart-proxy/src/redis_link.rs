//! The fleet's link to Redis (or Valkey), whatever its topology, through the
//! `redis` crate's own support for each: one server (a connection manager that
//! reconnects by itself), the master that Redis Sentinel names (found through
//! the sentinels, found again after a failover), or a Redis Cluster (the
//! crate's cluster connection, which follows slot moves and failovers).
//!
//! Everything above this module sees one [`Conn`] that runs commands, Lua
//! scripts ([`Lua`]: `EVALSHA`, then `EVAL` on the node that lacks the script,
//! so a replica promoted by a failover needs no script upload to every node)
//! and commands run on the node holding a given key ([`Conn::query_at`]:
//! `WAIT` and `SCAN` have no key of their own, and in a cluster must still run
//! on the node that holds the fleet's flags and bans).
//!
//! **Pub/sub.** Flag changes and bans are announced with `PUBLISH` from the
//! node that holds the fleet's keys. In a cluster a regular `PUBLISH` reaches
//! every node of the cluster, so a node subscribes through any of the seed
//! nodes that answers (the next one when that one fails); with Sentinel it
//! subscribes on the master; on one server, on it.

use rampart_config::{FleetRedis, SentinelConfig};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisFuture, RedisResult, ToRedisArgs, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Number of slots of a Redis Cluster.
const CLUSTER_SLOTS: u16 = 16_384;

/// The cluster slot of `key` as Redis computes it: CRC16 (XMODEM) of its hash
/// tag (the part between the first `{` and the next `}`, when not empty), or
/// of the whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &rest[..len])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % CLUSTER_SLOTS
}

/// A connection for commands: to one server (or the Sentinel master), or to
/// a whole cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Conn {
    /// One server, reconnecting by itself.
    Node(ConnectionManager),
    /// A cluster: routes each command to the node holding its key.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` on the node that holds `key` (the master of its slot in a
    /// cluster; the only node otherwise): for commands without a key of
    /// their own that must run where `key` lives (`SCAN`, `WAIT`).
    ///
    /// In a cluster `cmd` goes in one pipeline after `EXISTS key`: the
    /// pipeline is routed by that key, and a node that does not serve its
    /// slot answers `MOVED` instead of running `cmd`. (Routing `cmd` alone to
    /// the slot's master is not enough: while that master is down the
    /// cluster connection may hand the command to any node, which would
    /// answer `SCAN` with its own keys.)
    pub async fn query_at<T: FromRedisValue>(&mut self, key: &str, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Self::Node(c) => cmd.query_async(c).await,
            Self::Cluster(c) => {
                let mut pipe = redis::pipe();
                pipe.cmd("EXISTS")
                    .arg(key)
                    .ignore()
                    .add_command(cmd.clone());
                let (value,): (T,) = pipe.query_async(c).await?;
                Ok(value)
            }
        }
    }
}

/// A Lua script, run by hash and sent whole only to a node that lacks it.
#[derive(Debug)]
pub struct Lua {
    source: &'static str,
    hash: String,
}

impl Lua {
    /// The script `source`.
    pub fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: redis::Script::new(source).get_hash().to_string(),
        }
    }

    /// A call of the script on `keys` (all on one slot in a cluster); add
    /// arguments with [`LuaCall::arg`].
    pub fn call(&self, keys: &[&str]) -> LuaCall {
        let mut by_hash = redis::cmd("EVALSHA");
        let mut whole = redis::cmd("EVAL");
        by_hash.arg(&self.hash).arg(keys.len());
        whole.arg(self.source).arg(keys.len());
        for k in keys {
            by_hash.arg(*k);
            whole.arg(*k);
        }
        LuaCall { by_hash, whole }
    }
}

/// One call of a [`Lua`] script.
pub struct LuaCall {
    by_hash: Cmd,
    whole: Cmd,
}

impl LuaCall {
    /// Adds an argument (`ARGV`).
    pub fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Self {
        self.by_hash.arg(&arg);
        self.whole.arg(arg);
        self
    }

    /// Runs the script: by hash, and whole when the node does not have it (a
    /// restarted server, a replica promoted by a failover). Both go to the
    /// node of the script's first key.
    pub async fn invoke<T: FromRedisValue>(&self, conn: &mut Conn) -> RedisResult<T> {
        match self.by_hash.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                self.whole.query_async(conn).await
            }
            other => other,
        }
    }
}

/// What to reach, built from the config; no I/O until [`RedisLink::connect`].
enum Target {
    Single(redis::Client),
    Sentinel {
        config: SentinelConfig,
        /// The sentinel asked first on the next discovery: moves on after a
        /// discovery fails, so a dead or frozen sentinel is not asked first
        /// every time.
        first: AtomicUsize,
    },
    Cluster {
        client: redis::cluster::ClusterClient,
        seeds: Vec<redis::Client>,
        /// The seed node subscribed through next.
        next_seed: AtomicUsize,
    },
}

/// The fleet's link to Redis: the current connection for commands, and how
/// to (re)connect and subscribe for the configured topology.
pub struct RedisLink {
    target: Target,
    conn: arc_swap::ArcSwapOption<Conn>,
    /// Connections made so far: tells an operation whether the connection it
    /// used is still the one in use.
    generation: std::sync::atomic::AtomicU64,
    /// Sentinel: the master in use (its client, and its address for logs).
    master: arc_swap::ArcSwapOption<(redis::Client, String)>,
    /// Sentinel: raised when an error says the master may have moved (it
    /// refused a write as a replica, or went away), so that the sync service
    /// asks the sentinels again without waiting for its next tick.
    rediscover: tokio::sync::Notify,
    /// Longest one connection attempt or discovery may take.
    connect_timeout: Duration,
}

impl RedisLink {
    /// A link for `redis`; connects later ([`RedisLink::connect`]).
    pub fn new(redis: &FleetRedis, connect_timeout: Duration) -> Result<Self, String> {
        let target = match redis {
            FleetRedis::Single { url } => Target::Single(
                redis::Client::open(url.as_str()).map_err(|e| format!("fleet.redis_url: {e}"))?,
            ),
            FleetRedis::Sentinel(config) => {
                for url in &config.urls {
                    redis::Client::open(url.as_str())
                        .map_err(|e| format!("fleet.sentinel.urls: {e}"))?;
                }
                Target::Sentinel {
                    config: config.clone(),
                    first: AtomicUsize::new(0),
                }
            }
            FleetRedis::Cluster { urls } => {
                let seeds = urls
                    .iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<RedisResult<Vec<_>>>()
                    .map_err(|e| format!("fleet.cluster_urls: {e}"))?;
                // A request never waits beyond the fleet's `timeout` (its
                // future is dropped then, and the cluster connection drops a
                // request nobody waits for), so retries are few and quick:
                // a failover is ridden out by the failure modes, not by
                // retrying inside the client.
                let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(connect_timeout)
                    .response_timeout(connect_timeout)
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()
                    .map_err(|e| format!("fleet.cluster_urls: {e}"))?;
                Target::Cluster {
                    client,
                    seeds,
                    next_seed: AtomicUsize::new(0),
                }
            }
        };
        Ok(Self {
            target,
            conn: arc_swap::ArcSwapOption::empty(),
            generation: std::sync::atomic::AtomicU64::new(0),
            master: arc_swap::ArcSwapOption::empty(),
            rediscover: tokio::sync::Notify::new(),
            connect_timeout,
        })
    }

    /// The connection for commands, once connected.
    pub fn connection(&self) -> Option<Conn> {
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// Sentinel: the address of the master in use.
    pub fn master_address(&self) -> Option<String> {
        self.master.load_full().map(|m| m.1.clone())
    }

    /// Whether a flag write should wait for a replica to hold it (`WAIT`):
    /// with Sentinel and in a cluster, where a failover promotes a replica.
    pub fn replicated(&self) -> bool {
        !matches!(self.target, Target::Single(_))
    }

    /// Connects (or reconnects) the connection for commands: with Sentinel,
    /// asks the sentinels for the master first. The connection in use stays
    /// until a new one is made.
    pub async fn connect(&self) -> RedisResult<()> {
        let conn = match &self.target {
            Target::Single(client) => Conn::Node(self.manager(client).await?),
            Target::Sentinel { .. } => {
                let (client, address) = self.discover().await?;
                let manager = self.manager(&client).await?;
                let moved = self.master_address().is_some_and(|a| a != address);
                if moved {
                    log::warn!("fleet: Sentinel names a new master, {address}; switched to it");
                } else {
                    log::info!("fleet: connected to the Sentinel master at {address}");
                }
                self.master.store(Some(Arc::new((client, address))));
                Conn::Node(manager)
            }
            Target::Cluster { client, .. } => Conn::Cluster(
                self.within(client.get_async_connection())
                    .await
                    .and_then(|c| c)?,
            ),
        };
        self.conn.store(Some(Arc::new(conn)));
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many connections were made so far; changes when
    /// [`RedisLink::connect`] replaces the connection in use.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    async fn manager(&self, client: &redis::Client) -> RedisResult<ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.connect_timeout)
            .set_response_timeout(self.connect_timeout)
            .set_number_of_retries(1);
        self.within(client.get_connection_manager_with_config(config))
            .await
            .and_then(|m| m)
    }

    async fn within<T>(&self, f: impl std::future::Future<Output = T>) -> RedisResult<T> {
        tokio::time::timeout(self.connect_timeout, f)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer in time",
                ))
            })
    }

    /// Sentinel: asks the sentinels (first the one after the last that
    /// failed) for the master, checked to be a master (`ROLE`) by the crate.
    async fn discover(&self) -> RedisResult<(redis::Client, String)> {
        let Target::Sentinel { config, first } = &self.target else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::ClientError,
                "not a Sentinel deployment",
            )));
        };
        let n = config.urls.len().max(1);
        let start = first.load(Ordering::Relaxed) % n;
        let urls: Vec<&str> = config
            .urls
            .iter()
            .cycle()
            .skip(start)
            .take(config.urls.len())
            .map(String::as_str)
            .collect();
        let node = redis::sentinel::SentinelNodeConnectionInfo {
            tls_mode: None,
            redis_connection_info: Some(redis::RedisConnectionInfo {
                db: config.db,
                username: config.username.clone(),
                password: config.password.clone(),
                ..Default::default()
            }),
        };
        let found = async {
            let mut sentinel = redis::sentinel::Sentinel::build(urls)?;
            sentinel.async_master_for(&config.master, Some(&node)).await
        };
        match self.within(found).await.and_then(|r| r) {
            Ok(client) => {
                let address = client.get_connection_info().addr.to_string();
                Ok((client, address))
            }
            Err(e) => {
                first.store((start + 1) % n, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Sentinel: whether the sentinels now name another master than the one
    /// in use (a failover happened, or the old master came back demoted).
    /// Always `false` for the other topologies, which follow by themselves.
    pub async fn master_moved(&self) -> bool {
        if !matches!(self.target, Target::Sentinel { .. }) {
            return false;
        }
        match self.discover().await {
            Ok((_, address)) => self.master_address().is_none_or(|a| a != address),
            Err(_) => false,
        }
    }

    /// Notes a failed operation: with Sentinel, an error that says the
    /// master may have moved wakes [`RedisLink::rediscovery`].
    pub fn failed(&self, error: &redis::RedisError) {
        if matches!(self.target, Target::Sentinel { .. })
            && (error.kind() == redis::ErrorKind::ReadOnly
                || error.is_io_error()
                || error.is_connection_refusal()
                || error.is_connection_dropped())
        {
            self.rediscover.notify_one();
        }
    }

    /// Completes when an operation's error suggested that the Sentinel
    /// master moved (never for the other topologies).
    pub async fn rediscovery(&self) {
        self.rediscover.notified().await;
    }

    /// A fresh subscription connection: on the master (Sentinel), on the one
    /// server, or through the first seed node of the cluster that answers,
    /// starting after the one used last.
    pub async fn pubsub(&self) -> RedisResult<redis::aio::PubSub> {
        match &self.target {
            Target::Single(client) => self.within(client.get_async_pubsub()).await?,
            Target::Sentinel { .. } => {
                let master = self.master.load_full().ok_or_else(|| {
                    redis::RedisError::from((
                        redis::ErrorKind::ClientError,
                        "no Sentinel master found yet",
                    ))
                })?;
                self.within(master.0.get_async_pubsub()).await?
            }
            Target::Cluster {
                seeds, next_seed, ..
            } => {
                let mut last = None;
                for _ in 0..seeds.len() {
                    let i = next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len();
                    match self.within(seeds[i].get_async_pubsub()).await {
                        Ok(Ok(p)) => {
                            // Stay on this one next time too.
                            next_seed.store(i, Ordering::Relaxed);
                            return Ok(p);
                        }
                        Ok(Err(e)) | Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    redis::RedisError::from((redis::ErrorKind::ClientError, "no seed node"))
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_redis_computes() {
        // The reference value of the Redis Cluster specification.
        assert_eq!(key_slot(b"123456789"), 12_739);
        // A hash tag decides alone; an empty one does not count.
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{rampart:}flags"), key_slot(b"{rampart:}epoch"));
    }
}
