//! `rampart replay`: runs a request record (`rampart_policy::record`) through
//! a candidate config, and optionally a baseline one, with a virtual clock.
//!
//! Each config gets its own [`Policy`] on a [`FakeRelativeClock`] that is
//! moved to every record's arrival time before the record is decided, so
//! buckets refill, bans expire and in-flight slots are released exactly as
//! the recorded timestamps say: a replay is deterministic. Requests are
//! decided by the same engine the proxy runs, with the recorded facts:
//! address, country, ASN, host, method, canonical path, the kept headers, the
//! body fields the recording's rules read, and the flags that were on.
//!
//! What a replay cannot know, it says so rather than guessing:
//! - a body the candidate reads but the recording did not keep (or a field it
//!   did not read) makes the request `unrecorded`, counted apart;
//! - fleet-scoped limits are one shared bucket: replay the records of every
//!   node together to see the fleet's buckets;
//! - under a flood the recording is sampled; counts are scaled back by each
//!   record's weight, and buckets see only the recorded requests;
//! - a bearer token cannot be verified again (the record keeps
//!   `Authorization` only as a hash): `key = "jwt"` rules count by the
//!   identity the record kept (`jwt`: each claim as a keyed hash, one bucket
//!   per subject), and by address where the token did not verify, the record
//!   has no identity (recorded without jwt rules: `not_recorded`) or lacks
//!   the rule's claim, as the proxy does for an unverifiable token.

mod report;

pub use report::{Report, RuleRow, SideReport};

use governor::clock::FakeRelativeClock;
use http::{HeaderMap, HeaderName, HeaderValue};
use rampart_config::{Config, LimitScope};
use rampart_policy::body::NOT_RECORDED;
use rampart_policy::engine::PROXIED;
use rampart_policy::escalation::{
    signal_value, Escalation, SignalCounters, Transition, UNMATCHED_ROUTE,
};
use rampart_policy::limits::{LimitKey, RateRule, RuleOutcome};
use rampart_policy::record::Record;
use rampart_policy::{
    Charging, CountryCode, FlagMode, FleetAnswer, GeoInfo, Policy, Rejection, RequestFacts, Step,
    Verdict,
};
use std::collections::{BinaryHeap, VecDeque};
use std::io::BufRead;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// How a replay runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Flags forced to a mode for the whole replay, by name (others follow the
    /// recording).
    pub flags: Vec<(String, FlagMode)>,
    /// Top keys per rule in the report.
    pub top: usize,
    /// How far back in time a record may arrive and still be put in order.
    /// Records are written when their request ends: a long request's record
    /// comes after those of requests that arrived later.
    pub reorder: Duration,
}

/// Why a replay could not run.
#[derive(Debug)]
pub enum ReplayError {
    /// A record file could not be read.
    Io(String),
    /// A `--flag` names no flag of the config.
    UnknownFlag(String),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Io(e) => write!(f, "{e}"),
            ReplayError::UnknownFlag(name) => {
                write!(f, "--flag {name}: the candidate config has no such flag")
            }
        }
    }
}

impl std::error::Error for ReplayError {}

/// What one config decided of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `proxied`, a refusal label, or `unrecorded`.
    pub label: &'static str,
    /// The refusing rule or flag.
    pub rule: Option<Arc<str>>,
    /// The key whose bucket, ban or cap refused; the address for other refusals.
    pub key: Option<LimitKey>,
}

/// The label of a request whose decision needs what the recording did not keep.
pub const UNRECORDED: &str = "unrecorded";

/// Rule names, each allocated once (a replay refuses millions of requests by
/// a handful of rules).
#[derive(Debug, Default)]
pub struct Names(Vec<Arc<str>>);

impl Names {
    /// The shared copy of `name`.
    pub fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.iter().find(|n| n.as_ref() == name) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(name);
        self.0.push(n.clone());
        n
    }
}

/// In-flight slots a replayed request holds until its recorded end.
struct Held {
    end_ms: u64,
    _permits: Vec<rampart_policy::limits::ConcurrencyPermit>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.end_ms == other.end_ms
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on the end time.
        other.end_ms.cmp(&self.end_ms)
    }
}

