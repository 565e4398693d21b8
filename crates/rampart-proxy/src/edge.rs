//! The client side of every public connection: deadlines, head caps and a cap on
//! connections per source address, enforced from Rampart's side of Pingora's
//! public APIs.
//!
//! Pingora 0.9 reads a request head with a per-read timeout only (and with none
//! at all on a kept-alive connection), and accepts heads up to 1 MiB. So a client
//! that drips one header line every few seconds, or parks a half-sent request on
//! a kept-alive connection, holds a connection and its buffer for as long as it
//! likes. [`EdgeApp`] wraps the proxy's application:
//!
//! - Each HTTP/1.1 connection's stream is wrapped in a [`DeadlineStream`] that
//!   knows which phase the connection is in — idle between requests, reading a
//!   head, reading a body, answering — and fails a read that outlives the phase's
//!   deadline. A head that runs out of time is answered `408` problem+json, a head
//!   larger than `max_request_head_bytes` or with more than `max_request_headers`
//!   fields `431`, written straight to the client before the connection closes;
//!   an idle connection is closed quietly.
//! - The request loop over a kept-alive connection is ours (through
//!   `HttpServerApp::process_new_http`, the same entry point Pingora's loop
//!   uses), so the idle deadline starts when a response is done, and the proxy
//!   phases learn the connection's [`ConnState`] through the connection user
//!   context (`ProxyHttp::on_connection_reuse`): the proxy moves it to
//!   "answering" once the body has been read.
//! - HTTP/2 connections go to Pingora's own HTTP/2 loop, with its idle timeout.
//! - At accept, a source address (the socket peer, unless it is a trusted proxy)
//!   with `max_connections_per_source` open connections has the new one closed
//!   at once.

use crate::metrics::UNMATCHED_ROUTE;
use crate::state::Shared;
use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use rampart_config::{ClientLimits, RouteKind};
use rampart_policy::Rejection;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection is doing, for its read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Between requests (or before the first): `keepalive_timeout`
    /// (`client_header_timeout` before the first request).
    Idle = 0,
    /// Reading a request head: `client_header_timeout` from its first byte.
    Head = 1,
    /// Reading a request body: `client_body_timeout` from the end of the head.
    Body = 2,
    /// The request is read; the answer is on its way. No read deadline (the
    /// proxy only reads to notice a client that goes away).
    Answering = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Body,
            _ => Phase::Answering,
        }
    }
}

/// Why the edge closed a connection or refused a request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeRefusal {
    /// Idle past `keepalive_timeout` (closed quietly).
    IdleTimeout,
    /// The head took longer than `client_header_timeout` (408).
    HeaderTimeout,
    /// The body took longer than `client_body_timeout` (408).
    BodyTimeout,
    /// The head is larger than `max_request_head_bytes` or has too many fields (431).
    HeaderTooLarge,
    /// The source address has `max_connections_per_source` open connections.
    PerSourceCap,
}

impl EdgeRefusal {
    /// Label of `rampart_client_connections_closed_total`.
    pub fn as_label(self) -> &'static str {
        match self {
            EdgeRefusal::IdleTimeout => "keepalive_timeout",
            EdgeRefusal::HeaderTimeout => "header_timeout",
            EdgeRefusal::BodyTimeout => "body_timeout",
            EdgeRefusal::HeaderTooLarge => "header_too_large",
            EdgeRefusal::PerSourceCap => "per_source_cap",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => EdgeRefusal::IdleTimeout,
            2 => EdgeRefusal::HeaderTimeout,
            3 => EdgeRefusal::BodyTimeout,
            4 => EdgeRefusal::HeaderTooLarge,
            5 => EdgeRefusal::PerSourceCap,
            _ => return None,
        })
    }

    fn to_u8(self) -> u8 {
        match self {
            EdgeRefusal::IdleTimeout => 1,
            EdgeRefusal::HeaderTimeout => 2,
            EdgeRefusal::BodyTimeout => 3,
            EdgeRefusal::HeaderTooLarge => 4,
            EdgeRefusal::PerSourceCap => 5,
        }
    }
}

