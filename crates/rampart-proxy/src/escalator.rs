//! Automatic escalation: once a second, samples the signals from the metrics,
//! feeds each `[[escalations]]` state machine (`rampart_policy::escalation`)
//! and applies its transitions as flag changes through the one writer, with
//! actor `auto:<name>` (so they are audited, counted and logged like any other
//! change).
//!
//! Signals are computed over the last [`SIGNAL_WINDOW`] from this node's
//! counters. In fleet mode one node leads (a Redis lease renewed every tick)
//! and only the leader evaluates and changes flags, so a transition happens
//! once for the whole fleet; its thresholds apply to the leader's own traffic.
//! An operator's change to the flag wins: see `rampart_policy::escalation`.

use crate::metrics::SignalCounters;
use crate::state::{Command, Shared, Snapshot};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rampart_config::Config;
pub use rampart_policy::escalation::signal_value;
use rampart_policy::escalation::{Escalation, EscalationState, Transition};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often signals are sampled and escalations evaluated.
pub const TICK: Duration = Duration::from_secs(1);
/// The window signals are computed over.
pub const SIGNAL_WINDOW: Duration = Duration::from_secs(5);

/// The escalation service.
#[derive(Debug)]
pub struct Escalator {
    shared: Arc<Shared>,
}

impl Escalator {
    /// An escalator for `shared` (idle while the config has no escalations).
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The escalations of `config`, keeping the state of those unchanged in `previous`.
fn rebuild(config: &Config, previous: Vec<Escalation>) -> Vec<Escalation> {
    config
        .escalations
        .iter()
        .map(|c| {
            previous
                .iter()
                .find(|e| e.config == *c)
                .cloned()
                .unwrap_or_else(|| Escalation::new(c.clone()))
        })
        .collect()
}

impl Escalator {
    /// Lines the state machine up with the flag's actual state before a tick:
    /// a flag this escalation holds that someone else changed suspends it; a
    /// flag held under its name (entered by a former leader, or before a
    /// restart) is adopted.
    fn reconcile(e: &mut Escalation, snapshot: &Snapshot, now: Duration) {
        let Some(flag) = snapshot.config.lockdown.flags.get(e.config.flag) else {
            return;
        };
        let ours = format!("auto:{}", e.config.name);
        let active = snapshot.flags.active.get(&flag.name);
        match (&e.state, active) {
            (EscalationState::Entered { .. }, None) => e.suspend(),
            (EscalationState::Entered { .. }, Some(a)) if a.actor != ours => e.suspend(),
            (EscalationState::Idle { .. }, Some(a)) if a.actor == ours => {
                e.state = EscalationState::Entered {
                    entered: now,
                    below_since: None,
                };
            }
            // On by someone else (an operator): their change wins, as if they
            // had changed it while the escalation held it.
            (EscalationState::Idle { .. }, Some(_)) => e.suspend(),
            _ => {}
        }
    }