/// One config's engine and its virtual clock.
pub struct Side {
    config: Config,
    policy: Policy<FakeRelativeClock>,
    clock: FakeRelativeClock,
    /// The virtual time the clock stands at, in record milliseconds.
    now_ms: Option<u64>,
    /// Fleet-scoped limits, as one bucket each.
    fleet: Vec<Option<RateRule<FakeRelativeClock>>>,
    flag_names: Vec<String>,
    forced: Vec<Option<FlagMode>>,
    modes: Vec<FlagMode>,
    held: BinaryHeap<Held>,
    /// Session cookie and header names of the config (a request carrying one
    /// looks legitimate).
    session_cookies: Vec<String>,
    session_headers: Vec<String>,
    /// The config's escalations, driven by the replayed verdicts.
    escalations: Escalations,
}

/// A config's escalations in a replay: the signals are counted from the
/// replayed verdicts (and the recorded status of proxied requests), sampled
/// once a virtual second over the proxy's window, and each transition turns
/// the escalation's flag on or off for the requests after it.
#[derive(Debug, Default)]
struct Escalations {
    machines: Vec<Escalation>,
    /// The mode each flag has from an escalation, by flag index.
    modes: Vec<Option<FlagMode>>,
    counters: SignalCounters,
    samples: VecDeque<(u64, SignalCounters)>,
    start_ms: u64,
    next_tick_ms: Option<u64>,
    transitions: Vec<EscalationChange>,
}

/// One escalation transition in a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct EscalationChange {
    /// Virtual time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The escalation's name.
    pub escalation: String,
    /// Its flag.
    pub flag: String,
    /// `enter` or `leave`.
    pub change: &'static str,
    /// The signal's value then.
    pub value: f64,
}

impl Escalations {
    fn new(config: &Config) -> Self {
        Self {
            machines: config
                .escalations
                .iter()
                .map(|e| Escalation::new(e.clone()))
                .collect(),
            modes: vec![None; config.lockdown.flags.len()],
            ..Self::default()
        }
    }

    /// Runs every tick up to `t`.
    fn advance(&mut self, config: &Config, t: u64) {
        if self.machines.is_empty() {
            return;
        }
        let next = *self.next_tick_ms.get_or_insert_with(|| {
            self.start_ms = t;
            t + TICK_MS
        });
        let mut tick = next;
        while tick <= t {
            self.tick(config, tick);
            tick += TICK_MS;
        }
        self.next_tick_ms = Some(tick);
    }

    fn tick(&mut self, config: &Config, now: u64) {
        self.samples.push_back((now, self.counters.clone()));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.saturating_sub(*t) >= WINDOW_MS)
        {
            self.samples.pop_front();
        }
        let (Some((t0, oldest)), Some((_, newest))) = (self.samples.front(), self.samples.back())
        else {
            return;
        };
        let secs = now.saturating_sub(*t0) as f64 / 1000.0;
        let clock = Duration::from_millis(now.saturating_sub(self.start_ms));
        for e in &mut self.machines {
            let value = (secs > 0.0)
                .then(|| signal_value(&e.config, config, oldest, newest, secs))
                .flatten();
            let Some(transition) = e.observe(value, clock) else {
                continue;
            };
            let flag = e.config.flag;
            let mode = match transition {
                Transition::Enter if e.config.preview => Some(FlagMode::Preview),
                Transition::Enter => Some(FlagMode::Enforce),
                Transition::Leave => None,
            };
            if let Some(slot) = self.modes.get_mut(flag) {
                *slot = mode;
            }
            self.transitions.push(EscalationChange {
                at_ms: now,
                escalation: e.config.name.clone(),
                flag: config
                    .lockdown
                    .flags
                    .get(flag)
                    .map(|f| f.name.clone())
                    .unwrap_or_default(),
                change: match transition {
                    Transition::Enter => "enter",
                    Transition::Leave => "leave",
                },
                value: value.unwrap_or_default(),
            });
        }
    }

    /// Counts one replayed request into the signals.
    fn count(&mut self, route: &str, outcome: &Outcome, record: &Record<'_>, weight: u64) {
        if self.machines.is_empty() {
            return;
        }
        let refused = outcome.label != PROXIED && outcome.label != UNRECORDED;
        let proxied = outcome.label == PROXIED;
        let five = proxied && record.v == PROXIED && record.s >= 500;
        if !self.counters.routes.contains_key(route) {
            self.counters.routes.insert(route.to_string(), [0; 4]);
        }
        if let Some(c) = self.counters.routes.get_mut(route) {
            c[0] += weight;
            c[1] += if refused { weight } else { 0 };
            c[2] += if proxied { weight } else { 0 };
            c[3] += if five { weight } else { 0 };
        }
        if let (true, Some(rule)) = (refused, &outcome.rule) {
            *self
                .counters
                .refused_by
                .entry((route.to_string(), rule.to_string()))
                .or_default() += weight;
        }
    }
}

