//! Replay speed: generates a record of a mixed attack (chat API calls keyed
//! by token, a sign-in flood, registrations under the phone flag, probes),
//! then replays it single-threaded under the shipped config and prints
//! records per second (median of the runs). `benches/README.md` "Replay".
//!
//! `cargo run --release -p rampart-benches --bin rampart-replay-speed -- [RECORDS] [RUNS]`

use rampart_policy::FlagMode;
use rampart_replay::{replay_files, Options, Replay};
use std::io::Write;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A small deterministic generator (xorshift), so every run replays the same record.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn write_record(path: &std::path::Path, n: u64) -> std::io::Result<u64> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = 1_764_496_800_000u64;
    let mut bytes = 0u64;
    for i in 0..n {
        // 10 000 requests a second.
        let t = t0 + i / 10;
        let kind = rng.below(100);
        let line = if kind < 55 {
            let ip = rng.below(50_000);
            let token = rng.below(5_000);
            format!(
                r##"{{"t":{t},"ip":"10.{}.{}.{}","cc":"US","asn":64500,"m":"POST","p":"/v1/chat/completions","h":[["authorization","#{token:016x}"],["content-type","application/json"]],"ms":1200,"s":200,"v":"proxied","route":"chat"}}"##,
                ip >> 16,
                (ip >> 8) & 255,
                ip & 255
            )
        } else if kind < 85 {
            let ip = rng.below(2_000);
            format!(
                r#"{{"t":{t},"ip":"203.0.{}.{}","cc":"BR","asn":64510,"m":"POST","p":"/api/auth/login","h":[["content-type","application/json"]],"ms":3,"s":429,"v":"rate_limited","rule":"login-ip","route":"login"}}"#,
                ip >> 8,
                ip & 255
            )
        } else if kind < 97 {
            let ip = rng.below(10_000);
            let phone = if rng.below(4) == 0 {
                format!("+1415555{:04}", rng.below(10_000))
            } else {
                format!("+86138{:08}", rng.below(100_000_000))
            };
            format!(
                r#"{{"t":{t},"ip":"198.51.{}.{}","cc":"CN","asn":4134,"m":"POST","p":"/api/auth/register","h":[["content-type","application/json"]],"fl":[["registration_cn_mobile_only","enforce"]],"b":{{"len":40,"fields":{{"/phone":"{phone}"}}}},"ms":5,"s":200,"v":"proxied","route":"register"}}"#,
                (ip >> 8) & 255,
                ip & 255
            )
        } else {
            format!(
                r#"{{"t":{t},"ip":"192.0.2.{}","m":"GET","p":"/wp-login.php","ms":0,"s":404,"v":"no_route"}}"#,
                rng.below(256)
            )
        };
        bytes += line.len() as u64 + 1;
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(bytes)
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`): the rate per
/// CPU second does not depend on what else the shared machine runs.
fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let config_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/rampart.toml");
    let config = match rampart_config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(64);
        }
    };
    let dir = std::env::temp_dir().join(format!("rampart-replay-speed-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        std::process::exit(1);
    }
    let path = dir.join("record.jsonl");
    let bytes = match write_record(&path, n) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
    };
    println!(
        "record: {n} requests, {:.1} MiB ({:.0} bytes each), replayed under conf/rampart.toml",
        bytes as f64 / f64::from(1 << 20),
        bytes as f64 / n as f64
    );
    let options = Options {
        top: 5,
        reorder: Duration::from_secs(
            std::env::var("REORDER_S")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
        ),
        flags: vec![("registration_cn_mobile_only".into(), FlagMode::Enforce)],
    };
    let mut rates = Vec::new();
    for run in 0..runs {
        let Ok(mut replay) = Replay::new(config.clone(), None, &options) else {
            eprintln!("replay setup failed");
            std::process::exit(1);
        };
        let started = Instant::now();
        let cpu_start = cpu_ns();
        if let Err(e) = replay_files(&mut replay, std::slice::from_ref(&path), |_| {}) {
            eprintln!("{e}");
            std::process::exit(1);
        }
        let report = replay.finish();
        let secs = started.elapsed().as_secs_f64();
        let cpu = match (cpu_start, cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => secs,
        };
        let rate = n as f64 / cpu;
        let proxied = report.candidate.verdicts.get("proxied").copied();
        println!(
            "run {}: {secs:.2} s wall, {cpu:.2} s on the CPU: {rate:.0} records per CPU second, {:.0} per wall second ({} refused by the candidate)",
            run + 1,
            n as f64 / secs,
            report.requests - proxied.unwrap_or(0)
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "median: {:.0} records per CPU second, one thread",
        rates[rates.len() / 2]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