/// The phase and deadline of one HTTP/1.1 connection, shared by its stream
/// wrapper (which enforces the deadline) and the proxy phases (which say when a
/// request has been read).
#[derive(Debug)]
pub struct ConnState {
    limits: ClientLimits,
    opened: Instant,
    phase: AtomicU8,
    /// Milliseconds after `opened`; 0 means none.
    deadline_ms: AtomicU64,
    /// What the stream refused, when it did (an `EdgeRefusal` as u8, 0 none).
    refused: AtomicU8,
    /// A proxy phase saw the current request (so the proxy accounts for it).
    seen_by_proxy: AtomicBool,
    /// The client closed or reset the connection in the middle of a head.
    gone_mid_head: AtomicBool,
    /// The scan of a head begun in bytes read behind the previous request
    /// (pipelined), for the stream to go on with (see [`ConnState::carried_head`]).
    carried: std::sync::Mutex<Option<HeadScan>>,
    has_carried: AtomicBool,
}

impl ConnState {
    fn new(limits: ClientLimits) -> Self {
        let state = Self {
            limits,
            opened: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            deadline_ms: AtomicU64::new(0),
            refused: AtomicU8::new(0),
            seen_by_proxy: AtomicBool::new(false),
            gone_mid_head: AtomicBool::new(false),
            carried: std::sync::Mutex::new(None),
            has_carried: AtomicBool::new(false),
        };
        state.set(Phase::Idle, limits.header_timeout);
        state
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Milliseconds from `opened` to `t`.
    fn ms_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.opened).as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, phase: Phase, within: Duration) {
        self.set_at(self.now_ms(), phase, within);
    }

    /// [`Self::set`] at `now_ms` (one clock reading for several changes).
    fn set_at(&self, now_ms: u64, phase: Phase, within: Duration) {
        let within = u64::try_from(within.as_millis()).unwrap_or(u64::MAX / 2);
        self.deadline_ms
            .store(now_ms.saturating_add(within).max(1), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Called by the proxy when it has a request: from here on the request is
    /// accounted for by the proxy's own logging.
    pub fn request_seen(&self) {
        self.seen_by_proxy.store(true, Ordering::Release);
    }

    /// Called by the proxy once the whole body has been read (or there is none):
    /// no read deadline while the answer is on its way.
    pub fn answering(&self) {
        self.phase.store(Phase::Answering as u8, Ordering::Release);
        self.deadline_ms.store(0, Ordering::Release);
    }

    /// What the stream refused, if anything (for the proxy's verdict).
    pub fn refused(&self) -> Option<EdgeRefusal> {
        EdgeRefusal::from_u8(self.refused.load(Ordering::Acquire))
    }

    /// Scans the bytes of the next request already read behind the previous
    /// one, as the stream scans what it reads: the same caps on the head's size
    /// and fields (`Err` when they are broken), the same phase and deadline
    /// after. A head that goes on past these bytes is scanned on by the stream.
    pub(crate) fn carried_head(&self, prefix: &[u8]) -> Result<(), EdgeRefusal> {
        let limits = self.limits;
        let mut scan = HeadScan::default();
        let end = scan.feed(prefix);
        if scan.lines.saturating_sub(1) > limits.max_headers || scan.bytes > limits.max_head_bytes {
            self.refuse(EdgeRefusal::HeaderTooLarge);
            return Err(EdgeRefusal::HeaderTooLarge);
        }
        if end.is_some() {
            self.set(Phase::Body, limits.body_timeout);
        } else {
            self.set(Phase::Head, limits.header_timeout);
            if let Ok(mut carried) = self.carried.lock() {
                *carried = Some(scan);
                self.has_carried.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// The scan [`Self::carried_head`] began, once.
    fn take_carried(&self) -> Option<HeadScan> {
        if !self.has_carried.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.carried.lock().ok()?.take()
    }

    fn refuse(&self, why: EdgeRefusal) {
        self.refused.store(why.to_u8(), Ordering::Release);
    }

    /// Next request on a kept-alive connection.
    fn next_request(&self) {
        if self.has_carried.swap(false, Ordering::AcqRel) {
            if let Ok(mut carried) = self.carried.lock() {
                *carried = None;
            }
        }
        self.refused.store(0, Ordering::Release);
        self.seen_by_proxy.store(false, Ordering::Release);
        self.gone_mid_head.store(false, Ordering::Release);
        self.set(Phase::Idle, self.limits.keepalive_timeout);
    }

    fn deadline(&self) -> Option<Instant> {
        match self.deadline_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(self.opened + Duration::from_millis(ms)),
        }
    }
}

/// Finds the empty line that ends a request head, across reads, and counts its
/// lines. HTTP/1.1 lines end in CRLF; a bare LF is counted too, as lenient
/// parsers accept it.
#[derive(Debug, Default)]
struct HeadScan {
    bytes: usize,
    lines: usize,
    /// Bytes of the current line so far, ignoring a CR before its LF.
    line_len: usize,
}

impl HeadScan {
    /// Feeds `data`; returns the offset just past the head's end when it is in `data`.
    /// Finds line ends with `memchr` (a request head is read once per request, on
    /// the hot path); a line is empty when it holds nothing but a CR.
    fn feed(&mut self, data: &[u8]) -> Option<usize> {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let has_content = self.line_len > 0 || data[start..nl].iter().any(|&b| b != b'\r');
            if !has_content && self.lines > 0 {
                self.bytes += nl + 1;
                return Some(nl + 1);
            }
            if has_content {
                self.lines += 1;
            }
            self.line_len = 0;
            start = nl + 1;
        }
        if data[start..].iter().any(|&b| b != b'\r') {
            self.line_len += 1;
        }
        self.bytes += data.len();
        None
    }
}

/// Counts open connections per source address; entries leave with their last
/// connection, so the map never holds more than the open connections.
#[derive(Debug, Default)]
pub struct SourceCounter {
    open: dashmap::DashMap<IpAddr, u32, ahash::RandomState>,
}

/// One counted connection; uncounted when dropped.
#[derive(Debug)]
pub struct SourceSlot<'a> {
    counter: &'a SourceCounter,
    ip: IpAddr,
}

impl SourceCounter {
    /// Counts a connection from `ip`, or `None` when it already has `cap`.
    pub fn acquire(&self, ip: IpAddr, cap: u32) -> Option<SourceSlot<'_>> {
        let mut entry = self.open.entry(ip).or_insert(0);
        if *entry >= cap {
            let empty = *entry == 0;
            drop(entry);
            if empty {
                self.open.remove_if(&ip, |_, n| *n == 0);
            }
            return None;
        }
        *entry += 1;
        Some(SourceSlot { counter: self, ip })
    }

    /// Source addresses with at least one open connection.
    pub fn sources(&self) -> usize {
        self.open.len()
    }
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.counter.open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.counter.open.remove_if(&self.ip, |_, n| *n == 0);
    }
}

