//! The Pingora `ProxyHttp` glue. Each phase calls a pure function of the policy
//! crate and records what it decided in [`RequestCtx`]; decisions themselves live
//! in `rampart-policy`.

use crate::metrics::{PROXIED_VERDICT, UNMATCHED_ROUTE};
use crate::respond::write_rejection;
use crate::state::{Shared, Snapshot};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use rampart_config::{ForwardedHeader, RouteKind};
use rampart_policy::limits::ConcurrencyPermit;
use rampart_policy::{
    resolve_client_ip, BodyRead, Charging, GeoInfo, Observation, Rejection, RequestFacts, Step,
};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

/// The public proxy.
#[derive(Debug)]
pub struct RampartProxy {
    shared: Arc<Shared>,
}

impl RampartProxy {
    /// A proxy reading its policy from `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Announces a ban of a fleet rule to the other nodes, in the background
/// (the request does not wait on Redis for it; a failure is logged, and
/// this node keeps the ban either way).
fn announce_ban(
    shared: &Arc<Shared>,
    fleet: &Arc<crate::fleet::Fleet>,
    snapshot: &Snapshot,
    ban: &rampart_policy::engine::NewBan,
) {
    let Some(rule) = snapshot.config.limits.get(ban.rule) else {
        return;
    };
    if !matches!(rule.scope, rampart_config::LimitScope::Fleet { .. }) {
        return;
    }
    let announced = crate::fleet::FleetBan {
        rule: rule.name.clone(),
        key: ban.key.text(),
        ms: u64::try_from(ban.length.as_millis()).unwrap_or(u64::MAX),
        offenses: ban.offenses,
    };
    let (fleet, shared) = (fleet.clone(), shared.clone());
    tokio::spawn(async move {
        if let Err(e) = fleet.publish_ban(&announced, &shared.metrics).await {
            log::warn!(
                "fleet: ban of {} by {} not announced: {e}; enforced on this node only",
                announced.key,
                announced.rule
            );
        }
    });
}

/// Counts a rejected request against its address, network and AS, at
/// `now` (Unix seconds).
fn record_offender(shared: &Shared, ctx: &RequestCtx, now: u64) {
    let prefix = rampart_policy::limits::prefix_of(ctx.client_ip, 24, 48);
    shared
        .offenders
        .record(ctx.client_ip, prefix, ctx.geo.asn, ctx.ja4, now);
}

/// Reads the request body, up to `limit` bytes (one more when it is longer),
/// into Pingora's retry buffer, which replays it to the origin byte for
/// byte. A client that sent `Expect: 100-continue` is told to go on first
/// (HTTP/1.1; HTTP/2 clients send without waiting), unless the declared length
/// is already too large. The whole body must arrive within
/// `client_body_timeout` (408 otherwise).
pub(crate) async fn read_body(
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    limit: usize,
) -> Result<BodyRead> {
    let declared = declared_length(session);
    let mut body = Vec::new();
    if declared.is_some_and(|n| n > limit) {
        // Declared too large: no need to read it to know.
        body.resize(limit + 1, 0);
        return Ok(BodyRead::Complete(body));
    }
    if expects_continue(session) {
        if let ServerSession::H1(h1) = session {
            h1.write_continue_response().await?;
        }
        ctx.continue_sent = true;
    }
    session.enable_retry_buffering();
    // HTTP/1.1 connections are held to the deadline by their stream as well.
    let deadline = tokio::time::Instant::from_std(ctx.body_deadline());
    loop {
        let chunk = match tokio::time::timeout_at(deadline, session.read_request_body()).await {
            Ok(Ok(chunk)) => chunk,
            // A bad chunk or a client that went away is the client's doing,
            // never an origin failure.
            Ok(Err(e)) => {
                session.set_keepalive(None);
                let deadline_passed = ctx
                    .conn
                    .as_ref()
                    .and_then(|c| c.refused())
                    .is_some_and(|r| r == crate::edge::EdgeRefusal::BodyTimeout);
                if deadline_passed || e.etype() == &ErrorType::ReadTimedout {
                    return Ok(BodyRead::TimedOut);
                }
                let gone = matches!(
                    e.etype(),
                    ErrorType::ConnectionClosed | ErrorType::ReadError
                );
                return Ok(if gone {
                    BodyRead::ClientGone
                } else {
                    BodyRead::Malformed
                });
            }
            Err(_) => return Ok(BodyRead::TimedOut),
        };
        let Some(chunk) = chunk else { break };
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            break;
        }
    }
    if body.len() <= limit {
        ctx.body_done = true;
        if let Some(conn) = &ctx.conn {
            conn.answering();
        }
    }
    Ok(BodyRead::Complete(body))
}

/// Removes the client-sent fields of `strip` (sorted, lower case, `-` for `_`),
/// also when spelled with underscores (`X_Forwarded_For`), which some origin
/// stacks (CGI, PHP, some WSGI servers) read as the dashed name. One pass over
/// the names; nothing is allocated unless a field is found.
fn strip_client_headers(headers: &mut http::HeaderMap, strip: &[String]) {
    let strip = Stripped::new(strip);
    if !headers.keys().any(|name| strip.listed(name.as_str())) {
        return;
    }
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|name| strip.listed(name.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(&name);
    }
}

/// The `strip_headers` list as a test of one name.
struct Stripped<'a> {
    names: &'a [String],
    /// The lengths of the listed names (63 standing for any longer): most
    /// fields a client sends have none of them, and are passed over without a
    /// lookup.
    lengths: u64,
}

impl<'a> Stripped<'a> {
    fn new(names: &'a [String]) -> Self {
        let lengths = names.iter().fold(0u64, |mask, s| mask | Self::bit(s.len()));
        Self { names, lengths }
    }

    fn bit(len: usize) -> u64 {
        1u64 << len.min(63)
    }

    /// Whether `name` (lower case) is listed, also spelled with underscores.
    /// The body's own framing fields never are: Rampart sets them from what
    /// it read, and a body without them goes on framed as no body (dropped).
    fn listed(&self, name: &str) -> bool {
        if self.lengths & Self::bit(name.len()) == 0 {
            false
        } else if name.contains('_') {
            let dashed = name.replace('_', "-");
            self.names
                .binary_search_by(|s| s.as_str().cmp(&dashed))
                .is_ok()
        } else {
            name != http::header::CONTENT_LENGTH.as_str()
                && name != http::header::TRANSFER_ENCODING.as_str()
                && self
                    .names
                    .binary_search_by(|s| s.as_str().cmp(name))
                    .is_ok()
        }
    }
}

