//! `rampart replay`: the command line of `rampart_replay`.

use rampart_policy::FlagMode;
use rampart_replay::{replay_files, Options, Replay};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `rampart replay` arguments.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The candidate config (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// The config to compare with; without it, the verdicts in the record.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Force a flag of the candidate for the whole replay: NAME=enforce,
    /// NAME=preview or NAME=off (repeatable). Other flags follow the record.
    #[arg(long = "flag", value_name = "NAME=MODE")]
    flags: Vec<String>,
    /// How late a record may come and still be replayed in arrival order
    /// (records are written when their request ends), e.g. 30s or 5m.
    #[arg(long, default_value = "30s")]
    reorder: String,
    /// Top keys per rule.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// No progress line on standard error.
    #[arg(long)]
    quiet: bool,
    /// Record files (`rampart-*.jsonl`), merged in time order.
    #[arg(required = true)]
    records: Vec<PathBuf>,
}

/// Exit code for bad arguments or configs (as `check`).
const EXIT_USAGE: u8 = 64;
/// Exit code when a record cannot be read.
const EXIT_IO: u8 = 1;

fn parse_flag(text: &str) -> Result<(String, FlagMode), String> {
    let (name, mode) = text
        .split_once('=')
        .ok_or_else(|| format!("--flag {text}: write NAME=enforce, NAME=preview or NAME=off"))?;
    let mode = match mode {
        "enforce" => FlagMode::Enforce,
        "preview" => FlagMode::Preview,
        "off" => FlagMode::Off,
        other => {
            return Err(format!(
                "--flag {name}: \"{other}\" is not enforce, preview or off"
            ))
        }
    };
    Ok((name.to_string(), mode))
}

/// Runs the replay; returns the exit code.
pub fn run(args: &ReplayArgs) -> u8 {
    let mut flags = Vec::new();
    for f in &args.flags {
        match parse_flag(f) {
            Ok(f) => flags.push(f),
            Err(e) => {
                eprintln!("rampart replay: {e}");
                return EXIT_USAGE;
            }
        }
    }
    let load = |path: &PathBuf| {
        rampart_config::load(path).map_err(|e| {
            eprintln!("{e}");
        })
    };
    let Ok(candidate) = load(&args.config) else {
        return EXIT_USAGE;
    };
    let baseline = match &args.baseline {
        Some(path) => match load(path) {
            Ok(c) => Some(c),
            Err(()) => return EXIT_USAGE,
        },
        None => None,
    };
    let reorder = match rampart_config::parse_duration(&args.reorder) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("rampart replay: --reorder: {e}");
            return EXIT_USAGE;
        }
    };
    let options = Options {
        flags,
        top: args.top,
        reorder,
    };
    let mut replay = match Replay::new(candidate, baseline, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rampart replay: {e}");
            return EXIT_USAGE;
        }
    };
    let total: u64 = args
        .records
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let show = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = Instant::now();
    let result = replay_files(&mut replay, &args.records, |bytes| {
        if show && last.elapsed() >= Duration::from_millis(200) {
            last = Instant::now();
            let share = if total == 0 {
                1.0
            } else {
                bytes as f64 / total as f64
            };
            let filled = (share * 30.0) as usize;
            eprint!(
                "\r[{}{}] {:>5.1}%  {:.1} s",
                "#".repeat(filled.min(30)),
                " ".repeat(30 - filled.min(30)),
                share * 100.0,
                started.elapsed().as_secs_f64()
            );
        }
    });
    if show {
        eprintln!();
    }
    if let Err(e) = result {
        eprintln!("rampart replay: {e}");
        return EXIT_IO;
    }
    let report = replay.finish();
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    0
}