/// A client stream that enforces its connection's phase deadline and head caps.
pub struct DeadlineStream {
    inner: pingora::protocols::Stream,
    state: Arc<ConnState>,
    scan: HeadScan,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sleep_until: Option<Instant>,
    shared: Arc<Shared>,
    client: IpAddr,
    /// The JA4 of the connection's TLS hello, for the access log.
    ja4: Option<rampart_policy::Ja4>,
    head_started: Instant,
    /// Count refusals as public requests (not on the admin listener).
    public: bool,
}

impl std::fmt::Debug for DeadlineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineStream")
            .field("state", &self.state)
            .finish()
    }
}

impl DeadlineStream {
    fn new(
        inner: pingora::protocols::Stream,
        state: Arc<ConnState>,
        shared: Arc<Shared>,
        client: IpAddr,
        public: bool,
    ) -> Self {
        let ja4 = crate::ja4::of_stream(&*inner);
        Self {
            ja4,
            inner,
            state,
            scan: HeadScan::default(),
            sleep: None,
            sleep_until: None,
            shared,
            client,
            head_started: Instant::now(),
            public,
        }
    }

    /// Bytes arrived: moves Idle to Head, finds the end of the head, checks caps.
    fn on_bytes(&mut self, data: &[u8]) -> Result<(), EdgeRefusal> {
        let limits = self.state.limits;
        let mut now_ms = None;
        if self.state.phase() == Phase::Idle {
            let started = Instant::now();
            let now = self.state.ms_at(started);
            now_ms = Some(now);
            self.state.set_at(now, Phase::Head, limits.header_timeout);
            self.scan = HeadScan::default();
            self.head_started = started;
        }
        if self.state.phase() != Phase::Head {
            return Ok(());
        }
        if let Some(scan) = self.state.take_carried() {
            // The head began in bytes read behind the previous request.
            self.scan = scan;
            self.head_started = Instant::now();
        }
        let end = self.scan.feed(data);
        // Lines of the head: the request line, then one per field.
        let too_many_fields = self.scan.lines.saturating_sub(1) > limits.max_headers;
        // The scan stops at the end of the head, so `bytes` is the head's size.
        let too_large = self.scan.bytes > limits.max_head_bytes;
        if too_large || too_many_fields {
            return Err(EdgeRefusal::HeaderTooLarge);
        }
        if end.is_some() {
            // A head that came in one read: one clock reading for both changes.
            let now = now_ms.unwrap_or_else(|| self.state.now_ms());
            self.state.set_at(now, Phase::Body, limits.body_timeout);
        }
        Ok(())
    }

