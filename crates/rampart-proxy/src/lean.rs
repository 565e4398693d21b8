//! Rampart's own HTTP/1.1 request loop, on pingora-core's building blocks (its
//! HTTP/1.1 server and client sessions and its transport connector) rather than
//! pingora-proxy's `ProxyHttp` machinery. HTTP/2 connections still go through
//! pingora-proxy (see `edge`).
//!
//! The decision is the same code as on the pingora-proxy path (`proxy::decide`,
//! `forward_headers`, `fail`, `log_request`); what differs is the I/O around it:
//! - no per-request channels, spawned tasks or boxed phase futures: one request
//!   is one `async fn` that reads the head, decides, writes the request upstream,
//!   then copies the response back;
//! - origin connections are kept in a small last-in-first-out list checked on
//!   take ([`OriginPool`]): no idle-watch task and no `getpeername` per reuse;
//! - a request whose origin connection turns out to be closed before any byte of
//!   a response came back is sent once more on a new connection, when its body
//!   can be replayed (none, or read whole by a body rule);
//! - the request body is sent before the response is read (like nginx with
//!   `proxy_request_buffering off` but without a concurrent early response); a
//!   client that waits for `100 Continue` is told to go on by Rampart itself;
//! - hop-by-hop fields and the fields `Connection` names are dropped, and only a
//!   WebSocket upgrade goes on (`proxy::forward_parts`); the origin's `101` to
//!   it turns the exchange into a two-way byte copy;
//! - a pooled origin connection is checked before each use, so bytes an origin
//!   sent late on it are never read as the next request's answer;
//! - a response cut short is left cut: the connection is closed, never ended
//!   with a last chunk.

use crate::answer::{read_answer, Buffer, Reading, Replay};
use crate::edge::ConnState;
use crate::proxy::{
    decide, expects_continue, fail, forward_parts, log_request, log_seen, take_verdict,
    write_forwarded_head, write_refusal, written_status, Early, Forward, RequestCtx, Seen,
};
use crate::state::{Shared, Snapshot};
use bytes::{Bytes, BytesMut};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Upstream;
use pingora::protocols::http::{ReusableHttpStream, ServerSession};
use pingora::protocols::Stream;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use rampart_config::RouteKind;
use rampart_policy::{Charging, Rejection, RequestFacts, Step};
use std::cell::Cell;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

thread_local! {
    /// The last refusal answered on this thread, pre-rendered: a flood of the
    /// same refusal is answered by writing these bytes (with the date brought up
    /// to date in place), and a new one is rendered into the same buffers.
    static LAST_REFUSAL: Cell<Option<Box<Rendered>>> = const { Cell::new(None) };
}

/// A refusal rendered as a whole HTTP/1.1 response.
struct Rendered {
    rejection: Rejection,
    kind: RouteKind,
    close: bool,
    bytes: Vec<u8>,
    date_at: usize,
    scratch: String,
}

impl Rendered {
    /// Makes `slot` hold the bytes for `rejection` on a route of `kind` at
    /// `date` (with `Connection: close` when `close`), rendering only when the
    /// refusal differs from the one it holds.
    fn update(
        slot: &mut Option<Box<Rendered>>,
        rejection: Rejection,
        kind: RouteKind,
        close: bool,
        date: &[u8],
    ) {
        match slot {
            Some(r) if r.rejection == rejection && r.kind == kind && r.close == close => {
                let at = r.date_at;
                match r.bytes.get_mut(at..at + date.len()) {
                    Some(old) => {
                        if old != date {
                            old.copy_from_slice(date);
                        }
                    }
                    None => {
                        r.date_at =
                            rejection.write_http1(kind, date, close, &mut r.bytes, &mut r.scratch)
                    }
                }
            }
            Some(r) => {
                r.date_at = rejection.write_http1(kind, date, close, &mut r.bytes, &mut r.scratch);
                r.rejection = rejection;
                r.kind = kind;
                r.close = close;
            }
            None => {
                let (mut bytes, mut scratch) = (Vec::new(), String::new());
                let date_at = rejection.write_http1(kind, date, close, &mut bytes, &mut scratch);
                *slot = Some(Box::new(Rendered {
                    rejection,
                    kind,
                    close,
                    bytes,
                    date_at,
                    scratch,
                }));
            }
        }
    }

    /// Writes the answer to `rejection` onto `stream`, rendered into the
    /// thread's kept buffer: no header map and, for a flood of one refusal, no
    /// allocation.
    async fn write(
        stream: &mut Stream,
        rejection: Rejection,
        kind: RouteKind,
        close: bool,
    ) -> std::io::Result<()> {
        let mut rendered = LAST_REFUSAL.take();
        let date = pingora::protocols::http::date::get_cached_date();
        Self::update(&mut rendered, rejection, kind, close, date.as_bytes());
        let bytes = rendered.as_ref().map_or(&[][..], |r| r.bytes.as_slice());
        let sent = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        .await;
        LAST_REFUSAL.set(rendered);
        sent
    }
}

