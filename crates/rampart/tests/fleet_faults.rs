//! Fleet state under Redis faults, with a real redis-server: a flag change
//! refused while Redis is frozen never lands later; Redis restarted empty
//! never lifts an enforced flag; refused requests do not each cost a Redis
//! call; with Redis refusing connections requests take their failure mode at
//! once; a node cut off from Redis records no second `expire`; the bound of
//! `fleet_failure = "local"` holds.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::redis::RedisServer;
use rampart_testkit::relay::Relay;
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

/// Rate and burst of the `local` route's fleet rule, and its local share.
const LOCAL_RATE_PER_S: f64 = 2.0;
const LOCAL_BURST: f64 = 4.0;
const LOCAL_SHARE: f64 = 0.5;

fn config(origin: &MockOrigin, redis_url: &str, node: &str) -> String {
    let mut builder = ConfigBuilder::new().pool("web", &[origin.addr]);
    for name in ["register", "chat", "quota", "two", "closed", "local"] {
        builder = builder.route(name, &format!("/{name}"), "web");
    }
    builder
        .raw(&format!(
            r#"
[fleet]
redis_url = "{redis_url}"
key_prefix = "test:"
node = "{node}"
timeout = "200ms"
resync_interval = "300ms"
quota_batch = 3
[[limits]]
name = "quota-fleet"
key = "route"
rate = "5/h"
burst = 5
scope = "fleet"
fleet_failure = "closed"
routes = ["quota"]
[[limits]]
name = "two-a"
key = "ip"
rate = "1000/s"
burst = 1000
scope = "fleet"
fleet_failure = "open"
routes = ["two"]
[[limits]]
name = "two-b"
key = "route"
rate = "1000/s"
burst = 1000
scope = "fleet"
fleet_failure = "open"
routes = ["two"]
[[limits]]
name = "closed-fleet"
key = "route"
rate = "1000/s"
burst = 1000
scope = "fleet"
fleet_failure = "closed"
routes = ["closed"]
[[limits]]
name = "local-fleet"
key = "route"
rate = "{rate}/s"
burst = {burst}
scope = "fleet"
fleet_failure = "local"
fleet_local_share = {share}
routes = ["local"]
[[flags]]
name = "registration_closed"
block = [{{ routes = ["register"], status = 403, message = "closed" }}]
[[flags]]
name = "chat_closed"
block = [{{ routes = ["chat"], status = 403, message = "closed" }}]
"#,
            rate = LOCAL_RATE_PER_S,
            burst = LOCAL_BURST,
            share = LOCAL_SHARE,
        ))
        .build()
}