    /// Answers a refusal the proxy will never see (the head is not complete),
    /// straight on the stream, once, without waiting: if the socket cannot take
    /// it now, the client is not reading anyway.
    fn answer(&mut self, cx: &mut Context<'_>, why: EdgeRefusal) {
        self.state.refuse(why);
        let rejection = match why {
            EdgeRefusal::HeaderTimeout => Rejection::ClientTimeout,
            EdgeRefusal::HeaderTooLarge => Rejection::HeaderTooLarge,
            _ => return,
        };
        // The one HTTP/1.1 renderer of refusals (the loop's pre-rendered ones too).
        let date = pingora::protocols::http::date::get_cached_date();
        let (mut bytes, mut scratch) = (Vec::new(), String::new());
        rejection.write_http1(
            RouteKind::Api,
            date.as_bytes(),
            true,
            &mut bytes,
            &mut scratch,
        );
        let _ = Pin::new(&mut self.inner).poll_write(cx, &bytes);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        if self.public {
            record_edge_request(
                &self.shared,
                self.client,
                self.ja4,
                &rejection,
                self.head_started.elapsed(),
            );
        }
    }

    fn timed_out(&mut self, cx: &mut Context<'_>) -> std::io::Error {
        let why = match self.state.phase() {
            Phase::Idle => EdgeRefusal::IdleTimeout,
            Phase::Head => EdgeRefusal::HeaderTimeout,
            Phase::Body | Phase::Answering => EdgeRefusal::BodyTimeout,
        };
        self.shared.metrics.client_connection_closed(why.as_label());
        match why {
            EdgeRefusal::HeaderTimeout => self.answer(cx, why),
            // The proxy answers a body timeout itself (it holds the request).
            _ => self.state.refuse(why),
        }
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("client {} deadline passed", why.as_label()),
        )
    }
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.state.refused().is_some() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connection refused by its deadline",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 && this.state.phase() == Phase::Head {
                    this.state.gone_mid_head.store(true, Ordering::Release);
                }
                let watching = matches!(this.state.phase(), Phase::Idle | Phase::Head);
                if n > 0 && watching {
                    if let Err(why) = this.on_bytes(&buf.filled()[before..]) {
                        this.shared.metrics.client_connection_closed(why.as_label());
                        this.answer(cx, why);
                        buf.set_filled(before);
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "request head too large",
                        )));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                if this.state.phase() == Phase::Head {
                    this.state.gone_mid_head.store(true, Ordering::Release);
                }
                Poll::Ready(Err(e))
            }
            Poll::Pending => {
                let Some(deadline) = this.state.deadline() else {
                    return Poll::Pending;
                };
                if Instant::now() >= deadline {
                    let e = this.timed_out(cx);
                    return Poll::Ready(Err(e));
                }
                if this.sleep_until != Some(deadline) {
                    // One timer per connection, moved when the phase changes.
                    match this.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(deadline.into()),
                        None => {
                            this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline.into())))
                        }
                    }
                    this.sleep_until = Some(deadline);
                }
                if let Some(sleep) = this.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_ready() {
                        let e = this.timed_out(cx);
                        return Poll::Ready(Err(e));
                    }
                }
                Poll::Pending
            }
        }
    }
}

