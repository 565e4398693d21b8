//! The typed, validated config the rest of Rampart reads. Every value here has
//! passed validation: addresses are well formed (origin host names stay
//! unresolved, see [`ServerAddress`]), durations are non-zero where zero
//! makes no sense, and every pool a route names exists.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

/// Default public listener.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:8080";
/// Default admin listener: loopback only.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";
/// Default environment variable for the admin bearer token.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "RAMPART_ADMIN_TOKEN";
/// Default worker threads for the proxy service.
pub const DEFAULT_THREADS: usize = 1;
/// Default idle origin connections kept per process.
pub const DEFAULT_KEEPALIVE_POOL_SIZE: usize = 256;
/// Default drain time after SIGTERM.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5);
/// Default time the runtimes get to stop after the drain.
pub const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default origin connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest wait for the next bytes from an origin (long: chat streams think).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Default longest wait while sending to an origin.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle time an origin connection is kept for reuse.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time between health probes.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Default longest a health probe may take.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive successes that bring a server back.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// Default consecutive failures that take a server out.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
/// Default status for requests no route matches.
pub const DEFAULT_UNMATCHED_STATUS: u16 = 404;
/// Default most keys a limiter tracks at once.
pub const DEFAULT_MAX_KEYS: u32 = 100_000;
/// Default IPv4 prefix length of `key = "prefix"`.
pub const DEFAULT_PREFIX_V4: u8 = 24;
/// Default IPv6 prefix length of `key = "prefix"`.
pub const DEFAULT_PREFIX_V6: u8 = 64;
/// Default Redis timeout on the request path.
pub const DEFAULT_FLEET_TIMEOUT: Duration = Duration::from_millis(50);
/// Default full flag resync period.
pub const DEFAULT_FLEET_RESYNC: Duration = Duration::from_secs(1);
/// Default tokens leased per round trip.
pub const DEFAULT_FLEET_QUOTA_BATCH: u32 = 5;
/// Default most access log lines per second for rejected requests.
pub const DEFAULT_REJECTED_LINES_PER_SECOND: u32 = 100;
/// Default lockdown state file, relative to the config file.
pub const DEFAULT_LOCKDOWN_STATE_FILE: &str = "state/lockdown.json";
/// Default lockdown audit log, relative to the config file.
pub const DEFAULT_LOCKDOWN_AUDIT_LOG: &str = "state/lockdown-audit.jsonl";
/// Default Retry-After of a maintenance answer.
pub const DEFAULT_MAINTENANCE_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Default largest request body a body rule reads.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest `max_body_bytes` allowed: Pingora's retry buffer, which replays the
/// body to the origin, holds 64 KiB.
pub const MAX_BODY_BYTES_LIMIT: usize = 60 * 1024;
/// Default interval between checks of the GeoIP files for changes.
pub const DEFAULT_GEOIP_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Process-wide server settings.
    pub server: ServerConfig,
    /// How the client address is resolved.
    pub client_ip: ClientIpConfig,
    /// Public listeners; at least one.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener.
    pub admin: AdminConfig,
    /// Upstream pools, sorted by name.
    pub pools: Vec<PoolConfig>,
    /// Routes in match order.
    pub routes: Vec<RouteConfig>,
    /// What happens to a request no route matches.
    pub unmatched: UnmatchedConfig,
    /// GeoIP databases.
    pub geoip: GeoipConfig,
    /// Allow and deny rules, first match wins.
    pub access: Vec<AccessRuleConfig>,
    /// Rate limit rules, checked in order.
    pub limits: Vec<LimitConfig>,
    /// In-flight caps.
    pub concurrency: Vec<ConcurrencyConfig>,
    /// Lockdown flags and where their state lives.
    pub lockdown: LockdownConfig,
    /// The access log.
    pub access_log: AccessLogConfig,
    /// The request record for `rampart replay`.
    pub record: RecordConfig,
    /// Fleet mode; `None` runs standalone.
    pub fleet: Option<FleetConfig>,
    /// How request targets are canonicalised.
    pub request: RequestConfig,
    /// `[[escalations]]`, in config order.
    pub escalations: Vec<EscalationConfig>,
    /// `[jwt]`: bearer token verification for `key = "jwt"` rules.
    pub jwt: Option<JwtConfig>,
}

