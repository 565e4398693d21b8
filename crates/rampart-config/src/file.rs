//! The file layer: structs that mirror the TOML document one to one.
//!
//! Values that carry units (durations, addresses, CIDRs) stay strings here so that
//! every bad value becomes one entry in the error list instead of stopping the parse
//! at the first one. Unknown keys are collected by `serde_ignored` in [`crate::load`]
//! for the same reason (rather than `deny_unknown_fields`, which stops at the first).

use serde::Deserialize;
use std::collections::BTreeMap;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
pub struct FileConfig {
    /// `[server]`
    #[serde(default)]
    pub server: FileServer,
    /// `[client_ip]`
    #[serde(default)]
    pub client_ip: FileClientIp,
    /// `[[listeners]]`
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    /// `[admin]`
    #[serde(default)]
    pub admin: FileAdmin,
    /// `[pools.NAME]`
    #[serde(default)]
    pub pools: BTreeMap<String, FilePool>,
    /// `[[routes]]`
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    /// `[unmatched]`
    #[serde(default)]
    pub unmatched: FileUnmatched,
    /// `[geoip]`
    #[serde(default)]
    pub geoip: FileGeoip,
    /// `[[access]]`
    #[serde(default)]
    pub access: Vec<FileAccess>,
    /// `[[limits]]`
    #[serde(default)]
    pub limits: Vec<FileLimit>,
    /// `[[concurrency]]`
    #[serde(default)]
    pub concurrency: Vec<FileConcurrency>,
    /// `[lockdown]`
    #[serde(default)]
    pub lockdown: FileLockdown,
    /// `[[flags]]`
    #[serde(default)]
    pub flags: Vec<FileFlag>,
    /// `[access_log]`
    #[serde(default)]
    pub access_log: FileAccessLog,
    /// `[record]`
    #[serde(default)]
    pub record: FileRecord,
    /// `[fleet]`
    pub fleet: Option<FileFleet>,
    /// `[request]`
    #[serde(default)]
    pub request: FileRequest,
    /// `[[escalations]]`
    #[serde(default)]
    pub escalations: Vec<FileEscalation>,
    /// `[jwt]`
    pub jwt: Option<FileJwt>,
}

/// `[jwt]`: how bearer tokens are verified for `key = "jwt"` rules.
#[derive(Debug, Default, Deserialize)]
pub struct FileJwt {
    /// A JSON Web Key Set file, re-read when it changes.
    pub jwks_file: Option<String>,
    /// A file holding the HS256 shared secret.
    pub hs256_secret_file: Option<String>,
    /// An environment variable holding the HS256 shared secret.
    pub hs256_secret_env: Option<String>,
    /// Accepted algorithms: `HS256`, `RS256`, `ES256`, `EdDSA`.
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, e.g. `"30s"`.
    pub leeway: Option<String>,
    /// The `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// The `aud` a token must carry, when set.
    pub audience: Option<String>,
    /// How often the JWKS file is checked for a change.
    pub check_interval: Option<String>,
    /// Verified tokens remembered.
    pub cache_size: Option<i64>,
}

/// `[[escalations]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileEscalation {
    /// Name (audit actor `auto:<name>`, metrics).
    pub name: Option<String>,
    /// The flag it enters and leaves.
    pub flag: Option<String>,
    /// `enforce` (default) or `preview`.
    pub mode: Option<String>,
    /// `request_rate`, `rejected_share`, `origin_p99` or `origin_5xx_share`.
    pub signal: Option<String>,
    /// The route of a route signal (absent: every request).
    pub route: Option<String>,
    /// The pool of a pool signal.
    pub pool: Option<String>,
    /// Enter when the signal is above this.
    pub enter_above: Option<f64>,
    /// ... for this long.
    pub enter_for: Option<String>,
    /// Leave when the signal is below this.
    pub leave_below: Option<f64>,
    /// ... for this long.
    pub leave_for: Option<String>,
    /// Stay at least this long once entered.
    pub min_hold: Option<String>,
    /// Fewer requests (responses) in the window count as calm.
    pub min_requests: Option<i64>,
}

/// `[request]`
#[derive(Debug, Default, Deserialize)]
pub struct FileRequest {
    /// Keep `;` in paths instead of refusing it.
    pub allow_semicolons: Option<bool>,
    /// Client header fields removed before forwarding (replaces the default list).
    pub strip_headers: Option<Vec<String>>,
}

