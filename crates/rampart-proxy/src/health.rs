//! Active health checks, run as a Pingora background service. Each server of the
//! current snapshot is probed every `interval` of its pool (TCP connect, or
//! `GET path` expecting 2xx/3xx); probes of one round run concurrently and each is
//! bounded by the pool's `timeout`.

use crate::state::Shared;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rampart_config::{HealthCheckConfig, HealthCheckKind};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How often the checker looks for due probes.
const TICK: Duration = Duration::from_millis(50);

/// The health checker.
#[derive(Debug)]
pub struct HealthChecker {
    shared: Arc<Shared>,
}

impl HealthChecker {
    /// A checker for the pools of `shared`'s current snapshot.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<(String, SocketAddr), Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.shared.snapshot();
            let now = Instant::now();
            let mut round = tokio::task::JoinSet::new();
            for (pool_index, pool) in snapshot.pools.iter().enumerate() {
                for (server_index, server) in pool.servers.iter().enumerate() {
                    let key = (pool.name().to_string(), server.addr);
                    let when = due.entry(key.clone()).or_insert(now);
                    if *when > now {
                        continue;
                    }
                    *when = now + pool.config.health_check.interval;
                    let check = pool.config.health_check.clone();
                    let addr = server.addr;
                    round.spawn(
                        async move { (pool_index, server_index, probe(addr, &check).await) },
                    );
                }
            }
            // A round's probes are bounded by their timeouts, so waiting here is bounded too.
            while let Some(done) = round.join_next().await {
                let Ok((pool_index, server_index, result)) = done else {
                    continue;
                };
                let Some(pool) = snapshot.pools.get(pool_index) else {
                    continue;
                };
                let Some(server) = pool.servers.get(server_index) else {
                    continue;
                };
                let hc = &pool.config.health_check;
                let change = server.health.record(
                    result.is_ok(),
                    hc.healthy_threshold.get(),
                    hc.unhealthy_threshold.get(),
                );
                if let Some(up) = change {
                    let addr = server.addr.to_string();
                    self.shared.metrics.upstream_health(pool.name(), &addr, up);
                    match (up, &result) {
                        (true, _) => {
                            log::info!("pool {}: server {addr} is back in rotation", pool.name())
                        }
                        (false, Err(why)) => {
                            log::warn!("pool {}: server {addr} taken out: {why}", pool.name())
                        }
                        (false, Ok(())) => {}
                    }
                }
            }
            due.retain(|(pool, addr), _| {
                snapshot
                    .pools
                    .iter()
                    .any(|p| p.name() == pool && p.servers.iter().any(|s| s.addr == *addr))
            });
        }
    }
}

/// One probe of `addr`.
pub async fn probe(addr: SocketAddr, check: &HealthCheckConfig) -> Result<(), String> {
    match tokio::time::timeout(check.timeout, probe_inner(addr, &check.kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

async fn probe_inner(addr: SocketAddr, kind: &HealthCheckKind) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect failed: {e}"))?;
    let HealthCheckKind::Http { path, host } = kind else {
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: rampart-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("no status line: {e}"))?;
    // "HTTP/1.1 200"
    match (&head[..5], head[9]) {
        (b"HTTP/", b'2' | b'3') => Ok(()),
        (b"HTTP/", _) => Err(format!("status {}", String::from_utf8_lossy(&head[9..12]))),
        _ => Err("not an HTTP response".to_string()),
    }
}
