//! `rampart lockdown`: the operator's side of the admin API's lockdown endpoints.
//! Talks plain HTTP to the admin listener (loopback by default); the address and
//! token come from flags, the environment, or the config file.

use rampart_config::TokenSource;
use rampart_proxy::lockdown::printable;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to reach the admin API.
#[derive(Debug, clap::Args)]
pub struct AdminTarget {
    /// Admin address (IP:PORT); else $RAMPART_ADMIN_ADDR, the config's [admin], or 127.0.0.1:9901.
    #[arg(long, global = true)]
    pub admin: Option<String>,
    /// Bearer token; else $RAMPART_ADMIN_TOKEN or the config's token source.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Config file to read the admin address and token source from.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `rampart lockdown` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LockdownCommand {
    /// List every flag with its state.
    Status,
    /// Turn a flag on.
    Enable {
        /// Flag name.
        flag: String,
        /// Turn itself off after this long ("30m", "2h").
        #[arg(long)]
        ttl: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Count what it would reject instead of rejecting.
        #[arg(long)]
        preview: bool,
        /// Who (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
    /// Turn a flag off.
    Disable {
        /// Flag name.
        flag: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Who (default: $USER).
        #[arg(long)]
        actor: Option<String>,
    },
}

struct Reply {
    status: u16,
    body: Value,
}

fn resolve(target: &AdminTarget) -> Result<(String, String), String> {
    let config = match &target.config {
        Some(path) => Some(rampart_config::load(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let addr = target
        .admin
        .clone()
        .or_else(|| std::env::var("RAMPART_ADMIN_ADDR").ok())
        .or_else(|| config.as_ref().map(|c| c.admin.address.to_string()))
        .unwrap_or_else(|| rampart_config::DEFAULT_ADMIN_ADDRESS.to_string());
    let token = match &target.token {
        Some(t) => t.clone(),
        None => match config.as_ref().map(|c| &c.admin.token) {
            Some(TokenSource::File(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?
                .trim()
                .to_string(),
            Some(TokenSource::Env(name)) => std::env::var(name).map_err(|_| {
                format!("the admin token variable {name} is not set (or pass --token)")
            })?,
            None => std::env::var(rampart_config::DEFAULT_ADMIN_TOKEN_ENV).map_err(|_| {
                format!(
                    "no admin token: pass --token, set {}, or pass --config",
                    rampart_config::DEFAULT_ADMIN_TOKEN_ENV
                )
            })?,
        },
    };
    Ok((addr, token))
}

fn call(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(addr)
        .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    // Read the head, then exactly Content-Length bytes of body.
    let (head_end, length) = loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("the admin API closed the connection without an answer".into());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..pos]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("the admin API sent no status line")?;
    let end = (head_end + length).min(raw.len());
    let body = serde_json::from_slice(&raw[head_end..end]).unwrap_or(Value::Null);
    Ok(Reply { status, body })
}

fn ago(now: u64, t: u64) -> String {
    if t > now {
        format!("in {}", human(t - now))
    } else {
        format!("{} ago", human(now - t))
    }
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn print_table(body: &Value) {
    let now = now();
    let rows: Vec<[String; 6]> = body["flags"]
        .as_array()
        .map(|flags| {
            flags
                .iter()
                .map(|f| {
                    let s = |k: &str| printable(f[k].as_str().unwrap_or(""));
                    let active = f["active"].as_bool().unwrap_or(false);
                    [
                        s("name"),
                        if active {
                            s("mode").to_uppercase()
                        } else {
                            "off".into()
                        },
                        if active { s("actor") } else { String::new() },
                        f["since"].as_u64().map(|t| ago(now, t)).unwrap_or_default(),
                        f["expires"]
                            .as_u64()
                            .map(|t| ago(now, t))
                            .unwrap_or_else(|| {
                                if active {
                                    "never".into()
                                } else {
                                    String::new()
                                }
                            }),
                        if active {
                            s("reason")
                        } else {
                            s("description")
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let header = [
        "FLAG",
        "STATE",
        "ACTOR",
        "SINCE",
        "EXPIRES",
        "REASON / DESCRIPTION",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
}

fn default_actor() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .map(|u| format!("{u} (cli)"))
        .unwrap_or_else(|_| "cli".to_string())
}

/// Runs a lockdown command; returns the process exit code.
pub fn run(target: &AdminTarget, command: &LockdownCommand) -> u8 {
    let (addr, token) = match resolve(target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rampart lockdown: {e}");
            return 64;
        }
    };
    let result = match command {
        LockdownCommand::Status => call(&addr, &token, "GET", "/lockdown", None),
        LockdownCommand::Enable {
            flag,
            ttl,
            reason,
            preview,
            actor,
        } => call(
            &addr,
            &token,
            "PUT",
            &format!("/lockdown/{flag}"),
            Some(&serde_json::json!({
                "reason": reason,
                "actor": actor.clone().unwrap_or_else(default_actor),
                "ttl": ttl,
                "mode": if *preview { "preview" } else { "enforce" },
            })),
        ),
        LockdownCommand::Disable {
            flag,
            reason,
            actor,
        } => call(
            &addr,
            &token,
            "DELETE",
            &format!("/lockdown/{flag}"),
            Some(&serde_json::json!({
                "reason": reason.clone().unwrap_or_default(),
                "actor": actor.clone().unwrap_or_else(default_actor),
            })),
        ),
    };
    let reply = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rampart lockdown: {e}");
            return 1;
        }
    };
    if !(200..300).contains(&reply.status) {
        let detail = reply.body["detail"].as_str().unwrap_or("request refused");
        let known = reply.body["known_flags"]
            .as_array()
            .map(|k| {
                format!(
                    " (known flags: {})",
                    k.iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .unwrap_or_default();
        eprintln!(
            "rampart lockdown: {} {}",
            reply.status,
            printable(&format!("{detail}{known}"))
        );
        return 1;
    }
    if target.json {
        println!("{}", reply.body);
        return 0;
    }
    match command {
        LockdownCommand::Status => print_table(&reply.body),
        LockdownCommand::Enable { flag, .. } => {
            let b = &reply.body;
            let expires = b["expires"]
                .as_u64()
                .map(|t| format!(", expires {}", ago(now(), t)))
                .unwrap_or_default();
            println!(
                "{}: {} by {}{expires}",
                printable(flag),
                printable(&b["mode"].as_str().unwrap_or("?").to_uppercase()),
                printable(b["actor"].as_str().unwrap_or("?"))
            );
            if b["persisted"] == false {
                println!("warning: the state file could not be written; this change will not survive a restart");
            }
        }
        LockdownCommand::Disable { flag, .. } => {
            if reply.body["was_active"] == true {
                println!("{}: off", printable(flag));
            } else {
                println!("{}: was already off", printable(flag));
            }
        }
    }
    0
}

/// `rampart top`: the top sources of rejected requests.
pub fn top(target: &AdminTarget, n: usize) -> u8 {
    let (addr, token) = match resolve(target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rampart top: {e}");
            return 64;
        }
    };
    let reply = match call(&addr, &token, "GET", &format!("/debug/top?n={n}"), None) {
        Ok(r) if (200..300).contains(&r.status) => r,
        Ok(r) => {
            eprintln!(
                "rampart top: {} {}",
                r.status,
                printable(r.body["detail"].as_str().unwrap_or("refused"))
            );
            return 1;
        }
        Err(e) => {
            eprintln!("rampart top: {e}");
            return 1;
        }
    };
    if target.json {
        println!("{}", reply.body);
        return 0;
    }
    println!(
        "rejected requests over the last {} s (approximate counts, at most over-estimated)",
        reply.body["window_seconds"].as_u64().unwrap_or(0)
    );
    for (title, key) in [
        ("ADDRESS", "ips"),
        ("NETWORK", "prefixes"),
        ("AS", "asns"),
        ("JA4", "ja4"),
    ] {
        println!();
        println!("{title:<42} {:>9}  COUNTRY  AS", "REJECTED");
        for row in reply.body[key].as_array().into_iter().flatten() {
            let asn = row["asn"]
                .as_u64()
                .map_or_else(|| "-".to_string(), |n| format!("AS{n}"));
            let org = row["as_organization"]
                .as_str()
                .map(|o| format!(" {}", printable(o)))
                .unwrap_or_default();
            println!(
                "{:<42} {:>9}  {:<7}  {asn}{org}",
                printable(row["key"].as_str().unwrap_or("?")),
                row["rejected"].as_u64().unwrap_or(0),
                printable(row["country"].as_str().unwrap_or("-")),
            );
        }
    }
    0
}

/// `rampart bans` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BansCommand {
    /// List every active ban.
    List,
    /// Lift a ban (and its memory of past bans).
    Lift {
        /// The `[[limits]]` rule holding the ban.
        rule: String,
        /// The banned key: an address, a network, AS64500, a country code, a
        /// JA4 fingerprint, or h<16 hex digits> for a hashed value.
        key: String,
    },
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `rampart bans`; returns the exit code.
pub fn bans(target: &AdminTarget, command: &BansCommand) -> u8 {
    let (addr, token) = match resolve(target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rampart bans: {e}");
            return 64;
        }
    };
    let (method, path) = match command {
        BansCommand::List => ("GET", "/bans".to_string()),
        BansCommand::Lift { rule, key } => (
            "DELETE",
            format!("/bans/{}?key={}", encode(rule), encode(key)),
        ),
    };
    let reply = match call(&addr, &token, method, &path, None) {
        Ok(r) if (200..300).contains(&r.status) => r,
        Ok(r) => {
            eprintln!(
                "rampart bans: {} {}",
                r.status,
                printable(r.body["detail"].as_str().unwrap_or("refused"))
            );
            return 1;
        }
        Err(e) => {
            eprintln!("rampart bans: {e}");
            return 1;
        }
    };
    if target.json {
        println!("{}", reply.body);
        return 0;
    }
    match command {
        BansCommand::List => {
            println!(
                "{:<20} {:<42} {:>10} {:>8}",
                "RULE", "KEY", "REMAINING", "OFFENSES"
            );
            for row in reply.body["bans"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<42} {:>10} {:>8}",
                    printable(row["rule"].as_str().unwrap_or("?")),
                    printable(row["key"].as_str().unwrap_or("?")),
                    human(row["remaining_seconds"].as_u64().unwrap_or(0)),
                    row["offenses"].as_u64().unwrap_or(0)
                );
            }
        }
        BansCommand::Lift { rule, key } => {
            let was = reply.body["was_banned"].as_bool().unwrap_or(false);
            println!(
                "{} {} by {}",
                if was {
                    "lifted the ban of"
                } else {
                    "no active ban for"
                },
                printable(key),
                printable(rule)
            );
        }
    }
    0
}