/// `[fleet]`: shared state through Redis.
#[derive(Debug, Default, Deserialize)]
pub struct FileFleet {
    /// `redis://host:port/db`: one server.
    pub redis_url: Option<String>,
    /// A master found through Redis Sentinel.
    pub sentinel: Option<FileSentinel>,
    /// Seed nodes of a Redis Cluster (or Valkey cluster).
    pub cluster_urls: Option<Vec<String>>,
    /// Prefix of every Redis key and channel.
    pub key_prefix: Option<String>,
    /// This node's name (audit records); the host name by default.
    pub node: Option<String>,
    /// Longest a request waits on Redis.
    pub timeout: Option<String>,
    /// Full flag resync period.
    pub resync_interval: Option<String>,
    /// Tokens leased from a fleet bucket per Redis round trip.
    pub quota_batch: Option<i64>,
}

/// `[fleet] sentinel = { ... }`
#[derive(Debug, Default, Deserialize)]
pub struct FileSentinel {
    /// The name the sentinels monitor.
    pub master: Option<String>,
    /// The sentinels' URLs.
    pub urls: Option<Vec<String>>,
    /// Database on the master.
    pub db: Option<i64>,
    /// User name on the master and replicas.
    pub username: Option<String>,
    /// Password on the master and replicas.
    pub password: Option<String>,
}

/// `[access_log]`
#[derive(Debug, Default, Deserialize)]
pub struct FileAccessLog {
    /// Write one JSON line per request.
    pub enabled: Option<bool>,
    /// File, or `-` for standard output.
    pub path: Option<String>,
    /// Most lines per second for rejected requests; the rest are counted.
    pub rejected_lines_per_second: Option<i64>,
}

/// `[record]`
#[derive(Debug, Default, Deserialize)]
pub struct FileRecord {
    /// Write a record of every request for `rampart replay`.
    pub enabled: Option<bool>,
    /// Directory of the record files.
    pub dir: Option<String>,
    /// A file is closed and a new one started at this size (MiB).
    pub max_file_mb: Option<i64>,
    /// Oldest files are deleted beyond this total (MiB).
    pub max_total_mb: Option<i64>,
    /// Every request is recorded up to this many per second.
    pub full_rate_per_second: Option<i64>,
    /// Beyond it, one request in this many.
    pub flood_sample: Option<i64>,
    /// Request headers kept besides the ones rules read (as keyed hashes).
    pub headers: Option<Vec<String>>,
    /// gzip the files.
    pub compress: Option<bool>,
}

/// `[lockdown]`
#[derive(Debug, Default, Deserialize)]
pub struct FileLockdown {
    /// Where active flags are persisted.
    pub state_file: Option<String>,
    /// Where every flag change is appended as a JSON line.
    pub audit_log: Option<String>,
    /// Longest ttl an activation may ask for.
    pub max_ttl: Option<String>,
}

/// `[[flags]]`: a named lockdown overlay.
#[derive(Debug, Default, Deserialize)]
pub struct FileFlag {
    /// Flag name.
    pub name: Option<String>,
    /// What it is for, for operators.
    pub description: Option<String>,
    /// Active at start when no state file says otherwise.
    pub default_active: Option<bool>,
    /// Answer 503 with Retry-After.
    pub maintenance: Option<FileMaintenance>,
    /// Block routes.
    pub block: Option<Vec<FileBlock>>,
    /// Only these routes stay open; every other request is blocked.
    pub allow_only_routes: Option<Vec<String>>,
    /// Require an existing session on routes.
    pub require_session: Option<FileRequireSession>,
    /// Only clients from these networks, ASNs or countries on routes.
    pub restrict: Option<Vec<FileRestrict>>,
    /// Checks on request bodies.
    pub body_rules: Option<Vec<FileBodyRule>>,
    /// Multiply every bucket's rate and burst by this factor (0 < f <= 1).
    pub limit_scale: Option<f64>,
}

/// `maintenance = { ... }`
#[derive(Debug, Default, Deserialize)]
pub struct FileMaintenance {
    /// Routes in maintenance; all when absent.
    pub routes: Option<Vec<String>>,
    /// Retry-After.
    pub retry_after: Option<String>,
    /// Message for clients.
    pub message: Option<String>,
}