async fn node(origin: &MockOrigin, redis_url: &str, name: &str) -> Rampart {
    let n = Rampart::start(bin(), &config(origin, redis_url, name)).await;
    let connected = n
        .fleet_degraded_becomes(false, Duration::from_secs(10))
        .await;
    assert!(connected, "node did not connect to Redis:\n{}", n.log());
    n
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn status(r: &Rampart, path: &str) -> u16 {
    client()
        .get(r.url(path))
        .send()
        .await
        .expect("every request is answered, Redis or not")
        .status()
        .as_u16()
}

async fn change(r: &Rampart, method: Method, flag: &str) -> u16 {
    r.admin_request(method, &format!("/lockdown/{flag}"))
        .timeout(Duration::from_secs(10))
        .json(&json!({"reason": "test", "actor": "oncall"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn audit(r: &Rampart) -> String {
    std::fs::read_to_string(r.dir().join("state/lockdown-audit.jsonl")).unwrap_or_default()
}

fn audited(r: &Rampart, action: &str, flag: &str) -> usize {
    audit(r)
        .lines()
        .filter(|l| {
            l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(&format!("\"flag\":\"{flag}\""))
        })
        .count()
}

async fn series(r: &Rampart, name: &str) -> f64 {
    r.metric(name).await.unwrap_or(0.0)
}

/// Waits until `r` has finished `n` more resyncs with Redis answering.
async fn resyncs(r: &Rampart, n: f64) {
    let name = "rampart_fleet_redis_duration_seconds_count{op=\"resync\"}";
    let errors = "rampart_fleet_redis_errors_total{op=\"resync\"}";
    let start = series(r, name).await - series(r, errors).await;
    let done = wait_until(Duration::from_secs(10), || async {
        series(r, name).await - series(r, errors).await >= start + n
    })
    .await;
    assert!(done, "no resync with Redis:\n{}", r.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_change_refused_while_redis_is_frozen_never_lands_later() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let a = node(&origin, &redis.url(), "node-a").await;
    let b = node(&origin, &redis.url(), "node-b").await;
    assert_eq!(change(&a, Method::PUT, "chat_closed").await, 200);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            b.flag_active("chat_closed").await
        })
        .await
    );

    redis.pause();
    assert_eq!(change(&a, Method::PUT, "registration_closed").await, 503);
    assert_eq!(change(&a, Method::DELETE, "chat_closed").await, 503);
    redis.resume();
    for n in [&a, &b] {
        resyncs(n, 3.0).await;
    }
    for n in [&a, &b] {
        assert!(!n.flag_active("registration_closed").await, "{}", audit(n));
        assert!(n.flag_active("chat_closed").await, "{}", audit(n));
        assert_eq!(status(n, "/register").await, 200);
        assert_eq!(status(n, "/chat").await, 403);
        assert_eq!(audited(n, "enable", "registration_closed"), 0);
        assert_eq!(audited(n, "fleet_enable", "registration_closed"), 0);
        assert_eq!(audited(n, "disable", "chat_closed"), 0);
        assert_eq!(audited(n, "fleet_disable", "chat_closed"), 0);
    }
    assert_eq!(
        redis.cli(&["HEXISTS", "test:flags", "registration_closed"]),
        "0"
    );
    assert_eq!(redis.cli(&["HEXISTS", "test:flags", "chat_closed"]), "1");
    // Redis answers again: changes go through.
    assert_eq!(change(&a, Method::PUT, "registration_closed").await, 200);
    assert_eq!(audited(&a, "enable", "registration_closed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_never_lifts_an_enforced_flag() {
    let mut redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let a = node(&origin, &redis.url(), "node-a").await;
    let b = node(&origin, &redis.url(), "node-b").await;
    assert_eq!(change(&a, Method::PUT, "registration_closed").await, 200);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            b.flag_active("registration_closed").await
        })
        .await
    );

    redis.restart_empty().await;
    assert_eq!(redis.cli(&["EXISTS", "test:flags"]), "0");
    let back = wait_until(Duration::from_secs(10), || async {
        redis.cli(&["HEXISTS", "test:flags", "registration_closed"]) == "1"
    })
    .await;
    assert!(back, "no node re-published:\n{}\n{}", a.log(), b.log());
    for n in [&a, &b] {
        resyncs(n, 2.0).await;
    }
    for n in [&a, &b] {
        assert!(n.flag_active("registration_closed").await, "{}", audit(n));
        assert_eq!(status(n, "/register").await, 403);
        assert_eq!(audited(n, "fleet_disable", "registration_closed"), 0);
        let state = std::fs::read_to_string(n.dir().join("state/lockdown.json")).unwrap();
        assert!(state.contains("registration_closed"), "{state}");
    }
    // One node put the flag back, and said so.
    assert_eq!(
        audited(&a, "fleet_republish", "registration_closed")
            + audited(&b, "fleet_republish", "registration_closed"),
        1,
        "{}\n{}",
        audit(&a),
        audit(&b)
    );
    // An operator can still lift it explicitly, fleet-wide.
    assert_eq!(change(&b, Method::DELETE, "registration_closed").await, 200);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            !a.flag_active("registration_closed").await
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_each_cost_a_redis_call() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let a = node(&origin, &redis.url(), "node-a").await;
    let calls = "rampart_fleet_redis_duration_seconds_count{op=\"quota\"}";
    let before = series(&a, calls).await;
    let mut allowed = 0;
    for _ in 0..200 {
        match status(&a, "/quota").await {
            200 => allowed += 1,
            429 => {}
            other => panic!("status {other}"),
        }
    }
    assert_eq!(allowed, 5, "the fleet bucket holds 5");
    let made = series(&a, calls).await - before;
    // Leases of 3 (two refills), one "empty" answer; then the key is refused
    // locally until Redis said a token is back (12 minutes at 5/h).
    assert!(made <= 4.0, "{made} Redis calls for 200 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_refusing_connections_requests_take_the_failure_mode_at_once() {
    let mut redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let a = node(&origin, &redis.url(), "node-a").await;
    redis.kill();
    assert!(a.fleet_degraded_becomes(true, Duration::from_secs(5)).await);
    let tries = |r: &'static str| format!("rampart_fleet_redis_errors_total{{op=\"{r}\"}}");
    let before = series(&a, &tries("quota")).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = a.url(if i % 2 == 0 { "/two" } else { "/closed" });
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let s = client().get(url).send().await.unwrap().status().as_u16();
            (i % 2, s, t.elapsed())
        }));
    }
    let mut worst = Duration::ZERO;
    for t in tasks {
        let (kind, status, took) = t.await.unwrap();
        // `open` lets requests on, `closed` refuses them.
        assert_eq!(status, if kind == 0 { 200 } else { 429 });
        worst = worst.max(took);
    }
    let elapsed = started.elapsed();
    let asked = series(&a, &tries("quota")).await - before;
    // The circuit lets one probe per 250 ms ask Redis, no more.
    let probes = (elapsed.as_millis() / 250) as f64 + 2.0;
    assert!(
        asked <= probes,
        "{asked} Redis attempts in {elapsed:?} for 200 requests (worst wait {worst:?})"
    );
    eprintln!("200 requests with Redis down: {asked} Redis attempts, worst wait {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_records_no_second_expire() {
    let redis = RedisServer::start().await;
    let relay = Relay::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let origin = MockOrigin::start("o").await;
    let a = node(&origin, &redis.url(), "node-a").await;
    let b = node(&origin, &relay.redis_url(), "node-b").await;
    let r = a
        .admin_request(Method::PUT, "/lockdown/registration_closed")
        .json(&json!({"reason": "x", "actor": "y", "ttl": "2s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            b.flag_active("registration_closed").await
        })
        .await
    );
    relay.cut();
    let off = wait_until(Duration::from_secs(8), || async {
        !a.flag_active("registration_closed").await && !b.flag_active("registration_closed").await
    })
    .await;
    assert!(off, "the TTL did not end the flag on both nodes");
    relay.restore();
    let back = b
        .fleet_degraded_becomes(false, Duration::from_secs(10))
        .await;
    assert!(back, "node B did not reconnect:\n{}", b.log());
    resyncs(&b, 2.0).await;
    let expires =
        audited(&a, "expire", "registration_closed") + audited(&b, "expire", "registration_closed");
    assert_eq!(expires, 1, "{}\n{}", audit(&a), audit(&b));
    assert_eq!(
        audited(&b, "expire_local", "registration_closed"),
        1,
        "{}",
        audit(&b)
    );
    assert!(!b.flag_active("registration_closed").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_failure_local_admits_at_most_its_documented_bound() {
    let mut redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let nodes = [
        node(&origin, &redis.url(), "node-a").await,
        node(&origin, &redis.url(), "node-b").await,
    ];
    redis.kill();
    for n in &nodes {
        assert!(n.fleet_degraded_becomes(true, Duration::from_secs(5)).await);
    }
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut admitted = 0.0;
    while started.elapsed() < window {
        for n in &nodes {
            if status(n, "/local").await == 200 {
                admitted += 1.0;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    // README: nodes × share × (burst + rate × seconds), each node's bucket
    // starting full.
    let bound = nodes.len() as f64 * LOCAL_SHARE * (LOCAL_BURST + LOCAL_RATE_PER_S * secs);
    assert!(admitted > 0.0);
    assert!(
        admitted <= bound.floor() + nodes.len() as f64,
        "{admitted} admitted in {secs:.1} s, bound {bound:.1}"
    );
}
