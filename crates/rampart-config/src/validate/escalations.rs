//! `[[escalations]]`: flags entered and left automatically on a signal.

use super::{list_or_none, Validator};
use crate::*;
use std::collections::BTreeSet;
use std::time::Duration;

impl Validator {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn escalation(
        &mut self,
        i: usize,
        raw: file::FileEscalation,
        routes: &[String],
        pools: &[String],
        flags: &[String],
        seen: &mut BTreeSet<String>,
    ) -> Option<EscalationConfig> {
        let key = format!("escalations[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let flag = match raw.flag {
            None => {
                self.issue(format!("{key}.flag"), "is required (the flag to enter)");
                None
            }
            Some(f) => {
                let found = flags.iter().position(|n| *n == f);
                if found.is_none() {
                    self.issue(
                        format!("{key}.flag"),
                        format!("unknown flag \"{f}\" (known: {})", list_or_none(flags)),
                    );
                }
                found
            }
        };
        let preview = match raw.mode.as_deref() {
            None | Some("enforce") => false,
            Some("preview") => true,
            Some(other) => {
                self.issue(
                    format!("{key}.mode"),
                    format!("\"{other}\" is not a mode (use \"enforce\" or \"preview\")"),
                );
                false
            }
        };
        let route = match &raw.route {
            None => None,
            Some(r) => {
                let found = routes.iter().position(|n| n == r);
                if found.is_none() {
                    self.issue(
                        format!("{key}.route"),
                        format!("unknown route \"{r}\" (known: {})", list_or_none(routes)),
                    );
                }
                found
            }
        };
        let pool = match &raw.pool {
            None => None,
            Some(p) => {
                let found = pools.iter().position(|n| n == p);
                if found.is_none() {
                    self.issue(
                        format!("{key}.pool"),
                        format!("unknown pool \"{p}\" (known: {})", list_or_none(pools)),
                    );
                }
                found
            }
        };
        let by_route = |this: &mut Self| {
            if raw.pool.is_some() {
                this.issue(format!("{key}.pool"), "only with an origin signal");
            }
        };
        let by_pool = |this: &mut Self| {
            if raw.route.is_some() {
                this.issue(format!("{key}.route"), "only with a request signal");
            }
            if raw.pool.is_none() {
                this.issue(format!("{key}.pool"), "is required with an origin signal");
            }
        };
        let signal = match raw.signal.as_deref() {
            Some("request_rate") => {
                by_route(self);
                Some(Signal::RequestRate { route })
            }
            Some("rejected_share") => {
                by_route(self);
                Some(Signal::RejectedShare { route })
            }
            Some("origin_p99") => {
                by_pool(self);
                pool.map(|pool| Signal::OriginP99 { pool })
            }
            Some("origin_5xx_share") => {
                by_pool(self);
                pool.map(|pool| Signal::Origin5xxShare { pool })
            }
            None => {
                self.issue(
                    format!("{key}.signal"),
                    "is required (request_rate, rejected_share, origin_p99 or origin_5xx_share)",
                );
                None
            }
            Some(other) => {
                self.issue(
                    format!("{key}.signal"),
                    format!("\"{other}\" is not a signal (use request_rate, rejected_share, origin_p99 or origin_5xx_share)"),
                );
                None
            }
        };
        let share = matches!(
            signal,
            Some(Signal::RejectedShare { .. } | Signal::Origin5xxShare { .. })
        );
        let threshold = |this: &mut Self, k: &str, v: Option<f64>| match v {
            None => {
                this.issue(format!("{key}.{k}"), "is required");
                None
            }
            Some(v) if !v.is_finite() || v < 0.0 || (share && v > 1.0) => {
                this.issue(
                    format!("{key}.{k}"),
                    if share {
                        format!("must be a share from 0 to 1, got {v}")
                    } else {
                        format!("must be 0 or more, got {v}")
                    },
                );
                None
            }
            Some(v) => Some(v),
        };
        let enter_above = threshold(self, "enter_above", raw.enter_above);
        let leave_below = threshold(self, "leave_below", raw.leave_below);
        if let (Some(enter), Some(leave)) = (enter_above, leave_below) {
            if leave > enter {
                self.issue(
                    format!("{key}.leave_below"),
                    format!("{leave} is above enter_above ({enter}): the flag would flap"),
                );
            }
        }
        let enter_for = self.nonzero_duration(
            &format!("{key}.enter_for"),
            raw.enter_for.as_deref(),
            Duration::from_secs(10),
        );
        let leave_for = self.nonzero_duration(
            &format!("{key}.leave_for"),
            raw.leave_for.as_deref(),
            Duration::from_secs(60),
        );
        let min_hold = self.duration(
            &format!("{key}.min_hold"),
            raw.min_hold.as_deref(),
            Duration::from_secs(300),
        );
        let min_requests = match raw.min_requests {
            None => DEFAULT_ESCALATION_MIN_REQUESTS,
            Some(n) if n >= 0 => n as u64,
            Some(n) => {
                self.issue(
                    format!("{key}.min_requests"),
                    format!("must be 0 or more, got {n}"),
                );
                DEFAULT_ESCALATION_MIN_REQUESTS
            }
        };
        Some(EscalationConfig {
            min_requests,
            name,
            flag: flag?,
            preview,
            signal: signal?,
            enter_above: enter_above?,
            enter_for,
            leave_below: leave_below?,
            leave_for,
            min_hold,
        })
    }
}
