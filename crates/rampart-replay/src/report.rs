//! What a replay found: verdict counts, per-rule refusals with their keys and
//! how many look legitimate, and the difference against the baseline.

use crate::Outcome;
use rampart_policy::engine::PROXIED;
use rampart_policy::limits::LimitKey;
use rampart_policy::record::Record;
use serde_json::{json, Value};
use std::collections::BTreeMap;

type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
use std::fmt::Write as _;
use std::sync::Arc;

/// Refusals by one rule with one verdict.
#[derive(Debug, Default, Clone)]
struct RuleStats {
    refused: u64,
    legit: u64,
    keys: HashMap<LimitKey, u64>,
}

/// One config's (or the recording's) verdicts.
#[derive(Debug, Default, Clone)]
pub struct SideReport {
    /// Requests per verdict label (scaled by record weights).
    pub verdicts: BTreeMap<&'static str, u64>,
    rules: HashMap<(Option<Arc<str>>, &'static str), RuleStats>,
}

impl SideReport {
    fn add(&mut self, outcome: &Outcome, weight: u64, legit: bool) {
        *self.verdicts.entry(outcome.label).or_default() += weight;
        if outcome.label == PROXIED || outcome.label == crate::UNRECORDED {
            return;
        }
        let stats = self
            .rules
            .entry((outcome.rule.clone(), outcome.label))
            .or_default();
        stats.refused += weight;
        if legit {
            stats.legit += weight;
        }
        if let Some(key) = outcome.key {
            *stats.keys.entry(key).or_default() += weight;
        }
    }

    /// Requests refused, by `(rule, verdict)`.
    pub fn refused_by_rule(&self) -> BTreeMap<(String, &'static str), u64> {
        self.rules
            .iter()
            .map(|((rule, label), s)| ((rule_text(rule), *label), s.refused))
            .collect()
    }
}

fn rule_text(rule: &Option<Arc<str>>) -> String {
    rule.as_deref().unwrap_or("-").to_string()
}

/// One row of the per-rule table.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    /// Rule or flag name.
    pub rule: String,
    /// Verdict label.
    pub verdict: &'static str,
    /// Requests the candidate refuses.
    pub refused: u64,
    /// Distinct keys among them.
    pub keys: usize,
    /// Share of them that look legitimate, 0 to 1.
    pub legit_share: f64,
    /// Requests the baseline refuses by this rule.
    pub baseline: u64,
    /// The most refused keys, with counts.
    pub top_keys: Vec<(String, u64)>,
}

/// The whole report.
#[derive(Debug, Clone)]
pub struct Report {
    top: usize,
    /// Whether the baseline is a config (else: the recorded verdicts).
    pub baseline_is_config: bool,
    /// Records read.
    pub records: u64,
    /// Requests they stand for (weights summed).
    pub requests: u64,
    /// Lines that were not records.
    pub bad_lines: u64,
    /// Requests whose record came later than the reorder window allowed:
    /// replayed at the clock's time, not their own.
    pub late: u64,
    /// First and last arrival, ms since the Unix epoch.
    pub span_ms: Option<(u64, u64)>,
    /// The candidate's verdicts.
    pub candidate: SideReport,
    /// The baseline's (or the recording's) verdicts.
    pub baseline: SideReport,
    /// Requests the candidate refuses and the baseline let through.
    pub newly_refused: u64,
    /// Of them, how many look legitimate.
    pub newly_refused_legit: u64,
    /// Requests the baseline refused and the candidate lets through.
    pub no_longer_refused: u64,
    /// Requests refused by both, by another rule or verdict.
    pub refused_otherwise: u64,
    /// Records whose candidate verdict (label and rule) differs from the
    /// recorded one.
    pub differs_from_recorded: u64,
    /// The candidate's escalation transitions.
    pub escalations: Vec<crate::EscalationChange>,
    /// The baseline config's.
    pub baseline_escalations: Vec<crate::EscalationChange>,
}