/// `block = [{ ... }]`
#[derive(Debug, Default, Deserialize)]
pub struct FileBlock {
    /// Blocked routes.
    pub routes: Option<Vec<String>>,
    /// Status (403 by default).
    pub status: Option<i64>,
    /// Message for clients.
    pub message: Option<String>,
}

/// `require_session = { ... }`
#[derive(Debug, Default, Deserialize)]
pub struct FileRequireSession {
    /// Routes that need a session.
    pub routes: Option<Vec<String>>,
    /// Cookie that marks a session.
    pub cookie: Option<String>,
    /// Header that marks a session.
    pub header: Option<String>,
}

/// `restrict = [{ ... }]`
#[derive(Debug, Default, Deserialize)]
pub struct FileRestrict {
    /// Restricted routes.
    pub routes: Option<Vec<String>>,
    /// Allowed networks.
    pub cidrs: Option<Vec<String>>,
    /// Allowed ASNs.
    pub asns: Option<Vec<i64>>,
    /// Allowed countries.
    pub countries: Option<Vec<String>>,
}

/// `body_rules = [{ ... }]`
#[derive(Debug, Default, Deserialize)]
pub struct FileBodyRule {
    /// Route whose bodies are checked.
    pub route: Option<String>,
    /// JSON or form field holding a phone number.
    pub field: Option<String>,
    /// Allowed country calling codes, e.g. `["+86"]`.
    pub allowed_calling_codes: Option<Vec<String>>,
    /// Allowed regions, e.g. `["CN"]`.
    pub allowed_regions: Option<Vec<String>>,
    /// Allowed number types, e.g. `["mobile"]`.
    pub number_types: Option<Vec<String>>,
    /// Methods checked; every method when absent.
    pub methods: Option<Vec<String>>,
    /// Largest body read, in bytes.
    pub max_body_bytes: Option<i64>,
}

/// `[geoip]`
#[derive(Debug, Default, Deserialize)]
pub struct FileGeoip {
    /// Country database (MMDB).
    pub country_db: Option<String>,
    /// ASN database (MMDB).
    pub asn_db: Option<String>,
    /// How often the files are checked for changes.
    pub check_interval: Option<String>,
    /// `allow` or `deny` when the country of a client is unknown.
    pub unknown_country: Option<String>,
    /// `allow` or `deny` when the ASN of a client is unknown.
    pub unknown_asn: Option<String>,
}

/// `[[access]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileAccess {
    /// Rule name.
    pub name: Option<String>,
    /// `allow` or `deny`.
    pub action: Option<String>,
    /// Networks.
    pub cidrs: Option<Vec<String>>,
    /// Autonomous system numbers.
    pub asns: Option<Vec<i64>>,
    /// ISO 3166-1 alpha-2 country codes.
    pub countries: Option<Vec<String>>,
    /// Matches clients outside these networks.
    pub not_cidrs: Option<Vec<String>>,
    /// Matches clients outside these autonomous systems.
    pub not_asns: Option<Vec<i64>>,
    /// Matches clients outside these countries.
    pub not_countries: Option<Vec<String>>,
    /// JA4 TLS fingerprints (or patterns with `*` parts).
    pub ja4: Option<Vec<String>>,
    /// Matches clients whose JA4 is none of these (or that have none).
    pub not_ja4: Option<Vec<String>>,
    /// Routes the rule applies to; all when absent.
    pub routes: Option<Vec<String>>,
}