/// The client asked to be told to go on before sending its body.
pub(crate) fn expects_continue(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The status of the response written to the client, 0 when none was.
pub(crate) fn written_status(session: &ServerSession) -> u16 {
    session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0)
}

/// The body length the request declares (`Content-Length`), when it does.
fn declared_length(session: &ServerSession) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
}

/// What the policy reads of a request (see `RequestFacts`).
fn request_facts<'a>(
    ctx: &RequestCtx,
    session: &'a ServerSession,
    flags: &'a [rampart_policy::FlagMode],
    identity: rampart_policy::IdentitySource<'a>,
) -> RequestFacts<'a> {
    let req = session.req_header();
    RequestFacts {
        ip: ctx.client_ip,
        geo: ctx.geo,
        host: request_host(req),
        path: req.uri.path(),
        query: req.uri.query(),
        method: req.method.as_str(),
        headers: &req.headers,
        flags,
        ja4: ctx.ja4,
        identity,
    }
}

/// Whose fault a failed request is. The client's when it ran out of its
/// deadline, sent a malformed request or went away, and when the origin timed
/// out waiting for a request body the client never finished; the origin's
/// otherwise. A client can never make a healthy origin look like it is failing.
pub(crate) fn failure_verdict(e: &Error, ctx: &RequestCtx) -> Rejection {
    let timeout = matches!(
        e.etype(),
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
    );
    let client_deadline = ctx
        .conn
        .as_ref()
        .and_then(|c| c.refused())
        .is_some_and(|r| r == crate::edge::EdgeRefusal::BodyTimeout);
    if client_deadline {
        return Rejection::ClientTimeout;
    }
    if matches!(e.esource(), ErrorSource::Downstream) {
        return match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Rejection::ClientTimeout,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                Rejection::ClientError { status: 499 }
            }
            _ => Rejection::ClientError { status: 400 },
        };
    }
    if !ctx.body_done
        && matches!(
            e.etype(),
            ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error
        )
    {
        // A malformed request body (bad chunk framing) while it was streamed.
        return Rejection::ClientError { status: 400 };
    }
    if !ctx.body_done
        && matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        )
    {
        // The origin waited for a body the client never finished sending.
        return Rejection::ClientTimeout;
    }
    if timeout {
        Rejection::UpstreamFailed { status: 504 }
    } else {
        Rejection::UpstreamFailed { status: 502 }
    }
}

/// Puts the request target in its canonical form, in place, so that routing,
/// rules, logs and the origin all see the one spelling (see
/// `rampart_policy::canonical`). Absolute-form targets become origin-form; the
/// query is kept as sent. Untouched when already canonical.
fn canonicalize_target(
    session: &mut ServerSession,
    options: rampart_policy::CanonicalOptions,
) -> std::result::Result<(), rampart_policy::CanonicalRefusal> {
    use rampart_policy::CanonicalRefusal;
    let req = session.req_header();
    if !req.raw_path_is_utf8() {
        return Err(CanonicalRefusal::NotUtf8);
    }
    rampart_policy::check_method(req.method.as_str())?;
    rampart_policy::canonical::check_host(
        req.uri.authority().map(|a| a.as_str()),
        req.headers
            .get_all(http::header::HOST)
            .iter()
            .map(|v| v.as_bytes()),
    )?;
    let path = req.uri.path();
    let canonical = rampart_policy::canonicalize_path(path, options)?;
    let query = req.uri.query();
    let raw = req.raw_path();
    let unchanged = raw.len() == canonical.len() + query.map_or(0, |q| q.len() + 1)
        && raw.starts_with(canonical.as_bytes())
        && query.is_none_or(|q| raw[canonical.len() + 1..] == *q.as_bytes());
    if unchanged {
        return Ok(());
    }
    let path_and_query = match query {
        Some(q) => format!("{canonical}?{q}"),
        None => canonical.into_owned(),
    };
    // HTTP/2 targets carry scheme and authority (from :scheme and :authority),
    // which the upstream Host is built from: keep them. HTTP/1.1 absolute-form
    // targets do not have them in the URI (Pingora checked the authority against
    // Host), so they become origin-form.
    let mut parts = http::uri::Parts::default();
    parts.scheme = req.uri.scheme().cloned();
    parts.authority = req.uri.authority().cloned();
    // The canonical path is made of characters the URI parser accepted in the
    // original, so this parse only fails on a bug; refuse rather than forward.
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|_| CanonicalRefusal::InvalidEscape)?,
    );
    let uri = http::Uri::from_parts(parts).map_err(|_| CanonicalRefusal::InvalidEscape)?;
    session.req_header_mut().set_uri(uri);
    Ok(())
}

/// What the phases of one request decided.
#[derive(Debug)]
pub struct RequestCtx {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) started: Instant,
    pub(crate) client_ip: IpAddr,
    pub(crate) route: Option<usize>,
    pub(crate) pool: Option<usize>,
    pub(crate) server: Option<usize>,
    pub(crate) connect_failures: u8,
    pub(crate) rejection: Option<Rejection>,
    pub(crate) geo: GeoInfo,
    /// The JA4 of the connection's TLS hello (TLS listeners; see `crate::ja4`).
    pub(crate) ja4: Option<rampart_policy::Ja4>,
    /// In-flight slots, released when the context is dropped at the end of the request.
    pub(crate) permits: Vec<ConcurrencyPermit>,
    /// What shadow rules and previewed flags would have refused (recorded in `logging`).
    pub(crate) observations: Vec<Observation>,
    pub(crate) upstream_start: Option<Instant>,
    /// `100 Continue` was sent to the client before its body was read.
    pub(crate) continue_sent: bool,
    /// The client connection's phase and deadline (HTTP/1.1; see `edge`).
    pub(crate) conn: Option<Arc<crate::edge::ConnState>>,
    /// The whole request body has been read (or there is none).
    pub(crate) body_done: bool,
    /// What the request record keeps of the decision (only while recording).
    pub(crate) recorded: Option<Box<Decided>>,
    /// The verified identity, when a `key = "jwt"` rule asked for it.
    pub(crate) identity: Option<rampart_policy::IdentityOutcome>,
    /// A verified token lacked a jwt rule's claim.
    pub(crate) claim_missing: bool,
    _in_flight: InFlight,
}

/// The policy's decision as the request record keeps it.
#[derive(Debug, Default)]
pub(crate) struct Decided {
    /// The policy's refusal (not a later failure's).
    refusal: Option<Rejection>,
    /// The allow rule that matched.
    allow: Option<Arc<str>>,
    /// The body as the rules read it.
    body: Option<rampart_policy::record::RecordedRead>,
}

