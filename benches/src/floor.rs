//! What the two floors (`rampart-pingora-floor`, `rampart-lean-floor`) share: their
//! arguments, the origin peer with Rampart's timeouts, and the one-thread server.

use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

/// `LISTEN ORIGIN` from the command line, or the usage and exit 64.
pub fn args(name: &str) -> (String, String) {
    let mut args = std::env::args().skip(1);
    match (args.next(), args.next()) {
        (Some(listen), Some(origin)) => (listen, origin),
        _ => {
            eprintln!("usage: {name} LISTEN ORIGIN");
            std::process::exit(64);
        }
    }
}

/// The origin, with the timeouts Rampart's pools use.
pub fn peer(origin: &str) -> HttpPeer {
    let mut peer = HttpPeer::new(origin, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(2));
    peer.options.read_timeout = Some(Duration::from_secs(30));
    peer.options.write_timeout = Some(Duration::from_secs(30));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer
}

/// A bootstrapped server with one worker thread and no work stealing, as
/// Rampart runs in the benches; SIGTERM exits at once.
pub fn server() -> Server {
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 256,
        // Pingora's default grace is minutes.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}
