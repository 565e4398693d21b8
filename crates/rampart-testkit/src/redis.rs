//! Real `redis-server` processes on ephemeral loopback ports, for fleet tests:
//! one server that can be killed and restarted on the same port with its data
//! (append-only file), a Redis Cluster ([`RedisCluster`]) and a Sentinel
//! setup ([`RedisSentinel`]) whose masters can be killed to see a failover.
//!
//! The server binary is `redis-server`, or the one named by
//! `RAMPART_TEST_REDIS_SERVER` (say, a `valkey-server`, to run the same tests
//! on Valkey); `redis-cli` drives them all.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running redis-server; killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts redis-server (Debian's `redis-server` must be installed).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = Self {
            child: None,
            dir,
            port: crate::free_port("127.0.0.1"),
        };
        r.spawn().await;
        r
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new(server_binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server; scripts/test does)");
        self.child = Some(child);
        let port = self.port;
        let up = crate::wait_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "redis-server did not start on port {port}");
    }

    /// Kills the server (like a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts it again on the same port with no data at all (a Redis without
    /// persistence that restarted, or a replacement).
    pub async fn restart_empty(&mut self) {
        self.kill();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        self.spawn().await;
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused server (SIGCONT); it then runs what queued up.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{name}"), &c.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{name} redis-server");
        }
    }

    /// Runs one `redis-cli` command against it and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli (comes with redis-server)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Its data folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Environment variable naming the server binary the tests start
/// (`redis-server` when unset).
pub const SERVER_ENV: &str = "RAMPART_TEST_REDIS_SERVER";

fn server_binary() -> String {
    std::env::var(SERVER_ENV).unwrap_or_else(|_| "redis-server".to_string())
}

