//! Rampart's config: the TOML file layer ([`file`]), the typed validated layer
//! ([`model`]) and the step between them, which reports every problem in a file at
//! once as `file: key: reason`.
//!
//! This crate knows nothing of Pingora or sockets; it only reads the config file
//! (and resolves origin host names once, at load time).

pub mod file;
pub mod model;
pub mod units;

pub use model::*;
pub use units::{parse_duration, parse_rate, Rate};

use ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

struct Validator {
    file: PathBuf,
    issues: Vec<ConfigIssue>,
}

impl Validator {
    fn new(path: &Path) -> Self {
        Self {
            file: path.to_path_buf(),
            issues: Vec::new(),
        }
    }

    fn into_error(self) -> ConfigError {
        ConfigError {
            file: self.file,
            issues: self.issues,
        }
    }

    fn whole_file(&mut self, reason: String) {
        self.issue(String::new(), reason);
    }

    fn issue(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.issues.push(ConfigIssue {
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Resolves a file name relative to the config file's folder.
    fn relative_path(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file
                .parent()
                .map(|dir| dir.join(p))
                .unwrap_or_else(|| p.to_path_buf())
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        self.duration_min(key, value, default, Duration::ZERO)
    }

    fn nonzero_duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        self.duration_min(key, value, default, Duration::from_millis(1))
    }

    fn duration_min(
        &mut self,
        key: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(text) {
            Ok(d) if d < min => {
                self.issue(key, "must be longer than zero");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(key, e);
                default
            }
        }
    }

    fn count(&mut self, key: &str, value: Option<i64>, default: u32) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        match value {
            None => fallback,
            Some(n) => match u32::try_from(n).ok().and_then(NonZeroU32::new) {
                Some(n) => n,
                None => {
                    self.issue(key, format!("must be a whole number from 1 up, got {n}"));
                    fallback
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.issue(
                    key,
                    format!("\"{text}\" is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
                );
                None
            }
        }
    }

    fn config(&mut self, raw: file::FileConfig) -> Option<Config> {
        let server = self.server(raw.server);
        let client_ip = self.client_ip(raw.client_ip);
        let listeners = self.listeners(raw.listeners);
        let admin = self.admin(raw.admin, &listeners);
        let pools: Vec<PoolConfig> = raw
            .pools
            .into_iter()
            .filter_map(|(name, pool)| self.pool(name, pool))
            .collect();
        let pool_names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
        let routes = self.routes(raw.routes, &pool_names);
        let unmatched = self.unmatched(raw.unmatched, &pool_names);
        Some(Config {
            server,
            client_ip,
            listeners,
            admin: admin?,
            pools,
            routes,
            unmatched: unmatched?,
        })
    }

    fn server(&mut self, raw: file::FileServer) -> ServerConfig {
        let threads = match raw.threads {
            None => DEFAULT_THREADS,
            Some(n) if (1..=256).contains(&n) => n as usize,
            Some(n) => {
                self.issue("server.threads", format!("must be from 1 to 256, got {n}"));
                DEFAULT_THREADS
            }
        };
        let upstream_keepalive_pool_size = match raw.upstream_keepalive_pool_size {
            None => DEFAULT_KEEPALIVE_POOL_SIZE,
            Some(n) if (0..=1_000_000).contains(&n) => n as usize,
            Some(n) => {
                self.issue(
                    "server.upstream_keepalive_pool_size",
                    format!("must be from 0 to 1000000, got {n}"),
                );
                DEFAULT_KEEPALIVE_POOL_SIZE
            }
        };
        ServerConfig {
            threads,
            work_stealing: raw.work_stealing.unwrap_or(false),
            upstream_keepalive_pool_size,
            grace_period: self.duration(
                "server.grace_period",
                raw.grace_period.as_deref(),
                DEFAULT_GRACE_PERIOD,
            ),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                raw.graceful_shutdown_timeout.as_deref(),
                DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT,
            ),
        }
    }

    fn client_ip(&mut self, raw: file::FileClientIp) -> ClientIpConfig {
        let mut trusted_proxies = Vec::new();
        for (i, text) in raw.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_cidr(text) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => self.issue(format!("client_ip.trusted_proxies[{i}]"), e),
            }
        }
        let header = match raw
            .header
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
            Some("forwarded") => ForwardedHeader::Forwarded,
            Some(other) => {
                self.issue(
                    "client_ip.header",
                    format!(
                        "\"{other}\" is not supported (use \"x-forwarded-for\" or \"forwarded\")"
                    ),
                );
                ForwardedHeader::XForwardedFor
            }
        };
        ClientIpConfig {
            trusted_proxies,
            header,
        }
    }

    fn listeners(&mut self, raw: Vec<file::FileListener>) -> Vec<ListenerConfig> {
        if raw.is_empty() {
            self.issue("listeners", "at least one [[listeners]] entry is required");
            return Vec::new();
        }
        let mut out: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let key = format!("listeners[{i}]");
            let Some(text) = l.address.as_deref() else {
                self.issue(format!("{key}.address"), "is required");
                continue;
            };
            let Some(address) = self.socket_addr(&format!("{key}.address"), text) else {
                continue;
            };
            if out.iter().any(|o| o.address == address) {
                self.issue(
                    format!("{key}.address"),
                    format!("{address} is used by another listener"),
                );
            }
            let wants_tls = l.tls.is_some();
            let h2c = l.h2c.unwrap_or(false);
            if h2c && wants_tls {
                self.issue(
                    format!("{key}.h2c"),
                    "only for plaintext listeners; TLS listeners offer HTTP/2 through ALPN",
                );
            }
            let tls = match l.tls {
                None => None,
                Some(tls) => {
                    let cert = self.tls_file(&format!("{key}.tls.cert"), tls.cert.as_deref());
                    let key_file = self.tls_file(&format!("{key}.tls.key"), tls.key.as_deref());
                    match (cert, key_file) {
                        (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
                        _ => None,
                    }
                }
            };
            out.push(ListenerConfig { address, h2c, tls });
        }
        out
    }

    fn tls_file(&mut self, key: &str, name: Option<&str>) -> Option<PathBuf> {
        let Some(name) = name else {
            self.issue(key, "is required for a TLS listener");
            return None;
        };
        let path = self.relative_path(name);
        if !path.is_file() {
            self.issue(key, format!("file {} does not exist", path.display()));
            return None;
        }
        Some(path)
    }

    fn admin(&mut self, raw: file::FileAdmin, listeners: &[ListenerConfig]) -> Option<AdminConfig> {
        let text = raw.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS);
        let address = self.socket_addr("admin.address", text);
        if let Some(address) = address {
            if listeners.iter().any(|l| clashes(l.address, address)) {
                self.issue(
                    "admin.address",
                    format!("{address} overlaps a public listener; the admin API must never be on the public listener"),
                );
            }
        }
        let token = match (raw.token_env, raw.token_file) {
            (Some(_), Some(_)) => {
                self.issue("admin", "set token_env or token_file, not both");
                TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string())
            }
            (Some(env), None) if env.is_empty() => {
                self.issue("admin.token_env", "must not be empty");
                TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string())
            }
            (Some(env), None) => TokenSource::Env(env),
            (None, Some(file)) => TokenSource::File(self.relative_path(&file)),
            (None, None) => TokenSource::Env(DEFAULT_ADMIN_TOKEN_ENV.to_string()),
        };
        Some(AdminConfig {
            address: address?,
            token,
        })
    }

    fn pool(&mut self, name: String, raw: file::FilePool) -> Option<PoolConfig> {
        let key = format!("pools.{name}");
        if !is_name(&name) {
            self.issue(
                &key,
                "pool names use lower-case letters, digits, '_' and '-' only",
            );
        }
        let mut servers = Vec::new();
        let list = raw.servers.unwrap_or_default();
        if list.is_empty() {
            self.issue(format!("{key}.servers"), "at least one server is required");
        }
        for (i, text) in list.iter().enumerate() {
            match resolve(text) {
                Ok(addr) => servers.push(addr),
                Err(e) => self.issue(format!("{key}.servers[{i}]"), e),
            }
        }
        let tls = raw.tls.unwrap_or(false);
        let sni = raw.sni.clone().unwrap_or_else(|| {
            list.first()
                .and_then(|s| s.rsplit_once(':').map(|(h, _)| h.to_string()))
                .unwrap_or_default()
        });
        let connect_timeout = self.nonzero_duration(
            &format!("{key}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let read_timeout = self.nonzero_duration(
            &format!("{key}.read_timeout"),
            raw.read_timeout.as_deref(),
            DEFAULT_READ_TIMEOUT,
        );
        let write_timeout = self.nonzero_duration(
            &format!("{key}.write_timeout"),
            raw.write_timeout.as_deref(),
            DEFAULT_WRITE_TIMEOUT,
        );
        let idle_timeout = self.nonzero_duration(
            &format!("{key}.idle_timeout"),
            raw.idle_timeout.as_deref(),
            DEFAULT_IDLE_TIMEOUT,
        );
        let hc = raw.health_check.unwrap_or_default();
        let hkey = format!("{key}.health_check");
        let kind = match hc.kind.as_deref() {
            None | Some("tcp") => {
                if hc.path.is_some() {
                    self.issue(format!("{hkey}.path"), "only used with kind = \"http\"");
                }
                HealthCheckKind::Tcp
            }
            Some("http") => {
                let path = hc.path.unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') {
                    self.issue(format!("{hkey}.path"), "must start with '/'");
                }
                HealthCheckKind::Http {
                    path,
                    host: hc.host.unwrap_or_else(|| "localhost".to_string()),
                }
            }
            Some(other) => {
                self.issue(
                    format!("{hkey}.kind"),
                    format!("\"{other}\" is not a health check kind (use \"http\" or \"tcp\")"),
                );
                HealthCheckKind::Tcp
            }
        };
        let health_check = HealthCheckConfig {
            kind,
            interval: self.nonzero_duration(
                &format!("{hkey}.interval"),
                hc.interval.as_deref(),
                DEFAULT_HEALTH_INTERVAL,
            ),
            timeout: self.nonzero_duration(
                &format!("{hkey}.timeout"),
                hc.timeout.as_deref(),
                DEFAULT_HEALTH_TIMEOUT,
            ),
            healthy_threshold: self.count(
                &format!("{hkey}.healthy_threshold"),
                hc.healthy_threshold,
                DEFAULT_HEALTHY_THRESHOLD,
            ),
            unhealthy_threshold: self.count(
                &format!("{hkey}.unhealthy_threshold"),
                hc.unhealthy_threshold,
                DEFAULT_UNHEALTHY_THRESHOLD,
            ),
        };
        Some(PoolConfig {
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            name,
            servers,
            tls,
            sni,
            health_check,
        })
    }

    fn routes(&mut self, raw: Vec<file::FileRoute>, pools: &[String]) -> Vec<RouteConfig> {
        let mut names = BTreeSet::new();
        let mut out = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let name = match r.name {
                Some(n) if is_name(&n) => n,
                Some(n) => {
                    self.issue(
                        format!("{key}.name"),
                        format!(
                            "\"{n}\": route names use lower-case letters, digits, '_' and '-' only"
                        ),
                    );
                    n
                }
                None => {
                    self.issue(format!("{key}.name"), "is required");
                    format!("route{i}")
                }
            };
            if !names.insert(name.clone()) {
                self.issue(
                    format!("{key}.name"),
                    format!("\"{name}\" is used by another route"),
                );
            }
            let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
            if !path_prefix.starts_with('/') {
                self.issue(
                    format!("{key}.path_prefix"),
                    format!("\"{path_prefix}\" must start with '/'"),
                );
            }
            let mut methods = Vec::new();
            for (j, m) in r.methods.unwrap_or_default().into_iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                    self.issue(
                        format!("{key}.methods[{j}]"),
                        format!("\"{m}\" is not an HTTP method"),
                    );
                } else {
                    methods.push(m.to_ascii_uppercase());
                }
            }
            let host = r.host.map(|h| h.to_ascii_lowercase());
            let kind = match r.kind.as_deref() {
                None | Some("api") => RouteKind::Api,
                Some("browser") => RouteKind::Browser,
                Some(other) => {
                    self.issue(
                        format!("{key}.kind"),
                        format!("\"{other}\" is not a route kind (use \"api\" or \"browser\")"),
                    );
                    RouteKind::Api
                }
            };
            let pool = self.pool_ref(&format!("{key}.pool"), r.pool.as_deref(), pools);
            out.push(RouteConfig {
                name,
                host,
                path_prefix,
                methods,
                pool: pool.unwrap_or(0),
                kind,
            });
        }
        out
    }

    fn pool_ref(&mut self, key: &str, name: Option<&str>, pools: &[String]) -> Option<usize> {
        let Some(name) = name else {
            self.issue(key, "is required");
            return None;
        };
        let found = pools.iter().position(|p| p == name);
        if found.is_none() {
            self.issue(
                key,
                format!(
                    "unknown pool \"{name}\" (known: {})",
                    if pools.is_empty() {
                        "none".to_string()
                    } else {
                        pools.join(", ")
                    }
                ),
            );
        }
        found
    }

    fn unmatched(&mut self, raw: file::FileUnmatched, pools: &[String]) -> Option<UnmatchedConfig> {
        match raw.action.as_deref() {
            None | Some("reject") => {
                if raw.pool.is_some() {
                    self.issue("unmatched.pool", "only used with action = \"proxy\"");
                }
                let status = match raw.status {
                    None => DEFAULT_UNMATCHED_STATUS,
                    Some(s) if (400..=599).contains(&s) => s as u16,
                    Some(s) => {
                        self.issue(
                            "unmatched.status",
                            format!("must be an error status from 400 to 599, got {s}"),
                        );
                        DEFAULT_UNMATCHED_STATUS
                    }
                };
                Some(UnmatchedConfig::Reject { status })
            }
            Some("proxy") => {
                if raw.status.is_some() {
                    self.issue("unmatched.status", "only used with action = \"reject\"");
                }
                let pool = self.pool_ref("unmatched.pool", raw.pool.as_deref(), pools);
                Some(UnmatchedConfig::Proxy {
                    pool: pool.unwrap_or(0),
                })
            }
            Some(other) => {
                self.issue(
                    "unmatched.action",
                    format!("\"{other}\" is not an action (use \"reject\" or \"proxy\")"),
                );
                None
            }
        }
    }
}

/// Two listen addresses clash when the ports match and either binds every address.
fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(format!("\"{text}\" needs a port (HOST:PORT)"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("\"{text}\" resolves to no address")),
        Err(e) => Err(format!("\"{text}\" cannot be resolved: {e}")),
    }
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