/// `[jwt]`: where the keys that verify bearer tokens come from, and what a
/// token must satisfy. Parsing does no I/O beyond checking that the files
/// exist; the proxy reads them when it applies the config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtConfig {
    /// A JSON Web Key Set (RS256, ES256, EdDSA and HS256 keys), re-read when
    /// its modification time or size changes.
    pub jwks_file: Option<PathBuf>,
    /// The HS256 shared secret.
    pub hs256_secret: Option<TokenSource>,
    /// Algorithms accepted (never `none`); a token's key must be of the type
    /// its algorithm names.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// When set, `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, `aud` must be or contain it.
    pub audience: Option<String>,
    /// How often the JWKS file is checked for a change.
    pub check_interval: Duration,
    /// Verified tokens remembered (so a client sending the same token again
    /// costs no signature check).
    pub cache_size: NonZeroU32,
}

/// A JWS algorithm Rampart verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (a shared secret).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl JwtAlgorithm {
    /// Every algorithm, the default of `algorithms`.
    pub const ALL: [JwtAlgorithm; 4] = [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Es256,
        JwtAlgorithm::EdDsa,
    ];

    /// The name in a token's header (`alg`) and in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    /// Reads a header's `alg` (exact spelling, as RFC 7518 writes it).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// Default `[jwt] leeway`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest `[jwt] leeway`.
pub const MAX_JWT_LEEWAY: Duration = Duration::from_secs(300);
/// Default `[jwt] check_interval`.
pub const DEFAULT_JWT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default `[jwt] cache_size`.
pub const DEFAULT_JWT_CACHE_SIZE: u32 = 10_000;
/// Default `claim` of a `key = "jwt"` rule.
pub const DEFAULT_JWT_CLAIM: &str = "sub";

/// `[request]`: how requests are read and what of them is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestConfig {
    /// Keep `;` in paths as an ordinary character (default: refuse with 400).
    pub allow_semicolons: bool,
    /// Client-sent header fields removed before forwarding: lower case, sorted,
    /// with `_` written as `-`. A field whose name matches after `_` becomes `-`
    /// (`X_Forwarded_For`) is removed too.
    pub strip_headers: Vec<String>,
}

/// Client-sent fields that claim a client address, host or scheme, which only
/// Rampart may set (it sends `X-Forwarded-For`, `X-Real-IP` and
/// `X-Forwarded-Proto` itself).
pub const DEFAULT_STRIP_HEADERS: &[&str] = &[
    "cf-connecting-ip",
    "fastly-client-ip",
    "forwarded",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-server",
    "x-original-forwarded-for",
    "x-real-ip",
];

