//! Automatic escalation with hysteresis, sans-IO: signal values and times in,
//! transitions out. The proxy samples the signal, feeds it here once per tick,
//! and applies the transitions (flag changes through the one writer).
//!
//! States: **idle** → (signal above `enter_above` continuously for `enter_for`)
//! → **entered** → (at least `min_hold` after entering, signal below
//! `leave_below` continuously for `leave_for`) → idle. Between the two
//! thresholds nothing changes, so a signal oscillating around one threshold
//! cannot make the flag flap: leaving needs it below the lower one for a while,
//! entering again above the upper one for a while.
//!
//! **Manual changes win.** When an operator changes the flag (turns it on,
//! off, or changes how it is on), the escalation is **suspended**: it neither
//! enters nor leaves the flag until its signal has been below `leave_below`
//! for `leave_for` (the attack it was watching is over), then it is idle again.

use rampart_config::{Config, EscalationConfig, Signal};
use std::time::Duration;

/// The route label of requests no route matched (metrics, logs).
pub const UNMATCHED_ROUTE: &str = "_unmatched";

/// Cumulative counts the escalation signals are computed from (deltas of two
/// samples give a window's values).
#[derive(Debug, Clone, Default)]
pub struct SignalCounters {
    /// Per route label: (requests, refused at the edge, proxied, proxied 5xx).
    pub routes: std::collections::HashMap<String, [u64; 4]>,
    /// Per pool: cumulative counts of the response-time buckets (upper bounds
    /// in seconds) and the total.
    pub pools: std::collections::HashMap<String, (Vec<(f64, u64)>, u64)>,
    /// Refusals per (route label, rule or flag name).
    pub refused_by: std::collections::HashMap<(String, String), u64>,
}

/// The value of escalation `e`'s signal between two samples, `secs` apart.
/// Share and latency signals read 0 (calm) below `min_requests` in the window,
/// and `rejected_share` leaves out the refusals of the escalation's own flag
/// (else a flag that refuses the route's traffic would keep itself on).
pub fn signal_value(
    e: &EscalationConfig,
    config: &Config,
    old: &SignalCounters,
    new: &SignalCounters,
    secs: f64,
) -> Option<f64> {
    let own_flag = config
        .lockdown
        .flags
        .get(e.flag)
        .map(|f| f.name.as_str())
        .unwrap_or_default();
    let signal = &e.signal;
    let min = e.min_requests;
    let route_delta = |route: Option<usize>| -> [u64; 4] {
        let mut sum = [0u64; 4];
        for (label, now) in &new.routes {
            let wanted = match route {
                None => true,
                Some(r) => config.routes.get(r).is_some_and(|c| c.name == *label),
            };
            if !wanted {
                continue;
            }
            let before = old.routes.get(label).copied().unwrap_or_default();
            for i in 0..4 {
                sum[i] += now[i].saturating_sub(before[i]);
            }
        }
        sum
    };
    let pool_routes = |pool: usize| -> [u64; 4] {
        let mut sum = [0u64; 4];
        for (label, now) in &new.routes {
            let of_pool = match config.routes.iter().find(|r| r.name == *label) {
                Some(r) => r.pool == pool,
                None => {
                    label == UNMATCHED_ROUTE
                        && matches!(config.unmatched, rampart_config::UnmatchedConfig::Proxy { pool: p } if p == pool)
                }
            };
            if !of_pool {
                continue;
            }
            let before = old.routes.get(label).copied().unwrap_or_default();
            for i in 0..4 {
                sum[i] += now[i].saturating_sub(before[i]);
            }
        }
        sum
    };
    let own_refusals = |route: Option<usize>| -> u64 {
        new.refused_by
            .iter()
            .filter(|((label, rule), _)| {
                rule == own_flag
                    && match route {
                        None => true,
                        Some(r) => config.routes.get(r).is_some_and(|c| c.name == *label),
                    }
            })
            .map(|(k, now)| now.saturating_sub(old.refused_by.get(k).copied().unwrap_or(0)))
            .sum()
    };
    match *signal {
        Signal::RequestRate { route } => (secs > 0.0).then(|| route_delta(route)[0] as f64 / secs),
        Signal::RejectedShare { route } => {
            let d = route_delta(route);
            let own = own_refusals(route);
            let (total, refused) = (d[0].saturating_sub(own), d[1].saturating_sub(own));
            Some(if total < min.max(1) {
                0.0
            } else {
                refused as f64 / total as f64
            })
        }
        Signal::Origin5xxShare { pool } => {
            let d = pool_routes(pool);
            Some(if d[2] < min.max(1) {
                0.0
            } else {
                d[3] as f64 / d[2] as f64
            })
        }
        Signal::OriginP99 { pool } => {
            let name = config.pools.get(pool)?.name.as_str();
            let (now_buckets, now_count) = new.pools.get(name)?;
            let (old_buckets, old_count) = old.pools.get(name).cloned().unwrap_or_default();
            let count = now_count.saturating_sub(old_count);
            if count < min.max(1) {
                return Some(0.0);
            }
            let target = (count as f64 * 0.99).ceil() as u64;
            let mut lower = 0.0;
            let mut below = 0u64;
            for (i, (bound, cumulative)) in now_buckets.iter().enumerate() {
                let before = old_buckets.get(i).map_or(0, |b| b.1);
                let here = cumulative.saturating_sub(before);
                if here >= target {
                    // Linear within the bucket, as Prometheus' histogram_quantile.
                    let in_bucket = (here - below).max(1) as f64;
                    let fraction = (target - below) as f64 / in_bucket;
                    return Some(lower + (bound - lower) * fraction);
                }
                lower = *bound;
                below = here;
            }
            // Above the last bucket: report its bound.
            Some(lower)
        }
    }
}

