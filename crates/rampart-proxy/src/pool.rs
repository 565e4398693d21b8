//! Upstream pools: round robin over the servers that health checks say are up.
//!
//! Health state lives in [`ServerHealth`], shared through a [`HealthRegistry`] keyed
//! by pool name and address, so a config reload keeps what the health checker
//! already knows about servers that are still configured.
//!
//! The config keeps origin host names unresolved; [`resolve_servers`] looks them
//! up each time a config is applied (start-up and every reload), and a name that
//! does not resolve refuses the config like any other config error.

use pingora::upstreams::peer::HttpPeer;
use rampart_config::{Config, ConfigError, ConfigIssue, PoolConfig, ServerAddress};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Health of one origin server, written only by the health checker.
#[derive(Debug)]
pub struct ServerHealth {
    healthy: AtomicBool,
    probed: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Default for ServerHealth {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            probed: AtomicBool::new(false),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl ServerHealth {
    /// Whether requests may go to this server.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether at least one probe has completed.
    pub fn is_probed(&self) -> bool {
        self.probed.load(Ordering::Relaxed)
    }

    /// Records a probe result. The first probe decides at once; after that a
    /// server changes state only after `threshold` equal results in a row.
    /// Returns the new state when it changed.
    pub fn record(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        let first = !self.probed.swap(true, Ordering::Relaxed);
        let (streak, other, threshold) = if ok {
            (&self.successes, &self.failures, healthy_threshold)
        } else {
            (&self.failures, &self.successes, unhealthy_threshold)
        };
        other.store(0, Ordering::Relaxed);
        let n = streak.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let was = self.is_healthy();
        if was != ok && (first || n >= threshold) {
            self.healthy.store(ok, Ordering::Relaxed);
            return Some(ok);
        }
        None
    }
}

/// Health state by (pool, server), kept across reloads.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    servers: Mutex<HashMap<(String, SocketAddr), Arc<ServerHealth>>>,
}

impl HealthRegistry {
    /// The health cell of `addr` in `pool`, created on first use.
    pub fn get(&self, pool: &str, addr: SocketAddr) -> Arc<ServerHealth> {
        let mut map = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((pool.to_string(), addr)).or_default().clone()
    }

    /// Forgets servers that are no longer configured.
    pub fn retain(&self, keep: &[(String, SocketAddr)]) {
        let mut map = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| keep.contains(k));
    }
}

/// One origin server of a pool.
#[derive(Debug)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// The peer handed to Pingora, built once per config.
    pub peer: HttpPeer,
    /// `peer`'s connection-reuse key (`Peer::reuse_hash`), computed once.
    pub reuse_key: u64,
    /// Its health.
    pub health: Arc<ServerHealth>,
}

/// The address of every server of every pool of one config, indexed like
/// `config.pools` and then like each pool's `servers`.
#[derive(Debug, Clone, Default)]
pub struct ResolvedServers(Vec<Vec<SocketAddr>>);

