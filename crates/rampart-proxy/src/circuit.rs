//! Circuit breakers of the fleet's Redis masters: one for a single server or
//! the Sentinel master, one per master of a cluster (which slots each serves
//! is read from `CLUSTER SLOTS` by the sync service). A master that fails
//! opens its own circuit: while it is open, one request per
//! [`PROBE_INTERVAL`] for a key it serves tries it, and every other such
//! request takes its rule's failure mode at once. Keys served by the other
//! masters of a cluster go on as before, so a failover of one master costs the
//! keys of its slots only. No I/O here.

use crate::redis_link::key_slot;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// While a circuit is open, one request per this interval tries its master
/// (the probe); the others take their rule's failure mode at once.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Number of slots of a Redis Cluster.
const SLOTS: usize = 16_384;

#[derive(Debug)]
struct Circuit {
    failing: AtomicBool,
    /// While failing: when the next probe may go (ms since the start).
    next_probe_ms: AtomicU64,
}

impl Circuit {
    fn new(failing: bool) -> Self {
        Self {
            failing: AtomicBool::new(failing),
            next_probe_ms: AtomicU64::new(0),
        }
    }
}

/// Which master serves each slot (empty: one master serves all), and the
/// circuit of each master.
#[derive(Debug)]
struct Shards {
    /// Slot → index into `circuits`; empty with one master.
    slots: Vec<u16>,
    circuits: Vec<Circuit>,
    /// Each master's address (empty with one master).
    names: Vec<String>,
}

/// The circuits of one node's Redis masters.
#[derive(Debug)]
pub struct Circuits {
    shards: arc_swap::ArcSwap<Shards>,
    started: Instant,
}

impl Default for Circuits {
    fn default() -> Self {
        Self::new()
    }
}

/// The circuit of the master serving one key.
#[derive(Debug)]
pub struct Breaker {
    shards: Arc<Shards>,
    index: usize,
    started: Instant,
}

/// A circuit's state change, to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It opened: its master failed.
    Opened,
    /// It closed: its master answered again.
    Closed,
}

impl Circuits {
    /// One master, its circuit open until the first answer (not connected).
    pub fn new() -> Self {
        Self {
            shards: arc_swap::ArcSwap::from_pointee(Shards {
                slots: Vec::new(),
                circuits: vec![Circuit::new(true)],
                names: vec![String::new()],
            }),
            started: Instant::now(),
        }
    }

    /// The circuit of the master serving `key`.
    pub fn for_key(&self, key: &str) -> Breaker {
        let shards = self.shards.load_full();
        let index = if shards.slots.is_empty() {
            0
        } else {
            shards
                .slots
                .get(usize::from(key_slot(key.as_bytes())))
                .map_or(0, |i| usize::from(*i))
        };
        Breaker {
            shards,
            index,
            started: self.started,
        }
    }

    /// Whether any master's circuit is open.
    pub fn any_open(&self) -> bool {
        self.shards
            .load()
            .circuits
            .iter()
            .any(|c| c.failing.load(Ordering::Relaxed))
    }

    /// Takes a cluster's topology: `(first slot, last slot, master address)`
    /// per range. Circuits of masters still serving the same slots keep
    /// their state; a new master (a promoted replica) starts closed. Returns
    /// whether the topology changed. Ranges outside the slots are ignored.
    pub fn set_topology(&self, ranges: &[(u16, u16, String)]) -> bool {
        let current = self.shards.load_full();
        let mut names: Vec<String> = Vec::new();
        let mut slots = vec![u16::MAX; SLOTS];
        for (first, last, master) in ranges {
            let index = match names.iter().position(|n| n == master) {
                Some(i) => i,
                None => {
                    names.push(master.clone());
                    names.len() - 1
                }
            };
            let (first, last) = (usize::from(*first), usize::from(*last).min(SLOTS - 1));
            if let Some(range) = slots.get_mut(first..=last) {
                range.fill(index as u16);
            }
        }
        if names.is_empty() {
            return false;
        }
        // Slots no master serves (a failed master's, until a replica takes
        // over) get a circuit of their own.
        if slots.contains(&u16::MAX) {
            names.push("(unserved slots)".to_string());
            let unserved = (names.len() - 1) as u16;
            for s in slots.iter_mut().filter(|s| **s == u16::MAX) {
                *s = unserved;
            }
        }
        if names == current.names && slots == current.slots {
            return false;
        }
        let circuits = names
            .iter()
            .map(|name| {
                let failing = current
                    .names
                    .iter()
                    .position(|n| n == name)
                    .and_then(|i| current.circuits.get(i))
                    .is_some_and(|c| c.failing.load(Ordering::Relaxed));
                Circuit::new(failing)
            })
            .collect();
        self.shards.store(Arc::new(Shards {
            slots,
            circuits,
            names,
        }));
        true
    }
}

