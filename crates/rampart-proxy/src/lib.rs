//! Rampart's Pingora glue: the public proxy service, upstream pools and health
//! checks, the admin API, metrics, and the background services that reload config.
//! Policy decisions are made by `rampart-policy`; this crate only wires them in.

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod answer;
pub mod background;
pub mod certs;
pub mod circuit;
pub mod console;
pub mod edge;
pub mod escalator;
pub mod fleet;
pub mod health;
pub mod ja4;
pub mod jwt;
pub mod lean;
pub mod lease;
pub mod listening;
pub mod lockdown;
pub mod metrics;
pub mod offenders;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod record;
pub mod redis_link;
pub mod respond;
pub mod state;
pub(crate) mod wrapped;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, Listeners, TcpSocketOptions};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use rampart_config::{Config, TokenSource};
use std::path::PathBuf;
use std::sync::Arc;

pub use state::Shared;

/// Why Rampart could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config cannot be applied: an origin host name does not resolve.
    /// Reported like a validation error (`file: key: reason`, exit 64).
    #[error("{0}")]
    Config(#[from] rampart_config::ConfigError),
    /// The admin token is missing or unreadable.
    #[error("admin token: {0}")]
    AdminToken(String),
    /// A GeoIP database cannot be opened.
    #[error("GeoIP: {0}")]
    Geo(String),
    /// A TLS listener cannot be set up.
    #[error("listener {address}: {reason}")]
    Listener {
        /// Listener address.
        address: String,
        /// What is wrong.
        reason: String,
    },
}

/// Environment variable that, set to `1`, makes every listener (public and
/// admin) bind with `SO_REUSEPORT`. **For the integration tests only**: the
/// testkit holds each test port with a bound, never-listening `SO_REUSEPORT`
/// socket from the moment it picks the port, so no other process can take the
/// port before Rampart binds it. Off by default and absent from the config file
/// on purpose: in production `SO_REUSEPORT` would let a second instance bind
/// the same port and silently take half of its connections.
pub const TEST_REUSE_PORT_ENV: &str = "RAMPART_TEST_REUSE_PORT";

/// Socket options for every listener: `SO_REUSEPORT` when
/// [`TEST_REUSE_PORT_ENV`] is `1`, else Pingora's defaults (`None`).
fn listener_socket_options() -> Option<TcpSocketOptions> {
    if std::env::var(TEST_REUSE_PORT_ENV).ok().as_deref() != Some("1") {
        return None;
    }
    log::warn!("{TEST_REUSE_PORT_ENV}=1: listeners bind with SO_REUSEPORT (for tests only)");
    let mut options = TcpSocketOptions::default();
    options.so_reuseport = Some(true);
    Some(options)
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// Reads the admin bearer token from its configured source.
pub fn read_admin_token(source: &TokenSource) -> Result<String, StartError> {
    let token = match source {
        TokenSource::Env(name) => std::env::var(name).map_err(|_| {
            StartError::AdminToken(format!(
                "environment variable {name} is not set (set it to a secret of at least {MIN_ADMIN_TOKEN_LEN} characters)"
            ))
        })?,
        TokenSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
            StartError::AdminToken(format!("cannot read {}: {e}", path.display()))
        })?,
    };
    let token = token.trim().to_string();
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(StartError::AdminToken(format!(
            "the token must be at least {MIN_ADMIN_TOKEN_LEN} characters long"
        )));
    }
    Ok(token)
}

/// Pingora server settings from Rampart's `[server]`.
fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        // Tries per request, first one included: one retry on a connect failure,
        // to another server (see `RampartProxy::fail_to_connect`).
        max_retries: 2,
        ..ServerConf::default()
    }
}

/// Builds the whole server for `config`, read from `config_path`: public
/// listeners, the admin listener and the background services. Call
/// `run_forever()` on the result.
pub fn build_server(config_path: PathBuf, config: Config) -> Result<Server, StartError> {
    build_server_with(config_path, config, None)
}