impl Default for RequestConfig {
    fn default() -> Self {
        Self {
            allow_semicolons: false,
            strip_headers: DEFAULT_STRIP_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

/// `[fleet]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Where the fleet's Redis (or Valkey) is: one server, a master found
    /// through Sentinel, or a cluster.
    pub redis: FleetRedis,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// This node's name, when set.
    pub node: Option<String>,
    /// Longest a request waits on Redis.
    pub timeout: Duration,
    /// Full flag resync period.
    pub resync_interval: Duration,
    /// Tokens leased per round trip.
    pub quota_batch: u32,
}

/// Where the fleet's Redis is (`redis_url`, `sentinel` or `cluster_urls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetRedis {
    /// One server: `redis_url`.
    Single {
        /// `redis://host:port/db` (credentials may be in it).
        url: String,
    },
    /// The master that Redis Sentinel names: `sentinel = { master, urls }`.
    Sentinel(SentinelConfig),
    /// A Redis Cluster or Valkey cluster, discovered from any of these nodes:
    /// `cluster_urls`.
    Cluster {
        /// Seed nodes, `redis://host:port` (credentials may be in them).
        urls: Vec<String>,
    },
}

impl FleetRedis {
    /// `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        match self {
            Self::Single { .. } => "single",
            Self::Sentinel(_) => "sentinel",
            Self::Cluster { .. } => "cluster",
        }
    }

    /// Where Redis is, without credentials, for logs and `/fleet`.
    pub fn describe(&self) -> String {
        match self {
            Self::Single { url } => redact_url(url),
            Self::Sentinel(s) => format!(
                "sentinel master \"{}\" via {}",
                s.master,
                s.urls
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Self::Cluster { urls } => format!(
                "cluster via {}",
                urls.iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// `url` with any user name and password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// `[fleet] sentinel`: the master Redis Sentinel monitors under `master`.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    /// The name the sentinels monitor (`sentinel monitor <master> ...`).
    pub master: String,
    /// The sentinels, `redis://host:port` (their own credentials in the URL).
    pub urls: Vec<String>,
    /// Database of the master and its replicas.
    pub db: i64,
    /// User name on the master and its replicas (ACL), if any.
    pub username: Option<String>,
    /// Password on the master and its replicas, if any.
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master", &self.master)
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Where a limit's bucket lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitScope {
    /// This node's memory.
    Local,
    /// Redis, shared by the fleet.
    Fleet {
        /// What to do when Redis fails.
        failure: FleetFailure,
    },
}

/// Failure mode of a fleet rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FleetFailure {
    /// Allow.
    Open,
    /// Reject (429).
    Closed,
    /// Use a local bucket with this share of the budget.
    Local {
        /// 0 < share <= 1.
        share: f64,
    },
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to.
    File(PathBuf),
}

/// `[access_log]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `None` when the access log is off.
    pub target: Option<AccessLogTarget>,
    /// Most lines per second for rejected requests (sampling under attack).
    pub rejected_lines_per_second: u32,
}

/// `[record]`: the request record `rampart replay` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordConfig {
    /// Directory of the record files; `None` when recording is off.
    pub dir: Option<PathBuf>,
    /// A file is closed and a new one started at this size.
    pub max_file_bytes: u64,
    /// Oldest files are deleted while the directory holds more.
    pub max_total_bytes: u64,
    /// Every request is recorded up to this many per second.
    pub full_rate_per_second: u32,
    /// Beyond it, one request in this many (its record says so).
    pub flood_sample: u32,
    /// Request headers kept besides the ones rules read, lower case.
    pub headers: Vec<String>,
    /// Files are gzip streams (`.jsonl.gz`), flushed after every batch.
    pub compress: bool,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_file_bytes: 64 << 20,
            max_total_bytes: 1 << 30,
            full_rate_per_second: 2_000,
            flood_sample: 10,
            headers: Vec::new(),
            compress: true,
        }
    }
}

/// `[lockdown]` and `[[flags]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LockdownConfig {
    /// Active flags, persisted across restarts (written atomically).
    pub state_file: PathBuf,
    /// Every change, one JSON line each.
    pub audit_log: PathBuf,
    /// The flags, in config order.
    pub flags: Vec<FlagConfig>,
    /// Longest `ttl` an activation may ask for (`"none"` asks for no expiry).
    pub max_ttl: Duration,
}

/// Longest flag `ttl` by default.
pub const DEFAULT_LOCKDOWN_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

impl LockdownConfig {
    /// The index of the flag called `name`.
    pub fn flag_index(&self, name: &str) -> Option<usize> {
        self.flags.iter().position(|f| f.name == name)
    }
}

/// One `[[flags]]` overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagConfig {
    /// Flag name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Active at start when no state file says otherwise.
    pub default_active: bool,
    /// 503 with Retry-After.
    pub maintenance: Option<MaintenanceConfig>,
    /// Blocked routes.
    pub blocks: Vec<BlockConfig>,
    /// When set, every route not listed is blocked (503).
    pub allow_only_routes: Option<Vec<usize>>,
    /// Session required.
    pub require_session: Option<SessionConfig>,
    /// Client restrictions.
    pub restrict: Vec<RestrictConfig>,
    /// Body checks.
    pub body_rules: Vec<BodyRuleConfig>,
    /// Bucket scale factor, 0 < f <= 1.
    pub limit_scale: Option<f64>,
}

/// Maintenance answers.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceConfig {
    /// Routes in maintenance; every request when `None`.
    pub routes: Option<Vec<usize>>,
    /// Retry-After.
    pub retry_after: Duration,
    /// Message for clients.
    pub message: String,
}

/// A route block.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockConfig {
    /// Route indices.
    pub routes: Vec<usize>,
    /// Status.
    pub status: u16,
    /// Message for clients.
    pub message: String,
}

/// Session requirement.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// Route indices.
    pub routes: Vec<usize>,
    /// Cookie name.
    pub cookie: Option<String>,
    /// Header name, lower case.
    pub header: Option<String>,
}

