//! Mock origin servers that record what reaches them.
//!
//! Endpoints:
//! - `/healthz`: 200, not recorded (health probes would blur request counts);
//! - `/stream`: server-sent events; the first event at once, the last one only
//!   after [`MockOrigin::release_streams`] (or ten seconds);
//! - `/slow?ms=N`: answers after N milliseconds;
//! - anything else: 200 echo, `x-origin: NAME`, body `{"origin":NAME,"path":...}`.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct OriginState {
    name: String,
    requests: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    release: Notify,
    released: AtomicBool,
    streams_finished: AtomicUsize,
}

/// A running mock origin; stops when dropped.
#[derive(Debug)]
pub struct MockOrigin {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    stop: watch::Sender<bool>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

impl MockOrigin {
    /// Starts an origin called `name` on an ephemeral port of 127.0.0.1.
    pub async fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0").await
    }

    /// Starts an origin called `name` on `bind` (e.g. `"[::1]:0"`). It binds
    /// with `SO_REUSEPORT`, so it can listen on the address of a
    /// [`crate::HeldPort`] (e.g. a [`crate::dead_addr`] brought to life).
    pub async fn start_on(name: &str, bind: &str) -> Self {
        let bind: SocketAddr = bind.parse().expect("an IP:port to bind");
        let socket = if bind.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.bind(bind).expect("bind mock origin");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(OriginState {
            name: name.to_string(),
            ..Default::default()
        });
        let (stop, stopped) = watch::channel(false);
        let task_state = state.clone();
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped_accept.changed() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                task_state.connections.fetch_add(1, Ordering::Relaxed);
                let conn_state = task_state.clone();
                let mut conn_stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(conn_state.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        // Stopping drops every open connection, like a crashed server.
                        _ = conn_stopped.changed() => {}
                    }
                });
            }
        });
        Self { addr, state, stop }
    }

    /// Stops accepting and drops every open connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Requests received so far (health probes excluded).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// How many requests were received (health probes excluded).
    pub fn request_count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// TCP connections accepted so far (health probes included).
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// Lets every `/stream` response finish.
    pub fn release_streams(&self) {
        self.state.released.store(true, Ordering::SeqCst);
        self.state.release.notify_waiters();
    }

    /// How many `/stream` responses have sent their last event.
    pub fn streams_finished(&self) -> usize {
        self.state.streams_finished.load(Ordering::SeqCst)
    }
}

impl Drop for MockOrigin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn full(status: StatusCode, name: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        "x-origin",
        name.parse().expect("origin name is a header value"),
    );
    r
}

async fn handle(
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if path == "/healthz" {
        return Ok(full(StatusCode::OK, &state.name, "ok\n".into()));
    }
    let method = req.method().to_string();
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    state.requests.lock().expect("lock").push(Recorded {
        method,
        path: path.clone(),
        headers,
        body,
    });
    if path.starts_with("/stream") {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        let stream_state = state.clone();
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                .await;
            let released = stream_state.release.notified();
            if !stream_state.released.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(Duration::from_secs(10), released).await;
            }
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: last\n\n"))))
                .await;
            stream_state.streams_finished.fetch_add(1, Ordering::SeqCst);
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut().insert(
            "x-origin",
            state.name.parse().expect("origin name is a header value"),
        );
        return Ok(r);
    }
    if let Some(ms) = path.strip_prefix("/slow?ms=") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body = serde_json::json!({"origin": state.name, "path": path}).to_string();
    Ok(full(StatusCode::OK, &state.name, body))
}

/// One request read off a raw test origin's connection `s`: its head as sent
/// (through the blank line) and its `Content-Length` body. Bytes of a next
/// request stay in `pending` for the next call. `None` when the peer closes
/// or fails first.
pub async fn read_request(
    s: &mut tokio::net::TcpStream,
    pending: &mut Vec<u8>,
) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8192];
    let at = loop {
        if let Some(at) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&pending[..at]).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    while pending.len() < at + length {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    let body = pending[at..at + length].to_vec();
    pending.drain(..at + length);
    Some((head, body))
}