/// Counts a request in `rampart_http_requests_in_flight` for as long as it lives.
#[derive(Debug)]
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One access log line (JSON). The query string is left out: it may carry
/// tokens. `jwt` says what `key = "jwt"` rules made of the bearer token
/// (`verified` or the reason it did not verify; `null` when no such rule
/// asked): never a claim.
fn access_line(
    (method, path): (&str, &str),
    ctx: &RequestCtx,
    now: std::time::Duration,
    status: u16,
    verdict: &str,
    rule: Option<&str>,
    elapsed: std::time::Duration,
) -> String {
    use rampart_policy::rejection::json_string;
    let upstream = ctx
        .pool
        .and_then(|p| ctx.snapshot.pools.get(p))
        .and_then(|p| p.servers.get(ctx.server?))
        .map(|s| format!("\"{}\"", s.addr))
        .unwrap_or_else(|| "null".into());
    format!(
        "{{\"time\":{}.{:03},\"client\":\"{}\",\"country\":{},\"asn\":{},\"ja4\":{},\"route\":{},\"method\":{},\"path\":{},\"status\":{},\"verdict\":\"{}\",\"rule\":{},\"upstream\":{},\"jwt\":{},\"duration_ms\":{:.3}}}",
        now.as_secs(),
        now.subsec_millis(),
        ctx.client_ip,
        ctx.geo.country.map(|c| format!("\"{c}\"")).unwrap_or_else(|| "null".into()),
        ctx.geo.asn.map(|a| a.to_string()).unwrap_or_else(|| "null".into()),
        ctx.ja4.map(|j| format!("\"{j}\"")).unwrap_or_else(|| "null".into()),
        json_string(ctx.route_label()),
        json_string(method),
        json_string(path),
        status,
        verdict,
        rule.map(json_string).unwrap_or_else(|| "null".into()),
        upstream,
        match &ctx.identity {
            None => "null".to_string(),
            Some(rampart_policy::IdentityOutcome::Verified { .. }) => "\"verified\"".to_string(),
            // Labels are lower-case ASCII words: quoted as they are.
            Some(rampart_policy::IdentityOutcome::Unverified(why)) => {
                format!("\"{}\"", why.as_label())
            }
        },
        elapsed.as_secs_f64() * 1000.0,
    )
}

impl RequestCtx {
    /// A request starting now, on the current snapshot; `conn` is its HTTP/1.1
    /// connection's deadline state.
    pub(crate) fn new(shared: &Shared, conn: Option<Arc<crate::edge::ConnState>>) -> Self {
        Self::on(shared.snapshot(), shared, conn)
    }

    /// A request starting now, on `snapshot`.
    pub(crate) fn on(
        snapshot: Arc<Snapshot>,
        shared: &Shared,
        conn: Option<Arc<crate::edge::ConnState>>,
    ) -> Self {
        RequestCtx {
            snapshot,
            started: Instant::now(),
            upstream_start: None,
            continue_sent: false,
            conn,
            body_done: false,
            recorded: None,
            _in_flight: InFlight::new(&shared.metrics.in_flight),
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            route: None,
            pool: None,
            server: None,
            connect_failures: 0,
            rejection: None,
            geo: GeoInfo::default(),
            ja4: None,
            permits: Vec::new(),
            observations: Vec::new(),
            identity: None,
            claim_missing: false,
        }
    }

    /// When the whole request body must have arrived.
    pub(crate) fn body_deadline(&self) -> Instant {
        self.started + self.snapshot.config.server.client.body_timeout
    }

    /// Whether the request's route closes the connection after a refusal.
    pub(crate) fn closes_on_reject(&self) -> bool {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .is_some_and(|r| r.close_on_reject)
    }

    pub(crate) fn kind(&self) -> RouteKind {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .map(|r| r.kind)
            .unwrap_or(RouteKind::Api)
    }

    fn route_label(&self) -> &str {
        self.route
            .and_then(|r| self.snapshot.config.routes.get(r))
            .map(|r| r.name.as_str())
            .unwrap_or(UNMATCHED_ROUTE)
    }
}

/// Header names the hot path looks up, parsed once at compile time rather than
/// from a string on every lookup.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The field the client address is read from.
pub(crate) fn forward_header_name(header: ForwardedHeader) -> HeaderName {
    match header {
        ForwardedHeader::XForwardedFor => X_FORWARDED_FOR,
        ForwardedHeader::Forwarded => http::header::FORWARDED,
    }
}

