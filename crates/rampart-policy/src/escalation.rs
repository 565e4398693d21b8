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

use rampart_config::EscalationConfig;
use std::time::Duration;

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