/// Client restriction on routes: the client must match one of the lists.
#[derive(Debug, Clone, PartialEq)]
pub struct RestrictConfig {
    /// Route indices.
    pub routes: Vec<usize>,
    /// Allowed networks.
    pub cidrs: Vec<IpNet>,
    /// Allowed ASNs.
    pub asns: Vec<u32>,
    /// Allowed countries (upper case).
    pub countries: Vec<String>,
}

/// A phone-number check on request bodies.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyRuleConfig {
    /// Route index.
    pub route: usize,
    /// The field as written in the config: a top-level name or a JSON Pointer.
    pub field: String,
    /// The field's path: one segment for a top-level name, the unescaped
    /// segments of a JSON Pointer (`/user/phone` is `["user", "phone"]`).
    pub pointer: Vec<String>,
    /// Allowed calling codes, digits only (`"86"`); empty means any.
    pub allowed_calling_codes: Vec<String>,
    /// Allowed regions (ISO 3166-1 alpha-2, upper case, as libphonenumber
    /// names them); empty means any.
    pub allowed_regions: Vec<String>,
    /// Allowed number types; empty means any valid number.
    pub number_types: Vec<PhoneType>,
    /// Methods the rule checks, upper case; empty means every method.
    pub methods: Vec<String>,
    /// Largest body read.
    pub max_body_bytes: usize,
}

/// A phone number type, as libphonenumber classifies numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneType {
    /// Mobile (also numbers that may be mobile or fixed, as in the US).
    Mobile,
    /// Fixed line (also numbers that may be mobile or fixed).
    FixedLine,
    /// Freephone.
    TollFree,
    /// Premium rate.
    PremiumRate,
    /// Shared cost.
    SharedCost,
    /// Voice over IP.
    Voip,
    /// Personal number.
    PersonalNumber,
    /// Pager.
    Pager,
    /// Universal access number.
    Uan,
    /// Voicemail access.
    Voicemail,
}

impl PhoneType {
    /// Every type, with its config name.
    pub const ALL: [(PhoneType, &'static str); 10] = [
        (PhoneType::Mobile, "mobile"),
        (PhoneType::FixedLine, "fixed_line"),
        (PhoneType::TollFree, "toll_free"),
        (PhoneType::PremiumRate, "premium_rate"),
        (PhoneType::SharedCost, "shared_cost"),
        (PhoneType::Voip, "voip"),
        (PhoneType::PersonalNumber, "personal_number"),
        (PhoneType::Pager, "pager"),
        (PhoneType::Uan, "uan"),
        (PhoneType::Voicemail, "voicemail"),
    ];

    /// The config name (`"mobile"`).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("unknown", |(_, n)| n)
    }

    /// The type of a config name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }
}

/// What to do with a client whose country or ASN is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Let it through (to the other rules).
    Allow,
    /// Answer 403.
    Deny,
}

/// `[geoip]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoipConfig {
    /// Country database: GeoLite2/GeoIP2 Country (`country.iso_code`) or
    /// ip-location-db (`country_code`), recognised per record.
    pub country_db: Option<PathBuf>,
    /// ASN database: GeoLite2-ASN shape (`autonomous_system_number`).
    pub asn_db: Option<PathBuf>,
    /// How often the files are checked for a change (then swapped in).
    pub check_interval: Duration,
    /// Clients with no country in the database.
    pub unknown_country: UnknownPolicy,
    /// Clients with no ASN in the database.
    pub unknown_asn: UnknownPolicy,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessAction {
    /// Skip every limit (monitoring, office networks).
    Allow,
    /// Answer 403.
    Deny,
}

/// `[[access]]`: matches when the client is in any of the CIDRs, ASNs or countries.
#[derive(Debug, Clone)]
pub struct AccessRuleConfig {
    /// Rule name (metrics, logs, problem bodies).
    pub name: String,
    /// What a match does.
    pub action: AccessAction,
    /// The clients it matches.
    pub clients: ClientCondition,
    /// Route indices it applies to; all routes when `None`.
    pub routes: Option<Vec<usize>>,
}

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The client address.
    Ip,
    /// The client's network of the given prefix lengths.
    Prefix {
        /// IPv4 prefix length.
        v4: u8,
        /// IPv6 prefix length.
        v6: u8,
    },
    /// The client's autonomous system.
    Asn,
    /// The client's country.
    Country,
    /// A request header's value (API key, session); the client address when absent.
    Header(String),
    /// The JA4 fingerprint of the client's TLS hello; the client address when
    /// there is none (plaintext listeners, hellos that cannot be fingerprinted).
    Ja4,
    /// The route as a whole: one bucket for everybody.
    Route,
    /// A field of the request body (account name, phone number range).
    Body(BodyKeyConfig),
    /// A claim of the request's verified bearer token (`[jwt]`); the client
    /// address when no token verifies or it lacks the claim.
    Jwt {
        /// The claim, e.g. `sub`.
        claim: String,
    },
}

