//! The `rampart` command line: `run`, `check`, `demo`, `replay` and the admin clients.

mod cli_lockdown;
mod cli_replay;
mod demo;
mod geoip_build;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: allocation and free were about 11% of
/// the proxy's CPU per request in a profile (benches/PROFILE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a bad config (EX_DATAERR would be 65; 64 is EX_USAGE, what the runbook promises).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code when the proxy cannot start for another reason.
const EXIT_START_FAILED: u8 = 1;

#[derive(Parser)]
#[command(
    name = "rampart",
    version,
    about = "An edge proxy that keeps a chat API and its login alive under attack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate config files; exit 0 when all are valid, 64 when any is not.
    /// Does no DNS: origin host names are resolved by `run` and by reloads.
    Check {
        /// Config files (TOML); repeat for several.
        #[arg(long, short, required = true)]
        config: Vec<PathBuf>,
    },
    /// Turn lockdown flags on and off through the admin API.
    Lockdown {
        #[command(flatten)]
        target: cli_lockdown::AdminTarget,
        #[command(subcommand)]
        command: cli_lockdown::LockdownCommand,
    },
    /// List and lift the bans of limits' penalty boxes through the admin API.
    Bans {
        #[command(flatten)]
        target: cli_lockdown::AdminTarget,
        #[command(subcommand)]
        command: cli_lockdown::BansCommand,
    },
    /// Top sources of rejected requests (addresses, networks, ASNs).
    Top {
        #[command(flatten)]
        target: cli_lockdown::AdminTarget,
        /// Rows per table.
        #[arg(long, short, default_value_t = 10)]
        n: usize,
    },
    /// GeoIP tools.
    Geoip {
        #[command(subcommand)]
        command: GeoipCommand,
    },
    /// Replay a request record ([record]) against a candidate config, with a
    /// virtual clock: what would it have refused, whom, and how does that
    /// differ from the baseline config (or from what was recorded)?
    Replay(cli_replay::ReplayArgs),
    /// Run the proxy with the shipped config in front of built-in demo origins.
    Demo {
        /// Config file; the shipped one by default.
        #[arg(long, short, default_value = "conf/rampart.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum GeoipCommand {
    /// Print the country and ASN of an address from the configured databases.
    Lookup {
        /// IPv4 or IPv6 address.
        ip: String,
        /// Config file naming the databases ([geoip]).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Build an ASN database (MMDB) from the free ASN CSV files.
    Build {
        /// CSV file (first_ip,last_ip,asn,organisation); repeat for IPv4 and IPv6.
        #[arg(long = "asn-csv", required = true)]
        asn_csv: Vec<PathBuf>,
        /// Output MMDB file (written to a temporary file, then renamed).
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Replay(args) => ExitCode::from(cli_replay::run(&args)),
        Command::Run { config } => run(config, None),
        Command::Top { target, n } => ExitCode::from(cli_lockdown::top(&target, n)),
        Command::Bans { target, command } => ExitCode::from(cli_lockdown::bans(&target, &command)),
        Command::Lockdown { target, command } => {
            ExitCode::from(cli_lockdown::run(&target, &command))
        }
        Command::Geoip {
            command: GeoipCommand::Lookup { ip, config },
        } => geoip_lookup(&ip, &config),
        Command::Geoip {
            command: GeoipCommand::Build { asn_csv, out },
        } => match geoip_build::build(&asn_csv, &out) {
            Ok(r) => {
                println!(
                    "{}: {} ranges as {} networks ({} in reserved or IPv4-alias space skipped)",
                    out.display(),
                    r.ranges,
                    r.networks,
                    r.skipped
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rampart geoip build: {e}");
                ExitCode::from(EXIT_START_FAILED)
            }
        },
        Command::Demo { config } => {
            if let Err(e) = demo::start_origins() {
                eprintln!("rampart demo: {e}");
                return ExitCode::from(EXIT_START_FAILED);
            }
            demo::ensure_admin_token();
            run(config, Some(demo::trust_loopback))
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match rampart_config::load(file) {
            Ok(_) => println!("{}: ok", file.display()),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BAD_CONFIG)
    }
}

fn geoip_lookup(ip: &str, config_path: &std::path::Path) -> ExitCode {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        eprintln!("rampart geoip lookup: \"{ip}\" is not an IP address");
        return ExitCode::from(EXIT_BAD_CONFIG);
    };
    let config = match rampart_config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let db = match rampart_policy::GeoDb::open(&config.geoip) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("rampart geoip lookup: {e}");
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let ip = rampart_config::canonical_ip(ip);
    let info = db.lookup(ip);
    println!("ip {ip}");
    match info.country {
        Some(c) => println!("country {c}"),
        None => println!("country unknown"),
    }
    match (info.asn, db.as_organization(ip)) {
        (Some(n), Some(org)) => println!("asn {n} ({org})"),
        (Some(n), None) => println!("asn {n}"),
        _ => println!("asn unknown"),
    }
    ExitCode::SUCCESS
}

fn run(config_path: PathBuf, overlay: Option<rampart_proxy::state::ConfigOverlay>) -> ExitCode {
    let config = match rampart_config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{}", l.address)
        })
        .collect();
    let admin = config.admin.address;
    match rampart_proxy::build_server_with(config_path, config, overlay) {
        Ok(server) => {
            log::info!(
                "rampart listening on {} (admin on http://{admin})",
                listeners.join(", ")
            );
            server.run_forever()
        }
        Err(rampart_proxy::StartError::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("rampart: cannot start: {e}");
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}