/// Idle origin connections, most recently used last. Taking checks the age and,
/// with one non-blocking read, that the origin has neither closed the connection
/// nor sent bytes nobody asked for (a late or overlong answer, which must never
/// reach the next request's client); a connection closed between that check and
/// the request is found out on first use and the request sent again on a new
/// one (see the module documentation).
#[derive(Debug)]
pub struct OriginPool {
    idle: Mutex<VecDeque<IdleOrigin>>,
    capacity: usize,
}

#[derive(Debug)]
struct IdleOrigin {
    key: u64,
    since: Instant,
    idle_timeout: Option<Duration>,
    stream: Stream,
}

impl OriginPool {
    fn new(capacity: usize) -> Self {
        Self {
            idle: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    /// The most recently released connection to the server with `key` that is
    /// within its idle timeout and still open, with nothing unasked waiting on it.
    fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let expired = |c: &IdleOrigin| c.idle_timeout.is_some_and(|t| now - c.since >= t);
        let mut idle = self.idle.lock().ok()?;
        // The oldest are at the front: expired ones are closed from there.
        while idle.front().is_some_and(expired) {
            idle.pop_front();
        }
        while let Some(at) = idle.iter().rposition(|c| c.key == key) {
            let mut c = idle.remove(at)?;
            if expired(&c) {
                continue;
            }
            if still_open(&mut c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Keeps `stream` for reuse; the oldest connection goes when the pool is full.
    fn put(&self, key: u64, idle_timeout: Option<Duration>, stream: Stream) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.capacity {
            idle.pop_front();
        }
        idle.push_back(IdleOrigin {
            key,
            since: Instant::now(),
            idle_timeout,
            stream,
        });
    }
}

/// Whether an idle origin connection is still open: nothing to read yet. A
/// closed connection reads its end, and one with bytes waiting (which no
/// request asked for) cannot carry a request either.
fn still_open(stream: &mut Stream) -> bool {
    use std::task::{Context, Poll, Waker};
    use tokio::io::{AsyncRead, ReadBuf};
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    matches!(
        std::pin::Pin::new(stream).poll_read(&mut cx, &mut buf),
        Poll::Pending
    )
}

/// The HTTP/1.1 request loop of the public listeners.
pub struct Lean {
    shared: Arc<Shared>,
    connector: TransportConnector,
    origins: OriginPool,
}

impl std::fmt::Debug for Lean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lean")
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

/// How one request ended, for the connection.
enum Ended {
    /// The client connection can carry another request.
    Reusable,
    /// It cannot (a failure, a refusal that closes, an upgraded connection).
    Close,
    /// Refused, with nothing written yet: the answer is pre-rendered onto the
    /// connection once the request is accounted for (see [`Lean::refuse`]).
    Refused,
    /// The origin's answer, read whole and rendered by Rampart: written onto
    /// the connection once the request is accounted for (see `answer`).
    Answered { status: u16, bytes: Buffer },
}

/// A client connection that can carry another request.
#[derive(Debug)]
pub struct Carry {
    /// The connection.
    pub stream: Stream,
    /// Bytes of the next request already read.
    pub prefix: Option<BytesMut>,
    /// Its last request was refused: the next one is read by Rampart first
    /// (see [`Lean::early`]).
    pub refused: bool,
}

impl Carry {
    /// A new connection.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            prefix: None,
            refused: false,
        }
    }
}

/// Fields Rampart's own reading of a head takes; a head with more is read by
/// Pingora alone.
const EARLY_FIELDS: usize = 64;

/// What Rampart's own reading of a request head came to. Built and taken
/// apart once per request: not boxed.
#[allow(clippy::large_enum_variant)]
enum EarlyOutcome<'s> {
    /// The head is not complete yet.
    More,
    /// Pingora reads the request from its first byte, and decides it from
    /// where this reading stopped, if it began.
    Pingora(Option<Early<'s>>),
    /// Refused (and accounted for): the answer is still to be written, and the
    /// head's `len` bytes to be dropped.
    Refused {
        rejection: Rejection,
        kind: RouteKind,
        close: bool,
        len: usize,
    },
}

/// A byte of a request target that every URI parser accepts as it is:
/// RFC 3986's unreserved and sub-delimiter characters, `%`, `:`, `@`, `/` and
/// `?`.
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
        )
}

/// A byte of a plain `Host`: a name, an IPv4 or bracketed IPv6 literal, a port.
fn plain_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']')
}

/// The connection's client address as the socket (or its PROXY header) gives it.
fn peer_ip(stream: &Stream) -> IpAddr {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().cloned())
        .and_then(|a| a.as_inet().map(|a| a.ip()))
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

impl Lean {
    /// A loop over `shared`'s policy; origin connections as `conf` says
    /// (keep-alive pool size, TLS to origins).
    pub fn new(shared: Arc<Shared>, conf: &ServerConf) -> Self {
        Self {
            shared,
            connector: TransportConnector::new(Some(ConnectorOptions::from_server_conf(conf))),
            origins: OriginPool::new(conf.upstream_keepalive_pool_size),
        }
    }

