//! `[fleet]`: the shared Redis store of fleet-wide limits and flags: one
//! server (`redis_url`), a master found through Sentinel (`sentinel`), or a
//! cluster (`cluster_urls`).

use super::Validator;
use crate::*;

/// Whether `url` names a Redis server the client can reach.
fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

impl Validator {
    pub(super) fn fleet(&mut self, raw: file::FileFleet) -> FleetConfig {
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "rampart:".to_string());
        let redis = self.fleet_redis(raw.redis_url, raw.sentinel, raw.cluster_urls);
        if matches!(redis, FleetRedis::Cluster { .. }) {
            // The prefix is the hash tag that keeps the fleet's flag keys on
            // one slot (`{rampart:}flags`): braces inside it would end the tag
            // early, and an empty tag hashes the whole key.
            if key_prefix.contains(['{', '}']) {
                self.issue(
                    "fleet.key_prefix",
                    "must not contain \"{\" or \"}\" with cluster_urls (it becomes the hash tag of the fleet's keys)",
                );
            } else if key_prefix.is_empty() {
                self.issue(
                    "fleet.key_prefix",
                    "must not be empty with cluster_urls (it becomes the hash tag of the fleet's keys)",
                );
            }
        }
        let quota_batch = match raw.quota_batch {
            None => DEFAULT_FLEET_QUOTA_BATCH,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.issue(
                    "fleet.quota_batch",
                    format!("must be from 1 to 1000, got {n}"),
                );
                DEFAULT_FLEET_QUOTA_BATCH
            }
        };
        FleetConfig {
            redis,
            key_prefix,
            node: raw.node,
            timeout: self.nonzero_duration(
                "fleet.timeout",
                raw.timeout.as_deref(),
                DEFAULT_FLEET_TIMEOUT,
            ),
            resync_interval: self.nonzero_duration(
                "fleet.resync_interval",
                raw.resync_interval.as_deref(),
                DEFAULT_FLEET_RESYNC,
            ),
            quota_batch,
        }
    }

    /// Exactly one of the three ways to name Redis.
    fn fleet_redis(
        &mut self,
        url: Option<String>,
        sentinel: Option<file::FileSentinel>,
        cluster: Option<Vec<String>>,
    ) -> FleetRedis {
        let given = [url.is_some(), sentinel.is_some(), cluster.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            self.issue(
                "fleet",
                "redis_url, sentinel and cluster_urls are alternatives: set only one",
            );
        }
        if let Some(url) = url {
            if !is_redis_url(&url) {
                self.issue(
                    "fleet.redis_url",
                    format!("\"{url}\" is not a redis:// URL"),
                );
            }
            return FleetRedis::Single { url };
        }
        if let Some(s) = sentinel {
            return FleetRedis::Sentinel(self.sentinel(s));
        }
        if let Some(urls) = cluster {
            if urls.is_empty() {
                self.issue(
                    "fleet.cluster_urls",
                    "needs at least one node of the cluster (e.g. [\"redis://10.0.0.1:6379\"])",
                );
            }
            self.redis_urls("fleet.cluster_urls", &urls);
            return FleetRedis::Cluster { urls };
        }
        self.issue(
            "fleet",
            "needs redis_url (one server), sentinel = { master, urls } or cluster_urls (e.g. redis_url = \"redis://127.0.0.1:6379/0\")",
        );
        FleetRedis::Single { url: String::new() }
    }

    fn sentinel(&mut self, raw: file::FileSentinel) -> SentinelConfig {
        let master = match raw.master {
            Some(m) if !m.trim().is_empty() => m,
            _ => {
                self.issue(
                    "fleet.sentinel.master",
                    "is required: the name the sentinels monitor (e.g. \"mymaster\")",
                );
                String::new()
            }
        };
        let urls = raw.urls.unwrap_or_default();
        if urls.is_empty() {
            self.issue(
                "fleet.sentinel.urls",
                "needs at least one sentinel (e.g. [\"redis://10.0.0.1:26379\"])",
            );
        }
        self.redis_urls("fleet.sentinel.urls", &urls);
        let db = match raw.db {
            None => 0,
            Some(n) if n >= 0 => n,
            Some(n) => {
                self.issue("fleet.sentinel.db", format!("must be 0 or more, got {n}"));
                0
            }
        };
        SentinelConfig {
            master,
            urls,
            db,
            username: raw.username,
            password: raw.password,
        }
    }

    fn redis_urls(&mut self, key: &str, urls: &[String]) {
        for (i, url) in urls.iter().enumerate() {
            if !is_redis_url(url) {
                self.issue(
                    format!("{key}[{i}]"),
                    format!("\"{url}\" is not a redis:// URL"),
                );
            }
        }
    }
}