impl ResolvedServers {
    /// The addresses of pool `index`, in config order; empty for an unknown index.
    pub fn of_pool(&self, index: usize) -> &[SocketAddr] {
        self.0.get(index).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Resolves the servers of every pool of `config`, read from `file`. IP
/// addresses need no lookup; a host name asks the system resolver, which may
/// block, so call this off the async runtime. A name takes its first address.
/// Every name that fails is listed, as `pools.NAME.servers[i]: "host:port"
/// cannot be resolved: why`, in a [`ConfigError`] for `file`.
pub fn resolve_servers(config: &Config, file: &Path) -> Result<ResolvedServers, ConfigError> {
    resolve_servers_with(config, file, |host, port| {
        (host, port).to_socket_addrs().map(|mut a| a.next())
    })
}

/// [`resolve_servers`] over the resolver `lookup`, which gives the first
/// address of a name, if any.
fn resolve_servers_with(
    config: &Config,
    file: &Path,
    mut lookup: impl FnMut(&str, u16) -> std::io::Result<Option<SocketAddr>>,
) -> Result<ResolvedServers, ConfigError> {
    let mut issues = Vec::new();
    let mut pools = Vec::with_capacity(config.pools.len());
    for pool in &config.pools {
        let mut addrs = Vec::with_capacity(pool.servers.len());
        for (i, server) in pool.servers.iter().enumerate() {
            let failed = match server {
                ServerAddress::Ip(addr) => {
                    addrs.push(*addr);
                    continue;
                }
                ServerAddress::Name { host, port } => match lookup(host, *port) {
                    Ok(Some(addr)) => {
                        addrs.push(addr);
                        continue;
                    }
                    Ok(None) => format!("\"{server}\" resolves to no address"),
                    Err(e) => format!("\"{server}\" cannot be resolved: {e}"),
                },
            };
            issues.push(ConfigIssue {
                key: format!("pools.{}.servers[{i}]", pool.name),
                reason: failed,
            });
        }
        pools.push(addrs);
    }
    if issues.is_empty() {
        Ok(ResolvedServers(pools))
    } else {
        Err(ConfigError {
            file: file.to_path_buf(),
            issues,
        })
    }
}

/// A pool of origin servers.
#[derive(Debug)]
pub struct Pool {
    /// Validated config of the pool.
    pub config: PoolConfig,
    /// Its servers, in config order.
    pub servers: Vec<Upstream>,
    next: AtomicUsize,
}

impl Pool {
    /// Builds a pool over `addrs`, the resolved addresses of `config.servers`
    /// (see [`resolve_servers`]), attaching each server to its health cell in
    /// `registry`.
    pub fn new(config: &PoolConfig, addrs: &[SocketAddr], registry: &HealthRegistry) -> Self {
        let servers = addrs
            .iter()
            .map(|&addr| {
                let mut peer = HttpPeer::new(addr, config.tls, config.sni.clone());
                peer.options.connection_timeout = Some(config.connect_timeout);
                peer.options.total_connection_timeout = Some(config.connect_timeout * 2);
                peer.options.read_timeout = Some(config.read_timeout);
                peer.options.write_timeout = Some(config.write_timeout);
                peer.options.idle_timeout = Some(config.idle_timeout);
                Upstream {
                    addr,
                    reuse_key: pingora::upstreams::peer::Peer::reuse_hash(&peer),
                    peer,
                    health: registry.get(&config.name, addr),
                }
            })
            .collect();
        Self {
            config: config.clone(),
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// Pool name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The next healthy server in round-robin order, skipping `exclude`.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| Some(i) != exclude && self.servers[i].health.is_healthy())
    }

    /// Whether any server is up.
    pub fn has_healthy(&self) -> bool {
        self.servers.iter().any(|s| s.health.is_healthy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000", "origin.internal:9001", "[::1]:9002"]
[pools.api]
servers = ["api.invalid:80", "gone.invalid:81"]
[[routes]]
name = "all"
pool = "web"
"#;

    #[test]
    fn names_are_resolved_and_every_failure_is_listed() {
        let config = rampart_config::parse(CONFIG, Path::new("t.toml")).unwrap();
        let mut asked = Vec::new();
        let err = resolve_servers_with(&config, Path::new("t.toml"), |host, port| {
            asked.push(format!("{host}:{port}"));
            match host {
                "origin.internal" => Ok(Some(SocketAddr::from(([10, 0, 0, 7], port)))),
                "api.invalid" => Ok(None),
                _ => Err(std::io::Error::other("no such host")),
            }
        })
        .unwrap_err();
        // Pools come in name order; IP literals never reach the resolver.
        assert_eq!(
            asked,
            ["api.invalid:80", "gone.invalid:81", "origin.internal:9001"]
        );
        assert_eq!(
            err.to_string(),
            "t.toml: pools.api.servers[0]: \"api.invalid:80\" resolves to no address\n\
             t.toml: pools.api.servers[1]: \"gone.invalid:81\" cannot be resolved: no such host"
        );
        let ok = CONFIG.replace(
            "[\"api.invalid:80\", \"gone.invalid:81\"]",
            "[\"127.0.0.1:80\"]",
        );
        let config = rampart_config::parse(&ok, Path::new("t.toml")).unwrap();
        let resolved = resolve_servers_with(&config, Path::new("t.toml"), |_, port| {
            Ok(Some(SocketAddr::from(([10, 0, 0, 7], port))))
        })
        .unwrap();
        let web = config.pools.iter().position(|p| p.name == "web").unwrap();
        assert_eq!(
            resolved.of_pool(web),
            [
                "127.0.0.1:9000".parse::<SocketAddr>().unwrap(),
                "10.0.0.7:9001".parse().unwrap(),
                "[::1]:9002".parse().unwrap(),
            ]
        );
        assert!(resolved.of_pool(99).is_empty());
    }

    #[test]
    fn first_probe_decides_then_thresholds_apply() {
        let h = ServerHealth::default();
        assert_eq!(h.record(false, 2, 3), Some(false));
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true));
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert!(h.is_healthy());
        assert_eq!(h.record(false, 2, 3), Some(false));
    }
}