    /// The session that reads the next request of `stream`, with the bytes of
    /// it already read. The stream holds every read to its phase's deadline, so
    /// Pingora's own per-read timers (keep-alive, read timeout) are off:
    /// `Some(0)` keeps the connection alive without a timer of Pingora's (its
    /// "infinite").
    fn session(
        stream: Stream,
        prefix: Option<BytesMut>,
        shutdown: &ShutdownWatch,
    ) -> ServerSession {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(0) });
        session.set_read_timeout(None);
        if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
            session.set_pipelined_prefix(prefix);
        }
        session
    }

    /// Serves the next request of a connection and returns the connection when
    /// it can carry another.
    pub async fn serve_next(
        &self,
        mut carry: Carry,
        conn: &Arc<ConnState>,
        shutdown: &ShutdownWatch,
    ) -> Option<Carry> {
        // Bytes of the next head read behind the previous request were never
        // seen by the deadline stream's head caps: they are held to them here.
        if let Some(prefix) = carry.prefix.as_deref().filter(|p| !p.is_empty()) {
            if let Err(why) = conn.carried_head(prefix) {
                self.shared.metrics.client_connection_closed(why.as_label());
                let rejection = Rejection::HeaderTooLarge;
                let ja4 = crate::ja4::of_stream(&*carry.stream);
                crate::edge::record_edge_request(
                    &self.shared,
                    peer_ip(&carry.stream),
                    ja4,
                    &rejection,
                    Duration::ZERO,
                );
                let _ = Rendered::write(&mut carry.stream, rejection, RouteKind::Api, true).await;
                let _ = carry.stream.shutdown().await;
                return None;
            }
        }
        // A connection whose last request was refused is likely to send more of
        // the same: its next head is read by Rampart first. While recording,
        // every request goes through Pingora (the record keeps its fields).
        if carry.refused && self.shared.recorder.is_none() {
            return self.early(carry, conn, shutdown).await;
        }
        let session = Self::session(carry.stream, carry.prefix, shutdown);
        self.serve(session, conn, shutdown, None).await
    }

    /// Reads the next request head itself (`httparse`, no allocation) and
    /// decides as much of the request as its address, JA4, request line and
    /// `Host` tell ([`rampart_policy::Evaluation::next_early`]). A refusal
    /// certain from those is answered here with pre-rendered bytes, before
    /// Pingora builds a request header; anything else (a body, `Expect`,
    /// `Upgrade`, `Connection` other than keep-alive, an absolute-form or
    /// non-canonical target, a head `httparse` cannot read, a decision that
    /// needs the fields) goes to Pingora with every byte read so far, and
    /// [`decide`] goes on from where this stopped, after checking that
    /// Pingora's reading names the same client, method, host and path.
    async fn early(
        &self,
        carry: Carry,
        conn: &Arc<ConnState>,
        shutdown: &ShutdownWatch,
    ) -> Option<Carry> {
        let Carry {
            mut stream, prefix, ..
        } = carry;
        let mut buf = prefix.unwrap_or_default();
        let mut snapshot;
        let peer = peer_ip(&stream);
        let ja4 = crate::ja4::of_stream(&*stream);
        let early = loop {
            if !buf.is_empty() {
                // The config and flags as they are now that bytes came, not as
                // they were when the wait began (a flag may have expired).
                snapshot = self.shared.snapshot();
                match self.early_head(&snapshot, &buf, peer, ja4, conn) {
                    EarlyOutcome::More => {}
                    EarlyOutcome::Pingora(early) => break early,
                    EarlyOutcome::Refused {
                        rejection,
                        kind,
                        close,
                        len,
                    } => {
                        bytes::Buf::advance(&mut buf, len);
                        let sent = Rendered::write(&mut stream, rejection, kind, close).await;
                        if close || sent.is_err() {
                            let _ = stream.shutdown().await;
                            return None;
                        }
                        return Some(Carry {
                            stream,
                            prefix: Some(buf),
                            refused: true,
                        });
                    }
                }
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let mut watch = shutdown.clone();
            let read = tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => read,
                // A server shutting down stops waiting for the next request.
                _ = watch.wait_for(|down| *down) => return None,
            };
            // The deadline stream has answered and counted a head that was
            // too slow or too large; a client gone mid-head is counted by the
            // connection's loop.
            if !matches!(read, Ok(n) if n > 0) {
                return None;
            }
        };
        let session = Self::session(stream, Some(buf), shutdown);
        self.serve(session, conn, shutdown, early.map(|e| (e, &snapshot)))
            .await
    }

    /// [`Self::early`]'s reading of the head in `buf`.
    fn early_head<'s>(
        &self,
        snapshot: &'s Arc<Snapshot>,
        buf: &[u8],
        peer: IpAddr,
        ja4: Option<rampart_policy::Ja4>,
        conn: &Arc<ConnState>,
    ) -> EarlyOutcome<'s> {
        // Left uninitialised: httparse writes the ones it fills.
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; EARLY_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let len = match req.parse_with_uninit_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return EarlyOutcome::More,
            Err(_) => return EarlyOutcome::Pingora(None),
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            return EarlyOutcome::Pingora(None);
        };
        // Only heads Pingora would accept as they are are decided here: a
        // target of URI characters every parser takes (no `#`, `<`, `>`, `"`,
        // backtick, braces, spaces), never CONNECT (the loop answers it 405).
        if !target.starts_with('/') || !target.bytes().all(plain_target_byte) || method == "CONNECT"
        {
            return EarlyOutcome::Pingora(None);
        }
        let config = &snapshot.config;
        let forward_name = crate::proxy::forward_header_name(config.client_ip.header);
        let mut hosts: [&[u8]; 2] = [&[]; 2];
        let mut host_count = 0;
        let mut forwarded: [&[u8]; 8] = [&[]; 8];
        let mut forwarded_count = 0;
        for field in req.headers.iter() {
            let name = field.name.as_bytes();
            let value = field.value;
            if name.eq_ignore_ascii_case(b"host") {
                if host_count == hosts.len() {
                    return EarlyOutcome::Pingora(None);
                }
                hosts[host_count] = value;
                host_count += 1;
            } else if name.eq_ignore_ascii_case(forward_name.as_str().as_bytes()) {
                if forwarded_count == forwarded.len() {
                    return EarlyOutcome::Pingora(None);
                }
                forwarded[forwarded_count] = value;
                forwarded_count += 1;
            } else if name.eq_ignore_ascii_case(b"content-length") {
                if value != b"0" {
                    return EarlyOutcome::Pingora(None);
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                if !value.eq_ignore_ascii_case(b"keep-alive") {
                    return EarlyOutcome::Pingora(None);
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"upgrade")
            {
                return EarlyOutcome::Pingora(None);
            }
        }
        let hosts = hosts.get(..host_count).unwrap_or_default();
        if rampart_policy::check_method(method).is_err()
            || rampart_policy::canonical::check_host(None, hosts.iter().copied()).is_err()
        {
            return EarlyOutcome::Pingora(None);
        }
        // A host name, an IPv4 or bracketed IPv6 literal, and a port: no
        // userinfo (`@`), which Pingora refuses, nor anything else unusual.
        let host = match hosts.first() {
            Some(h) if h.iter().all(|&b| plain_host_byte(b)) => match std::str::from_utf8(h) {
                Ok(h) => Some(h),
                Err(_) => return EarlyOutcome::Pingora(None),
            },
            Some(_) => return EarlyOutcome::Pingora(None),
            None => None,
        };
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let options = rampart_policy::CanonicalOptions {
            allow_semicolons: config.request.allow_semicolons,
        };
        let Ok(path) = rampart_policy::canonicalize_path(path, options) else {
            return EarlyOutcome::Pingora(None);
        };
        let ip = rampart_policy::resolve_client_ip(
            peer,
            forwarded
                .get(..forwarded_count)
                .unwrap_or_default()
                .iter()
                .copied(),
            &config.client_ip,
        );
        let geo = snapshot.geo.lookup(ip);
        let no_fields = http::HeaderMap::new();
        let facts = RequestFacts {
            ip,
            geo,
            host,
            path: &path,
            query,
            method,
            headers: &no_fields,
            flags: &snapshot.flags.modes,
            ja4,
            identity: snapshot.identity_source(),
        };
        let mut evaluation = snapshot.policy.evaluate(Charging::Charge);
        match evaluation.next_early(&facts) {
            Some(Step::Done(verdict)) if verdict.refusal.is_some() => {
                let mut ctx = RequestCtx::on(snapshot.clone(), &self.shared, Some(conn.clone()));
                conn.request_seen();
                conn.answering();
                ctx.body_done = true;
                ctx.client_ip = ip;
                ctx.geo = geo;
                ctx.ja4 = ja4;
                self.shared.metrics.geo_lookup(&snapshot.geo, &geo);
                ctx.rejection = take_verdict(&self.shared, &mut ctx, verdict);
                let status = ctx.rejection.as_ref().map_or(0, Rejection::status);
                log_seen(
                    &self.shared,
                    Seen::Head {
                        method,
                        path: &path,
                    },
                    &ctx,
                    status,
                );
                let (kind, close) = (ctx.kind(), ctx.closes_on_reject());
                match ctx.rejection.take() {
                    Some(rejection) => EarlyOutcome::Refused {
                        rejection,
                        kind,
                        close,
                        len,
                    },
                    None => EarlyOutcome::Pingora(None),
                }
            }
            step => EarlyOutcome::Pingora(Some(Early {
                evaluation,
                step,
                ip,
                geo,
                method: method.to_owned(),
                host: host.map(str::to_owned),
                path: path.into_owned(),
            })),
        }
    }

    /// Serves one request on `session` (begun by [`Self::early`] when `early`
    /// is given, on its snapshot) and returns the connection when it can carry
    /// another.
    async fn serve(
        &self,
        mut session: ServerSession,
        conn: &Arc<ConnState>,
        shutdown: &ShutdownWatch,
        early: Option<(Early<'_>, &Arc<Snapshot>)>,
    ) -> Option<Carry> {
        let mut watch = shutdown.clone();
        let read = tokio::select! {
            biased;
            read = session.read_request() => read,
            // A server shutting down stops waiting for the next request.
            _ = watch.wait_for(|down| *down) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                // Pingora's plain 400 for a malformed head, as on the other path.
                if matches!(e.etype(), ErrorType::InvalidHTTPHeader) {
                    let _ = session.respond_error(400).await;
                }
                session.shutdown().await;
                return None;
            }
        }
        // Requests a client sent before its previous answer (pipelining) are
        // served in order, one after the other, rather than dropped.
        session.set_pipelining_enabled(true);
        if session.req_header().method == http::Method::CONNECT {
            let _ = session.respond_error(405).await;
            session.shutdown().await;
            return None;
        }
        let (mut ctx, early) = match early {
            Some((early, snapshot)) => (
                RequestCtx::on(snapshot.clone(), &self.shared, Some(conn.clone())),
                Some(early),
            ),
            None => (RequestCtx::new(&self.shared, Some(conn.clone())), None),
        };
        let mut ended = self.handle(&mut session, &mut ctx, early).await;
        if let Ended::Answered { status, bytes } = ended {
            return Self::answer(session, ctx, status, bytes, &self.shared).await;
        }
        let refused = ctx.rejection.is_some();
        if matches!(ended, Ended::Refused) {
            if Self::answers_fast(&mut session, &ctx) {
                return Self::refuse_fast(session, ctx, &self.shared).await;
            }
            ended = match write_refusal(&mut session, &ctx).await {
                Ok(()) => Ended::Reusable,
                Err(_) => Ended::Close,
            };
        }
        log_request(&self.shared, &session, &ctx, written_status(&session));
        drop(ctx);
        if matches!(ended, Ended::Close) {
            // Not `finish`: a response cut short must stay visibly cut (no last
            // chunk written for it), and the connection carries nothing more.
            session.shutdown().await;
            return None;
        }
        let (stream, prefix) = session
            .finish()
            .await
            .ok()
            .flatten()
            .map(ReusableHttpStream::into_parts)?;
        Some(Carry {
            stream,
            prefix,
            refused,
        })
    }

    /// Whether the client's connection stays open after this request on
    /// HTTP/1.1 keep-alive and nothing else, so that an answer Rampart writes
    /// itself needs no `Connection` of its own.
    fn keeps_alive_plainly(session: &ServerSession) -> bool {
        let req = session.req_header();
        req.version == http::Version::HTTP_11
            && req
                .headers
                .get(http::header::CONNECTION)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive"))
            && session.get_keepalive().is_some()
    }

    /// Whether a refusal can be answered with pre-rendered bytes: HTTP/1.1,
    /// keep-alive on both sides, no request body, a client still there.
    fn answers_fast(session: &mut ServerSession, ctx: &RequestCtx) -> bool {
        Self::keeps_alive_plainly(session)
            && session.is_body_empty()
            && !matches!(
                ctx.rejection,
                Some(Rejection::ClientError { status: 499 }) | None
            )
    }

    /// Answers a refusal that [`Self::answers_fast`] allows with bytes rendered
    /// into a buffer kept across requests, written straight onto the connection:
    /// no response header map, no allocation.
    async fn refuse_fast(
        session: ServerSession,
        mut ctx: RequestCtx,
        shared: &Shared,
    ) -> Option<Carry> {
        let status = ctx.rejection.as_ref()?.status();
        log_request(shared, &session, &ctx, status);
        let kind = ctx.kind();
        let rejection = ctx.rejection.take()?;
        drop(ctx);
        // Nothing was written: the session hands the connection back as it is,
        // with any bytes of a next request already read.
        let (mut stream, prefix) = session.finish().await.ok()??.into_parts();
        Rendered::write(&mut stream, rejection, kind, false)
            .await
            .ok()?;
        Some(Carry {
            stream,
            prefix,
            refused: true,
        })
    }

    /// Writes an origin's answer rendered by [`Lean::proxy`] once the request
    /// is accounted for, as [`Self::refuse_fast`] writes a refusal.
    async fn answer(
        session: ServerSession,
        ctx: RequestCtx,
        status: u16,
        bytes: Buffer,
        shared: &Shared,
    ) -> Option<Carry> {
        log_request(shared, &session, &ctx, status);
        drop(ctx);
        let (mut stream, prefix) = session.finish().await.ok()??.into_parts();
        stream.write_all(&bytes.0).await.ok()?;
        stream.flush().await.ok()?;
        Some(Carry {
            stream,
            prefix,
            refused: false,
        })
    }

    async fn handle(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        early: Option<Early<'_>>,
    ) -> Ended {
        match decide(&self.shared, session, ctx, early).await {
            Ok(true) => return Ended::Refused,
            Ok(false) => {}
            Err(e) => {
                fail(session, &e, ctx).await;
                return Ended::Close;
            }
        }
        match self.proxy(session, ctx).await {
            Ok(ended) => ended,
            Err(e) => {
                fail(session, &e, ctx).await;
                Ended::Close
            }
        }
    }

    /// The request header as the origin gets it.
    fn upstream_header(
        session: &ServerSession,
        ctx: &RequestCtx,
        has_body: bool,
    ) -> Result<Box<RequestHeader>> {
        let mut parts = session.req_header().as_owned_parts();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        // On the client's version: only an HTTP/1.1 client's WebSocket upgrade
        // goes on, as `write_forwarded_head` and pingora-proxy decide.
        forward_parts(&mut parts, ctx, tls, has_body)?;
        // An HTTP/1.0 client's request goes on as HTTP/1.1, so that the origin
        // connection stays open (as pingora-proxy does).
        parts.version = http::Version::HTTP_11;
        Ok(Box::new(RequestHeader::from(parts)))
    }

    /// An origin connection to `peer`: a pooled one unless `fresh`.
    async fn connect(&self, peer: &HttpPeer, key: u64, fresh: bool) -> Result<(Stream, bool)> {
        if !fresh {
            if let Some(stream) = self.origins.take(key) {
                return Ok((stream, true));
            }
        }
        Ok((self.connector.new_stream(peer).await?, false))
    }

    async fn proxy(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<Ended> {
        let snapshot = ctx.snapshot.clone();
        let pool_index = ctx
            .pool
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no pool"))?;
        let pool = snapshot
            .pools
            .get(pool_index)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no pool"))?;
        let handles = snapshot.pool_metrics.get(pool_index);
        // A body read whole by a body rule is replayed byte for byte; a request
        // without one can be sent again as it is.
        let buffered = session.get_retry_buffer();
        let replayable = ctx.body_done;
        let has_body = !session.is_body_empty();
        if !replayable && !ctx.continue_sent && expects_continue(session) {
            // A client waiting for `100 Continue` before sending the body Rampart
            // streams is told to go on here, as nginx does; the origin is not
            // asked (Expect is not forwarded once the client was answered).
            session
                .write_continue_response()
                .await
                .map_err(|e| e.into_down())?;
            ctx.continue_sent = true;
        }
        // Built before any connection, so that a request refused for its
        // hop-by-hop fields never reaches an origin. A request with nothing to
        // send after its head (no body, not HEAD, whose answer Pingora's
        // reading must know has no body) is written as bytes straight from the
        // client's head; any other gets a request header for Pingora to write.
        let mut raw = Buffer::take();
        let (mut reading, mut rendered) = (Buffer::take(), Buffer::take());
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let plain = replayable && session.req_header().method != http::Method::HEAD;
        let built = write_forwarded_head(
            session.req_header(),
            Forward::of(ctx, tls),
            !plain || has_body,
            &mut raw.0,
        )
        .and_then(|raw_head| match raw_head {
            true => Ok(None),
            false => Self::upstream_header(session, ctx, has_body).map(Some),
        });
        let mut header = match built {
            Ok(header) => header,
            Err(e) => {
                ctx.rejection = Some(Rejection::ClientError { status: 400 });
                return Err(e.into_down());
            }
        };
        let raw_head = header.is_none();
        // The origin's answer can be rendered by Rampart when the request went
        // as bytes and the client keeps its connection on plain keep-alive.
        let plain_answer = raw_head
            && self.shared.recorder.is_none()
            && !expects_continue(session)
            && Self::keeps_alive_plainly(session);
        let mut fresh = false;
        // Rampart read the first bytes of an answer and handed them to
        // Pingora: the origin had the request, which is not sent again.
        let mut answer_begun = false;
        let (mut up, peer, key) = loop {
            // After a connect failure, the retry goes to another server.
            let exclude = if ctx.connect_failures > 0 {
                ctx.server
            } else {
                None
            };
            let Some((i, server)) = pool
                .pick(exclude)
                .and_then(|i| Some((i, pool.servers.get(i)?)))
            else {
                ctx.rejection = Some(Rejection::NoHealthyUpstream {
                    pool: pool.name().to_string(),
                });
                return Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no healthy server in pool",
                ));
            };
            ctx.server = Some(i);
            ctx.upstream_start = Some(Instant::now());
            let (peer, key) = (&server.peer, server.reuse_key);
            let (stream, reused) = match self.connect(peer, key, fresh).await {
                Ok(connected) => connected,
                Err(e) => {
                    ctx.connect_failures = ctx.connect_failures.saturating_add(1);
                    if ctx.connect_failures == 1 && pool.pick(ctx.server).is_some() {
                        continue;
                    }
                    return Err(e.into_up());
                }
            };
            if let Some(handles) = handles {
                handles.connect(reused);
            }
            let mut stream = stream;
            if raw_head {
                let answered = async {
                    write_head(&mut stream, &raw.0, peer.options.write_timeout).await?;
                    if !plain_answer {
                        return Ok(None);
                    }
                    let date = pingora::protocols::http::date::get_cached_date();
                    let (read, out) = (&mut reading.0, &mut rendered.0);
                    read_answer(
                        &mut stream,
                        peer.options.read_timeout,
                        date.as_bytes(),
                        read,
                        out,
                    )
                    .await
                    .map(Some)
                }
                .await;
                match answered {
                    Ok(Some(Reading::Rendered { status, reusable })) => {
                        if let (Some(start), Some(handles)) = (ctx.upstream_start, handles) {
                            handles.upstream_response(start.elapsed().as_secs_f64());
                        }
                        if reusable {
                            self.origins.put(key, peer.options.idle_timeout, stream);
                        }
                        return Ok(Ended::Answered {
                            status,
                            bytes: rendered,
                        });
                    }
                    // Not one Rampart renders: Pingora reads it from its first byte.
                    Ok(Some(Reading::Pingora(read))) => {
                        answer_begun = !read.is_empty();
                        stream = Replay::wrap(read, stream);
                    }
                    Ok(None) => {}
                    // The origin closed a pooled connection before answering
                    // (no byte of an answer read): once more on a new one. An
                    // answer that ended after its first bytes is not sent again.
                    Err(e) if reused && !fresh && closed_early(&e) && reading.0.is_empty() => {
                        fresh = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut up = Upstream::new_with_options(stream, peer);
            // The pool's timeouts for each read and write on the origin
            // connection, as pingora-proxy applies them.
            up.read_timeout = peer.options.read_timeout;
            up.write_timeout = peer.options.write_timeout;
            let sent = async {
                if !raw_head {
                    let head = match header.take() {
                        Some(head) => head,
                        // Sent once more: built again (the first went with the attempt).
                        None => Self::upstream_header(session, ctx, has_body)?,
                    };
                    Self::send_head(&mut up, head, buffered.as_ref()).await?;
                    if replayable {
                        up.finish_body().await.map_err(|e| e.into_up())?;
                    }
                }
                if replayable {
                    Self::read_response_head(&mut up, session, ctx).await?;
                }
                Ok::<(), Box<Error>>(())
            }
            .await;
            match sent {
                Ok(()) => break (up, peer, key),
                // The origin closed a pooled connection before answering: once
                // more on a new one, when the request can be sent again.
                Err(e) if reused && replayable && !fresh && !answer_begun && closed_early(&e) => {
                    fresh = true;
                }
                Err(e) => return Err(e),
            }
        };
        if !replayable {
            self.stream_body(&mut up, session, ctx).await?;
            up.finish_body().await.map_err(|e| e.into_up())?;
            Self::read_response_head(&mut up, session, ctx).await?;
        }
        if let (Some(start), Some(handles)) = (ctx.upstream_start, handles) {
            handles.upstream_response(start.elapsed().as_secs_f64());
        }
        let header = up
            .resp_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        // Only a WebSocket upgrade is forwarded (see `forward_parts`): the origin
        // agreeing to it is the only way to a tunnel.
        let upgraded = header.status.as_u16() == 101 && up.is_upgrade_req();
        session
            .write_response_header(Box::new(header.clone()))
            .await
            .map_err(|e| e.into_down())?;
        if upgraded {
            return Self::tunnel(&mut up, session).await.map(|()| Ended::Close);
        }
        while let Some(chunk) = up.read_body_bytes().await.map_err(|e| e.into_up())? {
            session
                .write_response_body(chunk, false)
                .await
                .map_err(|e| e.into_down())?;
        }
        session.finish_body().await.map_err(|e| e.into_down())?;
        up.respect_keepalive();
        if let Some(stream) = up.reuse().await.and_then(Replay::unwrap) {
            self.origins.put(key, peer.options.idle_timeout, stream);
        }
        Ok(Ended::Reusable)
    }

    /// Reads the origin's response header, passing a `100 Continue` on to a
    /// client still waiting for one and skipping other informational responses.
    async fn read_response_head(
        up: &mut Upstream,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        loop {
            up.read_response().await.map_err(|e| e.into_up())?;
            match up.get_status().map(|s| s.as_u16()) {
                Some(100) => {
                    if expects_continue(session) && !ctx.continue_sent {
                        session
                            .write_continue_response()
                            .await
                            .map_err(|e| e.into_down())?;
                        ctx.continue_sent = true;
                    }
                }
                Some(102..=199) => {}
                _ => return Ok(()),
            }
        }
    }

    /// Writes the request header, and the body when a body rule read it whole.
    async fn send_head(
        up: &mut Upstream,
        header: Box<RequestHeader>,
        buffered: Option<&Bytes>,
    ) -> Result<()> {
        up.write_request_header(header)
            .await
            .map_err(|e| e.into_up())?;
        if let Some(body) = buffered.filter(|b| !b.is_empty()) {
            up.write_body(body).await.map_err(|e| e.into_up())?;
        }
        Ok(())
    }

    /// Copies the rest of the request body to the origin, within the client's
    /// body deadline.
    async fn stream_body(
        &self,
        up: &mut Upstream,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::from_std(ctx.body_deadline());
        loop {
            let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
                Ok(chunk) => chunk.map_err(|e| e.into_down())?,
                Err(_) => {
                    ctx.rejection = Some(Rejection::ClientTimeout);
                    return Err(Error::explain(
                        ErrorType::ReadTimedout,
                        "client_body_timeout passed while the body was arriving",
                    )
                    .into_down());
                }
            };
            let Some(chunk) = chunk else { break };
            up.write_body(&chunk).await.map_err(|e| e.into_up())?;
        }
        ctx.body_done = true;
        if let Some(conn) = &ctx.conn {
            conn.answering();
        }
        Ok(())
    }

    /// After `101 Switching Protocols`: bytes both ways until either side ends.
    async fn tunnel(up: &mut Upstream, session: &mut ServerSession) -> Result<()> {
        up.maybe_upgrade_body_writer();
        loop {
            tokio::select! {
                from_origin = up.read_body_bytes() => {
                    match from_origin.map_err(|e| e.into_up())? {
                        Some(chunk) => session
                            .write_response_body(chunk, false)
                            .await
                            .map_err(|e| e.into_down())?,
                        None => break,
                    }
                }
                from_client = session.read_request_body() => {
                    match from_client.map_err(|e| e.into_down())? {
                        Some(chunk) => {
                            up.write_body(&chunk).await.map_err(|e| e.into_up())?;
                        }
                        None => break,
                    }
                }
            }
        }
        let _ = session.finish_body().await;
        Ok(())
    }
}

/// Writes a request head built by `write_forwarded_head` onto an origin
/// connection, within the pool's write timeout; failures read as Pingora's
/// own writing of a head would report them.
async fn write_head(stream: &mut Stream, head: &[u8], limit: Option<Duration>) -> Result<()> {
    let write = async {
        stream.write_all(head).await?;
        stream.flush().await
    };
    let written = match limit {
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        None => write.await,
    };
    written.map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut => ErrorType::WriteTimedout,
            _ => ErrorType::WriteError,
        };
        Error::because(kind, "while writing request headers", e).into_up()
    })
}

