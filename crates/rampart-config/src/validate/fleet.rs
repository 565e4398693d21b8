//! `[fleet]`: the shared Redis store of fleet-wide limits.

use super::Validator;
use crate::*;

impl Validator {
    pub(super) fn fleet(&mut self, raw: file::FileFleet) -> FleetConfig {
        let redis_url = match raw.redis_url {
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => u,
            Some(u) => {
                self.issue("fleet.redis_url", format!("\"{u}\" is not a redis:// URL"));
                u
            }
            None => {
                self.issue(
                    "fleet.redis_url",
                    "is required (e.g. \"redis://127.0.0.1:6379/0\")",
                );
                String::new()
            }
        };
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
            redis_url,
            key_prefix: raw.key_prefix.unwrap_or_else(|| "rampart:".to_string()),
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
}
