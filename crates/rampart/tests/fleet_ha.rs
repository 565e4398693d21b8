//! Fleet mode on a Redis Cluster and on Redis Sentinel, with real servers
//! (`redis-server` on loopback ports, or the binary `RAMPART_TEST_REDIS_SERVER`
//! names) and two Rampart nodes: every fleet feature works on both topologies
//! (flags with their notifications, TTL and resync, fleet buckets, bans, node
//! reports, the escalation lease), and a failover under load (the master
//! holding the fleet's keys killed; Sentinel or the cluster promotes its
//! replica) keeps every flag in force on every node, lets a change made after
//! it reach every node, keeps each fleet quota within its documented bound,
//! and no quota round trip outlasts the configured `timeout` (the proxy's own
//! histogram says so).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::redis::{RedisCluster, RedisSentinel};
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// The fleet's `timeout`: the longest a request waits on Redis.
const TIMEOUT_MS: u64 = 100;
/// Burst and rate of the `ha-quota` rule (per client address): the load asks
/// for more, so every key keeps going back to Redis through the failover.
const QUOTA_BURST: usize = 4;
const QUOTA_RATE_PER_S: f64 = 10.0;
/// Client addresses the load spreads over (their buckets land on every
/// master of a cluster).
const CLIENTS: usize = 24;
const QUOTA_BATCH: usize = 2;

fn config(origin: &MockOrigin, store: &str, node: &str) -> String {
    let mut builder = ConfigBuilder::new().pool("web", &[origin.addr]);
    for name in ["register", "chat", "quota", "shared", "guarded"] {
        builder = builder.route(name, &format!("/{name}"), "web");
    }
    builder
        .raw(&format!(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.0/8"]
[fleet]
{store}
key_prefix = "test:"
node = "{node}"
timeout = "{TIMEOUT_MS}ms"
resync_interval = "300ms"
quota_batch = {QUOTA_BATCH}
[[limits]]
name = "ha-quota"
key = "ip"
rate = "{QUOTA_RATE_PER_S}/s"
burst = {QUOTA_BURST}
scope = "fleet"
fleet_failure = "closed"
routes = ["quota"]
[[limits]]
name = "shared-quota"
key = "route"
rate = "1/h"
burst = 10
scope = "fleet"
fleet_failure = "closed"
routes = ["shared"]
[[limits]]
name = "guarded-fleet"
key = "ip"
rate = "1/h"
burst = 2
scope = "fleet"
fleet_failure = "closed"
routes = ["guarded"]
ban = {{ after = 2, within = "1m", for = "5m" }}
[[flags]]
name = "registration_closed"
block = [{{ routes = ["register"], status = 403, message = "closed" }}]
[[flags]]
name = "chat_closed"
block = [{{ routes = ["chat"], status = 403, message = "closed" }}]
[[escalations]]
name = "dormant"
flag = "registration_closed"
signal = "request_rate"
route = "register"
enter_above = 1000000
enter_for = "1h"
leave_below = 1
leave_for = "1h"
"#
        ))
        .build()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn get(r: &Rampart, path: &str, ip: &str) -> u16 {
    client()
        .get(r.url(path))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .expect("every request is answered")
        .status()
        .as_u16()
}

async fn change(r: &Rampart, method: Method, flag: &str, body: Value) -> u16 {
    r.admin_request(method, &format!("/lockdown/{flag}"))
        .timeout(Duration::from_secs(10))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn nodes(origin: &MockOrigin, store: &str) -> (Rampart, Rampart) {
    let a = Rampart::start(bin(), &config(origin, store, "node-a")).await;
    let b = Rampart::start(bin(), &config(origin, store, "node-b")).await;
    for n in [&a, &b] {
        let connected = n
            .fleet_degraded_becomes(false, Duration::from_secs(15))
            .await;
        assert!(connected, "node did not connect to Redis:\n{}", n.log());
    }
    (a, b)
}

fn audited(r: &Rampart, action: &str, flag: &str) -> usize {
    std::fs::read_to_string(r.dir().join("state/lockdown-audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(&format!("\"flag\":\"{flag}\""))
        })
        .count()
}

