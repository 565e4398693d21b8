//! Rampart's config: the TOML file layer ([`file`]), the typed validated layer
//! ([`model`]) and the step between them, which reports every problem in a file at
//! once as `file: key: reason`.
//!
//! This crate knows nothing of Pingora or sockets and does no I/O beyond reading
//! the config file (and checking that the TLS files it names exist). Origin host
//! names stay unresolved ([`ServerAddress`]); the proxy resolves them when it
//! applies a config.

pub mod file;
pub mod ja4;
pub mod model;
pub mod units;
mod validate;

pub use ja4::{Ja4Pattern, JA4_TEXT_LEN};
pub use model::*;
pub use units::{parse_duration, parse_rate, Rate};

use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use validate::Validator;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted key path, e.g. `routes[1].pool`; empty for whole-file problems.
    pub key: String,
    /// What is wrong, for a person.
    pub reason: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, as given.
    pub file: PathBuf,
    /// All problems, in document order where known.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if issue.key.is_empty() {
                write!(f, "{file}: {}", issue.reason)?;
            } else {
                write!(f, "{file}: {}: {}", issue.key, issue.reason)?;
            }
        }
        Ok(())
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                key: String::new(),
                reason: format!("cannot read the file: {e}"),
            }],
        }),
    }
}

/// Validates config text; `path` is only used in messages and to resolve
/// relative file names (TLS keys, token files) against the file's folder.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut v = Validator::new(path);
    let deserializer = toml::Deserializer::parse(text);
    let deserializer = match deserializer {
        Ok(d) => d,
        Err(e) => {
            v.whole_file(format!("invalid TOML: {}", one_line(&e.to_string())));
            return Err(v.into_error());
        }
    };
    let mut unknown = Vec::new();
    let parsed: Result<file::FileConfig, _> =
        serde_ignored::deserialize(deserializer, |p| unknown.push(p.to_string()));
    let raw = match parsed {
        Ok(raw) => raw,
        Err(e) => {
            v.whole_file(one_line(&e.to_string()));
            return Err(v.into_error());
        }
    };
    for key in unknown {
        v.issue(key_path(&key), "unknown key".to_string());
    }
    let config = v.config(raw);
    match config {
        Some(config) if v.issues.is_empty() => Ok(config),
        _ => Err(v.into_error()),
    }
}

/// `routes.0.name` (serde_ignored's form) becomes `routes[0].name`.
fn key_path(dotted: &str) -> String {
    let mut out = String::new();
    for part in dotted.split('.') {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "\"{text}\" has host bits set (did you mean \"{}\"?)",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("\"{text}\" is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new("t.toml")) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .issues
                .into_iter()
                .map(|i| format!("{}: {}", i.key, i.reason))
                .collect(),
        }
    }

    const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.web]
servers = ["127.0.0.1:9000"]
[[routes]]
name = "all"
pool = "web"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL, Path::new("t.toml")).unwrap();
        assert_eq!(c.admin.address.to_string(), DEFAULT_ADMIN_ADDRESS);
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.unmatched, UnmatchedConfig::Reject { status: 404 });
        assert!(!c.server.work_stealing);
        assert_eq!(c.pools[0].health_check.kind, HealthCheckKind::Tcp);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"Bad Name\"\npool = \"nope\"\nbogus = 1\n[server]\nthreads = 0\n"
        );
        let errs = errors(&text);
        assert_eq!(
            errs,
            vec![
                "routes[1].bogus: unknown key",
                "server.threads: must be from 1 to 256, got 0",
                "routes[1].name: \"Bad Name\": route names use lower-case letters, digits, '_' and '-' only",
                "routes[1].pool: unknown pool \"nope\" (known: web)",
                "routes[1].path_prefix: route \"Bad Name\" is never reached: route \"all\" (routes[0], path_prefix \"/\") comes first and takes every request under \"/\"; list the narrower route first",
            ]
        );
    }

    #[test]
    fn admin_may_not_share_a_public_port() {
        let text = MINIMAL.replace("127.0.0.1:8080", "0.0.0.0:9901");
        assert_eq!(
            errors(&text),
            vec!["admin.address: 127.0.0.1:9901 overlaps a public listener; the admin API must never be on the public listener"]
        );
    }

    #[test]
    fn server_names_stay_unresolved_and_only_syntax_is_checked() {
        // `.invalid` never resolves (RFC 6761): parsing must not try.
        let text = MINIMAL.replace(
            "[\"127.0.0.1:9000\"]",
            "[\"127.0.0.1:9000\", \"origin.invalid:9001\", \"[::1]:9002\", \"::1:9003\"]",
        );
        let c = parse(&text, Path::new("t.toml")).unwrap();
        let servers: Vec<String> = c.pools[0].servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            servers,
            [
                "127.0.0.1:9000",
                "origin.invalid:9001",
                "[::1]:9002",
                "[::1]:9003"
            ]
        );
        assert_eq!(
            c.pools[0].servers[1],
            ServerAddress::Name {
                host: "origin.invalid".into(),
                port: 9001
            }
        );
        assert_eq!(c.pools[0].servers[1].socket_addr(), None);
        assert_eq!(c.pools[0].servers[1].port(), 9001);
        assert_eq!(c.pools[0].sni, "127.0.0.1");

        let text = MINIMAL.replace(
            "[\"127.0.0.1:9000\"]",
            "[\"origin\", \"origin:http\", \":80\", \"bad host:80\", \"a..b:80\"]",
        );
        assert_eq!(
            errors(&text),
            vec![
                "pools.web.servers[0]: \"origin\" needs a port (HOST:PORT)",
                "pools.web.servers[1]: \"origin:http\" has an invalid port: \"http\" is not a number from 0 to 65535",
                "pools.web.servers[2]: \":80\" needs a host (HOST:PORT)",
                "pools.web.servers[3]: \"bad host:80\": \"bad host\" is not a host name or IP address",
                "pools.web.servers[4]: \"a..b:80\": \"a..b\" is not a host name or IP address",
            ]
        );
    }

    #[test]
    fn cidrs_with_host_bits_are_refused() {
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
    }

    #[test]
    fn trusted_check_sees_through_ipv4_mapped_addresses() {
        let c = ClientIpConfig {
            trusted_proxies: vec![parse_cidr("10.0.0.0/8").unwrap()],
            header: ForwardedHeader::XForwardedFor,
        };
        assert!(c.is_trusted("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.is_trusted("11.1.2.3".parse().unwrap()));
    }
}