crate::wrapped::delegate_to_inner!(DeadlineStream);

/// Counts and logs a request the edge answered before the proxy saw it.
pub(crate) fn record_edge_request(
    shared: &Shared,
    client: IpAddr,
    ja4: Option<rampart_policy::Ja4>,
    rejection: &Rejection,
    took: Duration,
) {
    let status = rejection.status();
    shared.metrics.request(
        UNMATCHED_ROUTE,
        rejection.label(),
        status,
        took.as_secs_f64(),
    );
    if let Some(log) = &shared.access_log {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if log.admit_rejected(now.as_secs()) {
            let line = format!(
                "{{\"time\":{}.{:03},\"client\":\"{client}\",\"country\":null,\"asn\":null,\"ja4\":{},\"route\":\"{UNMATCHED_ROUTE}\",\"method\":null,\"path\":null,\"status\":{status},\"verdict\":\"{}\",\"rule\":null,\"upstream\":null,\"duration_ms\":{:.3}}}",
                now.as_secs(),
                now.subsec_millis(),
                ja4.map(|j| format!("\"{j}\"")).unwrap_or_else(|| "null".into()),
                rejection.label(),
                took.as_secs_f64() * 1000.0,
            );
            log.write(line, &shared.metrics);
        } else {
            shared.metrics.access_log_sampled_out();
        }
    }
}

/// Wraps an HTTP application (the proxy) with client deadlines, head caps and
/// the per-source connection cap. See the module documentation.
pub struct EdgeApp<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    sources: Arc<SourceCounter>,
    h2c: bool,
    public: bool,
    /// Rampart's own HTTP/1.1 request loop; `inner` serves HTTP/1.1 without it.
    lean: Option<Arc<crate::lean::Lean>>,
}