/// `[[limits]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileLimit {
    /// Rule name.
    pub name: Option<String>,
    /// `ip`, `prefix`, `asn`, `country`, `header`, `jwt`, `ja4`, `route` or `body`.
    pub key: Option<String>,
    /// IPv4 prefix length for `key = "prefix"`.
    pub prefix_v4: Option<i64>,
    /// IPv6 prefix length for `key = "prefix"`.
    pub prefix_v6: Option<i64>,
    /// Header name for `key = "header"`.
    pub header: Option<String>,
    /// Claim of a verified token for `key = "jwt"` (default `sub`).
    pub claim: Option<String>,
    /// Body field (name or JSON Pointer) for `key = "body"`.
    pub field: Option<String>,
    /// `account` or `phone`, for `key = "body"`.
    pub normalize: Option<String>,
    /// Digits of the E.164 number keyed on, for `normalize = "phone"`.
    pub number_prefix: Option<i64>,
    /// Largest body read, for `key = "body"`.
    pub max_body_bytes: Option<i64>,
    /// Sustained rate, e.g. `"10/s"`.
    pub rate: Option<String>,
    /// Requests allowed at once on a full bucket.
    pub burst: Option<i64>,
    /// Cells one request takes.
    pub cost: Option<i64>,
    /// Routes the rule applies to; all when absent.
    pub routes: Option<Vec<String>>,
    /// Most keys tracked at once.
    pub max_keys: Option<i64>,
    /// Count, never enforce.
    pub shadow: Option<bool>,
    /// Only in force while this lockdown flag is enforced.
    pub only_with_flag: Option<String>,
    /// `local` (default) or `fleet`.
    pub scope: Option<String>,
    /// For fleet rules when Redis fails: `open`, `closed` or `local`.
    pub fleet_failure: Option<String>,
    /// Share of the budget the local fallback gets (0 < share <= 1).
    pub fleet_local_share: Option<f64>,
    /// Applies only to clients in these networks.
    pub cidrs: Option<Vec<String>>,
    /// Applies only to clients in these autonomous systems.
    pub asns: Option<Vec<i64>>,
    /// Applies only to clients in these countries.
    pub countries: Option<Vec<String>>,
    /// Applies only to clients outside these networks.
    pub not_cidrs: Option<Vec<String>>,
    /// Applies only to clients outside these autonomous systems.
    pub not_asns: Option<Vec<i64>>,
    /// Applies only to clients outside these countries.
    pub not_countries: Option<Vec<String>>,
    /// Applies only to clients with one of these JA4 fingerprints.
    pub ja4: Option<Vec<String>>,
    /// Applies only to clients with none of these JA4 fingerprints.
    pub not_ja4: Option<Vec<String>>,
    /// The penalty box: ban keys that keep being refused.
    pub ban: Option<FileBan>,
}

/// `ban = { ... }` of a `[[limits]]` rule.
#[derive(Debug, Default, Deserialize)]
pub struct FileBan {
    /// Refusals within `within` that ban the key.
    pub after: Option<i64>,
    /// The window the refusals are counted in.
    pub within: Option<String>,
    /// The first ban's length.
    #[serde(rename = "for")]
    pub duration: Option<String>,
    /// Each repeat ban within `memory` lasts this many times the last one.
    pub increment: Option<f64>,
    /// The longest ban.
    pub max: Option<String>,
    /// How long a ban is remembered for the increment.
    pub memory: Option<String>,
    /// Most keys tracked (offenders and bans).
    pub max_keys: Option<i64>,
}

/// `[[concurrency]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileConcurrency {
    /// Rule name.
    pub name: Option<String>,
    /// `ip`, `prefix`, `asn`, `country`, `header`, `jwt` or `route`.
    pub key: Option<String>,
    /// IPv4 prefix length for `key = "prefix"`.
    pub prefix_v4: Option<i64>,
    /// IPv6 prefix length for `key = "prefix"`.
    pub prefix_v6: Option<i64>,
    /// Header name for `key = "header"`.
    pub header: Option<String>,
    /// Claim of a verified token for `key = "jwt"` (default `sub`).
    pub claim: Option<String>,
    /// Most requests in flight per key.
    pub max_in_flight: Option<i64>,
    /// Routes the rule applies to; all when absent.
    pub routes: Option<Vec<String>>,
    /// Most keys tracked at once.
    pub max_keys: Option<i64>,
    /// Count, never enforce.
    pub shadow: Option<bool>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
pub struct FileServer {
    /// Worker threads for the public proxy service.
    pub threads: Option<i64>,
    /// Let idle worker threads steal tasks from busy ones.
    pub work_stealing: Option<bool>,
    /// Idle origin connections kept per process.
    pub upstream_keepalive_pool_size: Option<i64>,
    /// Which request loop serves HTTP/1.1: "rampart" or "pingora-proxy".
    pub http1_loop: Option<String>,
    /// Drain time after SIGTERM.
    pub grace_period: Option<String>,
    /// Time the runtimes get to stop after the drain.
    pub graceful_shutdown_timeout: Option<String>,
    /// Whole request head deadline.
    pub client_header_timeout: Option<String>,
    /// Whole request body deadline.
    pub client_body_timeout: Option<String>,
    /// Keep-alive idle deadline.
    pub keepalive_timeout: Option<String>,
    /// HTTP/2 idle deadline.
    pub h2_idle_timeout: Option<String>,
    /// Largest request head, bytes.
    pub max_request_head_bytes: Option<i64>,
    /// Most header fields per request.
    pub max_request_headers: Option<i64>,
    /// Most open connections per client address (0: no cap).
    pub max_connections_per_source: Option<i64>,
    /// Read buffer of each client connection, bytes.
    pub client_read_buffer_bytes: Option<i64>,
}