/// Runs one `redis-cli` command against 127.0.0.1:`port`; its output, trimmed.
pub fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .expect("redis-cli (comes with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One server process of a cluster or Sentinel setup.
struct Process {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Process {
    /// Starts the server binary with `args` (after `--port` and `--bind`)
    /// and waits until it accepts connections.
    async fn start(config: Option<&str>, args: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = crate::free_port("127.0.0.1");
        let mut cmd = Command::new(server_binary());
        if let Some(text) = config {
            let path = dir.path().join("server.conf");
            std::fs::write(&path, text).expect("write server config");
            cmd.arg(&path);
        }
        let child = cmd
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server; scripts/test does)");
        let up = crate::wait_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(up, "server did not start on port {port}");
        Self {
            child: Some(child),
            dir,
            port,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster on loopback: masters with their replicas, every slot
/// assigned, `cluster-node-timeout` 1 s (a replica takes over a killed master
/// within a few seconds) and `cluster-require-full-coverage no` (the other
/// masters keep answering while one is down). Stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<Process>,
}

/// `cluster-node-timeout` of test clusters, ms.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 1_000;

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until
    /// every node agrees the cluster is up and every replica is in sync.
    pub async fn start(masters: usize, replicas: usize) -> Self {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let bus = crate::free_port("127.0.0.1");
            let args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
                "--cluster-require-full-coverage",
                "no",
                "--cluster-port",
                &bus.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            nodes.push(Process::start(None, &args).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        let total = cluster.nodes.len();
        let ready = crate::wait_until(Duration::from_secs(30), || {
            let ok = cluster.nodes.iter().all(|n| {
                let info = cli_at(n.port, &["CLUSTER", "INFO"]);
                let known = cli_at(n.port, &["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| l.contains(" connected"))
                    .count();
                let synced = !cli_at(n.port, &["ROLE"]).starts_with("slave")
                    || cli_at(n.port, &["INFO", "replication"]).contains("master_link_status:up");
                info.contains("cluster_state:ok") && known == total && synced
            });
            async move { ok }
        })
        .await;
        assert!(ready, "the cluster did not come up");
        cluster
    }

    /// `redis://127.0.0.1:PORT` of every node started (masters and replicas).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Runs one `redis-cli` command on a live node.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_at(self.live_port(), args)
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.alive())
            .map(|n| n.port)
            .expect("a live node")
    }

    /// The port of the master serving `key`'s slot, as a live node sees it
    /// (`None` while no live master serves it).
    pub fn master_of(&self, key: &str) -> Option<u16> {
        let slot: u16 = self.cli(&["CLUSTER", "KEYSLOT", key]).parse().ok()?;
        serving(&self.cli(&["CLUSTER", "NODES"]), slot)
    }

    /// Kills the node on `port` (like a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Waits until a master other than `old` serves `key`'s slot, as every
    /// live node sees it; its port.
    pub async fn wait_failover(&self, key: &str, old: u16, within: Duration) -> Option<u16> {
        let mut new = None;
        let done = crate::wait_until(within, || {
            let seen: Vec<Option<u16>> = self
                .nodes
                .iter()
                .filter(|n| n.alive())
                .map(|n| {
                    let slot = cli_at(n.port, &["CLUSTER", "KEYSLOT", key]);
                    let nodes = cli_at(n.port, &["CLUSTER", "NODES"]);
                    serving(&nodes, slot.parse().unwrap_or(u16::MAX))
                })
                .collect();
            let agreed = seen
                .first()
                .copied()
                .flatten()
                .filter(|p| *p != old && seen.iter().all(|s| *s == Some(*p)));
            new = agreed;
            async move { agreed.is_some() }
        })
        .await;
        done.then_some(new).flatten()
    }

    /// The data folder of the node on `port`.
    pub fn dir(&self, port: u16) -> Option<&Path> {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .map(|n| n.dir.path())
    }
}

/// The port of the live master serving `slot` in `CLUSTER NODES` output.
fn serving(nodes: &str, slot: u16) -> Option<u16> {
    nodes.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let flags = fields.get(2)?;
        if !flags.contains("master") || flags.contains("fail") {
            return None;
        }
        let serves = fields.iter().skip(8).any(|range| {
            let mut ends = range.splitn(2, '-');
            let lo = ends.next().and_then(|s| s.parse::<u16>().ok());
            let hi = ends.next().and_then(|s| s.parse::<u16>().ok()).or(lo);
            matches!((lo, hi), (Some(lo), Some(hi)) if (lo..=hi).contains(&slot))
        });
        let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        serves.then_some(port)
    })
}

/// A Sentinel setup on loopback: one master, its replicas and sentinels that
/// monitor it as [`RedisSentinel::MASTER`] with quorum 2,
/// `down-after-milliseconds` 1 s and `failover-timeout` 5 s. Stopped when
/// dropped.
pub struct RedisSentinel {
    data: Vec<Process>,
    sentinels: Vec<Process>,
}

impl RedisSentinel {
    /// The name the sentinels monitor.
    pub const MASTER: &'static str = "fleet";

    /// Starts a master, `replicas` replicas and `sentinels` sentinels, and
    /// waits until every sentinel knows every replica and every other
    /// sentinel (so that a failover can be agreed on).
    pub async fn start(replicas: usize, sentinels: usize) -> Self {
        let master = Process::start(None, &[]).await;
        let mut data = vec![master];
        let master_port = data[0].port;
        for _ in 0..replicas {
            let args = vec![
                "--replicaof".to_string(),
                "127.0.0.1".to_string(),
                master_port.to_string(),
            ];
            data.push(Process::start(None, &args).await);
        }
        let config = format!(
            "sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 5000\n\
             sentinel parallel-syncs {name} 1\n",
            name = Self::MASTER
        );
        let mut watchers = Vec::new();
        for _ in 0..sentinels {
            watchers.push(Process::start(Some(&config), &["--sentinel".to_string()]).await);
        }
        let setup = Self {
            data,
            sentinels: watchers,
        };
        let ready = crate::wait_until(Duration::from_secs(30), || {
            let ok = setup.sentinels.iter().all(|s| {
                let info = cli_at(s.port, &["SENTINEL", "MASTER", Self::MASTER]);
                let field = |name: &str| {
                    let mut lines = info.lines();
                    while let Some(l) = lines.next() {
                        if l == name {
                            return lines.next().and_then(|v| v.parse::<usize>().ok());
                        }
                    }
                    None
                };
                field("num-slaves") == Some(replicas)
                    && field("num-other-sentinels") == Some(sentinels - 1)
            }) && setup.data[1..].iter().all(|r| {
                cli_at(r.port, &["INFO", "replication"]).contains("master_link_status:up")
            });
            async move { ok }
        })
        .await;
        assert!(ready, "the sentinels did not learn the setup");
        setup
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the master as a live sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().filter(|s| s.alive()).find_map(|s| {
            cli_at(
                s.port,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
            )
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
        })
    }

    /// Runs one `redis-cli` command on the data node on `port`.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_at(port, args)
    }

    /// Kills the data node on `port` (like a crash).
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.data.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// Waits until every live sentinel names a master other than `old`, and
    /// that node says it is a master; its port.
    pub async fn wait_failover(&self, old: u16, within: Duration) -> Option<u16> {
        let mut new = None;
        let done = crate::wait_until(within, || {
            let named: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .filter(|s| s.alive())
                .map(|s| {
                    cli_at(
                        s.port,
                        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
                    )
                    .lines()
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                })
                .collect();
            let agreed = named
                .first()
                .copied()
                .flatten()
                .filter(|p| *p != old && named.iter().all(|n| *n == Some(*p)))
                .filter(|p| cli_at(*p, &["ROLE"]).starts_with("master"));
            new = agreed;
            async move { agreed.is_some() }
        })
        .await;
        done.then_some(new).flatten()
    }
}
