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

/// A login flood of `rps` requests a second for `secs` seconds, each from its
/// own address; the recording had `login_closed` on from `auto_from` seconds
/// on, turned on by an escalation.
fn flood(rps: u64, secs: u64, auto_from: u64) -> String {
    let mut out = String::new();
    let t0 = 1_764_496_800_000u64;
    for i in 0..rps * secs {
        let t = t0 + i * 1000 / rps;
        let auto = if (t - t0) / 1000 >= auto_from {
            r#","fl":[["login_closed","enforce"]],"auto":["login_closed"]"#
        } else {
            ""
        };
        out.push_str(&format!(
            r#"{{"t":{t},"ip":"10.1.{}.{}","m":"POST","p":"/api/auth/login"{auto},"v":"proxied","route":"login"}}"#,
            i / 250,
            i % 250 + 1
        ));
        out.push('\n');
    }
    out
}

fn escalating(with_escalation: bool) -> rampart_config::Config {
    let text = std::fs::read_to_string(data("current.toml")).unwrap();
    let mut text = text.replace(
        "[[flags]]\nname = \"registration_cn_mobile_only\"",
        "[[flags]]\nname = \"login_closed\"\nblock = [{ routes = [\"login\"], status = 503, message = \"closed\" }]\n\n[[flags]]\nname = \"registration_cn_mobile_only\"",
    );
    text = text.replace(
        "rate = \"3/m\"\nburst = 3",
        "rate = \"100000/s\"\nburst = 100000",
    );
    if with_escalation {
        text.push_str(
            "\n[[escalations]]\nname = \"login-flood\"\nflag = \"login_closed\"\nsignal = \"request_rate\"\nroute = \"login\"\nenter_above = 50\nenter_for = \"3s\"\nleave_below = 5\nleave_for = \"1m\"\n",
        );
    }
    rampart_config::parse(&text, &data("current.toml")).unwrap()
}

#[test]
fn escalations_advance_on_the_recorded_timestamps() {
    let record = flood(100, 20, 1_000);
    let run = |config| {
        let mut replay = Replay::new(config, None, &options()).unwrap();
        for line in record.lines() {
            replay.line(line);
        }
        replay.finish()
    };
    let report = run(escalating(true));
    let [enter] = report.escalations.as_slice() else {
        panic!("one transition expected: {}", report.text());
    };
    assert_eq!(
        (enter.change, enter.flag.as_str()),
        ("enter", "login_closed")
    );
    // 100 requests a second: above 50 from the first full window, held for
    // 3 s, on ticks of one virtual second.
    let after = (enter.at_ms - 1_764_496_800_000) / 1000;
    assert!(
        (3..=6).contains(&after),
        "entered at +{after} s: {}",
        report.text()
    );
    let closed = report
        .candidate
        .verdicts
        .get("locked_down")
        .copied()
        .unwrap_or(0);
    assert_eq!(closed, 100 * (20 - after), "{}", report.text());
    assert!(report
        .text()
        .contains("escalation login-flood would enter login_closed"));
    // The same twice: the virtual clock, not the wall clock, drives it.
    assert_eq!(run(escalating(true)).escalations, report.escalations);

    // A flag an escalation turned on in the recording is not carried into a
    // candidate without that escalation.
    let record = flood(100, 5, 2);
    let mut replay = Replay::new(escalating(false), None, &options()).unwrap();
    for line in record.lines() {
        replay.line(line);
    }
    let report = replay.finish();
    assert!(report.escalations.is_empty());
    assert_eq!(
        report.candidate.verdicts.get("locked_down"),
        None,
        "{}",
        report.text()
    );
}

#[test]
fn damaged_lines_are_counted_never_a_panic() {
    // 20 000 mutations of real record lines: bytes flipped, cut, duplicated
    // or fields swapped. Every line is either replayed or counted as bad.
    let text = std::fs::read_to_string(data("record.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut replay = Replay::new(config("current.toml"), None, &options()).unwrap();
    let mut fed = 0u64;
    for _ in 0..20_000 {
        let mut bytes = lines[(next() % lines.len() as u64) as usize]
            .as_bytes()
            .to_vec();
        for _ in 0..=(next() % 4) {
            if bytes.is_empty() {
                break;
            }
            let i = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                0 => bytes[i] = (next() % 256) as u8,
                1 => bytes.truncate(i),
                2 => bytes.insert(i, b"{}[]\",:0-9e\\u"[(next() % 13) as usize]),
                _ => {
                    let copy = bytes[i..].to_vec();
                    bytes.extend_from_slice(&copy);
                }
            }
        }
        let line = String::from_utf8_lossy(&bytes).into_owned();
        if line.trim().is_empty() {
            continue;
        }
        replay.line(&line);
        fed += 1;
    }
    let report = replay.finish();
    assert_eq!(report.records + report.bad_lines, fed);
    assert!(
        report.bad_lines > 1_000 && report.records > 1_000,
        "{}",
        report.text()
    );
}