/// `key = "body"`: which body field keys the bucket and how it is normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BodyKeyConfig {
    /// The field as written: a top-level name or a JSON Pointer.
    pub field: String,
    /// Its path (one segment for a top-level name).
    pub pointer: Vec<String>,
    /// How the value is normalised before hashing.
    pub normalize: BodyKeyNormalize,
    /// With `Phone`: key on the first this many digits of the E.164 number
    /// (the range an SMS pumping run walks); the whole number when absent.
    pub number_prefix: Option<u8>,
    /// Largest body read for this key.
    pub max_body_bytes: usize,
}

/// How a body key's value is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKeyNormalize {
    /// Trimmed and case-folded (user names, e-mail addresses).
    Account,
    /// Parsed as an international number and written in E.164.
    Phone,
}

impl KeyKind {
    /// Closed-set label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            KeyKind::Body(_) => "body",
            KeyKind::Ip => "ip",
            KeyKind::Prefix { .. } => "prefix",
            KeyKind::Asn => "asn",
            KeyKind::Country => "country",
            KeyKind::Header(_) => "header",
            KeyKind::Ja4 => "ja4",
            KeyKind::Route => "route",
            KeyKind::Jwt { .. } => "jwt",
        }
    }
}

/// `[[limits]]`: a token bucket per key.
#[derive(Debug, Clone)]
pub struct LimitConfig {
    /// Rule name.
    pub name: String,
    /// What it counts by.
    pub key: KeyKind,
    /// Sustained rate.
    pub rate: crate::Rate,
    /// Bucket size: requests allowed at once when full.
    pub burst: NonZeroU32,
    /// Cells one request takes (never more than `burst`).
    pub cost: NonZeroU32,
    /// Route indices it applies to; all routes when `None`.
    pub routes: Option<Vec<usize>>,
    /// Most keys tracked at once.
    pub max_keys: NonZeroU32,
    /// Count would-be rejections, never reject.
    pub shadow: bool,
    /// Only in force while this flag (index) is enforced.
    pub only_with_flag: Option<usize>,
    /// Local or fleet-wide.
    pub scope: LimitScope,
    /// The clients it applies to.
    pub clients: ClientCondition,
    /// The penalty box, if any.
    pub ban: Option<BanConfig>,
}

/// What an escalation watches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Requests per second on a route (`None`: every request).
    RequestRate {
        /// Route index.
        route: Option<usize>,
    },
    /// Share of a route's requests refused at the edge, 0 to 1.
    RejectedShare {
        /// Route index (`None`: every request).
        route: Option<usize>,
    },
    /// The 99th percentile of a pool's time to response header, seconds.
    OriginP99 {
        /// Pool index.
        pool: usize,
    },
    /// Share of a pool's proxied responses that are 5xx, 0 to 1.
    Origin5xxShare {
        /// Pool index.
        pool: usize,
    },
}

impl Signal {
    /// The label in metrics and logs.
    pub fn as_label(&self) -> &'static str {
        match self {
            Signal::RequestRate { .. } => "request_rate",
            Signal::RejectedShare { .. } => "rejected_share",
            Signal::OriginP99 { .. } => "origin_p99",
            Signal::Origin5xxShare { .. } => "origin_5xx_share",
        }
    }
}