/// [`build_server`] with an overlay applied to the config now and on every
/// reload.
pub fn build_server_with(
    config_path: PathBuf,
    mut config: Config,
    overlay: Option<state::ConfigOverlay>,
) -> Result<Server, StartError> {
    if let Some(overlay) = overlay {
        overlay(&mut config);
    }
    let servers = pool::resolve_servers(&config, &config_path)?;
    let token = read_admin_token(&config.admin.token)?;
    set_fleet_hash_key(&config);
    let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
    server.bootstrap();
    let (access_log, access_log_writer) = match access_log::access_log(&config.access_log) {
        Some((log, writer)) => (Some(log), Some(writer)),
        None => (None, None),
    };
    let mut shared = Shared::new(config_path, config.clone(), &servers, access_log)
        .map_err(|e| StartError::Geo(e.to_string()))?;
    shared.overlay = overlay;
    // Every TLS listener's certificate, read and checked now (a bad pair stops
    // the start), then served through a resolver that reloads swap in place.
    let mut tls_certs = Vec::new();
    for listener in config.listeners.iter() {
        if let Some(tls) = &listener.tls {
            let address = listener.address.to_string();
            let cert = certs::TlsCert::load(&address, &tls.cert, &tls.key)
                .map_err(|reason| StartError::Listener { address, reason })?;
            tls_certs.push(Arc::new(cert));
        }
    }
    shared.tls_certs = tls_certs.clone();
    if let Some((recorder, writer)) = record::recorder(&config.record) {
        shared.recorder = Some(recorder);
        server.add_service(background_service("request record", writer));
    }
    let shared = Arc::new(shared);
    if let Some(writer) = access_log_writer {
        server.add_service(background_service("access log", writer));
    }
    let conf = server.configuration.clone();
    let socket_options = listener_socket_options();
    let sources = Arc::new(edge::SourceCounter::default());
    // Public listeners close at accept what the policy refuses on every request.
    let drop_at_accept = Arc::new(accept::DropAtAccept::new(shared.clone()));

    // One origin pool for the HTTP/1.1 loop of every public service.
    let lean = Arc::new(lean::Lean::new(shared.clone(), &conf));
    // Plain HTTP/2 (h2c) is an option of the service, so h2c listeners get their own.
    for h2c in [false, true] {
        let listeners: Vec<_> = config.listeners.iter().filter(|l| l.h2c == h2c).collect();
        if listeners.is_empty() {
            continue;
        }
        let name = if h2c {
            "rampart proxy (h2c)"
        } else {
            "rampart proxy"
        };
        let mut app = pingora::proxy::http_proxy(&conf, proxy::RampartProxy::new(shared.clone()));
        let limits = config.server.client;
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        options.h2_idle_timeout = Some(limits.h2_idle_timeout);
        app.server_options = Some(options);
        let mut h2 = pingora::protocols::http::v2::server::H2Options::new();
        h2.max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
        // Each open stream may hold an origin connection until its body ends: a
        // client gets this many at a time per connection.
        h2.max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
        app.h2_options = Some(h2);
        let mut endpoints = Listeners::new();
        let buffer = L4BufferSettings {
            read: Some(limits.read_buffer_bytes),
            write: None,
        };
        for listener in listeners {
            let address = listener.address.to_string();
            let mut endpoint = ListenerConfig::tcp(address.clone()).l4_buffer(buffer);
            if let Some(options) = &socket_options {
                endpoint = endpoint.tcp_socket_options(options.clone());
            }
            match &listener.tls {
                None => endpoints.add_listener(endpoint),
                Some(tls) => {
                    let (cert, key) = (
                        tls.cert.display().to_string(),
                        tls.key.display().to_string(),
                    );
                    let mut settings = TlsSettings::intermediate(&cert, &key).map_err(|e| {
                        StartError::Listener {
                            address: address.clone(),
                            reason: e.to_string(),
                        }
                    })?;
                    if let Some(resolver) = tls_certs.iter().find(|c| c.address == address) {
                        settings.set_cert_resolver(resolver.clone());
                    }
                    settings.enable_h2();
                    endpoints.add_listener(endpoint.tls(settings));
                }
            }
        }
        // Pingora runs the hook on the TLS listeners of the group only: the
        // PROXY header (where configured), then the ClientHello's JA4.
        endpoints.set_pre_tls_callback(Arc::new(ja4::PreTls {
            shared: shared.clone(),
        }));
        let mut edge = edge::EdgeApp::new(app, shared.clone(), sources.clone(), h2c);
        if config.server.http1_loop == rampart_config::Http1Loop::Rampart {
            edge = edge.with_lean(lean.clone());
        }
        let mut service = Service::with_listeners(name.to_string(), endpoints, edge);
        service.set_connection_filter(drop_at_accept.clone());
        server.add_service(service);
    }

    let mut admin = Service::new(
        "rampart admin".to_string(),
        edge::EdgeApp::admin(
            admin::AdminService::new(shared.clone(), token),
            shared.clone(),
        ),
    );
    admin.threads = Some(1);
    match socket_options {
        Some(options) => admin.add_tcp_with_settings(&config.admin.address.to_string(), options),
        None => admin.add_tcp(&config.admin.address.to_string()),
    }
    server.add_service(admin);

    server.add_service(background_service(
        "health checks",
        health::HealthChecker::new(shared.clone()),
    ));
    server.add_service(background_service(
        "geoip refresh",
        background::GeoRefresh::new(shared.clone()),
    ));
    server.add_service(background_service(
        "jwks refresh",
        background::JwtRefresh::new(shared.clone()),
    ));
    server.add_service(background_service(
        "fleet sync",
        background::FleetSync::new(shared.clone()),
    ));
    server.add_service(background_service(
        "lockdown expiry",
        background::FlagExpiry::new(shared.clone()),
    ));
    server.add_service(background_service(
        "escalations",
        escalator::Escalator::new(shared.clone()),
    ));
    server.add_service(background_service(
        "console rates",
        console::RateSampler::new(shared.clone()),
    ));
    server.add_service(background_service(
        "fleet heartbeat",
        background::FleetHeartbeat::new(shared.clone()),
    ));
    server.add_service(background_service(
        "limiter sweep",
        background::LimiterSweep::new(shared.clone()),
    ));
    server.add_service(background_service(
        "tls certificate watch",
        certs::CertWatch::new(shared.clone()),
    ));
    server.add_service(background_service(
        "reload on SIGHUP",
        SighupReload { shared },
    ));
    Ok(server)
}