/// What the escalation wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Turn the flag on (in the configured mode).
    Enter,
    /// Turn the flag off.
    Leave,
}

/// Where an escalation stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EscalationState {
    /// Not in the flag; `above_since` is when the signal last went above
    /// `enter_above` (and has stayed there).
    Idle {
        /// Start of the current run above the threshold.
        above_since: Option<Duration>,
    },
    /// In the flag since `entered`; `below_since` as above, for leaving.
    Entered {
        /// When it entered.
        entered: Duration,
        /// Start of the current run below `leave_below`.
        below_since: Option<Duration>,
    },
    /// An operator changed the flag; waiting for the signal to calm down.
    Suspended {
        /// Start of the current run below `leave_below`.
        below_since: Option<Duration>,
    },
}

/// One escalation's state machine.
#[derive(Debug, Clone)]
pub struct Escalation {
    /// Its config.
    pub config: EscalationConfig,
    /// Its state.
    pub state: EscalationState,
}

impl Escalation {
    /// A new, idle escalation.
    pub fn new(config: EscalationConfig) -> Self {
        Self {
            config,
            state: EscalationState::Idle { above_since: None },
        }
    }

    /// Feeds the signal's value at `now` (any monotonic time); returns the
    /// transition to apply, if any. `None` values (no data yet) change nothing.
    pub fn observe(&mut self, value: Option<f64>, now: Duration) -> Option<Transition> {
        let value = value?;
        let c = &self.config;
        let since = |run: Option<Duration>, holds: bool| holds.then(|| run.unwrap_or(now));
        match self.state {
            EscalationState::Idle { above_since } => {
                let run = since(above_since, value > c.enter_above);
                if run.is_some_and(|t| now.saturating_sub(t) >= c.enter_for) {
                    self.state = EscalationState::Entered {
                        entered: now,
                        below_since: None,
                    };
                    return Some(Transition::Enter);
                }
                self.state = EscalationState::Idle { above_since: run };
                None
            }
            EscalationState::Entered {
                entered,
                below_since,
            } => {
                let run = since(below_since, value < c.leave_below);
                let held = now.saturating_sub(entered) >= c.min_hold;
                if held && run.is_some_and(|t| now.saturating_sub(t) >= c.leave_for) {
                    self.state = EscalationState::Idle { above_since: None };
                    return Some(Transition::Leave);
                }
                self.state = EscalationState::Entered {
                    entered,
                    below_since: run,
                };
                None
            }
            EscalationState::Suspended { below_since } => {
                let run = since(below_since, value < c.leave_below);
                self.state = if run.is_some_and(|t| now.saturating_sub(t) >= c.leave_for) {
                    EscalationState::Idle { above_since: None }
                } else {
                    EscalationState::Suspended { below_since: run }
                };
                None
            }
        }
    }