/// `[[escalations]]`: enter a flag when a signal stays above `enter_above` for
/// `enter_for`; leave it when it stays below `leave_below` for `leave_for`, not
/// before `min_hold` after entering.
#[derive(Debug, Clone, PartialEq)]
pub struct EscalationConfig {
    /// Name; the audit actor is `auto:<name>`.
    pub name: String,
    /// Flag index.
    pub flag: usize,
    /// Whether it enters the flag in preview only.
    pub preview: bool,
    /// What it watches.
    pub signal: Signal,
    /// Enter above this.
    pub enter_above: f64,
    /// ... held this long.
    pub enter_for: Duration,
    /// Leave below this (at most `enter_above`).
    pub leave_below: f64,
    /// ... held this long.
    pub leave_for: Duration,
    /// Shortest time in the flag.
    pub min_hold: Duration,
    /// For share and latency signals: with fewer requests (responses) in the
    /// window, the signal reads 0 (calm), so a trickle cannot enter the flag.
    pub min_requests: u64,
}

/// Default `min_requests` of an escalation.
pub const DEFAULT_ESCALATION_MIN_REQUESTS: u64 = 20;

/// Which clients a rule concerns, by network, autonomous system and country.
///
/// A client matches when it is in one of the positive lists (any of `cidrs`,
/// `asns`, `countries`, `ja4`; every client when all are empty) and in none of
/// the `not_*` lists. A client whose country (AS) is unknown is in no country
/// (AS) list: `not_countries = ["CN"]` matches it; a client without a JA4
/// (plaintext, or a hello that could not be fingerprinted) is in no JA4 list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCondition {
    /// Networks, host bits clear.
    pub cidrs: Vec<IpNet>,
    /// Autonomous system numbers.
    pub asns: Vec<u32>,
    /// Upper-case ISO 3166-1 alpha-2 codes.
    pub countries: Vec<String>,
    /// Networks excluded.
    pub not_cidrs: Vec<IpNet>,
    /// Autonomous systems excluded.
    pub not_asns: Vec<u32>,
    /// Countries excluded.
    pub not_countries: Vec<String>,
    /// JA4 fingerprints or patterns.
    pub ja4: Vec<crate::Ja4Pattern>,
    /// JA4 fingerprints or patterns excluded.
    pub not_ja4: Vec<crate::Ja4Pattern>,
}

impl ClientCondition {
    /// Whether it matches every client.
    pub fn is_everyone(&self) -> bool {
        self == &ClientCondition::default()
    }
}

/// The penalty box of a `[[limits]]` rule: a key refused `after` times within
/// `within` is banned for `duration`; a key banned again within `memory` of its
/// last ban is banned `increment` times longer, up to `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct BanConfig {
    /// Refusals that ban.
    pub after: NonZeroU32,
    /// The window they are counted in.
    pub within: Duration,
    /// The first ban's length.
    pub duration: Duration,
    /// Growth factor of repeat bans (at least 1).
    pub increment: f64,
    /// The longest ban.
    pub max: Duration,
    /// How long past bans count for the increment.
    pub memory: Duration,
    /// Most keys tracked (counting refusals or banned).
    pub max_keys: NonZeroU32,
}

/// Default `ban.increment`.
pub const DEFAULT_BAN_INCREMENT: f64 = 2.0;
/// Default `ban.max_keys`.
pub const DEFAULT_BAN_MAX_KEYS: u32 = 100_000;

/// `[[concurrency]]`: most requests in flight per key.
#[derive(Debug, Clone)]
pub struct ConcurrencyConfig {
    /// Rule name.
    pub name: String,
    /// What it counts by.
    pub key: KeyKind,
    /// Most requests in flight per key.
    pub max_in_flight: NonZeroU32,
    /// Route indices it applies to; all routes when `None`.
    pub routes: Option<Vec<usize>>,
    /// Most keys tracked at once.
    pub max_keys: NonZeroU32,
    /// Count would-be rejections, never reject.
    pub shadow: bool,
}

impl Config {
    /// The index of the pool called `name` in [`Config::pools`].
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// The request loop of HTTP/1.1 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Loop {
    /// Rampart's own loop on pingora-core's HTTP/1.1 sessions (`lean`).
    #[default]
    Rampart,
    /// pingora-proxy's `ProxyHttp` phases, as HTTP/2 uses.
    PingoraProxy,
}