/// The escalator's tick and signal window (`rampart_proxy::escalator`).
const TICK_MS: u64 = 1_000;
const WINDOW_MS: u64 = 5_000;

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("now_ms", &self.now_ms)
            .finish()
    }
}

impl Side {
    /// The engine of `config`, flags forced as `options` says.
    pub fn new(config: Config, options: &Options) -> Result<Self, ReplayError> {
        let clock = FakeRelativeClock::default();
        let policy = Policy::new(&config, clock.clone(), None);
        let fleet = config
            .limits
            .iter()
            .map(|l| {
                matches!(l.scope, LimitScope::Fleet { .. })
                    .then(|| RateRule::new(l.clone(), clock.clone()))
            })
            .collect();
        let flag_names: Vec<String> = config
            .lockdown
            .flags
            .iter()
            .map(|f| f.name.clone())
            .collect();
        let mut forced = vec![None; config.lockdown.flags.len()];
        for (name, mode) in &options.flags {
            let i = flag_names
                .iter()
                .position(|f| f == name)
                .ok_or_else(|| ReplayError::UnknownFlag(name.clone()))?;
            forced[i] = Some(*mode);
        }
        let sessions = config
            .lockdown
            .flags
            .iter()
            .filter_map(|f| f.require_session.as_ref());
        let session_cookies = sessions.clone().filter_map(|s| s.cookie.clone()).collect();
        let session_headers = sessions.filter_map(|s| s.header.clone()).collect();
        Ok(Self {
            modes: vec![FlagMode::Off; config.lockdown.flags.len()],
            policy,
            clock,
            now_ms: None,
            fleet,
            flag_names,
            forced,
            held: BinaryHeap::new(),
            session_cookies,
            session_headers,
            escalations: Escalations::new(&config),
            config,
        })
    }

    /// The config this side replays.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Moves the virtual clock to `t` (never back) and releases the in-flight
    /// slots of requests that had ended by then.
    fn advance(&mut self, t: u64) {
        self.escalations.advance(&self.config, t);
        match self.now_ms {
            None => self.now_ms = Some(t),
            Some(now) if t > now => {
                self.clock.advance(Duration::from_millis(t - now));
                self.now_ms = Some(t);
            }
            Some(_) => {}
        }
        let now = self.now_ms.unwrap_or(t);
        while self.held.peek().is_some_and(|h| h.end_ms <= now) {
            self.held.pop();
        }
    }