/// `[client_ip]`
#[derive(Debug, Default, Deserialize)]
pub struct FileClientIp {
    /// CIDRs whose forwarding headers are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// `x-forwarded-for` or `forwarded`.
    pub header: Option<String>,
}

/// `[[listeners]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileListener {
    /// `IP:PORT`
    pub address: Option<String>,
    /// Accept HTTP/2 without TLS (prior knowledge).
    pub h2c: Option<bool>,
    /// TLS certificate and key; HTTP/2 is offered through ALPN.
    pub tls: Option<FileTls>,
    /// `v1`, `v2` or `any`: PROXY protocol headers from `proxy_protocol_from`.
    pub proxy_protocol: Option<String>,
    /// Sources that send PROXY protocol headers (CIDRs).
    pub proxy_protocol_from: Option<Vec<String>>,
}

/// `tls = { cert = "...", key = "..." }`
#[derive(Debug, Default, Deserialize)]
pub struct FileTls {
    /// PEM certificate chain.
    pub cert: Option<String>,
    /// PEM private key.
    pub key: Option<String>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
pub struct FileAdmin {
    /// `IP:PORT`, loopback by default.
    pub address: Option<String>,
    /// Environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// File holding the bearer token.
    pub token_file: Option<String>,
}

/// `[pools.NAME]`
#[derive(Debug, Default, Deserialize)]
pub struct FilePool {
    /// `HOST:PORT` of each origin server.
    pub servers: Option<Vec<String>>,
    /// Speak TLS to the origin.
    pub tls: Option<bool>,
    /// SNI and Host for TLS origins.
    pub sni: Option<String>,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Option<String>,
    /// Longest wait for the next bytes from the origin.
    pub read_timeout: Option<String>,
    /// Longest wait while sending to the origin.
    pub write_timeout: Option<String>,
    /// How long an idle origin connection is kept for reuse.
    pub idle_timeout: Option<String>,
    /// `[pools.NAME.health_check]`
    pub health_check: Option<FileHealthCheck>,
}

/// `[pools.NAME.health_check]`
#[derive(Debug, Default, Deserialize)]
pub struct FileHealthCheck {
    /// `http` or `tcp`.
    pub kind: Option<String>,
    /// Path probed with GET when `kind = "http"`.
    pub path: Option<String>,
    /// Host header sent with HTTP probes.
    pub host: Option<String>,
    /// Time between probes.
    pub interval: Option<String>,
    /// Longest a probe may take.
    pub timeout: Option<String>,
    /// Consecutive successes that bring a server back.
    pub healthy_threshold: Option<i64>,
    /// Consecutive failures that take a server out.
    pub unhealthy_threshold: Option<i64>,
}

/// `[[routes]]`
#[derive(Debug, Default, Deserialize)]
pub struct FileRoute {
    /// Name used in metrics and logs.
    pub name: Option<String>,
    /// Exact Host (port ignored); any host when absent.
    pub host: Option<String>,
    /// Path prefix; `/` when absent.
    pub path_prefix: Option<String>,
    /// Allowed methods; any when absent.
    pub methods: Option<Vec<String>>,
    /// Upstream pool name.
    pub pool: Option<String>,
    /// `api` (problem+json rejections) or `browser` (HTML rejections).
    pub kind: Option<String>,
    /// Close the client connection after answering a rejection.
    pub close_on_reject: Option<bool>,
    /// Match the path prefix without regard to case.
    pub case_insensitive: Option<bool>,
}

/// `[unmatched]`
#[derive(Debug, Default, Deserialize)]
pub struct FileUnmatched {
    /// `reject` or `proxy`.
    pub action: Option<String>,
    /// Status for `reject`.
    pub status: Option<i64>,
    /// Pool for `proxy`.
    pub pool: Option<String>,
}