/// Every fleet feature, on whatever `store` names: a flag made on A is
/// enforced on B, a TTL expires once fleet-wide, a shared bucket holds across
/// nodes, a ban on A holds on B (announced, and read back from Redis by B
/// restarted) and a lift too, both nodes report themselves and one holds the
/// escalation lease.
async fn every_fleet_feature(a: &Rampart, b: &mut Rampart, origin: &MockOrigin, topology: &str) {
    // Flags: changed on A, enforced on B, with the change's actor.
    assert_eq!(get(b, "/chat", "192.0.2.1").await, 200);
    let on = json!({"reason": "flood", "actor": "oncall"});
    assert_eq!(change(a, Method::PUT, "chat_closed", on).await, 200);
    let enforced = wait_until(Duration::from_secs(2), || async {
        get(b, "/chat", "192.0.2.1").await == 403
    })
    .await;
    assert!(enforced, "B did not enforce A's flag:\n{}", b.log());
    // A TTL expires once for the fleet.
    let ttl = json!({"reason": "x", "actor": "y", "ttl": "1s"});
    assert_eq!(
        change(a, Method::PUT, "registration_closed", ttl).await,
        200
    );
    let expired = wait_until(Duration::from_secs(6), || async {
        audited(a, "expire", "registration_closed") + audited(b, "expire", "registration_closed")
            == 1
            && audited(a, "fleet_disable", "registration_closed")
                + audited(b, "fleet_disable", "registration_closed")
                == 1
    })
    .await;
    assert!(
        expired,
        "the TTL did not end once:\n{}\n{}",
        a.log(),
        b.log()
    );
    assert!(!b.flag_active("registration_closed").await);

    // A shared bucket of 10 across both nodes, leased 2 at a time.
    let before = origin.request_count();
    let mut allowed = 0;
    for i in 0..30 {
        let node: &Rampart = if i % 2 == 0 { a } else { b };
        let s = get(node, "/shared", "192.0.2.2").await;
        assert!(s == 200 || s == 429, "{s}");
        allowed += usize::from(s == 200);
    }
    assert!(
        (10 - 2 * (QUOTA_BATCH - 1)..=10).contains(&allowed),
        "{allowed} allowed for a fleet budget of 10"
    );
    assert_eq!(origin.request_count() - before, allowed);

    // A ban made on A holds on B; lifted on B, lifted on A.
    let ip = "198.51.100.9";
    for _ in 0..2 {
        assert_eq!(get(a, "/guarded", ip).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(a, "/guarded", ip).await, 429);
    }
    let on_b = wait_until(Duration::from_secs(2), || async {
        b.admin_json("/bans").await["bans"][0]["key"] == ip
    })
    .await;
    assert!(on_b, "B did not learn the ban:\n{}", b.log());
    // Restarted, B holds no ban of its own: it reads them back from Redis.
    b.restart(bin()).await;
    let read_back = wait_until(Duration::from_secs(10), || async {
        b.admin_json("/bans").await["bans"][0]["key"] == ip
    })
    .await;
    assert!(
        read_back,
        "B restarted did not read the ban back:\n{}",
        b.log()
    );
    let lifted = b
        .admin_request(Method::DELETE, &format!("/bans/guarded-fleet?key={ip}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 200);
    let gone = wait_until(Duration::from_secs(2), || async {
        a.admin_json("/bans").await["bans"]
            .as_array()
            .is_some_and(|b| b.is_empty())
    })
    .await;
    assert!(gone, "A kept the lifted ban");

    // Node reports and the escalation lease.
    let both = wait_until(Duration::from_secs(5), || async {
        let view = a.admin_json("/fleet").await;
        let names: Vec<&str> = view["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["node"].as_str()).collect())
            .unwrap_or_default();
        names.contains(&"node-a")
            && names.contains(&"node-b")
            && ["node-a", "node-b"].contains(&view["leader"].as_str().unwrap_or(""))
            && view["topology"] == topology
            && view["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().all(|n| n["flags"]["chat_closed"].is_object()))
    })
    .await;
    assert!(
        both,
        "/fleet: {}",
        serde_json::to_string_pretty(&a.admin_json("/fleet").await).unwrap()
    );
}

/// The address banned before a failover (`guarded-fleet`).
const BANNED: &str = "198.51.100.10";

/// Bans [`BANNED`] through A (two refusals by a bucket of 2) and waits until
/// B holds the ban too.
async fn ban_before_the_failover(a: &Rampart, b: &Rampart) {
    for _ in 0..2 {
        assert_eq!(get(a, "/guarded", BANNED).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(a, "/guarded", BANNED).await, 429);
    }
    let on_b = wait_until(Duration::from_secs(2), || async { banned(b).await }).await;
    assert!(on_b, "B did not learn the ban:\n{}", b.log());
}

async fn banned(r: &Rampart) -> bool {
    r.admin_json("/bans").await["bans"]
        .as_array()
        .is_some_and(|bans| bans.iter().any(|ban| ban["key"] == BANNED))
}

/// Load on both nodes until stopped: `/quota` from [`CLIENTS`] addresses
/// and `/chat` (a flag closed it before the load starts), counting admitted
/// requests per address, answers on `/chat` that are not 403, and the
/// slowest answer a client saw.
struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    admitted: Arc<Mutex<HashMap<String, usize>>>,
    chat_open: Arc<Mutex<Vec<(String, u16)>>>,
    slowest: Arc<Mutex<Duration>>,
    requests: Arc<Mutex<usize>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(nodes: &[&Rampart]) -> Self {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            started: Instant::now(),
            admitted: Arc::default(),
            chat_open: Arc::default(),
            slowest: Arc::default(),
            requests: Arc::default(),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            for worker in 0..3 {
                let (quota, chat) = (node.url("/quota"), node.url("/chat"));
                let stop = load.stop.clone();
                let admitted = load.admitted.clone();
                let chat_open = load.chat_open.clone();
                let slowest = load.slowest.clone();
                let requests = load.requests.clone();
                tasks.push(tokio::spawn(async move {
                    let c = client();
                    let mut i = worker + n;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let ip = format!("203.0.113.{}", i % CLIENTS + 1);
                        let path = if i % 5 == 0 { &chat } else { &quota };
                        let started = Instant::now();
                        let sent = c.get(path).header("x-forwarded-for", &ip).send().await;
                        let took = started.elapsed();
                        let status = sent.map(|r| r.status().as_u16()).unwrap_or(0);
                        *requests.lock().unwrap() += 1;
                        {
                            let mut s = slowest.lock().unwrap();
                            *s = (*s).max(took);
                        }
                        if path == &chat {
                            if status != 403 {
                                chat_open.lock().unwrap().push((ip, status));
                            }
                        } else if status == 200 {
                            *admitted.lock().unwrap().entry(ip).or_default() += 1;
                        } else {
                            assert_eq!(status, 429, "quota answered {status}");
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }));
            }
        }
        Load { tasks, ..load }
    }

    /// Stops the load: admitted requests per address, `/chat` answers that
    /// were not 403, the slowest answer, requests sent, seconds of load.
    async fn stop(
        self,
    ) -> (
        HashMap<String, usize>,
        Vec<(String, u16)>,
        Duration,
        usize,
        f64,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let admitted = self.admitted.lock().unwrap().clone();
        let open = self.chat_open.lock().unwrap().clone();
        let slowest = *self.slowest.lock().unwrap();
        let requests = *self.requests.lock().unwrap();
        (admitted, open, slowest, requests, seconds)
    }
}

/// `name{labels}` summed over the series of `/metrics` whose labels contain
/// every one of `labels`.
async fn sum(r: &Rampart, name: &str, labels: &[&str]) -> f64 {
    r.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Asserts from the proxy's own histograms that no quota round trip lasted
/// beyond the timeout (the bucket just above it: the round trip's deadline is
/// the request's, plus scheduling on a busy machine) and no request beyond
/// 0.5 s (five timeouts: the fleet wait plus the origin's answer).
async fn within_timeout(r: &Rampart) {
    let total = sum(
        r,
        "rampart_fleet_redis_duration_seconds_count",
        &["op=\"quota\""],
    )
    .await;
    let bounded = sum(
        r,
        "rampart_fleet_redis_duration_seconds_bucket",
        &["op=\"quota\"", "le=\"0.25\""],
    )
    .await;
    assert!(total > 0.0);
    assert_eq!(
        bounded,
        total,
        "{} of {total} quota round trips took longer than 250 ms (timeout {TIMEOUT_MS} ms)",
        total - bounded
    );
    let requests = sum(
        r,
        "rampart_http_request_duration_seconds_count",
        &["route=\"quota\""],
    )
    .await;
    let quick = sum(
        r,
        "rampart_http_request_duration_seconds_bucket",
        &["route=\"quota\"", "le=\"0.5\""],
    )
    .await;
    assert_eq!(
        quick,
        requests,
        "{} of {requests} requests took longer than 0.5 s",
        requests - quick
    );
}

/// The documented bound of a fleet bucket through one failover, per key,
/// over `seconds` of load: its budget (burst + rate x seconds), plus one more
/// burst when the promoted replica had not yet received the master's last
/// writes to it (Redis replicates asynchronously: at worst the bucket
/// restarts full); `fleet_failure = "closed"` admits nothing while no master
/// answers.
fn assert_quota_bound(admitted: &HashMap<String, usize>, seconds: f64) {
    assert_eq!(admitted.len(), CLIENTS);
    let budget = QUOTA_BURST as f64 + QUOTA_RATE_PER_S * seconds;
    let bound = budget + QUOTA_BURST as f64;
    for (ip, n) in admitted {
        assert!(
            *n as f64 <= bound,
            "{ip}: {n} admitted in {seconds:.1} s, bound {bound:.1} (budget {budget:.1})"
        );
    }
    let most = admitted.values().max().copied().unwrap_or(0);
    eprintln!(
        "quota: {} keys over {seconds:.1} s, {} admitted in all, at most {most} per key (budget {budget:.1}, bound {bound:.1})",
        admitted.len(),
        admitted.values().sum::<usize>()
    );
}

/// After a failover: every node is connected again, a flag change made now
/// goes through (retried while the nodes catch up: a 503 changes nothing)
/// and reaches every node.
async fn a_change_after_the_failover_reaches_every_node(a: &Rampart, b: &Rampart) -> Duration {
    let started = Instant::now();
    for n in [a, b] {
        let back = n
            .fleet_degraded_becomes(false, Duration::from_secs(15))
            .await;
        assert!(back, "node did not reconnect:\n{}", n.log());
    }
    let body = json!({"reason": "after failover", "actor": "oncall"});
    let made = wait_until(Duration::from_secs(10), || async {
        change(a, Method::PUT, "registration_closed", body.clone()).await == 200
    })
    .await;
    assert!(made, "no flag change went through:\n{}", a.log());
    let everywhere = wait_until(Duration::from_secs(3), || async {
        get(b, "/register", "192.0.2.3").await == 403
            && get(a, "/register", "192.0.2.3").await == 403
    })
    .await;
    assert!(everywhere, "B did not learn the change:\n{}", b.log());
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_redis_cluster_works_and_rides_out_a_failover_under_load() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let origin = MockOrigin::start("o").await;
    let store = format!(
        "cluster_urls = [{}]",
        cluster
            .urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (a, mut b) = nodes(&origin, &store).await;
    every_fleet_feature(&a, &mut b, &origin, "cluster").await;
    // The fleet's keys share one slot; buckets spread over the masters.
    let flags_home = cluster.master_of("{test:}flags").unwrap();
    assert_eq!(cluster.master_of("{test:}epoch"), Some(flags_home));
    assert_eq!(
        cluster.cli(&["-c", "HEXISTS", "{test:}flags", "chat_closed"]),
        "1"
    );

    ban_before_the_failover(&a, &b).await;
    let load = Load::start(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    cluster.kill(flags_home);
    let promoted = cluster
        .wait_failover("{test:}flags", flags_home, Duration::from_secs(20))
        .await;
    let took = killed.elapsed();
    assert!(promoted.is_some(), "no replica took over");
    // Keep the load on a while after the promotion.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (admitted, chat_open, slowest, requests, seconds) = load.stop().await;
    eprintln!(
        "cluster: failover {took:?} after the kill; {requests} requests, slowest answer {slowest:?}"
    );
    assert!(
        chat_open.is_empty(),
        "a flag in force before the failover was not enforced: {chat_open:?}"
    );
    assert_quota_bound(&admitted, seconds);
    // Each master has its own circuit: keys on the masters that stayed up
    // went on through the failover (reported, not asserted: how close they
    // come to their budget depends on the machine's speed).
    let mean = |ns: &[usize]| ns.iter().sum::<usize>() as f64 / ns.len().max(1) as f64;
    let (mut on_killed, mut elsewhere) = (Vec::new(), Vec::new());
    for (ip, n) in &admitted {
        if cluster.master_of(&format!("test:q:ha-quota:{ip}")) == promoted {
            on_killed.push(*n);
        } else {
            elsewhere.push(*n);
        }
    }
    eprintln!(
        "cluster: admitted per key {:.1} on the failed master's slots ({} keys), {:.1} elsewhere ({} keys)",
        mean(&on_killed),
        on_killed.len(),
        mean(&elsewhere),
        elsewhere.len()
    );
    for n in [&a, &b] {
        within_timeout(n).await;
        assert!(n.flag_active("chat_closed").await);
        // Reconnecting through the failover, the node read the bans back from
        // the master that serves them, not from whichever node answered.
        assert!(
            banned(n).await,
            "a ban was lost in the failover:\n{}",
            n.log()
        );
    }
    let caught_up = a_change_after_the_failover_reaches_every_node(&a, &b).await;
    eprintln!("cluster: a change after the failover reached both nodes {caught_up:?} later");
    for n in [&a, &b] {
        assert_eq!(audited(n, "fleet_disable", "chat_closed"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_sentinel_works_and_rides_out_a_failover_under_load() {
    let mut setup = RedisSentinel::start(1, 3).await;
    let origin = MockOrigin::start("o").await;
    let store = format!(
        "sentinel = {{ master = \"{}\", urls = [{}] }}",
        RedisSentinel::MASTER,
        setup
            .sentinel_urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (a, mut b) = nodes(&origin, &store).await;
    every_fleet_feature(&a, &mut b, &origin, "sentinel").await;
    let master = setup.master_port().unwrap();
    assert_eq!(
        setup.cli(master, &["HEXISTS", "test:flags", "chat_closed"]),
        "1"
    );
    let view = a.admin_json("/fleet").await;
    assert!(
        view["redis"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("master 127.0.0.1:{master}"))),
        "{view}"
    );

    ban_before_the_failover(&a, &b).await;
    let load = Load::start(&[&a, &b]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = Instant::now();
    setup.kill(master);
    let promoted = setup.wait_failover(master, Duration::from_secs(30)).await;
    let took = killed.elapsed();
    assert!(promoted.is_some(), "Sentinel promoted no replica");
    // The nodes follow the sentinels to the new master, under load.
    let followed = wait_until(Duration::from_secs(10), || async {
        let mut both = true;
        for n in [&a, &b] {
            let view = n.admin_json("/fleet").await;
            both &= view["redis"].as_str().is_some_and(|r| {
                r.contains(&format!("master 127.0.0.1:{}", promoted.unwrap_or(0)))
            }) && view["degraded"] == false;
        }
        both
    })
    .await;
    let (admitted, chat_open, slowest, requests, seconds) = load.stop().await;
    eprintln!(
        "sentinel: failover {took:?} after the kill, nodes on the new master {:?} after it; {requests} requests, slowest answer {slowest:?}",
        killed.elapsed()
    );
    assert!(
        followed,
        "a node did not follow the new master:\n{}",
        a.log()
    );
    assert!(
        chat_open.is_empty(),
        "a flag in force before the failover was not enforced: {chat_open:?}"
    );
    assert_quota_bound(&admitted, seconds);
    for n in [&a, &b] {
        within_timeout(n).await;
        assert!(n.flag_active("chat_closed").await);
        // Reconnecting through the failover, the node read the bans back from
        // the master that serves them, not from whichever node answered.
        assert!(
            banned(n).await,
            "a ban was lost in the failover:\n{}",
            n.log()
        );
    }
    let caught_up = a_change_after_the_failover_reaches_every_node(&a, &b).await;
    eprintln!("sentinel: a change after the failover reached both nodes {caught_up:?} later");
    for n in [&a, &b] {
        assert_eq!(audited(n, "fleet_disable", "chat_closed"), 0);
    }
}