    /// An operator changed the flag: stop acting on it until the signal calms
    /// down (see the module doc).
    pub fn suspend(&mut self) {
        if !matches!(self.state, EscalationState::Suspended { .. }) {
            self.state = EscalationState::Suspended { below_since: None };
        }
    }

    /// Whether the escalation holds the flag now.
    pub fn is_entered(&self) -> bool {
        matches!(self.state, EscalationState::Entered { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::Signal;

    fn escalation() -> Escalation {
        Escalation::new(EscalationConfig {
            name: "e".into(),
            flag: 0,
            preview: false,
            signal: Signal::RequestRate { route: None },
            enter_above: 100.0,
            enter_for: Duration::from_secs(10),
            leave_below: 50.0,
            leave_for: Duration::from_secs(30),
            min_hold: Duration::from_secs(60),
            min_requests: 20,
        })
    }

    fn run(e: &mut Escalation, values: &[(u64, f64)]) -> Vec<(u64, Transition)> {
        values
            .iter()
            .filter_map(|&(t, v)| e.observe(Some(v), Duration::from_secs(t)).map(|tr| (t, tr)))
            .collect()
    }

    #[test]
    fn enters_after_the_signal_holds_above_and_leaves_after_it_holds_below() {
        let mut e = escalation();
        let mut values: Vec<(u64, f64)> = (0..=10).map(|t| (t, 150.0)).collect();
        assert_eq!(run(&mut e, &values), vec![(10, Transition::Enter)]);
        // Quiet at once, but min_hold (60 s) keeps it in until t = 70.
        values = (11..=80).map(|t| (t, 10.0)).collect();
        assert_eq!(run(&mut e, &values), vec![(70, Transition::Leave)]);
        assert!(!e.is_entered());
    }

    #[test]
    fn a_signal_oscillating_around_a_threshold_never_flaps() {
        let mut e = escalation();
        // Around the entry threshold: never 10 s in a row above it.
        let around_entry: Vec<(u64, f64)> = (0..600)
            .map(|t| (t, if t % 8 < 5 { 120.0 } else { 90.0 }))
            .collect();
        assert!(run(&mut e, &around_entry).is_empty());
        // Entered, then around the exit threshold: never 30 s in a row below.
        let enter: Vec<(u64, f64)> = (600..=610).map(|t| (t, 200.0)).collect();
        assert_eq!(run(&mut e, &enter), vec![(610, Transition::Enter)]);
        let around_exit: Vec<(u64, f64)> = (611..2000)
            .map(|t| (t, if t % 20 < 15 { 40.0 } else { 60.0 }))
            .collect();
        assert!(run(&mut e, &around_exit).is_empty(), "left while flapping");
        assert!(e.is_entered());
        // Between the thresholds: stays entered for ever.
        let between: Vec<(u64, f64)> = (2000..3000).map(|t| (t, 75.0)).collect();
        assert!(run(&mut e, &between).is_empty());
        assert!(e.is_entered());
    }

    #[test]
    fn a_manual_change_suspends_until_the_signal_calms_down() {
        let mut e = escalation();
        let high: Vec<(u64, f64)> = (0..=10).map(|t| (t, 150.0)).collect();
        assert_eq!(run(&mut e, &high), vec![(10, Transition::Enter)]);
        // The operator turns the flag off during the attack: no re-entry.
        e.suspend();
        let still_high: Vec<(u64, f64)> = (11..200).map(|t| (t, 150.0)).collect();
        assert!(run(&mut e, &still_high).is_empty());
        // The attack ends: 30 s below leave_below, then idle again; a new
        // attack enters again.
        let quiet: Vec<(u64, f64)> = (200..=230).map(|t| (t, 10.0)).collect();
        assert!(run(&mut e, &quiet).is_empty());
        assert_eq!(e.state, EscalationState::Idle { above_since: None });
        let again: Vec<(u64, f64)> = (231..=241).map(|t| (t, 150.0)).collect();
        assert_eq!(run(&mut e, &again), vec![(241, Transition::Enter)]);
    }

    #[test]
    fn missing_data_changes_nothing() {
        let mut e = escalation();
        for t in 0..100 {
            assert_eq!(e.observe(None, Duration::from_secs(t)), None);
        }
        assert_eq!(e.state, EscalationState::Idle { above_since: None });
    }
}