    /// Decides one record.
    pub fn decide(
        &mut self,
        record: &Record<'_>,
        headers: &HeaderMap,
        names: &mut Names,
    ) -> Outcome {
        self.advance(record.t);
        for mode in &mut self.modes {
            *mode = FlagMode::Off;
        }
        for (name, mode) in &record.fl {
            if record.auto.contains(name) {
                // An escalation's doing: this replay's escalations decide.
                continue;
            }
            if let Some(i) = self.flag_names.iter().position(|f| f == name) {
                self.modes[i] = match mode.as_ref() {
                    "enforce" => FlagMode::Enforce,
                    "preview" => FlagMode::Preview,
                    _ => FlagMode::Off,
                };
            }
        }
        for (mode, auto) in self.modes.iter_mut().zip(&self.escalations.modes) {
            if let (FlagMode::Off, Some(a)) = (*mode, auto) {
                *mode = *a;
            }
        }
        for (mode, forced) in self.modes.iter_mut().zip(&self.forced) {
            if let Some(f) = forced {
                *mode = *f;
            }
        }
        let geo = GeoInfo {
            country: record.cc.as_deref().and_then(CountryCode::parse),
            asn: record.asn,
        };
        let facts = RequestFacts {
            ip: record.ip,
            geo,
            host: record.host.as_deref(),
            path: &record.p,
            query: None,
            method: &record.m,
            headers,
            flags: &self.modes,
            ja4: record
                .ja4
                .as_deref()
                .and_then(|t| rampart_policy::Ja4::parse(t).ok()),
            identity: rampart_policy::IdentitySource::Recorded(record.jwt.as_ref()),
        };
        let mut unrecorded = false;
        let mut evaluation = self.policy.evaluate(Charging::Charge);
        let verdict: Verdict = loop {
            match evaluation.next(&facts) {
                Step::Done(verdict) => break verdict,
                Step::NeedBody { .. } => match &record.b {
                    Some(read) => evaluation.give_body(read.to_body_read()),
                    None => {
                        unrecorded = true;
                        evaluation.give_body(rampart_policy::BodyRead::Recorded(
                            rampart_policy::body::RecordedBody::default(),
                        ));
                    }
                },
                Step::NeedFleet(checks) => {
                    let answers = checks
                        .iter()
                        .map(|c| {
                            let Some(Some(rule)) = self.fleet.get(c.rule) else {
                                return FleetAnswer::Unavailable;
                            };
                            let cost = NonZeroU32::new(c.cost.max(1)).unwrap_or(NonZeroU32::MIN);
                            match rule.check_cost(c.key, cost) {
                                RuleOutcome::Allowed => FleetAnswer::Allowed,
                                RuleOutcome::Limited { retry_after } => {
                                    FleetAnswer::Limited { retry_after }
                                }
                            }
                        })
                        .collect();
                    evaluation.give_fleet(answers);
                }
            }
        };
        drop(evaluation);
        if !verdict.permits.is_empty() {
            // Held until the request's recorded end (a late record's slots are
            // held from the clock's time, not from its own arrival).
            self.held.push(Held {
                end_ms: record.t + u64::from(record.ms),
                _permits: verdict.permits,
            });
        }
        let route = verdict
            .route
            .and_then(|r| self.config.routes.get(r))
            .map_or(UNMATCHED_ROUTE, |r| r.name.as_str());
        let outcome = match verdict.refusal {
            None => Outcome {
                label: PROXIED,
                rule: None,
                key: None,
            },
            Some(Rejection::BodyRefused { ref detail, .. })
                if unrecorded || detail.ends_with(NOT_RECORDED) =>
            {
                Outcome {
                    label: UNRECORDED,
                    rule: None,
                    key: None,
                }
            }
            Some(refusal) => Outcome {
                label: refusal.label(),
                rule: refusal.rule().map(|r| names.get(r)),
                key: Some(verdict.key.unwrap_or(LimitKey::Ip(record.ip))),
            },
        };
        let route = route.to_string();
        self.escalations
            .count(&route, &outcome, record, u64::from(record.w.max(1)));
        outcome
    }

    /// The escalation transitions so far.
    pub fn transitions(&self) -> &[EscalationChange] {
        &self.escalations.transitions
    }

    /// Whether a request looks legitimate: it carries `Authorization` or a
    /// session the config names, or an allow rule matched it live.
    fn looks_legitimate(&self, record: &Record<'_>, headers: &HeaderMap) -> bool {
        record.allow.is_some()
            || headers.contains_key(http::header::AUTHORIZATION)
            || self
                .session_headers
                .iter()
                .any(|h| headers.contains_key(h.as_str()))
            || (!self.session_cookies.is_empty()
                && headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .filter_map(|pair| pair.split_once('='))
                    .any(|(name, _)| self.session_cookies.iter().any(|c| c == name.trim())))
    }
}