/// An origin connection that was closed before any byte of a response came back.
fn closed_early(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loopback connection whose far end stays open (for the test's life).
    async fn stream() -> Stream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (far, _) = listener.accept().await.expect("accept");
        std::mem::forget(far);
        Box::new(pingora::protocols::l4::stream::Stream::from(tcp))
    }

    fn id(stream: &Stream) -> i32 {
        stream.id()
    }

    #[test]
    fn a_kept_refusal_gets_a_new_date_in_place_and_another_refusal_is_rendered() {
        let banned = |wait| Rejection::Banned {
            rule: "ban".into(),
            retry_after: wait,
        };
        let mut slot = None;
        Rendered::update(
            &mut slot,
            banned(60),
            RouteKind::Api,
            false,
            b"Mon, 30 Nov 2026 10:00:00 GMT",
        );
        let first = slot.as_ref().expect("rendered").bytes.clone();
        Rendered::update(
            &mut slot,
            banned(60),
            RouteKind::Api,
            false,
            b"Mon, 30 Nov 2026 10:00:01 GMT",
        );
        let second = slot.as_ref().expect("rendered").bytes.clone();
        let (mut expected, mut scratch) = (Vec::new(), String::new());
        banned(60).write_http1(
            RouteKind::Api,
            b"Mon, 30 Nov 2026 10:00:01 GMT",
            false,
            &mut expected,
            &mut scratch,
        );
        assert_eq!(second, expected);
        assert_ne!(first, second);
        for (rejection, kind) in [
            (banned(59), RouteKind::Api),
            (banned(59), RouteKind::Browser),
        ] {
            let date = b"Mon, 30 Nov 2026 10:00:02 GMT";
            Rendered::update(&mut slot, rejection.clone(), kind, false, date);
            rejection.write_http1(kind, date, false, &mut expected, &mut scratch);
            assert_eq!(slot.as_ref().expect("rendered").bytes, expected);
            // The same refusal on a route that closes: rendered again, with
            // `Connection: close`.
            Rendered::update(&mut slot, rejection.clone(), kind, true, date);
            rejection.write_http1(kind, date, true, &mut expected, &mut scratch);
            assert_eq!(slot.as_ref().expect("rendered").bytes, expected);
        }
    }

    #[tokio::test]
    async fn the_pool_gives_back_the_newest_connection_of_a_server() {
        let pool = OriginPool::new(4);
        let (a, b, c) = (stream().await, stream().await, stream().await);
        let (ia, ib, ic) = (id(&a), id(&b), id(&c));
        pool.put(1, None, a);
        pool.put(2, None, b);
        pool.put(1, None, c);
        assert_eq!(pool.take(1).as_ref().map(id), Some(ic));
        assert_eq!(pool.take(1).as_ref().map(id), Some(ia));
        assert!(pool.take(1).is_none());
        assert_eq!(pool.take(2).as_ref().map(id), Some(ib));
    }

    #[tokio::test]
    async fn a_full_pool_drops_its_oldest_and_expired_connections_are_not_given() {
        let pool = OriginPool::new(2);
        let (a, b, c) = (stream().await, stream().await, stream().await);
        let (ib, ic) = (id(&b), id(&c));
        pool.put(1, None, a);
        pool.put(1, None, b);
        pool.put(1, None, c);
        assert_eq!(pool.take(1).as_ref().map(id), Some(ic));
        assert_eq!(pool.take(1).as_ref().map(id), Some(ib));
        assert!(pool.take(1).is_none());

        pool.put(1, Some(Duration::from_millis(1)), stream().await);
        std::thread::sleep(Duration::from_millis(5));
        assert!(pool.take(1).is_none());
        assert!(pool.idle.lock().expect("lock").is_empty());

        // A connection whose far end closed is not given when checked.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (far, _) = listener.accept().await.expect("accept");
        drop(far);
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.put(
            1,
            None,
            Box::new(pingora::protocols::l4::stream::Stream::from(tcp)),
        );
        pool.put(1, None, stream().await);
        assert!(pool.take(1).is_some(), "the open one");
        assert!(pool.take(1).is_none(), "the closed one");

        let off = OriginPool::new(0);
        off.put(1, None, stream().await);
        assert!(off.take(1).is_none());
    }
}
