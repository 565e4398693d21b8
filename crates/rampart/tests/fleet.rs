//! Fleet mode with a real redis-server and two Rampart nodes: flags propagate,
//! TTLs expire once fleet-wide, a fleet quota holds across nodes, and with Redis
//! killed every request is still answered per each rule's failure mode, with the
//! flags set before the failure in force; after Redis returns, nodes resync.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_testkit::redis::RedisServer;
use rampart_testkit::{wait_until, ConfigBuilder, MockOrigin, Rampart};
use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rampart"))
}

fn config(origin: &MockOrigin, redis: &RedisServer, node: &str) -> String {
    let mut builder = ConfigBuilder::new()
        .pool("web", &[origin.addr])
        .health_check("web", r#"interval = "1s""#);
    for name in ["register", "login", "chat", "models", "account", "guarded"] {
        builder = builder.route(name, &format!("/{name}"), "web");
    }
    builder
        .raw(&format!(
            r#"
[client_ip]
trusted_proxies = ["127.0.0.0/8"]
[fleet]
redis_url = "{url}"
key_prefix = "test:"
node = "{node}"
timeout = "200ms"
resync_interval = "300ms"
quota_batch = 3
"#,
            url = redis.url(),
        ))
        .raw(
            r#"
[[limits]]
name = "account-fleet"
key = "body"
field = "username"
rate = "1/h"
burst = 4
scope = "fleet"
fleet_failure = "closed"
routes = ["account"]
[[limits]]
name = "models-fleet"
key = "route"
rate = "1/h"
burst = 10
scope = "fleet"
fleet_failure = "closed"
routes = ["models"]
[[limits]]
name = "login-fleet"
key = "route"
rate = "1/h"
burst = 4
scope = "fleet"
fleet_failure = "local"
fleet_local_share = 0.5
routes = ["login"]
[[limits]]
name = "chat-fleet"
key = "route"
rate = "1/h"
burst = 100
scope = "fleet"
fleet_failure = "open"
routes = ["chat"]
[[limits]]
name = "guarded-fleet"
key = "ip"
rate = "1/h"
burst = 2
scope = "fleet"
fleet_failure = "closed"
routes = ["guarded"]
ban = { after = 2, within = "1m", for = "5m" }
[[flags]]
name = "registration_closed"
block = [{ routes = ["register"], status = 403, message = "closed" }]
"#,
        )
        .build()
}

async fn status(r: &Rampart, path: &str) -> u16 {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
        .get(r.url(path))
        .send()
        .await
        .expect("every request is answered, Redis or not")
        .status()
        .as_u16()
}

async fn set_flag(r: &Rampart, flag: &str, body: Value) -> reqwest::Response {
    r.admin_request(Method::PUT, &format!("/lockdown/{flag}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn two_nodes(origin: &MockOrigin, redis: &RedisServer) -> (Rampart, Rampart) {
    let a = Rampart::start(bin(), &config(origin, redis, "node-a")).await;
    let b = Rampart::start(bin(), &config(origin, redis, "node-b")).await;
    // Both connected before the test starts.
    for n in [&a, &b] {
        let connected = n
            .fleet_degraded_becomes(false, Duration::from_secs(10))
            .await;
        assert!(connected, "node did not connect to Redis:\n{}", n.log());
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_enabled_on_a_is_enforced_on_b_within_a_second() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    assert_eq!(status(&b, "/register").await, 200);
    let r = set_flag(
        &a,
        "registration_closed",
        json!({"reason": "flood", "actor": "oncall"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let enforced = wait_until(Duration::from_secs(1), || async {
        status(&b, "/register").await == 403
    })
    .await;
    assert!(
        enforced,
        "node B did not enforce the flag within a second:\n{}",
        b.log()
    );
    let v: Value = b
        .admin_request(Method::GET, "/lockdown")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let f = v["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "registration_closed")
        .unwrap()
        .clone();
    assert_eq!(
        (f["actor"].as_str(), f["reason"].as_str()),
        (Some("oncall"), Some("flood"))
    );
    // The audit record names the node that made the change.
    let audit = std::fs::read_to_string(a.dir().join("state/lockdown-audit.jsonl")).unwrap();
    assert!(audit.contains("\"node\":\"node-a\""), "{audit}");
    // Node B audits what it learned from the fleet, once, with the actor.
    let b_audit = b.dir().join("state/lockdown-audit.jsonl");
    let written = wait_until(Duration::from_secs(2), || async { b_audit.exists() }).await;
    assert!(written, "node B wrote no audit record");
    let learned = std::fs::read_to_string(&b_audit).unwrap();
    let lines: Vec<&str> = learned
        .lines()
        .filter(|l| l.contains("\"action\":\"fleet_enable\""))
        .collect();
    assert_eq!(lines.len(), 1, "{learned}");
    for field in [
        "\"actor\":\"oncall\"",
        "\"reason\":\"flood\"",
        "\"node\":\"node-b\"",
        "\"origin_node\":\"node-a\"",
        "\"flag\":\"registration_closed\"",
    ] {
        assert!(lines[0].contains(field), "{field} missing: {}", lines[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_expires_fleet_wide_and_once() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    let r = set_flag(
        &a,
        "registration_closed",
        json!({"reason": "x", "actor": "y", "ttl": "1s"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(2), || async {
            b.flag_active("registration_closed").await
        })
        .await
    );
    let expired = wait_until(Duration::from_secs(6), || async {
        !a.flag_active("registration_closed").await && !b.flag_active("registration_closed").await
    })
    .await;
    assert!(expired, "the flag did not expire on both nodes");
    assert_eq!(status(&b, "/register").await, 200);
    // Exactly one node audited the expiry; the other audited that it learned
    // it from the fleet. Both records are awaited, so a second `expire` would
    // have been written by then.
    let count = |action: &str| -> usize {
        [&a, &b]
            .iter()
            .map(|n| {
                std::fs::read_to_string(n.dir().join("state/lockdown-audit.jsonl"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(&format!("\"action\":\"{action}\"")))
                    .count()
            })
            .sum()
    };
    let both = wait_until(Duration::from_secs(2), || async {
        count("expire") + count("fleet_disable") >= 2
    })
    .await;
    assert!(
        both,
        "expire {} fleet_disable {}",
        count("expire"),
        count("fleet_disable")
    );
    assert_eq!((count("expire"), count("fleet_disable")), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_quota_holds_across_nodes() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    // Budget 10 for the whole fleet, leased 3 at a time.
    let mut allowed = 0;
    for i in 0..30 {
        let node = if i % 2 == 0 { &a } else { &b };
        let s = status(node, "/models").await;
        assert!(s == 200 || s == 429, "{s}");
        allowed += usize::from(s == 200);
    }
    // Never above the budget; at most (batch - 1) per node left unspent in leases.
    assert!(
        (6..=10).contains(&allowed),
        "{allowed} allowed for a fleet budget of 10"
    );
    assert_eq!(origin.request_count(), allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_failure_modes_apply_flags_stay_and_nodes_resync_after() {
    let mut redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    assert_eq!(
        set_flag(
            &a,
            "registration_closed",
            json!({"reason": "x", "actor": "y"})
        )
        .await
        .status(),
        200
    );
    assert!(
        wait_until(Duration::from_secs(2), || async {
            b.flag_active("registration_closed").await
        })
        .await
    );

    redis.kill();
    // The flag set before the failure stays in force.
    assert_eq!(status(&b, "/register").await, 403);
    // open: allowed; closed: rejected; local: half the budget of 4, on this node alone.
    for _ in 0..3 {
        assert_eq!(status(&b, "/chat").await, 200);
        assert_eq!(status(&b, "/models").await, 429);
    }
    assert_eq!(status(&b, "/login").await, 200);
    assert_eq!(status(&b, "/login").await, 200);
    assert_eq!(status(&b, "/login").await, 429);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            b.metric("rampart_fleet_degraded").await == Some(1.0)
        })
        .await
    );
    // A flag change cannot be made fleet-wide now: refused, nothing changed.
    let refused = set_flag(
        &a,
        "registration_closed",
        json!({"reason": "x", "actor": "y", "mode": "preview"}),
    )
    .await;
    assert_eq!(refused.status(), 503);

    redis.restart().await;
    for n in [&a, &b] {
        let back = wait_until(Duration::from_secs(10), || async {
            n.metric("rampart_fleet_degraded").await == Some(0.0)
        })
        .await;
        assert!(back, "node did not reconnect:\n{}", n.log());
    }
    // A change made after the outage reaches the other node.
    let off = a
        .admin_request(Method::DELETE, "/lockdown/registration_closed")
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    let resynced = wait_until(Duration::from_secs(3), || async {
        status(&b, "/register").await == 200
    })
    .await;
    assert!(
        resynced,
        "node B did not resync after Redis returned:\n{}",
        b.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_keyed_quota_holds_across_nodes() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    let c = reqwest::Client::new();
    let attempt = |node: &Rampart, user: &str| {
        let req = c
            .post(node.url("/account"))
            .json(&json!({"username": user, "password": "x"}));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // One account tried on both nodes in turn: the fleet's budget of 4, no more.
    let mut statuses = Vec::new();
    for i in 0..8 {
        let node = if i % 2 == 0 { &a } else { &b };
        statuses.push(attempt(node, "Victim").await);
    }
    // Which attempts pass depends on how the nodes' leases fall; how many does not.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert!(statuses[6..].iter().all(|&s| s == 429), "{statuses:?}");
    // Another account has its own bucket.
    assert_eq!(attempt(&b, "someone-else").await, 200);
}

async fn status_as(r: &Rampart, path: &str, ip: &str) -> u16 {
    reqwest::Client::new()
        .get(r.url(path))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_node_holds_on_every_node_and_a_lift_too() {
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let (a, b) = two_nodes(&origin, &redis).await;
    let ip = "198.51.100.9";
    for _ in 0..2 {
        assert_eq!(status_as(&a, "/guarded", ip).await, 200);
    }
    // Two refusals by the fleet bucket ban the address.
    for _ in 0..2 {
        assert_eq!(status_as(&a, "/guarded", ip).await, 429);
    }
    let on_b = wait_until(Duration::from_secs(2), || async {
        b.admin_json("/bans").await["bans"][0]["key"] == ip
    })
    .await;
    assert!(on_b, "node B did not learn the ban:\n{}", b.log());
    let origin_before = origin.request_count();
    let r = reqwest::Client::new()
        .get(b.url("/guarded"))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "https://rampart.dev/problems/banned");
    assert_eq!(origin.request_count(), origin_before);
    // Redis holds it, expiring with it.
    let ttl: i64 = redis
        .cli(&["PTTL", &format!("test:ban:guarded-fleet:{ip}")])
        .parse()
        .unwrap();
    assert!(ttl > 290_000 && ttl <= 300_000, "{ttl}");
    // Lifted on B, lifted on A.
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
    assert!(gone, "node A kept the lifted ban");
    assert_eq!(
        redis.cli(&["EXISTS", &format!("test:ban:guarded-fleet:{ip}")]),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_changes_the_flag_once_for_the_whole_fleet() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let redis = RedisServer::start().await;
    let origin = MockOrigin::start("o").await;
    let escalation = r#"
[[escalations]]
name = "register-flood"
flag = "registration_closed"
signal = "request_rate"
route = "register"
enter_above = 10
enter_for = "1s"
leave_below = 1
leave_for = "1h"
"#;
    let with = |node: &str| format!("{}\n{escalation}", config(&origin, &redis, node));
    let a = Rampart::start(bin(), &with("node-a")).await;
    let b = Rampart::start(bin(), &with("node-b")).await;
    for n in [&a, &b] {
        assert!(
            n.fleet_degraded_becomes(false, Duration::from_secs(10))
                .await
        );
    }
    // Both nodes see the same flood.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut loads = Vec::new();
    for n in [&a, &b] {
        let (url, stop) = (n.url("/register"), stop.clone());
        loads.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = client.get(&url).send().await;
            }
        }));
    }
    let both = wait_until(Duration::from_secs(15), || async {
        a.flag_active("registration_closed").await && b.flag_active("registration_closed").await
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    assert!(both, "the flood did not enter the flag on both nodes");
    // Exactly one node (the leader) made the change; the other learned it.
    let count = |n: &Rampart, action: &str| {
        std::fs::read_to_string(n.dir().join("state/lockdown-audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains(&format!("\"action\":\"{action}\""))
                    && l.contains("\"actor\":\"auto:register-flood\"")
            })
            .count()
    };
    let learned = wait_until(Duration::from_secs(3), || async {
        count(&a, "enable") + count(&b, "enable") == 1
            && count(&a, "fleet_enable") + count(&b, "fleet_enable") == 1
    })
    .await;
    assert!(
        learned,
        "enable {}+{}, fleet_enable {}+{}",
        count(&a, "enable"),
        count(&b, "enable"),
        count(&a, "fleet_enable"),
        count(&b, "fleet_enable")
    );
}