/// `[server]`: Pingora server settings that matter for cost per request.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker threads of the public proxy service.
    pub threads: usize,
    /// Work stealing between worker threads; off keeps origin connections on the
    /// thread that made them, which keeps them reused.
    pub work_stealing: bool,
    /// Idle origin connections kept per process.
    pub upstream_keepalive_pool_size: usize,
    /// Which request loop serves HTTP/1.1 connections (HTTP/2 always goes
    /// through pingora-proxy). Read at start only.
    pub http1_loop: Http1Loop,
    /// After SIGTERM, no new connections are accepted and in-flight requests get
    /// this long to finish (the process waits the whole period).
    pub grace_period: Duration,
    /// After the grace period, the time the runtimes get to stop; requests still
    /// running then are cut.
    pub graceful_shutdown_timeout: Duration,
    /// How long clients may take; see [`ClientLimits`].
    pub client: ClientLimits,
}

/// Deadlines and caps for client connections (HTTP/1.1 unless named HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// Whole request head, from its first byte (from accept for the first
    /// request): 408 after.
    pub header_timeout: Duration,
    /// Whole request body, from the end of the head: 408 after.
    pub body_timeout: Duration,
    /// Idle time between requests on a kept-alive connection (closed after).
    pub keepalive_timeout: Duration,
    /// Idle time of an HTTP/2 connection with no open stream (closed after).
    pub h2_idle_timeout: Duration,
    /// Largest request head (request line and fields), bytes: 431 above.
    pub max_head_bytes: usize,
    /// Most header fields in one request: 431 above.
    pub max_headers: usize,
    /// Most open connections from one client address (the socket peer, unless
    /// it is a trusted proxy); 0 means no cap. Beyond it, new connections are
    /// closed at accept.
    pub max_connections_per_source: u32,
    /// Read buffer of each client connection, bytes (Pingora's default is 64 KiB,
    /// allocated at accept: the memory an idle connection costs).
    pub read_buffer_bytes: usize,
}

/// Whole request head deadline (nginx `client_header_timeout`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole request body deadline.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alive idle deadline (nginx `keepalive_timeout`).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// HTTP/2 idle deadline.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Largest request head (nginx's `large_client_header_buffers 4 8k` is 32 KiB).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most header fields per request.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Most open connections per client address.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: u32 = 256;
/// Client connection read buffer: one TLS record.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 16 * 1024;

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            h2_idle_timeout: DEFAULT_H2_IDLE_TIMEOUT,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_connections_per_source: DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
        }
    }
}

/// Which header carries the client chain from a trusted proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`
    Forwarded,
}

/// `[client_ip]`
#[derive(Debug, Clone)]
pub struct ClientIpConfig {
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The header read from trusted peers.
    pub header: ForwardedHeader,
}

impl ClientIpConfig {
    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) to plain IPv4, so that one
/// client is one key whichever socket family it arrived on.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `[[listeners]]`
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Bound address.
    pub address: SocketAddr,
    /// Plaintext HTTP/2 by prior knowledge.
    pub h2c: bool,
    /// TLS with HTTP/2 through ALPN.
    pub tls: Option<TlsConfig>,
    /// PROXY protocol from an L4 load balancer, when configured.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
}

/// `proxy_protocol` and `proxy_protocol_from` of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Which header versions are accepted.
    pub version: ProxyProtocolVersion,
    /// Sources that must send the header; from anyone else it is refused.
    pub from: Vec<IpNet>,
}

/// PROXY protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// Text headers only.
    V1,
    /// Binary headers only.
    V2,
    /// Either.
    Any,
}

/// Certificate and key files of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Where the admin bearer token comes from; read when the proxy starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// An environment variable.
    Env(String),
    /// A file; surrounding whitespace is trimmed.
    File(PathBuf),
}

/// `[admin]`
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bound address, never one of the public listeners.
    pub address: SocketAddr,
    /// Bearer token source.
    pub token: TokenSource,
}