    async fn apply(
        &self,
        e: &mut Escalation,
        transition: Transition,
        value: f64,
        snapshot: &Snapshot,
    ) {
        let Some(flag) = snapshot.config.lockdown.flags.get(e.config.flag) else {
            return;
        };
        let c = &e.config;
        let actor = format!("auto:{}", c.name);
        let command = match transition {
            Transition::Enter => Command::EnableFlag {
                flag: flag.name.clone(),
                mode: if c.preview {
                    crate::lockdown::Mode::Preview
                } else {
                    crate::lockdown::Mode::Enforce
                },
                actor,
                reason: format!(
                    "{} {value:.3} above {} for {} s",
                    c.signal.as_label(),
                    c.enter_above,
                    c.enter_for.as_secs()
                ),
                ttl: None,
            },
            Transition::Leave => Command::DisableFlag {
                flag: flag.name.clone(),
                actor,
                reason: format!(
                    "{} {value:.3} below {} for {} s",
                    c.signal.as_label(),
                    c.leave_below,
                    c.leave_for.as_secs()
                ),
            },
        };
        match self.shared.apply(command).await {
            Ok(_) => {
                self.shared
                    .metrics
                    .escalation_transition(&c.name, transition);
                log::warn!(
                    "escalation {}: {} flag {} ({} = {value:.3})",
                    c.name,
                    match transition {
                        Transition::Enter => "entered",
                        Transition::Leave => "left",
                    },
                    flag.name,
                    c.signal.as_label()
                );
            }
            Err(err) => {
                log::error!(
                    "escalation {}: cannot change flag {}: {err}; will retry",
                    c.name,
                    flag.name
                );
                // Try again on a later tick.
                e.state = match transition {
                    Transition::Enter => EscalationState::Idle { above_since: None },
                    Transition::Leave => EscalationState::Entered {
                        entered: Duration::ZERO,
                        below_since: None,
                    },
                };
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Escalator {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let started = Instant::now();
        let mut samples: VecDeque<(Instant, SignalCounters)> = VecDeque::new();
        let mut escalations: Vec<Escalation> = Vec::new();
        let mut generation = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.shared.snapshot();
            if snapshot.generation != generation
                || escalations.len() != snapshot.config.escalations.len()
            {
                escalations = rebuild(&snapshot.config, std::mem::take(&mut escalations));
                generation = snapshot.generation;
            }
            if escalations.is_empty() {
                samples.clear();
                continue;
            }
            let now = Instant::now();
            samples.push_back((now, self.shared.metrics.signal_counters()));
            while samples.len() > 2
                && samples
                    .get(1)
                    .is_some_and(|(t, _)| now.duration_since(*t) >= SIGNAL_WINDOW)
            {
                samples.pop_front();
            }
            let (Some((t0, oldest)), Some((_, newest))) = (samples.front(), samples.back()) else {
                continue;
            };
            let secs = now.duration_since(*t0).as_secs_f64();
            let leader = match &self.shared.fleet {
                None => true,
                Some(fleet) => fleet.lead(&self.shared.node, &self.shared.metrics).await,
            };
            let clock = started.elapsed();
            for e in &mut escalations {
                let value = if secs > 0.0 {
                    signal_value(&e.config, &snapshot.config, oldest, newest, secs)
                } else {
                    None
                };
                if leader {
                    Self::reconcile(e, &snapshot, clock);
                    if let Some(transition) = e.observe(value, clock) {
                        self.apply(e, transition, value.unwrap_or_default(), &snapshot)
                            .await;
                    }
                } else {
                    // Followers keep no state of their own: they adopt the
                    // leader's flag changes when they lead.
                    *e = Escalation::new(e.config.clone());
                }
                self.shared
                    .metrics
                    .escalation(&e.config.name, value, e.is_entered());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::Signal;
    use std::collections::HashMap;

    fn config() -> Config {
        rampart_config::parse(
            r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[pools.auth]
servers = ["127.0.0.1:9001"]
[[routes]]
name = "register"
path_prefix = "/register"
pool = "auth"
[[routes]]
name = "chat"
pool = "web"
[[flags]]
name = "closed"
block = [{ routes = ["register"], status = 403, message = "closed" }]
"#,
            std::path::Path::new("t.toml"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn counters(routes: &[(&str, [u64; 4])], auth: &[(f64, u64)]) -> SignalCounters {
        SignalCounters {
            refused_by: HashMap::new(),
            routes: routes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            pools: HashMap::from([(
                "auth".to_string(),
                (auth.to_vec(), auth.last().map_or(0, |b| b.1)),
            )]),
        }
    }

    #[test]
    fn signals_come_from_counter_deltas() {
        let c = config();
        let register = c.routes.iter().position(|r| r.name == "register");
        let auth = c.pools.iter().position(|p| p.name == "auth").unwrap_or(0);
        let old = counters(
            &[("register", [100, 10, 90, 0]), ("chat", [1000, 0, 1000, 5])],
            &[(0.1, 90), (1.0, 90), (10.0, 90)],
        );
        let new = counters(
            &[
                ("register", [600, 410, 190, 20]),
                ("chat", [1500, 0, 1500, 5]),
            ],
            &[(0.1, 90 + 50), (1.0, 90 + 98), (10.0, 90 + 100)],
        );
        let escalation = |signal: Signal, min_requests: u64| rampart_config::EscalationConfig {
            name: "e".into(),
            flag: 0,
            preview: false,
            signal,
            enter_above: 1.0,
            enter_for: Duration::from_secs(1),
            leave_below: 0.5,
            leave_for: Duration::from_secs(1),
            min_hold: Duration::ZERO,
            min_requests,
        };
        let v = |s: Signal| signal_value(&escalation(s, 20), &c, &old, &new, 5.0);
        assert_eq!(v(Signal::RequestRate { route: register }), Some(100.0));
        assert_eq!(v(Signal::RequestRate { route: None }), Some(200.0));
        assert_eq!(v(Signal::RejectedShare { route: register }), Some(0.8));
        assert_eq!(v(Signal::Origin5xxShare { pool: auth }), Some(0.2));
        // 100 responses: the 99th is in the (1, 10] bucket, the first of it.
        let p99 = v(Signal::OriginP99 { pool: auth }).unwrap_or_default();
        assert!((p99 - 5.5).abs() < 1e-9, "{p99}");
        // No responses in the window, or fewer than min_requests: calm.
        let p99 = escalation(Signal::OriginP99 { pool: auth }, 20);
        assert_eq!(signal_value(&p99, &c, &new, &new, 5.0), Some(0.0));
        let share = escalation(Signal::RejectedShare { route: register }, 1000);
        assert_eq!(signal_value(&share, &c, &old, &new, 5.0), Some(0.0));
        // Refusals by the escalation's own flag do not keep it on.
        let mut own = new.clone();
        own.refused_by
            .insert(("register".into(), "closed".into()), 300);
        let share = escalation(Signal::RejectedShare { route: register }, 20);
        // 500 requests, 400 refused, 300 of them by the flag itself: 100 of 200.
        assert_eq!(signal_value(&share, &c, &old, &own, 5.0), Some(0.5));
    }
}