impl Report {
    pub(crate) fn new(top: usize, baseline_is_config: bool) -> Self {
        Self {
            top,
            baseline_is_config,
            records: 0,
            requests: 0,
            bad_lines: 0,
            late: 0,
            span_ms: None,
            candidate: SideReport::default(),
            baseline: SideReport::default(),
            newly_refused: 0,
            newly_refused_legit: 0,
            no_longer_refused: 0,
            refused_otherwise: 0,
            differs_from_recorded: 0,
            escalations: Vec::new(),
            baseline_escalations: Vec::new(),
        }
    }

    pub(crate) fn late(&mut self, weight: u64) {
        self.late += weight;
    }

    pub(crate) fn bad_line(&mut self) {
        self.bad_lines += 1;
    }

    pub(crate) fn add(
        &mut self,
        record: &Record<'_>,
        weight: u64,
        legit: bool,
        candidate: &Outcome,
        baseline: &Outcome,
        recorded_same: bool,
    ) {
        self.records += 1;
        self.requests += weight;
        self.span_ms = Some(match self.span_ms {
            None => (record.t, record.t),
            Some((a, b)) => (a.min(record.t), b.max(record.t)),
        });
        self.candidate.add(candidate, weight, legit);
        self.baseline.add(baseline, weight, legit);
        if !recorded_same {
            self.differs_from_recorded += weight;
        }
        let refused = |o: &Outcome| o.label != PROXIED && o.label != crate::UNRECORDED;
        match (refused(candidate), refused(baseline)) {
            (true, false) => {
                self.newly_refused += weight;
                if legit {
                    self.newly_refused_legit += weight;
                }
            }
            (false, true) => self.no_longer_refused += weight,
            (true, true)
                if candidate.label != baseline.label || candidate.rule != baseline.rule =>
            {
                self.refused_otherwise += weight;
            }
            _ => {}
        }
    }