/// Rebuilds the kept headers of `record` into `headers` (cleared first);
/// a header that is not valid HTTP is left out.
fn fill_headers(record: &Record<'_>, headers: &mut HeaderMap) {
    headers.clear();
    for (name, value) in &record.h {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
}

/// A record line waiting in the reorder window.
#[derive(Debug, PartialEq, Eq)]
struct Pending {
    t: u64,
    seq: u64,
    line: String,
}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // A min-heap on (time, arrival order).
        (other.t, other.seq).cmp(&(self.t, self.seq))
    }
}

/// A replay in progress: candidate, optional baseline, and the report.
#[derive(Debug)]
pub struct Replay {
    candidate: Side,
    baseline: Option<Side>,
    report: Report,
    headers: HeaderMap,
    pending: BinaryHeap<Pending>,
    names: Names,
    window_ms: u64,
    newest_ms: u64,
    seq: u64,
}

impl Replay {
    /// A replay of `candidate` against `baseline` (the recorded verdicts when
    /// `None`).
    pub fn new(
        candidate: Config,
        baseline: Option<Config>,
        options: &Options,
    ) -> Result<Self, ReplayError> {
        let candidate = Side::new(candidate, options)?;
        let baseline = match baseline {
            Some(b) => Some(Side::new(
                b,
                &Options {
                    flags: Vec::new(),
                    ..options.clone()
                },
            )?),
            None => None,
        };
        Ok(Self {
            report: Report::new(options.top.max(1), baseline.is_some()),
            candidate,
            baseline,
            headers: HeaderMap::new(),
            pending: BinaryHeap::new(),
            names: Names::default(),
            window_ms: u64::try_from(options.reorder.as_millis()).unwrap_or(u64::MAX),
            newest_ms: 0,
            seq: 0,
        })
    }

    /// Replays one record now (callers keep time order; see [`Replay::line`]).
    pub fn record(&mut self, record: &Record<'_>) {
        if self.candidate.now_ms.is_some_and(|now| record.t < now) {
            self.report.late(u64::from(record.w.max(1)));
        }
        fill_headers(record, &mut self.headers);
        let weight = u64::from(record.w.max(1));
        let candidate = self
            .candidate
            .decide(record, &self.headers, &mut self.names);
        let legit = self.candidate.looks_legitimate(record, &self.headers);
        let baseline = match &mut self.baseline {
            Some(side) => side.decide(record, &self.headers, &mut self.names),
            None => Outcome {
                label: recorded_label(&record.v),
                rule: record.rule.as_deref().map(|r| self.names.get(r)),
                key: None,
            },
        };
        let recorded_same =
            record.v == candidate.label && record.rule.as_deref() == candidate.rule.as_deref();
        self.report
            .add(record, weight, legit, &candidate, &baseline, recorded_same);
    }

    /// Replays every line of `reader`; a line that is not a record is counted
    /// and skipped. Calls `progress` with the bytes read every 64 Ki records.
    pub fn read(
        &mut self,
        reader: impl BufRead,
        mut progress: impl FnMut(u64),
    ) -> std::io::Result<()> {
        let mut bytes = 0u64;
        let mut n = 0u64;
        for line in reader.lines() {
            let line = line?;
            bytes += line.len() as u64 + 1;
            self.take_line(line);
            n += 1;
            if n.is_multiple_of(65_536) {
                progress(bytes);
            }
        }
        progress(bytes);
        Ok(())
    }

    /// Takes one line of a record file. Lines wait in the reorder window and
    /// are replayed in arrival-time order once the newest line is `reorder`
    /// past them.
    pub fn line(&mut self, line: &str) {
        self.take_line(line.to_string());
    }