impl<A> EdgeApp<A> {
    /// Wraps the public proxy; `h2c` says whether plaintext HTTP/2 is served.
    /// Requests it refuses before the proxy sees them are counted and logged
    /// like the proxy's own.
    pub fn new(inner: A, shared: Arc<Shared>, sources: Arc<SourceCounter>, h2c: bool) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            sources,
            h2c,
            public: true,
            lean: None,
        }
    }

    /// Counts a request Pingora or the loop read bytes of and gave up on before
    /// any proxy phase: a client that went away mid-head (499, nothing
    /// written), or a malformed head (Pingora answers a plain 400).
    fn account_round(
        &self,
        state: &ConnState,
        client: IpAddr,
        ja4: Option<rampart_policy::Ja4>,
        round_started: Instant,
    ) {
        if self.public
            && !state.seen_by_proxy.load(Ordering::Acquire)
            && state.refused().is_none()
            && state.phase() != Phase::Idle
        {
            let status = if state.gone_mid_head.load(Ordering::Acquire) {
                499
            } else {
                400
            };
            record_edge_request(
                &self.shared,
                client,
                ja4,
                &Rejection::ClientError { status },
                round_started.elapsed(),
            );
        }
    }

    /// Serves HTTP/1.1 connections with `lean` instead of the wrapped application.
    pub fn with_lean(mut self, lean: Arc<crate::lean::Lean>) -> Self {
        self.lean = Some(lean);
        self
    }

    /// Wraps the admin API: the same deadlines and head caps, no per-source
    /// connection cap, nothing counted as public traffic.
    pub fn admin(inner: A, shared: Arc<Shared>) -> Self {
        Self {
            inner: Arc::new(inner),
            shared,
            sources: Arc::new(SourceCounter::default()),
            h2c: false,
            public: false,
            lean: None,
        }
    }
}

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[async_trait]
impl<A> ServerApp for EdgeApp<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: pingora::protocols::Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<pingora::protocols::Stream> {
        let snapshot = self.shared.snapshot();
        let limits = snapshot.config.server.client;
        let mut stream = stream;
        if self.public && stream.get_ssl_digest().is_none() {
            // PROXY protocol on a plaintext listener (TLS listeners read it in
            // the pre-TLS hook): from here on the peer is the header's client.
            let fd = stream.id();
            if crate::proxy_protocol::on_accept(&mut *stream, fd, &self.shared)
                .await
                .is_err()
            {
                return None;
            }
        }
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned())
            .and_then(|a| a.as_inet().map(|a| a.ip()))
            .map(rampart_config::canonical_ip);
        // Behind a trusted proxy the peer is not the client: no cap there. The
        // admin listener is private and authenticated: an operator's tools
        // (a console polling, a CLI, Prometheus) are never closed at accept.
        let _slot = match peer {
            Some(ip)
                if self.public
                    && limits.max_connections_per_source > 0
                    && !snapshot.config.client_ip.is_trusted(ip) =>
            {
                match self.sources.acquire(ip, limits.max_connections_per_source) {
                    Some(slot) => Some(slot),
                    None => {
                        self.shared
                            .metrics
                            .client_connection_closed(EdgeRefusal::PerSourceCap.as_label());
                        return None;
                    }
                }
            }
            _ => None,
        };
        if self.public {
            self.shared
                .metrics
                .set_client_sources(self.sources.sources());
        }
        let is_h2 = if stream.get_ssl_digest().is_some() {
            matches!(
                stream.selected_alpn_proto(),
                Some(pingora::protocols::ALPN::H2)
            )
        } else if self.h2c {
            let mut buf = [0u8; H2_PREFACE.len()];
            match tokio::time::timeout(limits.header_timeout, stream.try_peek(&mut buf)).await {
                Ok(Ok(true)) => buf == H2_PREFACE,
                Ok(Ok(false)) => false,
                _ => return None,
            }
        } else {
            false
        };
        if is_h2 {
            // Pingora's HTTP/2 loop, with its idle timeout (set in the options).
            return self.inner.process_new(stream, shutdown).await;
        }
        let client = peer.unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let ja4 = crate::ja4::of_stream(&*stream);
        let state = Arc::new(ConnState::new(limits));
        let wrapped: pingora::protocols::Stream = Box::new(DeadlineStream::new(
            stream,
            state.clone(),
            self.shared.clone(),
            client,
            self.public,
        ));
        if let Some(lean) = &self.lean {
            let mut carry = crate::lean::Carry::new(wrapped);
            loop {
                let round_started = Instant::now();
                let next = lean.serve_next(carry, &state, shutdown).await;
                self.account_round(&state, client, ja4, round_started);
                state.next_request();
                carry = next?;
            }
        }
        let mut session = ServerSession::new_http1(wrapped);
        // The stream holds every read to its phase's deadline, so Pingora's own
        // per-read timers (keep-alive, read timeout) are off: `Some(0)` keeps the
        // connection alive without a timer of Pingora's (its "infinite").
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(0) });
        session.set_read_timeout(None);
        loop {
            let round_started = Instant::now();
            session.set_connection_user_context(Some(Box::new(state.clone())));
            let reused = self.inner.process_new_http(session, shutdown).await;
            self.account_round(&state, client, ja4, round_started);
            state.next_request();
            let (stream, settings) = reused?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            session.set_read_timeout(None);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_scan_finds_the_empty_line_across_reads() {
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\r\nHost: a\r"), None);
        assert_eq!(s.feed(b"\n\r"), None);
        assert_eq!(s.feed(b"\nbody"), Some(1));
        assert_eq!(s.lines, 2);
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"GET / HTTP/1.1\nA: b\n\nx"), Some(21));
        // Leading empty lines before the request line are not the end.
        let mut s = HeadScan::default();
        assert_eq!(s.feed(b"\r\nGET / HTTP/1.1\r\n\r\n"), Some(20));
    }

    #[test]
    fn source_counter_caps_and_forgets() {
        let c = SourceCounter::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let a = c.acquire(ip, 2);
        let b = c.acquire(ip, 2);
        assert!(a.is_some() && b.is_some());
        assert!(c.acquire(ip, 2).is_none());
        drop(a);
        let again = c.acquire(ip, 2);
        assert!(again.is_some());
        drop((b, again));
        assert_eq!(c.sources(), 0);
    }
}