    /// The per-rule table: every rule either side refused by, most refusals first.
    pub fn rows(&self) -> Vec<RuleRow> {
        let mut names: Vec<&(Option<Arc<str>>, &'static str)> = self
            .candidate
            .rules
            .keys()
            .chain(self.baseline.rules.keys())
            .collect();
        names.sort();
        names.dedup();
        let mut rows: Vec<RuleRow> = names
            .into_iter()
            .map(|name| {
                let stats = self.candidate.rules.get(name).cloned().unwrap_or_default();
                let mut top: Vec<(String, u64)> =
                    stats.keys.iter().map(|(k, n)| (k.text(), *n)).collect();
                top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                top.truncate(self.top);
                RuleRow {
                    rule: rule_text(&name.0),
                    verdict: name.1,
                    refused: stats.refused,
                    keys: stats.keys.len(),
                    legit_share: if stats.refused == 0 {
                        0.0
                    } else {
                        stats.legit as f64 / stats.refused as f64
                    },
                    baseline: self.baseline.rules.get(name).map_or(0, |s| s.refused),
                    top_keys: top,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            b.refused
                .cmp(&a.refused)
                .then_with(|| b.baseline.cmp(&a.baseline))
                .then_with(|| a.rule.cmp(&b.rule))
                .then_with(|| a.verdict.cmp(b.verdict))
        });
        rows
    }

    fn baseline_name(&self) -> &'static str {
        if self.baseline_is_config {
            "baseline"
        } else {
            "recorded"
        }
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let span = self
            .span_ms
            .map_or(0.0, |(a, b)| (b.saturating_sub(a)) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "replayed {} records standing for {} requests over {span:.1} s{}",
            self.records,
            self.requests,
            if self.bad_lines > 0 {
                format!(
                    " ({} lines were not records and were skipped)",
                    self.bad_lines
                )
            } else {
                String::new()
            }
        );
        let base = self.baseline_name();
        let _ = writeln!(
            out,
            "\nverdict                    candidate  {base:>9}     change"
        );
        let mut labels: Vec<&'static str> = self
            .candidate
            .verdicts
            .keys()
            .chain(self.baseline.verdicts.keys())
            .copied()
            .collect();
        labels.sort();
        labels.dedup();
        for label in labels {
            let c = self.candidate.verdicts.get(label).copied().unwrap_or(0);
            let b = self.baseline.verdicts.get(label).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{label:<26} {c:>9}  {b:>9}  {:>+9}",
                c as i64 - b as i64
            );
        }
        let rows = self.rows();
        if !rows.is_empty() {
            let _ = writeln!(
                out,
                "\nrule                           verdict               refused   keys  legit  {base:>9}     change  top keys"
            );
            for r in &rows {
                let top: Vec<String> = r
                    .top_keys
                    .iter()
                    .map(|(k, n)| format!("{k} ({n})"))
                    .collect();
                let _ = writeln!(
                    out,
                    "{:<30} {:<20} {:>8} {:>6} {:>5.1}%  {:>9}  {:>+9}  {}",
                    r.rule,
                    r.verdict,
                    r.refused,
                    r.keys,
                    r.legit_share * 100.0,
                    r.baseline,
                    r.refused as i64 - r.baseline as i64,
                    if top.is_empty() {
                        "-".to_string()
                    } else {
                        top.join(", ")
                    }
                );
            }
        }
        let _ = writeln!(
            out,
            "\nagainst {base}: {} newly refused ({} look legitimate), {} no longer refused, {} refused by another rule",
            self.newly_refused, self.newly_refused_legit, self.no_longer_refused, self.refused_otherwise
        );
        let _ = writeln!(
            out,
            "{} requests decided otherwise than recorded",
            self.differs_from_recorded
        );
        let start = self.span_ms.map_or(0, |s| s.0);
        for (side, changes) in [
            ("candidate", &self.escalations),
            (base, &self.baseline_escalations),
        ] {
            for c in changes {
                let _ = writeln!(
                    out,
                    "{side}: escalation {} would {} {} at +{:.0} s (signal {:.3})",
                    c.escalation,
                    c.change,
                    c.flag,
                    c.at_ms.saturating_sub(start) as f64 / 1000.0,
                    c.value
                );
            }
        }
        if self.late > 0 {
            let _ = writeln!(
                out,
                "{} requests came later than the reorder window and were replayed at the clock's time (raise --reorder)",
                self.late
            );
        }
        if let Some(n) = self.candidate.verdicts.get(crate::UNRECORDED) {
            let _ = writeln!(
                out,
                "{n} requests need body fields the recording did not keep (counted as unrecorded)"
            );
        }
        out
    }

    /// The report for machines.
    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows()
            .into_iter()
            .map(|r| {
                json!({
                    "rule": r.rule,
                    "verdict": r.verdict,
                    "refused": r.refused,
                    "keys": r.keys,
                    "legit_share": (r.legit_share * 10_000.0).round() / 10_000.0,
                    "baseline": r.baseline,
                    "change": r.refused as i64 - r.baseline as i64,
                    "top_keys": r.top_keys.iter().map(|(k, n)| json!({"key": k, "requests": n})).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "records": self.records,
            "requests": self.requests,
            "bad_lines": self.bad_lines,
            "late": self.late,
            "first_ms": self.span_ms.map(|s| s.0),
            "last_ms": self.span_ms.map(|s| s.1),
            "baseline": self.baseline_name(),
            "verdicts": {
                "candidate": self.candidate.verdicts,
                "baseline": self.baseline.verdicts,
            },
            "rules": rows,
            "newly_refused": self.newly_refused,
            "newly_refused_legit": self.newly_refused_legit,
            "no_longer_refused": self.no_longer_refused,
            "refused_otherwise": self.refused_otherwise,
            "differs_from_recorded": self.differs_from_recorded,
            "escalations": {
                "candidate": escalation_json(&self.escalations),
                "baseline": escalation_json(&self.baseline_escalations),
            },
        })
    }
}

fn escalation_json(changes: &[crate::EscalationChange]) -> Value {
    changes
        .iter()
        .map(|c| {
            json!({
                "at_ms": c.at_ms,
                "escalation": c.escalation,
                "flag": c.flag,
                "change": c.change,
                "value": (c.value * 10_000.0).round() / 10_000.0,
            })
        })
        .collect()
}