impl Breaker {
    fn circuit(&self) -> Option<&Circuit> {
        self.shards.circuits.get(self.index)
    }

    /// The master's address (empty with one master).
    pub fn name(&self) -> &str {
        self.shards.names.get(self.index).map_or("", String::as_str)
    }

    /// Whether this circuit is open.
    pub fn is_open(&self) -> bool {
        self.circuit()
            .is_some_and(|c| c.failing.load(Ordering::Relaxed))
    }

    /// Whether a request may ask the master now: always while the circuit is
    /// closed; while open, one request per [`PROBE_INTERVAL`].
    pub fn may_ask(&self) -> bool {
        let Some(c) = self.circuit() else {
            return true;
        };
        if !c.failing.load(Ordering::Relaxed) {
            return true;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = c.next_probe_ms.load(Ordering::Relaxed);
        now >= next
            && c.next_probe_ms
                .compare_exchange(
                    next,
                    now + PROBE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records an operation's outcome; the change it made, if any.
    pub fn record(&self, ok: bool) -> Option<Transition> {
        let c = self.circuit()?;
        let was_failing = c.failing.swap(!ok, Ordering::Relaxed);
        match (was_failing, ok) {
            (true, true) => Some(Transition::Closed),
            (false, false) => Some(Transition::Opened),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_master_has_one_circuit_open_until_the_first_answer() {
        let c = Circuits::new();
        let (a, b) = (c.for_key("x"), c.for_key("y"));
        assert!(a.is_open() && c.any_open());
        assert_eq!(a.record(true), Some(Transition::Closed));
        assert!(!b.is_open() && !c.any_open());
        assert!(b.may_ask());
        assert_eq!(b.record(false), Some(Transition::Opened));
        assert_eq!(b.record(false), None);
        // Open: one probe per interval.
        assert!(a.may_ask());
        assert!(!a.may_ask());
    }

    #[test]
    fn in_a_cluster_a_failing_master_opens_only_its_own_circuit() {
        let c = Circuits::new();
        c.for_key("any").record(true);
        let ranges = [
            (0, 5460, "10.0.0.1:6379".to_string()),
            (5461, 10922, "10.0.0.2:6379".to_string()),
            (10923, 16383, "10.0.0.3:6379".to_string()),
        ];
        assert!(c.set_topology(&ranges));
        assert!(!c.set_topology(&ranges));
        // "123456789" is slot 12739, on the third master.
        let third = c.for_key("123456789");
        assert_eq!(third.name(), "10.0.0.3:6379");
        assert_eq!(third.record(false), Some(Transition::Opened));
        let on_first = (0..1000)
            .map(|i| format!("k{i}"))
            .find(|k| c.for_key(k).name() == "10.0.0.1:6379")
            .expect("some key on the first master");
        let first = c.for_key(&on_first);
        assert!(!first.is_open() && first.may_ask());
        assert!(c.any_open());
        // A replica takes over the third master's slots: a fresh circuit; the
        // first master keeps its state.
        first.record(false);
        let promoted = [
            (0, 5460, "10.0.0.1:6379".to_string()),
            (5461, 10922, "10.0.0.2:6379".to_string()),
            (10923, 16383, "10.0.0.4:6379".to_string()),
        ];
        assert!(c.set_topology(&promoted));
        assert!(!c.for_key("123456789").is_open());
        assert!(c.for_key(&on_first).is_open());
    }

    #[test]
    fn unserved_slots_get_a_circuit_of_their_own() {
        let c = Circuits::new();
        assert!(c.set_topology(&[(0, 100, "10.0.0.1:6379".to_string())]));
        assert_eq!(c.for_key("123456789").name(), "(unserved slots)");
    }
}
