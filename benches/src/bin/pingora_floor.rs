//! The floor under Rampart's hot path: the smallest Pingora 0.9.1 reverse proxy
//! built the way Rampart is (same allocator, one thread, no work stealing, a
//! keep-alive upstream pool, the same peer timeouts), with no policy, no
//! metrics and no header rewriting. Run side by side with Rampart and nginx by
//! `benches/ratio.sh --floor`; whatever Rampart costs above this binary is
//! Rampart's own, whatever this binary costs above nginx is Pingora's.
//!
//!   rampart-pingora-floor LISTEN ORIGIN      (both host:port, loopback)

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Proxies every request to one origin.
struct Floor {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Rampart drops Pingora's default (disabled) compression module; so does the floor.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(origin)) = (args.next(), args.next()) else {
        eprintln!("usage: rampart-pingora-floor LISTEN ORIGIN");
        std::process::exit(64);
    };
    let mut peer = HttpPeer::new(origin.as_str(), false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(2));
    peer.options.read_timeout = Some(Duration::from_secs(30));
    peer.options.write_timeout = Some(Duration::from_secs(30));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 256,
        // SIGTERM exits at once (Pingora's default grace is minutes).
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Floor { peer });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
