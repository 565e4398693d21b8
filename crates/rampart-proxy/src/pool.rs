//! Upstream pools: round robin over the servers that health checks say are up.
//!
//! Health state lives in [`ServerHealth`], shared through a [`HealthRegistry`] keyed
//! by pool name and address, so a config reload keeps what the health checker
//! already knows about servers that are still configured.

use pingora::upstreams::peer::HttpPeer;
use rampart_config::PoolConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
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
    /// Its health.
    pub health: Arc<ServerHealth>,
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
    /// Builds a pool, attaching each server to its health cell in `registry`.
    pub fn new(config: &PoolConfig, registry: &HealthRegistry) -> Self {
        let servers = config
            .servers
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