/// One origin server of a pool as written in the file: `HOST:PORT`, where HOST is
/// an IP address or a DNS name. Parsing one does no I/O: a name stays a name
/// until the proxy resolves it, each time it applies a config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerAddress {
    /// An IP address and port, `127.0.0.1:9000` or `[::1]:9000`.
    Ip(SocketAddr),
    /// A host name and port, `origin.internal:9000`, not resolved yet.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl ServerAddress {
    /// Parses `HOST:PORT`; the error says what is wrong with `text`, quoting it.
    /// Checks syntax only: a well-formed name that does not resolve passes.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self::Ip(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("\"{text}\" needs a port (HOST:PORT)"));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!(
                "\"{text}\" has an invalid port: \"{port}\" is not a number from 0 to 65535"
            ));
        };
        if host.is_empty() {
            return Err(format!("\"{text}\" needs a host (HOST:PORT)"));
        }
        // An unbracketed IPv6 address ("::1:9000") was accepted when names were
        // resolved through `ToSocketAddrs`; keep accepting it.
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Self::Ip(SocketAddr::new(ip, port)));
        }
        if !is_host_name(host) {
            return Err(format!(
                "\"{text}\": \"{host}\" is not a host name or IP address"
            ));
        }
        Ok(Self::Name {
            host: host.to_string(),
            port,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Ip(addr) => addr.port(),
            Self::Name { port, .. } => *port,
        }
    }

    /// The address itself when it is an IP literal; `None` for a name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Ip(addr) => Some(*addr),
            Self::Name { .. } => None,
        }
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(addr) => write!(f, "{addr}"),
            Self::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// Letters, digits, '-' and '_' in dot-separated labels, with an optional
/// trailing dot (a fully qualified name).
fn is_host_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `[pools.NAME]`
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool name, used by routes, metrics and logs.
    pub name: String,
    /// Origin servers as written; names are resolved by the proxy when it
    /// applies the config, never here.
    pub servers: Vec<ServerAddress>,
    /// Speak TLS to the origins.
    pub tls: bool,
    /// SNI for TLS origins.
    pub sni: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes from the origin.
    pub read_timeout: Duration,
    /// Longest wait while sending to the origin.
    pub write_timeout: Duration,
    /// Idle time an origin connection is kept for reuse.
    pub idle_timeout: Duration,
    /// Active health checking.
    pub health_check: HealthCheckConfig,
}

/// How a health probe is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http {
        /// Probed path.
        path: String,
        /// Host header of the probe.
        host: String,
    },
}

/// `[pools.NAME.health_check]`
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// Probe kind.
    pub kind: HealthCheckKind,
    /// Time between probes.
    pub interval: Duration,
    /// Longest a probe may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a server back.
    pub healthy_threshold: NonZeroU32,
    /// Consecutive failures that take a server out.
    pub unhealthy_threshold: NonZeroU32,
}

/// How rejections on a route are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `application/problem+json`.
    Api,
    /// A small HTML page.
    Browser,
}

/// `[[routes]]`
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in metrics and logs.
    pub name: String,
    /// Exact host, lower case, no port.
    pub host: Option<String>,
    /// Path prefix, starts with `/`.
    pub path_prefix: String,
    /// Methods the route accepts, upper case; empty means any. Others get 405:
    /// methods never route a request elsewhere.
    pub methods: Vec<String>,
    /// Match the path prefix without regard to ASCII case (for origins that
    /// route that way).
    pub case_insensitive: bool,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// Rejection rendering.
    pub kind: RouteKind,
    /// Close the client connection after a rejection.
    pub close_on_reject: bool,
}

/// `[unmatched]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnmatchedConfig {
    /// Answer at the edge with this status.
    Reject {
        /// HTTP status.
        status: u16,
    },
    /// Send to this pool (index into [`Config::pools`]).
    Proxy {
        /// Pool index.
        pool: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_lose_their_credentials() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.5:6379/0"),
            "redis://***@10.0.0.5:6379/0"
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@redis.internal:6380/1"),
            "rediss://***@redis.internal:6380/1"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }

    #[test]
    fn topologies_are_described_without_credentials() {
        let sentinel = FleetRedis::Sentinel(SentinelConfig {
            master: "mymaster".into(),
            urls: vec![
                "redis://:pw@10.0.0.1:26379".into(),
                "redis://10.0.0.2:26379".into(),
            ],
            db: 0,
            username: None,
            password: Some("secret".into()),
        });
        assert_eq!(
            sentinel.describe(),
            "sentinel master \"mymaster\" via redis://***@10.0.0.1:26379, redis://10.0.0.2:26379"
        );
        assert!(!format!("{sentinel:?}").contains("secret"));
        let cluster = FleetRedis::Cluster {
            urls: vec!["redis://u:p@10.0.0.1:6379".into()],
        };
        assert_eq!(cluster.describe(), "cluster via redis://***@10.0.0.1:6379");
        assert_eq!(cluster.topology(), "cluster");
    }
}
