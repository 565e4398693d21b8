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
use pingora::upstreams::peer::HttpPeer;

#[path = "../floor.rs"]
mod floor;

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
    let (listen, origin) = floor::args("rampart-pingora-floor");
    let mut server = floor::server();
    let peer = floor::peer(&origin);
    let mut service = http_proxy_service(&server.configuration, Floor { peer });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