/// The client address as a header value (see [`ip_text`]).
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    HeaderValue::from_bytes(ip_text(ip, &mut buf))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client address as text, formatted on the stack. IPv4 (the common case)
/// is written digit by digit; `fmt` machinery costs several times more.
fn ip_text(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let len = match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            // 48 bytes hold the longest IPv6 text form (45), so the write cannot fail.
            let _ = write!(cursor, "{v6}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    };
    buf.get(..len).unwrap_or_default()
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.uri.host().or_else(|| {
        req.headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Resolves the client, matches the route and applies the policy (lists, limits,
/// in-flight caps). `true` when the request cannot or must not go upstream: the
/// refusal is in `ctx.rejection`, for the caller to write ([`write_refusal`], or
/// the HTTP/1.1 loop's pre-rendered answer).
pub(crate) async fn decide(
    shared: &Arc<Shared>,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    early: Option<Early<'_>>,
) -> Result<bool> {
    let snapshot = ctx.snapshot.clone();
    if session.is_body_empty() {
        ctx.body_done = true;
    }
    if let Some(conn) = &ctx.conn {
        conn.request_seen();
        if ctx.body_done {
            conn.answering();
        }
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let req = session.req_header();
    let client_config = &snapshot.config.client_ip;
    let forwarded = req
        .headers
        .get_all(forward_header_name(client_config.header))
        .iter()
        .map(|v| v.as_bytes());
    ctx.client_ip = resolve_client_ip(peer, forwarded, client_config);
    ctx.ja4 = crate::ja4::of_session(session);

    let options = rampart_policy::CanonicalOptions {
        allow_semicolons: snapshot.config.request.allow_semicolons,
    };
    if let Err(refusal) = canonicalize_target(session, options) {
        let rejection = Rejection::NonCanonical { refusal };
        // The rest of a request we cannot read unambiguously is not worth reading.
        session.set_keepalive(None);
        ctx.rejection = Some(rejection);
        return Ok(true);
    }
    let modes = &snapshot.flags.modes;
    let (mut evaluation, mut step) = match early {
        Some(early) => {
            // Begun on Rampart's own reading of the head: Pingora's reading
            // must name the same client, method, host and path, or the
            // request is not decided on what the origin would get.
            let req = session.req_header();
            let agrees = early.ip == ctx.client_ip
                && early.method == req.method.as_str()
                && early.host.as_deref() == request_host(req)
                && early.path == req.uri.path();
            if !agrees {
                session.set_keepalive(None);
                ctx.rejection = Some(Rejection::ClientError { status: 400 });
                return Ok(true);
            }
            ctx.geo = early.geo;
            (early.evaluation, early.step)
        }
        None => {
            ctx.geo = snapshot.geo.lookup(ctx.client_ip);
            (snapshot.policy.evaluate(Charging::Charge), None)
        }
    };
    shared.metrics.geo_lookup(&snapshot.geo, &ctx.geo);

    // The policy decides; this loop only does the I/O it asks for.
    let verdict = loop {
        let next = match step.take() {
            Some(step) => step,
            None => evaluation.next(&request_facts(
                ctx,
                session,
                modes,
                snapshot.identity_source(),
            )),
        };
        match next {
            Step::Done(verdict) => break verdict,
            Step::NeedBody { limit } => {
                let read = read_body(session, ctx, limit).await?;
                if shared.recorder.is_some() {
                    let req = session.req_header();
                    let empty = [];
                    let input = rampart_policy::body::BodyInput {
                        headers: &req.headers,
                        query: req.uri.query(),
                        body: match &read {
                            BodyRead::Complete(bytes) => bytes,
                            _ => &empty,
                        },
                    };
                    let body = crate::record::body_record(&snapshot.config, &read, &input);
                    ctx.recorded.get_or_insert_with(Box::default).body = Some(body);
                }
                evaluation.give_body(read);
            }
            Step::NeedFleet(checks) => {
                let answers = match &shared.fleet {
                    Some(fleet) => {
                        fleet
                            .answer(&snapshot.config.limits, &checks, &shared.metrics)
                            .await
                    }
                    None => Vec::new(),
                };
                evaluation.give_fleet(answers);
            }
        }
    };
    let mut rejection = take_verdict(shared, ctx, verdict);
    if rejection.is_none() && !ctx.body_done && session.is_http2() {
        // An HTTP/2 stream's body has no connection deadline to hold it (the
        // connection carries other streams): a small body with a declared
        // length is read here, within client_body_timeout, before anything
        // goes upstream, so a stalled stream is cut at its deadline and not
        // after the origin's read timeout. Longer or undeclared bodies are
        // streamed, cut when a chunk arrives late (request_body_filter).
        let declared = declared_length(session)
            .filter(|&n| n > 0 && n <= rampart_config::MAX_BODY_BYTES_LIMIT);
        if let Some(length) = declared {
            rejection = match read_body(session, ctx, length).await? {
                BodyRead::Complete(_) => None,
                failed => failed.refusal(),
            };
        }
    }
    let rejection = rejection.or_else(|| snapshot.unhealthy_pool(ctx.pool?));
    if let Some(rejection) = rejection {
        ctx.permits.clear();
        // A refused body may not have been read to its end: the connection
        // cannot carry another request.
        if ctx.closes_on_reject() || matches!(rejection, Rejection::BodyRefused { .. }) {
            session.set_keepalive(None);
        }
        ctx.rejection = Some(rejection);
        return Ok(true);
    }
    Ok(false)
}

/// A request the HTTP/1.1 loop began deciding on its own reading of the head,
/// before Pingora read it (see `lean::Lean::early`): the evaluation as far as
/// it went, the step it stopped at, and what it was decided on.
pub(crate) struct Early<'s> {
    pub(crate) evaluation: rampart_policy::Evaluation<'s>,
    pub(crate) step: Option<Step>,
    pub(crate) ip: IpAddr,
    pub(crate) geo: GeoInfo,
    pub(crate) method: String,
    pub(crate) host: Option<String>,
    pub(crate) path: String,
}

/// Keeps what the policy's verdict says about the request in `ctx` (announcing
/// a fleet rule's new ban) and returns its refusal.
pub(crate) fn take_verdict(
    shared: &Arc<Shared>,
    ctx: &mut RequestCtx,
    verdict: rampart_policy::Verdict,
) -> Option<Rejection> {
    if let (Some(ban), Some(fleet)) = (&verdict.new_ban, &shared.fleet) {
        announce_ban(shared, fleet, &ctx.snapshot, ban);
    }
    if shared.recorder.is_some() {
        let decided = ctx.recorded.get_or_insert_with(Box::default);
        decided.refusal = verdict.refusal.clone();
        decided.allow = verdict.allowed_by.clone();
    }
    ctx.route = verdict.route;
    ctx.pool = verdict.pool;
    ctx.permits = verdict.permits;
    ctx.observations = verdict.observations;
    ctx.identity = verdict.identity;
    ctx.claim_missing = verdict.claim_missing;
    verdict.refusal
}

/// Writes the refusal [`decide`] chose; a client that went away gets nothing
/// written (499 is only logged).
pub(crate) async fn write_refusal(session: &mut ServerSession, ctx: &RequestCtx) -> Result<()> {
    match &ctx.rejection {
        Some(Rejection::ClientError { status: 499 }) | None => Ok(()),
        Some(rejection) => write_rejection(session, rejection, ctx.kind()).await,
    }
}

/// Replaces forwarding headers with what Rampart resolved: a client-supplied
/// X-Forwarded-For, X-Real-IP or Forwarded is never passed on.
pub(crate) fn forward_headers(
    upstream_request: &mut RequestHeader,
    ctx: &RequestCtx,
    tls: bool,
) -> Result<()> {
    let mut parts = upstream_request.as_owned_parts();
    let has_body = !ctx.body_done || has_body_framing(&parts.headers);
    forward_parts(&mut parts, ctx, tls, has_body)?;
    *upstream_request = RequestHeader::from(parts);
    Ok(())
}

/// Whether the fields declare a body (a length above 0 or chunked framing).
fn has_body_framing(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// [`forward_headers`] on the request's parts, typed header names and all: no
/// name is parsed and no case-preserving map is kept (names go out in their
/// canonical case), and room for the added fields is made once.
pub(crate) fn forward_parts(
    parts: &mut http::request::Parts,
    ctx: &RequestCtx,
    tls: bool,
    has_body: bool,
) -> Result<()> {
    Forward::of(ctx, tls).parts(parts, has_body)
}

/// What the fields sent on depend on besides the request.
#[derive(Clone, Copy)]
pub(crate) struct Forward<'a> {
    client_ip: IpAddr,
    strip: &'a [String],
    continue_sent: bool,
    tls: bool,
}

impl<'a> Forward<'a> {
    pub(crate) fn of(ctx: &'a RequestCtx, tls: bool) -> Self {
        Self {
            client_ip: ctx.client_ip,
            strip: &ctx.snapshot.config.request.strip_headers,
            continue_sent: ctx.continue_sent,
            tls,
        }
    }

    /// See [`forward_parts`].
    fn parts(self, parts: &mut http::request::Parts, has_body: bool) -> Result<()> {
        drop_hop_by_hop(parts, has_body)?;
        let headers = &mut parts.headers;
        headers.reserve(4);
        strip_client_headers(headers, self.strip);
        let ip = ip_header_value(self.client_ip);
        headers.insert(X_FORWARDED_FOR, ip.clone());
        headers.insert(X_REAL_IP, ip);
        let proto = HeaderValue::from_static(if self.tls { "https" } else { "http" });
        headers.insert(X_FORWARDED_PROTO, proto);
        if self.continue_sent {
            // The client has been told to go on and its body is buffered: the origin
            // must not hold the request back waiting to say the same.
            headers.remove(http::header::EXPECT);
        }
        if !headers.contains_key(http::header::HOST) {
            // HTTP/2 clients send :authority instead of Host; HTTP/1.1 origins need Host.
            if let Some(authority) = parts.uri.authority() {
                let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
                    Error::explain(
                        ErrorType::InvalidHTTPHeader,
                        "authority is not a valid Host",
                    )
                })?;
                parts.headers.insert(http::header::HOST, host);
            }
        }
        Ok(())
    }
}

/// Fields that describe this hop, not the request, and the fields a client names
/// in `Connection` never reach the origin, so that no hop behind Rampart drops
/// what Rampart resolved and no client-chosen upgrade goes through. A
/// `Connection` that names a forwarding field or `Host`, or more than 32 fields,
/// or an invalid name is refused (400), as pingora-proxy does. Only a WebSocket
/// upgrade of an HTTP/1.1 request is passed on (`Connection: Upgrade`,
/// `Upgrade: websocket`); `h2c` and any other upgrade are dropped. The body's
/// framing is set again from what was read: `Content-Length` when the client sent
/// one, else `Transfer-Encoding: chunked` for a body.
fn drop_hop_by_hop(parts: &mut http::request::Parts, has_body: bool) -> Result<()> {
    use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
    let (nominated, websocket) = connection_fields(&parts.headers, parts.version)?;
    let headers = &mut parts.headers;
    for name in &nominated {
        headers.remove(name);
    }
    // One pass over the fields the client sent (usually none of these) rather
    // than a lookup per name.
    if headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
    if headers.contains_key(TRANSFER_ENCODING)
        || (has_body && !headers.contains_key(CONTENT_LENGTH))
    {
        // Pingora accepted a chunked body (and dropped a Content-Length sent
        // beside it): that is what goes on.
        headers.remove(CONTENT_LENGTH);
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    Ok(())
}

/// Fields that describe one hop and never go on as the client sent them.
const HOP_BY_HOP: [HeaderName; 9] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    HTTP2_SETTINGS,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::CONNECTION,
    http::header::UPGRADE,
];

/// The fields a request's `Connection` names, and whether it is a WebSocket
/// upgrade that goes on (see [`drop_hop_by_hop`]). Refused (400) when it names
/// a forwarding field or `Host`, more than 32 fields, or an invalid name.
fn connection_fields(
    headers: &http::HeaderMap,
    version: http::Version,
) -> Result<(Vec<HeaderName>, bool)> {
    use http::header::{CONNECTION, UPGRADE};
    const MAX_NOMINATED: usize = 32;
    const PROTECTED: [&str; 6] = [
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "forwarded",
    ];
    let refused = |why: &'static str| Error::explain(ErrorType::InvalidHTTPHeader, why);
    let mut nominated: Vec<HeaderName> = Vec::new();
    let mut names_upgrade = false;
    for token in headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
    {
        if nominated.len() >= MAX_NOMINATED {
            return Err(refused("too many fields named in Connection"));
        }
        let name = HeaderName::from_bytes(token)
            .map_err(|_| refused("an invalid field name in Connection"))?;
        if PROTECTED.contains(&name.as_str()) {
            return Err(refused("a forwarding field named in Connection"));
        }
        names_upgrade |= name == UPGRADE;
        nominated.push(name);
    }
    let websocket = version == http::Version::HTTP_11
        && names_upgrade
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers.get_all(UPGRADE).iter().count() == 1;
    Ok((nominated, websocket))
}

/// A field name as Pingora's writer spells it on the wire: the dozen names it
/// knows in title case, any other in lower case.
fn titled(name: &HeaderName) -> &str {
    use http::header;
    match *name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        _ => name.as_str(),
    }
}

/// The request head as the origin gets it, written into `out` straight from
/// the client's parsed head: the fields [`forward_parts`] would send, with no
/// header map of the origin's own and no request header for Pingora to
/// serialise. Only for a request with no body, no `Transfer-Encoding`, no
/// upgrade that goes on and a `Host`: for any other `out` is left empty and
/// `Ok(false)` says to go through `forward_parts`. Refusals are the same
/// (`connection_fields`). The fields keep the client's order; the three
/// forwarding fields come last.
// Not inlined, so that profiles show its cost apart (one call per request).
#[inline(never)]
pub(crate) fn write_forwarded_head(
    req: &RequestHeader,
    forward: Forward<'_>,
    has_body: bool,
    out: &mut Vec<u8>,
) -> Result<bool> {
    out.clear();
    let headers = &req.headers;
    // One walk over the names rather than a lookup for each.
    let (mut host, mut chunked, mut connection) = (false, false, false);
    for name in headers.keys() {
        host |= name == http::header::HOST;
        chunked |= name == http::header::TRANSFER_ENCODING;
        connection |= name == http::header::CONNECTION;
    }
    if has_body || chunked || !host {
        return Ok(false);
    }
    let (nominated, websocket) = match connection {
        true => connection_fields(headers, req.version)?,
        false => (Vec::new(), false),
    };
    let Some(target) = req.uri.path_and_query().filter(|_| !websocket) else {
        return Ok(false);
    };
    let strip = Stripped::new(forward.strip);
    let replaced = [X_FORWARDED_FOR, X_REAL_IP, X_FORWARDED_PROTO];
    let mut line = |parts: &[&[u8]]| parts.iter().for_each(|p| out.extend_from_slice(p));
    line(&[
        req.method.as_str().as_bytes(),
        b" ",
        target.as_str().as_bytes(),
        b" HTTP/1.1\r\n",
    ]);
    for (name, value) in headers {
        let dropped = HOP_BY_HOP.contains(name)
            || replaced.contains(name)
            || nominated.contains(name)
            || (forward.continue_sent && name == http::header::EXPECT)
            || strip.listed(name.as_str());
        if !dropped {
            line(&[titled(name).as_bytes(), b": ", value.as_bytes(), b"\r\n"]);
        }
    }
    let mut buf = [0u8; 48];
    let ip = ip_text(forward.client_ip, &mut buf);
    let proto: &[u8] = if forward.tls { b"https" } else { b"http" };
    line(&[b"x-forwarded-for: ", ip, b"\r\nx-real-ip: ", ip, b"\r\n"]);
    line(&[b"x-forwarded-proto: ", proto, b"\r\n\r\n"]);
    Ok(true)
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Errors after the request was let through: problem bodies, never HTML, on API routes.
pub(crate) async fn fail(session: &mut ServerSession, e: &Error, ctx: &mut RequestCtx) -> u16 {
    let rejection = ctx
        .rejection
        .clone()
        .unwrap_or_else(|| failure_verdict(e, ctx));
    let status = rejection.status();
    // A response may already be on its way (the origin failed mid-stream).
    let written = session.response_written().is_some();
    let client_gone = matches!(rejection, Rejection::ClientError { status: 499 });
    if !written && !client_gone {
        if let Err(write_error) = write_rejection(session, &rejection, ctx.kind()).await {
            log::debug!("cannot write error response: {write_error}");
        }
    }
    ctx.rejection = Some(rejection);
    status
}

/// One metrics update per request, success or failure.
/// `status` is what was written (0 for nothing).
pub(crate) fn log_request(shared: &Shared, session: &ServerSession, ctx: &RequestCtx, status: u16) {
    log_seen(shared, Seen::Session(session), ctx, status);
}

/// What the log and the record read of a request.
#[derive(Clone, Copy)]
pub(crate) enum Seen<'a> {
    /// Read by Pingora.
    Session(&'a ServerSession),
    /// Answered on Rampart's own reading of its head (never while recording).
    Head { method: &'a str, path: &'a str },
}

/// [`log_request`] of a request as far as it was read.
pub(crate) fn log_seen(shared: &Shared, seen: Seen<'_>, ctx: &RequestCtx, status: u16) {
    let verdict = ctx
        .rejection
        .as_ref()
        .map(|r| r.label())
        .unwrap_or(PROXIED_VERDICT);
    for observation in &ctx.observations {
        match observation {
            Observation::Shadow { rule } => shared.metrics.shadow_match(ctx.route_label(), rule),
            Observation::Preview { flag } => {
                shared.metrics.lockdown_preview(ctx.route_label(), flag)
            }
        }
    }
    shared
        .metrics
        .jwt
        .request(ctx.identity.as_ref(), ctx.claim_missing);
    let policy_rule = ctx.rejection.as_ref().and_then(|r| r.rule());
    let elapsed = ctx.started.elapsed();
    // The wall clock, read only for what needs it (not a proxied request
    // with neither an access log nor a record).
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    };
    if let Some(rule) = policy_rule {
        shared.metrics.refused(
            ctx.route_label(),
            verdict,
            rule,
            status,
            elapsed.as_secs_f64(),
        );
        record_offender(shared, ctx, now().as_secs());
    } else {
        let proxied = ctx
            .rejection
            .is_none()
            .then(|| ctx.snapshot.proxied_handles(ctx.route))
            .flatten();
        match proxied {
            Some(handles) => shared
                .metrics
                .proxied(handles, status, elapsed.as_secs_f64()),
            None => {
                shared
                    .metrics
                    .request(ctx.route_label(), verdict, status, elapsed.as_secs_f64())
            }
        }
    }
    let (method, path) = match seen {
        Seen::Session(session) => {
            if let (Some(recorder), Some(decided)) = (&shared.recorder, &ctx.recorded) {
                record_request(shared, recorder, session, ctx, decided, status, now());
            }
            let req = session.req_header();
            (req.method.as_str(), req.uri.path())
        }
        Seen::Head { method, path } => (method, path),
    };
    if let Some(log) = &shared.access_log {
        let now = now();
        if ctx.rejection.is_some() && !log.admit_rejected(now.as_secs()) {
            shared.metrics.access_log_sampled_out();
        } else {
            let line = access_line(
                (method, path),
                ctx,
                now,
                status,
                verdict,
                policy_rule,
                elapsed,
            );
            log.write(line, &shared.metrics);
        }
    }
}

/// Writes the request record of a request the policy decided.
fn record_request(
    shared: &Shared,
    recorder: &crate::record::Recorder,
    session: &ServerSession,
    ctx: &RequestCtx,
    decided: &Decided,
    status: u16,
    now: std::time::Duration,
) {
    let elapsed = ctx.started.elapsed();
    let arrival = now.saturating_sub(elapsed);
    let Some(weight) = recorder.admit(arrival.as_secs()) else {
        shared.metrics.record_skipped("sampled");
        return;
    };
    let req = session.req_header();
    let config = &ctx.snapshot.config;
    // The identity the config's jwt rules would read, also when the request
    // was decided before one asked (a replayed config may reach it): the
    // cache makes this cheap, and it only runs while recording.
    let identity = match (&ctx.identity, &ctx.snapshot.jwt) {
        (Some(identity), _) => Some(identity.clone()),
        (None, Some(jwt)) if !jwt.verifier.claim_names().is_empty() => {
            Some(jwt.verifier.verify_request(&req.headers))
        }
        (None, _) => None,
    };
    let outcome = crate::record::Outcome {
        ip: ctx.client_ip,
        geo: ctx.geo,
        ja4: ctx.ja4,
        host: request_host(req),
        method: req.method.as_str(),
        path: req.uri.path(),
        headers: &req.headers,
        flags: &ctx.snapshot.flags.modes,
        auto: ctx
            .snapshot
            .flags
            .active
            .iter()
            .filter(|(_, a)| a.actor.starts_with("auto:"))
            .map(|(name, _)| name.as_str())
            .collect(),
        body: decided.body.as_ref(),
        verdict: decided
            .refusal
            .as_ref()
            .map_or(PROXIED_VERDICT, Rejection::label),
        rule: decided.refusal.as_ref().and_then(Rejection::rule),
        route: ctx
            .route
            .and_then(|r| config.routes.get(r))
            .map(|r| r.name.as_str()),
        allow: decided.allow.as_deref(),
        status,
        elapsed,
        identity: identity.as_ref(),
    };
    let ms = u64::try_from(arrival.as_millis()).unwrap_or(u64::MAX);
    recorder.write(config, &outcome, ms, weight, &shared.metrics);
}

#[async_trait]
impl ProxyHttp for RampartProxy {
    type CTX = RequestCtx;

    /// No downstream modules: Rampart never compresses responses, and Pingora's
    /// default (a disabled compression module) builds a module context per request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.shared, None)
    }

    /// Receives the connection's deadline state from `edge::EdgeApp` (it hands it
    /// over as the connection user context before every request).
    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(conn) = prev.downcast::<Arc<crate::edge::ConnState>>() {
            ctx.conn = Some(*conn);
        }
    }

    /// Marks the end of the request body: the body deadline no longer applies.
    /// A body still arriving after `client_body_timeout` is cut off with 408 (a
    /// dripping HTTP/2 stream; HTTP/1.1 streams are cut by their connection).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !end_of_stream && !ctx.body_done && Instant::now() > ctx.body_deadline() {
            ctx.rejection = Some(Rejection::ClientTimeout);
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "client_body_timeout passed while the body was arriving",
            ));
        }
        if end_of_stream && !ctx.body_done {
            ctx.body_done = true;
            if let Some(conn) = &ctx.conn {
                conn.answering();
            }
        }
        Ok(())
    }

    /// See [`decide`].
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let refused = decide(&self.shared, session, ctx, None).await?;
        if refused {
            write_refusal(session, ctx).await?;
        }
        Ok(refused)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let snapshot = &ctx.snapshot;
        let pool = ctx
            .pool
            .and_then(|p| snapshot.pools.get(p))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "request has no pool"))?;
        // After a connect failure, the retry goes to another server.
        let exclude = if ctx.connect_failures > 0 {
            ctx.server
        } else {
            None
        };
        match pool.pick(exclude) {
            Some(i) => {
                ctx.server = Some(i);
                ctx.upstream_start = Some(Instant::now());
                Ok(Box::new(pool.servers[i].peer.clone()))
            }
            None => {
                ctx.rejection = Some(Rejection::NoHealthyUpstream {
                    pool: pool.name().to_string(),
                });
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no healthy server in pool",
                ))
            }
        }
    }

    /// One retry, on another healthy server, when connecting fails.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failures = ctx.connect_failures.saturating_add(1);
        let another = ctx
            .pool
            .and_then(|p| ctx.snapshot.pools.get(p))
            .and_then(|pool| pool.pick(ctx.server))
            .is_some();
        e.set_retry(ctx.connect_failures == 1 && another);
        e
    }

    /// See [`forward_headers`].
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        forward_headers(upstream_request, ctx, tls).inspect_err(|_| {
            ctx.rejection = Some(Rejection::ClientError { status: 400 });
        })
    }

    /// See [`fail`].
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        FailToProxy {
            error_code: fail(session, e, ctx).await,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away is routine at the edge, not an error worth a log line.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// See [`log_request`].
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        log_request(&self.shared, session, ctx, written_status(session));
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(handles) = ctx.pool.and_then(|p| ctx.snapshot.pool_metrics.get(p)) {
            handles.connect(reused);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some(start), Some(handles)) = (
            ctx.upstream_start,
            ctx.pool.and_then(|p| ctx.snapshot.pool_metrics.get(p)),
        ) {
            handles.upstream_response(start.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{drop_hop_by_hop, ip_header_value, write_forwarded_head, Forward};
    use pingora::http::RequestHeader;
    use std::net::IpAddr;

    /// Random `Connection`, `Upgrade` and hop-by-hop fields (fixed seed): never a
    /// panic; what goes on carries no hop-by-hop field and nothing `Connection`
    /// named, except the two fields of a WebSocket upgrade; a refusal only for a
    /// `Connection` naming a protected field, an invalid name or too many.
    #[test]
    fn random_hop_by_hop_fields_never_reach_the_origin() {
        let mut seed: u64 = 0x0c0ffee;
        let mut next = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let tokens = [
            "keep-alive",
            "close",
            "upgrade",
            "Upgrade",
            "x-forwarded-for",
            "host",
            "te",
            "x-secret",
            "X-Secret",
            ":authority",
            "bad token",
            "",
            " ",
            "x_forwarded_for",
            "http2-settings",
            "proxy-authorization",
            "x-real-ip",
        ];
        let upgrades = ["websocket", "WebSocket", "h2c", "websocket, h2c", ""];
        for _ in 0..20_000 {
            let mut request = http::Request::builder().uri("/");
            if next() % 4 == 0 {
                request = request.version(http::Version::HTTP_10);
            }
            let (mut parts, ()) = request.body(()).expect("request").into_parts();
            let h = &mut parts.headers;
            for _ in 0..(next() % 3) {
                let n = (next() % 5) as usize;
                let value: Vec<&str> = (0..n)
                    .map(|_| tokens[(next() as usize) % tokens.len()])
                    .collect();
                if let Ok(v) = http::HeaderValue::from_str(&value.join(",")) {
                    h.append(http::header::CONNECTION, v);
                }
            }
            if next() % 2 == 0 {
                let u = upgrades[(next() as usize) % upgrades.len()];
                h.append(http::header::UPGRADE, http::HeaderValue::from_static(u));
            }
            for name in [
                "x-secret",
                "te",
                "keep-alive",
                "proxy-authorization",
                "http2-settings",
            ] {
                if next() % 3 == 0 {
                    h.append(
                        http::HeaderName::from_static(name),
                        http::HeaderValue::from_static("1"),
                    );
                }
            }
            let before = parts.headers.clone();
            let named: Vec<String> = before
                .get_all(http::header::CONNECTION)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or("").split(','))
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect();
            let protected = named.iter().any(|t| {
                [
                    "host",
                    "x-forwarded-for",
                    "x-real-ip",
                    "forwarded",
                    "x-forwarded-proto",
                ]
                .contains(&t.as_str())
                    || http::HeaderName::from_bytes(t.as_bytes()).is_err()
            });
            match drop_hop_by_hop(&mut parts, false) {
                Err(_) => assert!(protected || named.len() >= 32, "{before:?}"),
                Ok(()) => {
                    assert!(!protected, "{before:?}");
                    let out = &parts.headers;
                    let websocket = out.get(http::header::UPGRADE).is_some();
                    if websocket {
                        assert_eq!(parts.version, http::Version::HTTP_11);
                        assert_eq!(out[http::header::UPGRADE], "websocket");
                        assert_eq!(out[http::header::CONNECTION], "Upgrade");
                    } else {
                        assert!(out.get(http::header::CONNECTION).is_none(), "{out:?}");
                    }
                    for gone in ["te", "keep-alive", "proxy-authorization", "http2-settings"] {
                        assert!(out.get(gone).is_none(), "{gone} in {out:?}");
                    }
                    if named.iter().any(|t| t == "x-secret") {
                        assert!(out.get("x-secret").is_none(), "{out:?}");
                    }
                }
            }
        }
    }

    /// The head written as bytes (`write_forwarded_head`) and the header map
    /// `forward_parts` builds agree on 30 000 random requests (fixed seed):
    /// refused alike, and else the same request line and, name by name, the
    /// same values in the same order. Fields cover `Connection` and what it
    /// names, hop-by-hop fields, upgrades, the forwarding fields, listed fields
    /// also spelled with underscores, `Expect`, repeated fields, both IP
    /// families and both schemes; some requests have no `Host` or a body, for
    /// which the bytes are not written.
    #[test]
    fn the_head_written_as_bytes_is_the_head_forward_parts_builds() {
        let mut seed: u64 = 0x5eed_f00d;
        let mut next = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let names = [
            "connection",
            "keep-alive",
            "te",
            "upgrade",
            "trailer",
            "proxy-connection",
            "proxy-authorization",
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x_forwarded_for",
            "forwarded",
            "x-secret",
            "x_secret",
            "x-internal-user",
            "x-internal_user",
            "expect",
            "accept",
            "cookie",
            "content-length",
            "user-agent",
        ];
        let values = [
            "1",
            "close",
            "keep-alive",
            "x-secret, te",
            "accept, cookie",
            "user-agent",
            "upgrade",
            "websocket",
            "100-continue",
            "0",
            "a=b; c=d",
            "x-forwarded-for",
            "203.0.113.9",
            "\"quoted\", value",
        ];
        let mut strip = vec!["x-internal-user".to_string(), "x-secret".to_string()];
        strip.sort();
        let targets = ["/", "/api/v1/chat?x=1&y=%20", "/a;b/c", "/login"];
        let (mut compared, mut refused, mut skipped) = (0, 0, 0);
        for i in 0..30_000u32 {
            let target = targets[(next() as usize) % targets.len()];
            let method = ["GET", "DELETE", "OPTIONS", "POST"][(next() as usize) % 4];
            let mut req = RequestHeader::build(method, target.as_bytes(), None).expect("head");
            if next() % 5 == 0 {
                req.set_version(http::Version::HTTP_10);
            }
            if next() % 8 != 0 {
                req.append_header("host", "chat.example").expect("host");
            }
            for _ in 0..(next() % 7) {
                let name = names[(next() as usize) % names.len()];
                let value = values[(next() as usize) % values.len()];
                req.append_header(name, value).expect("field");
            }
            let client_ip: IpAddr = if i % 3 == 0 {
                "2001:db8::7".parse().expect("ip")
            } else {
                "198.51.100.23".parse().expect("ip")
            };
            let forward = Forward {
                client_ip,
                strip: &strip,
                continue_sent: next() % 4 == 0,
                tls: next() % 2 == 0,
            };
            let has_body = next() % 10 == 0;
            let mut bytes = Vec::new();
            let written = write_forwarded_head(&req, forward, has_body, &mut bytes);
            // As `Lean::upstream_header` builds it: the fields on the client's
            // version, then the version set to HTTP/1.1.
            let mut parts = req.as_owned_parts();
            let built = forward.parts(&mut parts, has_body);
            parts.version = http::Version::HTTP_11;
            match (written, built) {
                (Ok(false), _) => {
                    assert!(bytes.is_empty());
                    skipped += 1;
                }
                (Err(_), Err(_)) => refused += 1,
                (Ok(true), Ok(())) => {
                    compared += 1;
                    // What Pingora's writer would have sent for the header map.
                    let wire = pingora::protocols::http::v1::client::http_req_header_to_wire(
                        &RequestHeader::from(parts),
                    )
                    .expect("a head Pingora writes");
                    // The request line, then the field lines sorted by name
                    // (stable: the values of one name keep their order).
                    let lines = |bytes: &[u8]| -> Vec<Vec<u8>> {
                        let mut lines: Vec<Vec<u8>> = bytes
                            .split(|&b| b == b'\n')
                            .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
                            .filter(|l| !l.is_empty())
                            .collect();
                        let first = lines.remove(0);
                        lines.sort_by_key(|l| {
                            let name = l.split(|&b| b == b':').next().unwrap_or_default();
                            name.to_ascii_lowercase()
                        });
                        lines.insert(0, first);
                        lines
                    };
                    assert_eq!(
                        lines(&bytes),
                        lines(&wire),
                        "{}\n{}",
                        String::from_utf8_lossy(&bytes),
                        String::from_utf8_lossy(&wire)
                    );
                    assert!(bytes.ends_with(b"\r\n\r\n"));
                    let mut fields = [httparse::EMPTY_HEADER; 32];
                    let mut head = httparse::Request::new(&mut fields);
                    let parsed = head.parse(&bytes).expect("the head parses");
                    assert_eq!(parsed, httparse::Status::Complete(bytes.len()));
                }
                (written, built) => panic!("{written:?} but {built:?} for {req:?}"),
            }
        }
        // An HTTP/1.0 client's WebSocket upgrade goes on as neither (seldom
        // drawn above).
        let mut req = RequestHeader::build("GET", b"/ws", None).expect("head");
        req.set_version(http::Version::HTTP_10);
        for (name, value) in [
            ("host", "x"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ] {
            req.append_header(name, value).expect("field");
        }
        let forward = Forward {
            client_ip: "198.51.100.23".parse().expect("ip"),
            strip: &strip,
            continue_sent: false,
            tls: false,
        };
        let mut bytes = Vec::new();
        let written = write_forwarded_head(&req, forward, false, &mut bytes);
        assert!(matches!(written, Ok(true)), "{written:?}");
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        assert!(!text.contains("upgrade"), "{text}");
        let mut parts = req.as_owned_parts();
        forward.parts(&mut parts, false).expect("fields");
        assert!(
            !parts.headers.contains_key("upgrade"),
            "{:?}",
            parts.headers
        );
        assert!(
            !parts.headers.contains_key("connection"),
            "{:?}",
            parts.headers
        );
        assert!(compared > 15_000, "{compared} compared");
        assert!(refused > 500, "{refused} refused");
        assert!(skipped > 3_000, "{skipped} skipped");
    }

    #[test]
    fn ip_header_value_matches_display() {
        let samples = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "255.255.255.255",
            "203.0.113.7",
            "::1",
            "2001:db8::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
            "::ffff:192.0.2.1",
        ];
        for text in samples {
            let ip: IpAddr = text.parse().expect("sample parses");
            assert_eq!(
                ip_header_value(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
        for octet in 0..=255u8 {
            let ip = IpAddr::from([octet, 0, 10, octet]);
            assert_eq!(
                ip_header_value(ip).to_str().ok(),
                Some(ip.to_string().as_str())
            );
        }
    }
}
