//! The floor of a purpose-built request loop on pingora-core's public building
//! blocks (its listener, `ServerApp`, the HTTP/1.1 server and client sessions and
//! `TransportConnector`), beside `rampart-pingora-floor` (pingora-proxy's
//! `ProxyHttp`). Same allocator, one thread, no work stealing, the same peer
//! timeouts; no policy, no metrics, no header rewriting. The origin connection
//! stays with the client connection it serves (no pool round trip per request),
//! there are no per-request channels or boxed phases, and the request header is
//! forwarded without a clone. `benches/instructions.sh` measures both floors.
//!
//!   rampart-lean-floor LISTEN ORIGIN      (both host:port, loopback)

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::connectors::TransportConnector;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::v1::server::HttpSession as Downstream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;

#[path = "../floor.rs"]
mod floor;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Proxies every request to one origin.
struct Lean {
    peer: HttpPeer,
    connector: TransportConnector,
}

impl Lean {
    /// One request on `down`, through `up` (or a new origin connection).
    /// Returns the origin connection when it can carry another request.
    async fn one(&self, down: &mut Downstream, up: Option<Upstream>) -> Option<Upstream> {
        let mut up = match up {
            Some(up) => up,
            None => {
                let stream = self.connector.new_stream(&self.peer).await.ok()?;
                Upstream::new_with_options(stream, &self.peer)
            }
        };
        let header = Box::new(down.req_header().clone());
        up.write_request_header(header).await.ok()?;
        if !down.is_body_empty() {
            while let Some(chunk) = down.read_body_bytes().await.ok()? {
                up.write_body(&chunk).await.ok()?;
            }
            up.finish_body().await.ok()?;
        }
        up.read_response().await.ok()?;
        let response = Box::new(up.resp_header()?.clone());
        down.write_response_header(response).await.ok()?;
        while let Some(chunk) = up.read_body_ref().await.ok()? {
            down.write_body(chunk).await.ok()?;
        }
        down.finish_body().await.ok()?;
        up.respect_keepalive();
        let stream = up.reuse().await?;
        Some(Upstream::new_with_options(stream, &self.peer))
    }
}

#[async_trait]
impl ServerApp for Lean {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut down = Downstream::new(stream);
        let mut up = None;
        loop {
            down.read_request().await.ok()??;
            down.set_server_keepalive(Some(0));
            up = self.one(&mut down, up.take()).await;
            if up.is_none() {
                down.set_server_keepalive(None);
            }
            let (stream, prefix) = down.reuse().await.ok()??.into_parts();
            down = Downstream::new(stream);
            if let Some(prefix) = prefix {
                down.set_pipelined_prefix(prefix);
            }
        }
    }
}

fn main() {
    let (listen, origin) = floor::args("rampart-lean-floor");
    let mut server = floor::server();
    let app = Lean {
        peer: floor::peer(&origin),
        connector: TransportConnector::new(None),
    };
    let mut service = Service::new("lean floor".to_string(), app);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