    /// [`Replay::line`] of an owned line (no copy).
    pub fn take_line(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        let t = match line_time(&line) {
            Some(t) => t,
            None => match serde_json::from_str::<Record<'_>>(&line) {
                Ok(record) => record.t,
                Err(_) => {
                    self.report.bad_line();
                    return;
                }
            },
        };
        self.seq += 1;
        self.newest_ms = self.newest_ms.max(t);
        self.pending.push(Pending {
            t,
            seq: self.seq,
            line,
        });
        while self
            .pending
            .peek()
            .is_some_and(|p| p.t.saturating_add(self.window_ms) <= self.newest_ms)
        {
            if let Some(p) = self.pending.pop() {
                self.replay_line(&p.line);
            }
        }
    }

    fn replay_line(&mut self, line: &str) {
        match serde_json::from_str::<Record<'_>>(line) {
            Ok(record) => self.record(&record),
            Err(_) => self.report.bad_line(),
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Replays what waits in the reorder window and returns the report.
    pub fn finish(mut self) -> Report {
        while let Some(p) = self.pending.pop() {
            self.replay_line(&p.line);
        }
        self.report.escalations = self.candidate.transitions().to_vec();
        if let Some(b) = &self.baseline {
            self.report.baseline_escalations = b.transitions().to_vec();
        }
        self.report
    }
}

/// The static label matching a recorded verdict text (`other` when unknown).
fn recorded_label(v: &str) -> &'static str {
    rampart_policy::rejection::LABELS
        .iter()
        .copied()
        .chain([PROXIED])
        .find(|l| *l == v)
        .unwrap_or("other")
}

/// Arrival time of a record line without parsing all of it: records are
/// written with `t` first.
pub fn line_time(line: &str) -> Option<u64> {
    let rest = line.trim_start().strip_prefix("{\"t\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Opens a record file, plain or gzip (`.gz`).
fn open_record(path: &std::path::Path) -> std::io::Result<Box<dyn BufRead>> {
    let file = std::fs::File::open(path)?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)),
        ))
    } else {
        Box::new(std::io::BufReader::with_capacity(1 << 20, file))
    })
}

/// Replays several record files merged in time order (the records of several
/// nodes, or rotated files). `progress` gets the bytes read so far.
pub fn replay_files(
    replay: &mut Replay,
    paths: &[std::path::PathBuf],
    mut progress: impl FnMut(u64),
) -> Result<(), ReplayError> {
    type Lines = std::io::Lines<Box<dyn BufRead>>;
    let io =
        |p: &std::path::Path, e: std::io::Error| ReplayError::Io(format!("{}: {e}", p.display()));
    let mut sources: Vec<(Lines, Option<String>)> = Vec::new();
    for path in paths {
        sources.push((open_record(path).map_err(|e| io(path, e))?.lines(), None));
    }
    // Each file's next line, in a min-heap on (time, file).
    let mut heads = BinaryHeap::new();
    let refill = |i: usize,
                  sources: &mut Vec<(Lines, Option<String>)>,
                  heads: &mut BinaryHeap<std::cmp::Reverse<(u64, usize)>>|
     -> Result<(), ReplayError> {
        let Some((lines, slot)) = sources.get_mut(i) else {
            return Ok(());
        };
        if let Some(line) = lines.next() {
            let line = match line {
                Ok(line) => line,
                // A gzip file still being written ends without its trailer:
                // everything flushed so far has been read.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(io(&paths[i], e)),
            };
            heads.push(std::cmp::Reverse((line_time(&line).unwrap_or(0), i)));
            *slot = Some(line);
        }
        Ok(())
    };
    for i in 0..sources.len() {
        refill(i, &mut sources, &mut heads)?;
    }
    let mut bytes = 0u64;
    let mut n = 0u64;
    while let Some(std::cmp::Reverse((_, i))) = heads.pop() {
        if let Some(line) = sources.get_mut(i).and_then(|(_, slot)| slot.take()) {
            bytes += line.len() as u64 + 1;
            replay.take_line(line);
        }
        refill(i, &mut sources, &mut heads)?;
        n += 1;
        if n.is_multiple_of(65_536) {
            progress(bytes);
        }
    }
    progress(bytes);
    Ok(())
}
