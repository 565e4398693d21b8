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
        let route_names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        let geoip = self.geoip(raw.geoip);
        let mut rule_names = BTreeSet::new();
        let access = raw
            .access
            .into_iter()
            .enumerate()
            .map(|(i, a)| self.access(i, a, &route_names, &geoip, &mut rule_names))
            .collect();
        let flag_names: Vec<String> = raw.flags.iter().filter_map(|f| f.name.clone()).collect();
        let limits: Vec<LimitConfig> = raw
            .limits
            .into_iter()
            .enumerate()
            .map(|(i, l)| self.limit(i, l, &route_names, &geoip, &mut rule_names, &flag_names))
            .collect();
        let concurrency = raw
            .concurrency
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.concurrency(i, c, &route_names, &geoip, &mut rule_names))
            .collect();
        let referenced: Vec<usize> = limits
            .iter()
            .filter_map(|l: &LimitConfig| l.only_with_flag)
            .collect();
        let lockdown = self.lockdown(raw.lockdown, raw.flags, &route_names, &geoip, &referenced);
        let access_log = self.access_log(raw.access_log);
        let fleet = raw.fleet.map(|f| self.fleet(f));
        let request = self.request(raw.request);
        if fleet.is_none() {
            for (i, l) in limits.iter().enumerate() {
                if matches!(l.scope, LimitScope::Fleet { .. }) {
                    self.issue(
                        format!("limits[{i}].scope"),
                        "\"fleet\" needs a [fleet] section",
                    );
                }
            }
        }
        Some(Config {
            request,
            fleet,
            access_log,
            server,
            client_ip,
            listeners,
            admin: admin?,
            pools,
            routes,
            unmatched: unmatched?,
            geoip,
            access,
            limits,
            concurrency,
            lockdown,
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
            client: ClientLimits {
                header_timeout: self.duration(
                    "server.client_header_timeout",
                    raw.client_header_timeout.as_deref(),
                    DEFAULT_HEADER_TIMEOUT,
                ),
                body_timeout: self.duration(
                    "server.client_body_timeout",
                    raw.client_body_timeout.as_deref(),
                    DEFAULT_BODY_TIMEOUT,
                ),
                keepalive_timeout: self.duration(
                    "server.keepalive_timeout",
                    raw.keepalive_timeout.as_deref(),
                    DEFAULT_KEEPALIVE_TIMEOUT,
                ),
                h2_idle_timeout: self.duration(
                    "server.h2_idle_timeout",
                    raw.h2_idle_timeout.as_deref(),
                    DEFAULT_H2_IDLE_TIMEOUT,
                ),
                max_head_bytes: self.bounded(
                    "server.max_request_head_bytes",
                    raw.max_request_head_bytes,
                    1024,
                    1 << 20,
                    DEFAULT_MAX_HEAD_BYTES as i64,
                ) as usize,
                max_headers: self.bounded(
                    "server.max_request_headers",
                    raw.max_request_headers,
                    8,
                    250,
                    DEFAULT_MAX_HEADERS as i64,
                ) as usize,
                max_connections_per_source: self.bounded(
                    "server.max_connections_per_source",
                    raw.max_connections_per_source,
                    0,
                    1_000_000,
                    i64::from(DEFAULT_MAX_CONNECTIONS_PER_SOURCE),
                ) as u32,
                read_buffer_bytes: self.bounded(
                    "server.client_read_buffer_bytes",
                    raw.client_read_buffer_bytes,
                    1024,
                    1 << 20,
                    DEFAULT_READ_BUFFER_BYTES as i64,
                ) as usize,
            },
        }
    }

    /// `value` when within `min..=max`, else an issue and `default`.
    fn bounded(&mut self, key: &str, value: Option<i64>, min: i64, max: i64, default: i64) -> i64 {
        match value {
            None => default,
            Some(n) if (min..=max).contains(&n) => n,
            Some(n) => {
                self.issue(key, format!("must be from {min} to {max}, got {n}"));
                default
            }
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
            let proxy_protocol = self.proxy_protocol(&key, l.proxy_protocol, l.proxy_protocol_from);
            out.push(ListenerConfig {
                address,
                h2c,
                tls,
                proxy_protocol,
            });
        }
        out
    }

    fn proxy_protocol(
        &mut self,
        key: &str,
        version: Option<String>,
        from: Option<Vec<String>>,
    ) -> Option<ProxyProtocolConfig> {
        let version = match version.as_deref() {
            None => {
                if from.is_some() {
                    self.issue(
                        format!("{key}.proxy_protocol_from"),
                        "only with proxy_protocol = \"v1\", \"v2\" or \"any\"",
                    );
                }
                return None;
            }
            Some("v1") => ProxyProtocolVersion::V1,
            Some("v2") => ProxyProtocolVersion::V2,
            Some("any") => ProxyProtocolVersion::Any,
            Some(other) => {
                self.issue(
                    format!("{key}.proxy_protocol"),
                    format!("\"{other}\" is not a PROXY protocol version (use \"v1\", \"v2\" or \"any\")"),
                );
                return None;
            }
        };
        let mut nets = Vec::new();
        match from {
            None => self.issue(
                format!("{key}.proxy_protocol_from"),
                "is required with proxy_protocol: the load balancers' addresses (CIDRs); a header from anyone else is refused",
            ),
            Some(list) if list.is_empty() => self.issue(
                format!("{key}.proxy_protocol_from"),
                "must name at least one network (the load balancers' addresses)",
            ),
            Some(list) => {
                for (i, text) in list.iter().enumerate() {
                    match parse_cidr(text) {
                        Ok(net) => nets.push(net),
                        Err(e) => self.issue(format!("{key}.proxy_protocol_from[{i}]"), e),
                    }
                }
            }
        }
        Some(ProxyProtocolConfig {
            version,
            from: nets,
        })
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
                case_insensitive: r.case_insensitive.unwrap_or(false),
                pool: pool.unwrap_or(0),
                kind,
                close_on_reject: r.close_on_reject.unwrap_or(false),
            });
        }
        // Routes match on host and path only (methods answer 405, never route
        // elsewhere), so an earlier route that covers a later one's host and
        // path takes every request meant for it, with none of its flags, body
        // rules or limits.
        for (j, later) in out.iter().enumerate() {
            if let Some((i, earlier)) = out[..j]
                .iter()
                .enumerate()
                .find(|(_, earlier)| route_covers(earlier, later))
            {
                self.issue(
                    format!("routes[{j}].path_prefix"),
                    format!(
                        "route \"{}\" is never reached: route \"{}\" (routes[{i}], path_prefix \"{}\") comes first and takes every request under \"{}\"; list the narrower route first",
                        later.name, earlier.name, earlier.path_prefix, later.path_prefix
                    ),
                );
            }
        }
        out
    }

    fn request(&mut self, raw: file::FileRequest) -> RequestConfig {
        let mut config = RequestConfig {
            allow_semicolons: raw.allow_semicolons.unwrap_or(false),
            ..RequestConfig::default()
        };
        if let Some(names) = raw.strip_headers {
            config.strip_headers.clear();
            for (i, name) in names.iter().enumerate() {
                let normal = name.to_ascii_lowercase().replace('_', "-");
                let token = !normal.is_empty()
                    && normal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^`|~".contains(&b));
                if !token {
                    self.issue(
                        format!("request.strip_headers[{i}]"),
                        format!("\"{name}\" is not a header field name"),
                    );
                } else {
                    config.strip_headers.push(normal);
                }
            }
        }
        config.strip_headers.sort();
        config.strip_headers.dedup();
        config
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

impl Validator {
    fn geoip(&mut self, raw: file::FileGeoip) -> GeoipConfig {
        let country_db = raw.country_db.map(|f| self.relative_path(&f));
        let asn_db = raw.asn_db.map(|f| self.relative_path(&f));
        let mut unknown = |key: &str, value: Option<&str>, db: bool| match value {
            None | Some("allow") => UnknownPolicy::Allow,
            Some("deny") if !db => {
                let db_key = if key.ends_with("country") {
                    "country_db"
                } else {
                    "asn_db"
                };
                self.issue(
                    format!("geoip.{key}"),
                    format!(
                        "\"deny\" needs geoip.{db_key}; without a database every client is unknown"
                    ),
                );
                UnknownPolicy::Allow
            }
            Some("deny") => UnknownPolicy::Deny,
            Some(other) => {
                self.issue(
                    format!("geoip.{key}"),
                    format!("\"{other}\" is not a policy (use \"allow\" or \"deny\")"),
                );
                UnknownPolicy::Allow
            }
        };
        let unknown_country = unknown(
            "unknown_country",
            raw.unknown_country.as_deref(),
            country_db.is_some(),
        );
        let unknown_asn = unknown("unknown_asn", raw.unknown_asn.as_deref(), asn_db.is_some());
        GeoipConfig {
            check_interval: self.nonzero_duration(
                "geoip.check_interval",
                raw.check_interval.as_deref(),
                DEFAULT_GEOIP_CHECK_INTERVAL,
            ),
            country_db,
            asn_db,
            unknown_country,
            unknown_asn,
        }
    }

    fn rule_name(
        &mut self,
        key: &str,
        name: Option<String>,
        index: usize,
        seen: &mut BTreeSet<String>,
    ) -> String {
        let name = match name {
            Some(n) if is_name(&n) => n,
            Some(n) => {
                self.issue(
                    format!("{key}.name"),
                    format!("\"{n}\": rule names use lower-case letters, digits, '_' and '-' only"),
                );
                n
            }
            None => {
                self.issue(format!("{key}.name"), "is required");
                format!("rule{index}")
            }
        };
        if !seen.insert(name.clone()) {
            self.issue(
                format!("{key}.name"),
                format!("\"{name}\" is used by another rule"),
            );
        }
        name
    }

    fn route_refs(
        &mut self,
        key: &str,
        names: Option<Vec<String>>,
        routes: &[String],
    ) -> Option<Vec<usize>> {
        let names = names?;
        let mut out = Vec::new();
        for (j, name) in names.iter().enumerate() {
            match routes.iter().position(|r| r == name) {
                Some(i) => out.push(i),
                None => self.issue(
                    format!("{key}.routes[{j}]"),
                    format!(
                        "unknown route \"{name}\" (known: {})",
                        if routes.is_empty() {
                            "none".to_string()
                        } else {
                            routes.join(", ")
                        }
                    ),
                ),
            }
        }
        Some(out)
    }

    fn access(
        &mut self,
        i: usize,
        raw: file::FileAccess,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
    ) -> AccessRuleConfig {
        let key = format!("access[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let action = match raw.action.as_deref() {
            Some("allow") => AccessAction::Allow,
            Some("deny") => AccessAction::Deny,
            None => {
                self.issue(
                    format!("{key}.action"),
                    "is required (\"allow\" or \"deny\")",
                );
                AccessAction::Deny
            }
            Some(other) => {
                self.issue(
                    format!("{key}.action"),
                    format!("\"{other}\" is not an action (use \"allow\" or \"deny\")"),
                );
                AccessAction::Deny
            }
        };
        let given = raw.cidrs.as_ref().is_some_and(|v| !v.is_empty())
            || raw.asns.as_ref().is_some_and(|v| !v.is_empty())
            || raw.countries.as_ref().is_some_and(|v| !v.is_empty());
        let (cidrs, asns, countries) =
            self.client_lists(&key, raw.cidrs, raw.asns, raw.countries, geoip);
        if !given {
            self.issue(&key, "matches nothing: give cidrs, asns or countries");
        }
        AccessRuleConfig {
            routes: self.route_refs(&key, raw.routes, routes),
            name,
            action,
            cidrs,
            asns,
            countries,
        }
    }

    /// Validates the `cidrs`, `asns` and `countries` lists of a rule that
    /// matches clients (access rules, flag restrictions).
    fn client_lists(
        &mut self,
        key: &str,
        cidrs: Option<Vec<String>>,
        asns: Option<Vec<i64>>,
        countries: Option<Vec<String>>,
        geoip: &GeoipConfig,
    ) -> (Vec<IpNet>, Vec<u32>, Vec<String>) {
        let mut nets = Vec::new();
        for (j, text) in cidrs.unwrap_or_default().iter().enumerate() {
            match parse_cidr(text) {
                Ok(net) => nets.push(net),
                Err(e) => self.issue(format!("{key}.cidrs[{j}]"), e),
            }
        }
        let mut numbers = Vec::new();
        for (j, n) in asns.unwrap_or_default().into_iter().enumerate() {
            match u32::try_from(n) {
                Ok(n) if n > 0 => numbers.push(n),
                _ => self.issue(
                    format!("{key}.asns[{j}]"),
                    format!("{n} is not an AS number"),
                ),
            }
        }
        if !numbers.is_empty() && geoip.asn_db.is_none() {
            self.issue(format!("{key}.asns"), "needs geoip.asn_db");
        }
        let mut codes = Vec::new();
        for (j, c) in countries.unwrap_or_default().into_iter().enumerate() {
            match country_code(&c) {
                Some(c) => codes.push(c),
                None => self.issue(
                    format!("{key}.countries[{j}]"),
                    format!("\"{c}\" is not a two-letter country code (ISO 3166-1 alpha-2, e.g. \"US\")"),
                ),
            }
        }
        if !codes.is_empty() && geoip.country_db.is_none() {
            self.issue(format!("{key}.countries"), "needs geoip.country_db");
        }
        (nets, numbers, codes)
    }

    fn key_kind(
        &mut self,
        key: &str,
        kind: Option<&str>,
        prefix: (Option<i64>, Option<i64>),
        header: Option<String>,
        geoip: &GeoipConfig,
    ) -> KeyKind {
        let kind = match kind {
            Some("ip") => KeyKind::Ip,
            Some("prefix") => {
                let mut len = |k: &str, v: Option<i64>, default: u8, max: i64| match v {
                    None => default,
                    Some(n) if (1..=max).contains(&n) => n as u8,
                    Some(n) => {
                        self.issue(
                            format!("{key}.{k}"),
                            format!("must be from 1 to {max}, got {n}"),
                        );
                        default
                    }
                };
                KeyKind::Prefix {
                    v4: len("prefix_v4", prefix.0, DEFAULT_PREFIX_V4, 32),
                    v6: len("prefix_v6", prefix.1, DEFAULT_PREFIX_V6, 128),
                }
            }
            Some("asn") => {
                if geoip.asn_db.is_none() {
                    self.issue(format!("{key}.key"), "\"asn\" needs geoip.asn_db");
                }
                KeyKind::Asn
            }
            Some("country") => {
                if geoip.country_db.is_none() {
                    self.issue(format!("{key}.key"), "\"country\" needs geoip.country_db");
                }
                KeyKind::Country
            }
            Some("header") => match &header {
                Some(h)
                    if !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    KeyKind::Header(h.to_ascii_lowercase())
                }
                Some(h) => {
                    self.issue(
                        format!("{key}.header"),
                        format!("\"{h}\" is not a header name"),
                    );
                    KeyKind::Ip
                }
                None => {
                    self.issue(format!("{key}.header"), "is required with key = \"header\"");
                    KeyKind::Ip
                }
            },
            Some("route") => KeyKind::Route,
            None => {
                self.issue(
                    format!("{key}.key"),
                    "is required (ip, prefix, asn, country, header or route)",
                );
                KeyKind::Ip
            }
            Some(other) => {
                self.issue(
                    format!("{key}.key"),
                    format!("\"{other}\" is not a key kind (use ip, prefix, asn, country, header or route)"),
                );
                KeyKind::Ip
            }
        };
        if !matches!(kind, KeyKind::Prefix { .. }) {
            if prefix.0.is_some() {
                self.issue(
                    format!("{key}.prefix_v4"),
                    "only used with key = \"prefix\"",
                );
            }
            if prefix.1.is_some() {
                self.issue(
                    format!("{key}.prefix_v6"),
                    "only used with key = \"prefix\"",
                );
            }
        }
        if header.is_some() && !matches!(kind, KeyKind::Header(_)) {
            self.issue(format!("{key}.header"), "only used with key = \"header\"");
        }
        kind
    }

    fn body_key(
        &mut self,
        key: &str,
        field: Option<String>,
        normalize: Option<String>,
        number_prefix: Option<i64>,
        max_body_bytes: Option<i64>,
    ) -> BodyKeyConfig {
        let field = match field {
            Some(f) if !f.is_empty() => f,
            _ => {
                self.issue(
                    format!("{key}.field"),
                    "is required with key = \"body\" (e.g. \"username\" or \"/user/phone\")",
                );
                String::new()
            }
        };
        let pointer = match field_pointer(&field) {
            Ok(p) => p,
            Err(why) => {
                if !field.is_empty() {
                    self.issue(format!("{key}.field"), why);
                }
                Vec::new()
            }
        };
        let normalize = match normalize.as_deref() {
            None | Some("account") => BodyKeyNormalize::Account,
            Some("phone") => BodyKeyNormalize::Phone,
            Some(other) => {
                self.issue(
                    format!("{key}.normalize"),
                    format!("\"{other}\" is not a normalisation (use \"account\" or \"phone\")"),
                );
                BodyKeyNormalize::Account
            }
        };
        let number_prefix = match number_prefix {
            None => None,
            Some(_) if normalize != BodyKeyNormalize::Phone => {
                self.issue(
                    format!("{key}.number_prefix"),
                    "only with normalize = \"phone\"",
                );
                None
            }
            Some(n) if (1..=15).contains(&n) => Some(n as u8),
            Some(n) => {
                self.issue(
                    format!("{key}.number_prefix"),
                    format!("must be from 1 to 15 digits of the E.164 number, got {n}"),
                );
                None
            }
        };
        let max_body_bytes = match max_body_bytes {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) if n >= 1 && (n as usize) <= MAX_BODY_BYTES_LIMIT => n as usize,
            Some(n) => {
                self.issue(
                    format!("{key}.max_body_bytes"),
                    format!("must be from 1 to {MAX_BODY_BYTES_LIMIT} (the body is replayed from a 64 KiB buffer), got {n}"),
                );
                DEFAULT_MAX_BODY_BYTES
            }
        };
        BodyKeyConfig {
            field,
            pointer,
            normalize,
            number_prefix,
            max_body_bytes,
        }
    }

    fn limit(
        &mut self,
        i: usize,
        raw: file::FileLimit,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
        flags: &[String],
    ) -> LimitConfig {
        let key = format!("limits[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let kind = if raw.key.as_deref() == Some("body") {
            if raw.routes.as_ref().is_none_or(|r| r.is_empty()) {
                self.issue(
                    format!("{key}.routes"),
                    "is required with key = \"body\" (the routes whose bodies carry the field)",
                );
            }
            KeyKind::Body(self.body_key(
                &key,
                raw.field,
                raw.normalize,
                raw.number_prefix,
                raw.max_body_bytes,
            ))
        } else {
            for (name, set) in [
                ("field", raw.field.is_some()),
                ("normalize", raw.normalize.is_some()),
                ("number_prefix", raw.number_prefix.is_some()),
                ("max_body_bytes", raw.max_body_bytes.is_some()),
            ] {
                if set {
                    self.issue(format!("{key}.{name}"), "only with key = \"body\"");
                }
            }
            self.key_kind(
                &key,
                raw.key.as_deref(),
                (raw.prefix_v4, raw.prefix_v6),
                raw.header,
                geoip,
            )
        };
        let rate = match raw.rate.as_deref() {
            None => {
                self.issue(format!("{key}.rate"), "is required (e.g. \"10/s\")");
                None
            }
            Some(text) => match parse_rate(text) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.issue(format!("{key}.rate"), e);
                    None
                }
            },
        };
        let rate = rate.unwrap_or(Rate {
            count: NonZeroU32::MIN,
            per: Duration::from_secs(1),
        });
        let burst = self.count(&format!("{key}.burst"), raw.burst, rate.count.get());
        let cost = self.count(&format!("{key}.cost"), raw.cost, 1);
        if cost > burst {
            self.issue(
                format!("{key}.cost"),
                format!("{cost} is more than the burst of {burst}: no request could ever pass"),
            );
        }
        let only_with_flag = raw.only_with_flag.and_then(|name| {
            let found = flags.iter().position(|f| *f == name);
            if found.is_none() {
                self.issue(
                    format!("{key}.only_with_flag"),
                    format!("unknown flag \"{name}\" (known: {})", list_or_none(flags)),
                );
            }
            found
        });
        let scope = match raw.scope.as_deref() {
            None | Some("local") => {
                if raw.fleet_failure.is_some() {
                    self.issue(
                        format!("{key}.fleet_failure"),
                        "only used with scope = \"fleet\"",
                    );
                }
                LimitScope::Local
            }
            Some("fleet") => {
                let failure = match raw.fleet_failure.as_deref() {
                    None | Some("local") => {
                        let share = raw.fleet_local_share.unwrap_or(0.5);
                        if !(share > 0.0 && share <= 1.0) {
                            self.issue(
                                format!("{key}.fleet_local_share"),
                                format!("must be above 0 and at most 1, got {share}"),
                            );
                        }
                        FleetFailure::Local {
                            share: share.clamp(0.001, 1.0),
                        }
                    }
                    Some("open") => FleetFailure::Open,
                    Some("closed") => FleetFailure::Closed,
                    Some(other) => {
                        self.issue(
                            format!("{key}.fleet_failure"),
                            format!("\"{other}\" is not a failure mode (use \"open\", \"closed\" or \"local\")"),
                        );
                        FleetFailure::Closed
                    }
                };
                LimitScope::Fleet { failure }
            }
            Some(other) => {
                self.issue(
                    format!("{key}.scope"),
                    format!("\"{other}\" is not a scope (use \"local\" or \"fleet\")"),
                );
                LimitScope::Local
            }
        };
        LimitConfig {
            scope,
            only_with_flag,
            max_keys: self.count(&format!("{key}.max_keys"), raw.max_keys, DEFAULT_MAX_KEYS),
            routes: self.route_refs(&key, raw.routes, routes),
            shadow: raw.shadow.unwrap_or(false),
            name,
            key: kind,
            rate,
            burst,
            cost,
        }
    }

    fn concurrency(
        &mut self,
        i: usize,
        raw: file::FileConcurrency,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
    ) -> ConcurrencyConfig {
        let key = format!("concurrency[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let kind = self.key_kind(
            &key,
            raw.key.as_deref(),
            (raw.prefix_v4, raw.prefix_v6),
            raw.header,
            geoip,
        );
        if raw.max_in_flight.is_none() {
            self.issue(format!("{key}.max_in_flight"), "is required");
        }
        ConcurrencyConfig {
            max_in_flight: self.count(&format!("{key}.max_in_flight"), raw.max_in_flight, 1),
            max_keys: self.count(&format!("{key}.max_keys"), raw.max_keys, DEFAULT_MAX_KEYS),
            routes: self.route_refs(&key, raw.routes, routes),
            shadow: raw.shadow.unwrap_or(false),
            name,
            key: kind,
        }
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

impl Validator {
    fn fleet(&mut self, raw: file::FileFleet) -> FleetConfig {
        let redis_url = match raw.redis_url {
            Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => u,
            Some(u) => {
                self.issue("fleet.redis_url", format!("\"{u}\" is not a redis:// URL"));
                u
            }
            None => {
                self.issue(
                    "fleet.redis_url",
                    "is required (e.g. \"redis://127.0.0.1:6379/0\")",
                );
                String::new()
            }
        };
        let quota_batch = match raw.quota_batch {
            None => DEFAULT_FLEET_QUOTA_BATCH,
            Some(n) if (1..=1000).contains(&n) => n as u32,
            Some(n) => {
                self.issue(
                    "fleet.quota_batch",
                    format!("must be from 1 to 1000, got {n}"),
                );
                DEFAULT_FLEET_QUOTA_BATCH
            }
        };
        FleetConfig {
            redis_url,
            key_prefix: raw.key_prefix.unwrap_or_else(|| "rampart:".to_string()),
            node: raw.node,
            timeout: self.nonzero_duration(
                "fleet.timeout",
                raw.timeout.as_deref(),
                DEFAULT_FLEET_TIMEOUT,
            ),
            resync_interval: self.nonzero_duration(
                "fleet.resync_interval",
                raw.resync_interval.as_deref(),
                DEFAULT_FLEET_RESYNC,
            ),
            quota_batch,
        }
    }

    fn access_log(&mut self, raw: file::FileAccessLog) -> AccessLogConfig {
        let target = match (raw.enabled.unwrap_or(false), raw.path.as_deref()) {
            (false, _) => None,
            (true, None | Some("-")) => Some(AccessLogTarget::Stdout),
            (true, Some(p)) => Some(AccessLogTarget::File(self.relative_path(p))),
        };
        let rejected_lines_per_second = match raw.rejected_lines_per_second {
            None => DEFAULT_REJECTED_LINES_PER_SECOND,
            Some(n) if (0..=1_000_000).contains(&n) => n as u32,
            Some(n) => {
                self.issue(
                    "access_log.rejected_lines_per_second",
                    format!("must be from 0 to 1000000, got {n}"),
                );
                DEFAULT_REJECTED_LINES_PER_SECOND
            }
        };
        AccessLogConfig {
            target,
            rejected_lines_per_second,
        }
    }

    fn lockdown(
        &mut self,
        raw: file::FileLockdown,
        flags: Vec<file::FileFlag>,
        routes: &[String],
        geoip: &GeoipConfig,
        referenced: &[usize],
    ) -> LockdownConfig {
        let state_file = self.relative_path(
            raw.state_file
                .as_deref()
                .unwrap_or(DEFAULT_LOCKDOWN_STATE_FILE),
        );
        let audit_log = self.relative_path(
            raw.audit_log
                .as_deref()
                .unwrap_or(DEFAULT_LOCKDOWN_AUDIT_LOG),
        );
        if state_file == audit_log {
            self.issue("lockdown.audit_log", "must not be the state file");
        }
        let mut seen = BTreeSet::new();
        let flags = flags
            .into_iter()
            .enumerate()
            .map(|(i, f)| self.flag(i, f, routes, geoip, &mut seen, referenced.contains(&i)))
            .collect();
        let max_ttl = self.nonzero_duration(
            "lockdown.max_ttl",
            raw.max_ttl.as_deref(),
            DEFAULT_LOCKDOWN_MAX_TTL,
        );
        LockdownConfig {
            state_file,
            audit_log,
            flags,
            max_ttl,
        }
    }

    fn required_routes(
        &mut self,
        key: &str,
        names: Option<Vec<String>>,
        routes: &[String],
    ) -> Vec<usize> {
        match names {
            Some(list) if !list.is_empty() => {
                self.route_refs(key, Some(list), routes).unwrap_or_default()
            }
            _ => {
                self.issue(format!("{key}.routes"), "at least one route is required");
                Vec::new()
            }
        }
    }

    fn flag(
        &mut self,
        i: usize,
        raw: file::FileFlag,
        routes: &[String],
        geoip: &GeoipConfig,
        seen: &mut BTreeSet<String>,
        referenced: bool,
    ) -> FlagConfig {
        let key = format!("flags[{i}]");
        let name = self.rule_name(&key, raw.name, i, seen);
        let maintenance = raw.maintenance.map(|m| {
            let mkey = format!("{key}.maintenance");
            MaintenanceConfig {
                routes: self.route_refs(&mkey, m.routes, routes),
                retry_after: self.nonzero_duration(
                    &format!("{mkey}.retry_after"),
                    m.retry_after.as_deref(),
                    DEFAULT_MAINTENANCE_RETRY_AFTER,
                ),
                message: m
                    .message
                    .unwrap_or_else(|| "The service is down for maintenance.".to_string()),
            }
        });
        let blocks = raw
            .block
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, b)| {
                let bkey = format!("{key}.block[{j}]");
                let status = match b.status {
                    None => 403,
                    Some(s) if (400..=599).contains(&s) => s as u16,
                    Some(s) => {
                        self.issue(
                            format!("{bkey}.status"),
                            format!("must be an error status from 400 to 599, got {s}"),
                        );
                        403
                    }
                };
                BlockConfig {
                    routes: self.required_routes(&bkey, b.routes, routes),
                    status,
                    message: b.message.unwrap_or_else(|| {
                        "This part of the service is temporarily closed.".to_string()
                    }),
                }
            })
            .collect();
        let allow_only_routes = raw.allow_only_routes.map(|list| {
            if list.is_empty() {
                self.issue(
                    format!("{key}.allow_only_routes"),
                    "an empty list would block everything; use maintenance instead",
                );
            }
            let mut out = Vec::new();
            for (j, name) in list.iter().enumerate() {
                match routes.iter().position(|r| r == name) {
                    Some(r) => out.push(r),
                    None => self.issue(
                        format!("{key}.allow_only_routes[{j}]"),
                        format!("unknown route \"{name}\" (known: {})", list_or_none(routes)),
                    ),
                }
            }
            out
        });
        let require_session = raw.require_session.map(|s| {
            let skey = format!("{key}.require_session");
            if s.cookie.is_none() && s.header.is_none() {
                self.issue(&skey, "give a cookie or a header that marks a session");
            }
            SessionConfig {
                routes: self.required_routes(&skey, s.routes, routes),
                cookie: s.cookie,
                header: s.header.map(|h| h.to_ascii_lowercase()),
            }
        });
        let restrict = raw
            .restrict
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(j, r)| {
                let rkey = format!("{key}.restrict[{j}]");
                let (cidrs, asns, countries) =
                    self.client_lists(&rkey, r.cidrs, r.asns, r.countries, geoip);
                RestrictConfig {
                    routes: self.required_routes(&rkey, r.routes, routes),
                    cidrs,
                    asns,
                    countries,
                }
            })
            .collect();
        let body_rules = raw
            .body_rules
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| {
                let bkey = format!("{key}.body_rules[{j}]");
                let route = match b.route {
                    None => {
                        self.issue(format!("{bkey}.route"), "is required");
                        None
                    }
                    Some(name) => {
                        let found = routes.iter().position(|r| *r == name);
                        if found.is_none() {
                            self.issue(
                                format!("{bkey}.route"),
                                format!("unknown route \"{name}\" (known: {})", list_or_none(routes)),
                            );
                        }
                        found
                    }
                };
                let field = match b.field {
                    Some(f) if !f.is_empty() => f,
                    _ => {
                        self.issue(format!("{bkey}.field"), "is required (e.g. \"phone\")");
                        String::new()
                    }
                };
                let pointer = match field_pointer(&field) {
                    Ok(p) => p,
                    Err(why) => {
                        self.issue(format!("{bkey}.field"), why);
                        Vec::new()
                    }
                };
                let mut codes = Vec::new();
                for (k, c) in b.allowed_calling_codes.unwrap_or_default().iter().enumerate() {
                    let digits = c.trim().trim_start_matches('+');
                    if (1..=3).contains(&digits.len()) && digits.bytes().all(|d| d.is_ascii_digit()) && !digits.starts_with('0') {
                        codes.push(digits.to_string());
                    } else {
                        self.issue(
                            format!("{bkey}.allowed_calling_codes[{k}]"),
                            format!("\"{c}\" is not a country calling code (e.g. \"+86\")"),
                        );
                    }
                }
                let mut regions = Vec::new();
                for (k, r) in b.allowed_regions.unwrap_or_default().iter().enumerate() {
                    if r.len() == 2 && r.bytes().all(|c| c.is_ascii_uppercase()) {
                        regions.push(r.clone());
                    } else {
                        self.issue(
                            format!("{bkey}.allowed_regions[{k}]"),
                            format!("\"{r}\" is not a region code (two upper-case letters, e.g. \"CN\")"),
                        );
                    }
                }
                if codes.is_empty() && regions.is_empty() {
                    self.issue(
                        bkey.clone(),
                        "needs allowed_regions (e.g. [\"CN\"]) or allowed_calling_codes (e.g. [\"+86\"])",
                    );
                }
                let mut number_types = Vec::new();
                for (k, t) in b.number_types.unwrap_or_default().iter().enumerate() {
                    match PhoneType::parse(t) {
                        Some(t) => number_types.push(t),
                        None => {
                            let known: Vec<&str> = PhoneType::ALL.iter().map(|(_, n)| *n).collect();
                            self.issue(
                                format!("{bkey}.number_types[{k}]"),
                                format!("\"{t}\" is not a number type (known: {})", known.join(", ")),
                            );
                        }
                    }
                }
                let mut methods = Vec::new();
                for (k, m) in b.methods.unwrap_or_default().into_iter().enumerate() {
                    if m.is_empty() || !m.bytes().all(|c| c.is_ascii_alphabetic()) {
                        self.issue(format!("{bkey}.methods[{k}]"), format!("\"{m}\" is not an HTTP method"));
                    } else {
                        methods.push(m.to_ascii_uppercase());
                    }
                }
                let max_body_bytes = match b.max_body_bytes {
                    None => DEFAULT_MAX_BODY_BYTES,
                    Some(n) if n >= 1 && (n as usize) <= MAX_BODY_BYTES_LIMIT => n as usize,
                    Some(n) => {
                        self.issue(
                            format!("{bkey}.max_body_bytes"),
                            format!("must be from 1 to {MAX_BODY_BYTES_LIMIT} (the body is replayed from a 64 KiB buffer), got {n}"),
                        );
                        DEFAULT_MAX_BODY_BYTES
                    }
                };
                Some(BodyRuleConfig {
                    route: route?,
                    field,
                    pointer,
                    allowed_calling_codes: codes,
                    allowed_regions: regions,
                    number_types,
                    methods,
                    max_body_bytes,
                })
            })
            .collect();
        let limit_scale = raw.limit_scale.filter(|s| {
            let ok = *s > 0.0 && *s <= 1.0;
            if !ok {
                self.issue(
                    format!("{key}.limit_scale"),
                    format!("must be above 0 and at most 1 (it tightens buckets), got {s}"),
                );
            }
            ok
        });
        let flag = FlagConfig {
            name,
            description: raw.description.unwrap_or_default(),
            default_active: raw.default_active.unwrap_or(false),
            maintenance,
            blocks,
            allow_only_routes,
            require_session,
            restrict,
            body_rules,
            limit_scale,
        };
        let does_something = flag.maintenance.is_some()
            || !flag.blocks.is_empty()
            || flag.allow_only_routes.is_some()
            || flag.require_session.is_some()
            || !flag.restrict.is_empty()
            || !flag.body_rules.is_empty()
            || flag.limit_scale.is_some();
        if !does_something && !referenced {
            self.issue(
                &key,
                "does nothing: give maintenance, block, allow_only_routes, require_session, restrict, body_rules or limit_scale (or reference it from a limit's only_with_flag)",
            );
        }
        flag
    }
}

/// `"cn"` becomes `"CN"`; anything but two ASCII letters is refused.
fn country_code(text: &str) -> Option<String> {
    (text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()))
        .then(|| text.to_ascii_uppercase())
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

/// Whether route `a` (earlier) takes every request that route `b` would match:
/// same or no host, and `b`'s path prefix lies under `a`'s on whole segments
/// (without regard to case when `a` ignores case).
fn route_covers(a: &RouteConfig, b: &RouteConfig) -> bool {
    let host = match (&a.host, &b.host) {
        (None, _) => true,
        (Some(x), Some(y)) => x == y,
        (Some(_), None) => false,
    };
    if !host {
        return false;
    }
    let (p, q) = (a.path_prefix.as_bytes(), b.path_prefix.as_bytes());
    if q.len() < p.len() {
        return false;
    }
    let head = &q[..p.len()];
    let same = if a.case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    // b's prefix may itself end mid-segment ("/api/x" vs "/api/xy"): only whole
    // segments count, as in matching.
    same && (p.ends_with(b"/") || q.len() == p.len() || matches!(q[p.len()], b'/' | b';'))
}

/// The segments of a body field: a top-level name, or a JSON Pointer (RFC 6901)
/// when it starts with `/`.
fn field_pointer(field: &str) -> Result<Vec<String>, String> {
    let Some(rest) = field.strip_prefix('/') else {
        return Ok(vec![field.to_string()]);
    };
    rest.split('/')
        .map(|seg| {
            let mut out = String::with_capacity(seg.len());
            let mut chars = seg.chars();
            while let Some(c) = chars.next() {
                match c {
                    '~' => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => {
                            return Err(format!(
                                "\"{field}\" is not a JSON Pointer: '~' must be followed by 0 or 1"
                            ))
                        }
                    },
                    c => out.push(c),
                }
            }
            if out.is_empty() {
                return Err(format!("\"{field}\" has an empty segment"));
            }
            Ok(out)
        })
        .collect()
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
