//! Golden tests of the replay report: a fixed record replayed under the
//! config it was "recorded" with, and under a tighter candidate against it.
//! `UPDATE_GOLDEN=1 cargo test -p rampart-replay --test golden` rewrites the
//! expected files after a deliberate change of the report.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rampart_replay::{Options, Replay};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn config(name: &str) -> rampart_config::Config {
    rampart_config::load(&data(name)).unwrap()
}

fn options() -> Options {
    Options {
        top: 3,
        reorder: Duration::from_secs(120),
        ..Options::default()
    }
}

fn replay(candidate: &str, baseline: Option<&str>, options: &Options) -> rampart_replay::Report {
    let mut replay = Replay::new(config(candidate), baseline.map(config), options).unwrap();
    rampart_replay::replay_files(&mut replay, &[data("record.jsonl")], |_| {}).unwrap();
    replay.finish()
}

fn golden(name: &str, actual: &str) {
    let path = data(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        actual,
        expected,
        "the report differs from {} (UPDATE_GOLDEN=1 rewrites it after a deliberate change)",
        path.display()
    );
}

#[test]
fn the_recording_config_reproduces_every_recorded_verdict() {
    let report = replay("current.toml", None, &options());
    assert_eq!(report.differs_from_recorded, 0, "{}", report.text());
    assert_eq!(report.candidate.verdicts, report.baseline.verdicts);
    assert_eq!(report.records, 23);
    // One record of the flood stands for ten requests.
    assert_eq!(report.requests, 32);
    assert_eq!(report.bad_lines, 1);
    golden("golden-current.txt", &report.text());
    golden("golden-current.json", &format!("{:#}\n", report.json()));
}

#[test]
fn a_tighter_candidate_refuses_a_superset_of_the_baseline() {
    let report = replay("candidate.toml", Some("current.toml"), &options());
    assert_eq!(report.no_longer_refused, 0, "{}", report.text());
    assert!(report.newly_refused > 0, "{}", report.text());
    golden("golden-candidate.txt", &report.text());
    golden("golden-candidate.json", &format!("{:#}\n", report.json()));
}

#[test]
fn a_replay_is_deterministic() {
    let a = replay("candidate.toml", Some("current.toml"), &options());
    let b = replay("candidate.toml", Some("current.toml"), &options());
    assert_eq!(a.text(), b.text());
}

#[test]
fn records_later_than_the_reorder_window_are_counted_and_replayed_at_the_clock() {
    let report = replay(
        "current.toml",
        None,
        &Options {
            reorder: Duration::ZERO,
            ..options()
        },
    );
    // The file holds the sign-in a minute later before the registrations.
    assert!(report.late > 0, "{}", report.text());
    assert!(report.text().contains("raise --reorder"));
}

#[test]
fn a_forced_flag_changes_the_verdicts_and_an_unknown_one_is_an_error() {
    let forced = Options {
        flags: vec![(
            "existing_sessions_only".into(),
            rampart_policy::FlagMode::Enforce,
        )],
        ..options()
    };
    let report = replay("current.toml", None, &forced);
    // The one stream without a session is refused; those with one are not.
    assert_eq!(
        report.candidate.verdicts.get("session_required").copied(),
        Some(1),
        "{}",
        report.text()
    );
    let unknown = Options {
        flags: vec![("no_such_flag".into(), rampart_policy::FlagMode::Enforce)],
        ..options()
    };
    let err = Replay::new(config("current.toml"), None, &unknown).unwrap_err();
    assert!(err.to_string().contains("no_such_flag"));
}