/// Streams one HTTP/2 client connection may have open at once (Pingora's and
/// the h2 crate's default is unlimited up to its reset-flood guard).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 32;

/// Environment variable holding the secret every node of a fleet hashes header
/// and body values with (the same on every node).
pub const FLEET_KEY_SECRET_ENV: &str = "RAMPART_FLEET_KEY_SECRET";

/// Keys the hashes of fleet-scoped header and body values with the fleet's
/// secret, so that Redis holds values nobody can recompute from a guess (an
/// account name, a phone number). Without the secret they are hashed with a
/// public key, and the log says so when a fleet rule keys by header or body.
fn set_fleet_hash_key(config: &Config) {
    if config.fleet.is_none() {
        return;
    }
    match std::env::var(FLEET_KEY_SECRET_ENV) {
        Ok(secret) if secret.len() >= MIN_ADMIN_TOKEN_LEN => {
            rampart_policy::limits::set_fleet_hash_key(secret.as_bytes())
        }
        _ => {
            let exposed = config.limits.iter().any(|l| {
                matches!(l.scope, rampart_config::LimitScope::Fleet { .. })
                    && matches!(
                        l.key,
                        rampart_config::KeyKind::Header(_)
                            | rampart_config::KeyKind::Body(_)
                            | rampart_config::KeyKind::Jwt { .. }
                    )
            });
            if exposed {
                log::warn!(
                    "fleet rules keyed by header, body or jwt claim values hash them with a public key: set {FLEET_KEY_SECRET_ENV} (at least {MIN_ADMIN_TOKEN_LEN} characters, the same on every node)"
                );
            }
        }
    }
}

/// Reloads the config file (and the TLS certificates) on SIGHUP.
struct SighupReload {
    shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangups =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot listen for SIGHUP, reload only through the admin API: {e}");
                    return;
                }
            };
        loop {
            tokio::select! {
                _ = hangups.recv() => {
                    log::info!("SIGHUP: reloading {}", self.shared.config_path.display());
                    // Errors are logged and counted by reload itself.
                    let _ = self.shared.reload_config().await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
