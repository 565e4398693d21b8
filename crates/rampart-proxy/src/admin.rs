//! The admin HTTP service, on its own listener (loopback by default), never on the
//! public one. Every endpoint but `/healthz` and `/readyz` requires
//! `Authorization: Bearer <token>`, compared in constant time.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/console` | the operator console, one HTML page (no token: it holds no data; every call it makes sends the token) |
//! | GET | `/console/api/rates` | the console's rate history: requests by route and verdict, refusals by rule, preview matches by flag, per second, every 2 s over the last 5 minutes |
//! | GET | `/fleet` | fleet status: this node, Redis (password hidden), degraded or not, and every node with the flags it applies |
//! | GET | `/healthz` | 200 while the process runs (no token) |
//! | GET | `/readyz` | 200 once every public listener is bound and every pool had its first health check, else 503 (no token) |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/status` | config generation, pools and server health as JSON |
//! | POST | `/reload` | re-read the config file; 200 or 400 with every error |
//! | GET | `/debug/explain?ip=&path=&method=&host=&header=name:value&ja4=` | what the policy sees and would decide for such a request: the real decision with charging off, and the trace of every rule |
//! | POST | `/debug/explain?…` | the same, for a request with this body (and this request's `Content-Type`) |
//! | GET | `/debug/top?n=10` | top sources of rejected requests (addresses, /24 or /48 networks, ASNs, JA4 fingerprints; addresses and networks with country, AS and organisation where the GeoIP databases know them) over the last 1–2 minutes |
//! | GET | `/lockdown` | every flag with its state, actor, reason, since and expiry |
//! | PUT | `/lockdown/{flag}` | turn a flag on: `{"reason": "...", "actor": "...", "ttl": "2h", "mode": "enforce"}` |
//! | DELETE | `/lockdown/{flag}` | turn a flag off (optional body `{"actor": "...", "reason": "..."}`) |
//! | GET | `/bans` | every active ban: rule, key, remaining seconds, offenses |
//! | DELETE | `/bans/{rule}?key=KEY` | lift a ban (and its memory of past bans) |

use crate::lockdown::{parse_ttl, Mode};
use crate::state::{CommandError, FlagError, ReloadError, Shared};
use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The admin API.
#[derive(Debug)]
pub struct AdminService {
    shared: Arc<Shared>,
    token: Vec<u8>,
}

impl AdminService {
    /// An admin API that accepts `token`.
    pub fn new(shared: Arc<Shared>, token: String) -> Self {
        Self {
            shared,
            token: token.into_bytes(),
        }
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(value) = session.req_header().headers.get("authorization") else {
            return false;
        };
        let Some(given) = value.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        given.len() == self.token.len() && bool::from(given.ct_eq(&self.token))
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let length = response.body().len();
    let headers = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert("content-type", v);
    }
    headers.insert("content-length", length.into());
    headers.insert("cache-control", http::HeaderValue::from_static("no-store"));
    response
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = value.to_string().into_bytes();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn problem(status: StatusCode, detail: &str) -> Response<Vec<u8>> {
    let mut body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
    .to_string()
    .into_bytes();
    body.push(b'\n');
    reply(status, "application/problem+json", body)
}

#[async_trait]
impl ServeHttp for AdminService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => return reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => {
                let waiting: &[u8] = if !self.shared.listeners.all_listening() {
                    b"waiting for the public listeners to be bound\n"
                } else if !self.shared.snapshot().is_ready() {
                    b"waiting for the first health checks\n"
                } else {
                    return reply(StatusCode::OK, "text/plain", b"ready\n".to_vec());
                };
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    waiting.to_vec(),
                );
            }
            "/console" => {
                return match method {
                    Method::GET | Method::HEAD => console_page(),
                    _ => problem(StatusCode::METHOD_NOT_ALLOWED, "use GET on /console"),
                };
            }
            _ => {}
        }
        if !self.authorized(session) {
            let mut r = problem(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
            r.headers_mut().insert(
                "www-authenticate",
                http::HeaderValue::from_static("Bearer realm=\"rampart-admin\""),
            );
            return r;
        }
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => {
                crate::background::LimiterSweep::record(&self.shared);
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.shared.metrics.render(),
                )
            }
            (Method::GET | Method::POST, "/debug/explain") => match self.explain(session).await {
                Ok(v) => json_reply(StatusCode::OK, v),
                Err(e) => problem(StatusCode::BAD_REQUEST, &e),
            },
            (Method::GET, "/status") => json_reply(StatusCode::OK, self.status()),
            (Method::POST, "/reload") => match self.shared.reload_config().await {
                Ok(generation) => json_reply(
                    StatusCode::OK,
                    json!({"result": "reloaded", "generation": generation}),
                ),
                Err(CommandError::Reload(ReloadError::Invalid(e))) => json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "result": "refused",
                        "detail": "the new config is invalid; the old config keeps serving",
                        "errors": e.to_string().lines().collect::<Vec<_>>(),
                    }),
                ),
                Err(CommandError::Reload(e @ ReloadError::ActiveFlagRemoved(_))) => json_reply(
                    StatusCode::CONFLICT,
                    json!({
                        "result": "refused",
                        "detail": e.to_string(),
                        "errors": [e.to_string()],
                    }),
                ),
                Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (Method::GET, "/lockdown") => json_reply(StatusCode::OK, self.lockdown_list()),
            (Method::GET, "/console/api/rates") => {
                json_reply(StatusCode::OK, self.shared.rates.to_json())
            }
            (Method::GET, "/fleet") => json_reply(StatusCode::OK, self.fleet_status().await),
            (Method::GET, "/debug/top") => {
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                match top_n(&query) {
                    Ok(n) => json_reply(StatusCode::OK, self.top(n)),
                    Err(e) => problem(StatusCode::BAD_REQUEST, &e),
                }
            }
            (Method::GET, "/bans") => json_reply(StatusCode::OK, self.bans(usize::MAX)),
            (Method::DELETE, p) if p.starts_with("/bans/") => {
                let rule = percent_decode(p.trim_start_matches("/bans/"));
                let query = session.req_header().uri.query().unwrap_or("").to_string();
                self.lift(&rule, &query).await
            }
            (method, p) if p.starts_with("/lockdown/") => {
                let flag = p.trim_start_matches("/lockdown/").to_string();
                match method {
                    Method::PUT => self.enable(session, &flag).await,
                    Method::DELETE => self.disable(session, &flag).await,
                    _ => problem(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use PUT or DELETE on /lockdown/{flag}",
                    ),
                }
            }
            (_, "/metrics" | "/status" | "/reload" | "/debug/explain" | "/debug/top" | "/lockdown" | "/bans" | "/fleet" | "/console/api/rates") => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "unknown admin path (known: /healthz, /readyz, /console, /console/api/rates, /metrics, /status, /reload, /debug/explain, /debug/top, /lockdown, /bans, /fleet)",
            ),
        }
    }
}

/// The console page, with the headers that keep it from being framed,
/// sniffed, cached or leaking its address, and the policy that lets only its
/// own inline script and style run.
fn console_page() -> Response<Vec<u8>> {
    let page = &*crate::console::PAGE;
    let mut r = reply(
        StatusCode::OK,
        "text/html; charset=utf-8",
        page.html.clone().into_bytes(),
    );
    let headers = r.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(&page.csp) {
        headers.insert("content-security-policy", v);
    }
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    r
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ADMIN_BODY {
                    return Err(format!("the body is larger than {MAX_ADMIN_BODY} bytes"));
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("cannot read the body: {e}")),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EnableRequest {
    reason: String,
    actor: String,
    ttl: Option<String>,
    mode: Option<Mode>,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisableRequest {
    actor: Option<String>,
    reason: Option<String>,
}

fn flag_error(flag: &str, e: &CommandError) -> Response<Vec<u8>> {
    let CommandError::Flag(e) = e else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    };
    let known = match e {
        FlagError::Unknown(known) => known,
        FlagError::Fleet(_) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let mut r = json_reply(
        StatusCode::NOT_FOUND,
        json!({
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": format!("no flag \"{flag}\" in the config"),
            "known_flags": known,
        }),
    );
    if let Ok(v) = "application/problem+json".parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

/// `n` from `?n=…` (default 10, at most 64).
fn top_n(query: &str) -> Result<usize, String> {
    let mut n = 10;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("n", v)) => {
                n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::offenders::OFFENDER_CAPACITY).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "n must be from 1 to {}",
                            crate::offenders::OFFENDER_CAPACITY
                        )
                    })?;
            }
            _ => return Err(format!("unknown parameter \"{pair}\" (use n)")),
        }
    }
    Ok(n)
}

impl AdminService {
    fn top(&self, n: usize) -> serde_json::Value {
        // All kept keys, so that an AS can be named from any address or
        // network of it in the window, then `n` of each kind.
        let top = self.shared.offenders.top(
            crate::offenders::OFFENDER_CAPACITY,
            crate::lockdown::now_unix(),
        );
        let snapshot = self.shared.snapshot();
        let geo = &snapshot.geo;
        let mut organizations: std::collections::HashMap<u32, String> =
            std::collections::HashMap::new();
        let mut place = |ip: std::net::IpAddr| {
            let info = geo.lookup(ip);
            let org = geo.as_organization(ip);
            if let (Some(asn), Some(org)) = (info.asn, &org) {
                organizations.entry(asn).or_insert_with(|| org.clone());
            }
            json!({
                "country": info.country.map(|c| c.to_string()),
                "asn": info.asn,
                "as_organization": org,
            })
        };
        let mut row = |key: String, rejected: u64, ip: std::net::IpAddr| {
            let mut v = place(ip);
            v["key"] = json!(key);
            v["rejected"] = json!(rejected);
            v
        };
        let ips: Vec<_> = top
            .ips
            .iter()
            .map(|(ip, c)| row(ip.to_string(), *c, *ip))
            .collect();
        let prefixes: Vec<_> = top
            .prefixes
            .iter()
            .map(|(net, c)| row(net.to_string(), *c, net.network()))
            .collect();
        let asns: Vec<_> = top
            .asns
            .iter()
            .take(n)
            .map(|(asn, c)| {
                json!({
                    "key": format!("AS{asn}"),
                    "rejected": c,
                    "asn": asn,
                    "as_organization": organizations.get(asn),
                })
            })
            .collect();
        let ja4s: Vec<_> = top
            .ja4s
            .iter()
            .take(n)
            .map(|(ja4, c)| json!({"key": ja4.to_string(), "rejected": c}))
            .collect();
        json!({
            "window_seconds": top.window_secs,
            "ips": ips.into_iter().take(n).collect::<Vec<_>>(),
            "prefixes": prefixes.into_iter().take(n).collect::<Vec<_>>(),
            "asns": asns,
            "ja4": ja4s,
            "bans": self.bans(n)["bans"],
        })
    }

    /// Fleet status: this node, its Redis (without credentials), whether it is
    /// degraded, the lag of the last flag change it learned, and every node
    /// of the fleet with the flags it reported applying.
    async fn fleet_status(&self) -> serde_json::Value {
        let Some(fleet) = &self.shared.fleet else {
            return json!({"mode": "local", "node": self.shared.node});
        };
        let mut status = json!({
            "mode": "fleet",
            "node": self.shared.node,
            "redis": fleet.describe(),
            "topology": fleet.config.redis.topology(),
            "key_prefix": fleet.config.key_prefix,
            "degraded": fleet.is_degraded(),
            "sync_lag_seconds": self.shared.metrics.fleet_sync_lag_seconds(),
            "report_interval_seconds": crate::fleet::HEARTBEAT_INTERVAL.as_secs(),
        });
        match fleet.read_nodes(&self.shared.metrics).await {
            Ok(view) => {
                status["leader"] = json!(view.leader);
                status["nodes"] = view
                    .nodes
                    .into_iter()
                    .map(|n| {
                        json!({
                            "node": n.node,
                            "seconds_since_report": (n.age_ms as f64 / 1000.0),
                            "stale": n.age_ms > 3 * crate::fleet::HEARTBEAT_INTERVAL.as_millis() as u64,
                            "generation": n.report["generation"],
                            "flags": n.report["flags"],
                        })
                    })
                    .collect();
            }
            Err(e) => status["error"] = json!(format!("cannot read the node list: {e}")),
        }
        status
    }

    /// Every active ban, longest remaining first, at most `n` per rule.
    fn bans(&self, n: usize) -> serde_json::Value {
        let snapshot = self.shared.snapshot();
        let mut rows = Vec::new();
        for (rule, table) in snapshot
            .policy
            .rate_rules()
            .iter()
            .zip(snapshot.policy.ban_tables())
        {
            let Some(table) = table else { continue };
            for ban in table.active(n) {
                rows.push(json!({
                    "rule": rule.config.name,
                    "key": ban.key.text(),
                    "remaining_seconds": rampart_policy::engine::retry_after_secs(ban.remaining),
                    "offenses": ban.offenses,
                }));
            }
        }
        json!({ "bans": rows })
    }

    /// Lifts one ban: `DELETE /bans/{rule}?key=...`.
    async fn lift(&self, rule: &str, query: &str) -> Response<Vec<u8>> {
        let key_text = query
            .split('&')
            .find_map(|p| p.strip_prefix("key="))
            .map(percent_decode);
        let Some(key_text) = key_text else {
            return problem(
                StatusCode::BAD_REQUEST,
                "give the key: DELETE /bans/{rule}?key=203.0.113.7 (an address, a network, AS64500, a country code, or h<16 hex digits>)",
            );
        };
        let Some(key) = rampart_policy::limits::LimitKey::parse_text(&key_text) else {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!("\"{key_text}\" is not a key (an address, a network, AS64500, a country code, or h<16 hex digits>)"),
            );
        };
        let snapshot = self.shared.snapshot();
        let Some((table, kind)) = snapshot.policy.ban_table(rule) else {
            return problem(
                StatusCode::NOT_FOUND,
                &format!("no [[limits]] rule \"{rule}\" with a ban"),
            );
        };
        // An address given for a prefix-keyed rule means its network.
        let key = match (key, kind) {
            (
                rampart_policy::limits::LimitKey::Ip(ip),
                rampart_config::KeyKind::Prefix { v4, v6 },
            ) => rampart_policy::limits::LimitKey::Net(rampart_policy::limits::prefix_of(
                ip, *v4, *v6,
            )),
            (key, _) => key,
        };
        let fleet_rule =
            snapshot.config.limits.iter().any(|l| {
                l.name == rule && matches!(l.scope, rampart_config::LimitScope::Fleet { .. })
            });
        if let (true, Some(fleet)) = (fleet_rule, &self.shared.fleet) {
            // A fleet ban is lifted in Redis first, or not at all: a resync
            // would otherwise bring it back.
            if let Err(e) = fleet
                .lift_ban(rule, &key.text(), &self.shared.metrics)
                .await
            {
                return problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the fleet store (Redis) is unreachable, nothing changed: {e}"),
                );
            }
        }
        let was_banned = table.lift(&key);
        log::warn!(
            "ban of {} by {rule} lifted through the admin API (was banned: {was_banned})",
            key.text()
        );
        json_reply(
            StatusCode::OK,
            json!({"rule": rule, "key": key.text(), "was_banned": was_banned}),
        )
    }

    fn lockdown_list(&self) -> serde_json::Value {
        let snapshot = self.shared.snapshot();
        let flags = &snapshot.flags;
        let list: Vec<_> = snapshot
            .config
            .lockdown
            .flags
            .iter()
            .map(|f| {
                let a = flags.active.get(&f.name);
                json!({
                    "name": f.name,
                    "description": f.description,
                    "active": a.is_some(),
                    "mode": a.map(|a| a.mode.as_str()),
                    "actor": a.map(|a| a.actor.clone()),
                    "reason": a.map(|a| a.reason.clone()),
                    "since": a.map(|a| a.since()),
                    "expires": a.and_then(|a| a.expires()),
                    "since_ms": a.map(|a| a.since_ms),
                    "expires_ms": a.and_then(|a| a.expires_ms),
                })
            })
            .collect();
        json!({ "node": self.shared.node, "flags": list })
    }

    async fn enable(&self, session: &mut ServerSession, flag: &str) -> Response<Vec<u8>> {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
        };
        let req: EnableRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("body must be JSON {{\"reason\", \"actor\", \"ttl\"?, \"mode\"?: \"enforce\"|\"preview\"}}: {e}"),
                )
            }
        };
        if req.reason.trim().is_empty() || req.actor.trim().is_empty() {
            return problem(
                StatusCode::BAD_REQUEST,
                "reason and actor must not be empty",
            );
        }
        let max_ttl = self.shared.snapshot().config.lockdown.max_ttl;
        let ttl = match parse_ttl(req.ttl.as_deref(), max_ttl) {
            Ok(t) => t,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
        };
        let mode = req.mode.unwrap_or(Mode::Enforce);
        match self
            .shared
            .enable_flag(flag, mode, &req.actor, &req.reason, ttl)
            .await
        {
            Ok((a, persisted)) => json_reply(
                StatusCode::OK,
                json!({
                    "flag": flag,
                    "active": true,
                    "mode": a.mode.as_str(),
                    "actor": a.actor,
                    "reason": a.reason,
                    "since": a.since(),
                    "expires": a.expires(),
                    "since_ms": a.since_ms,
                    "expires_ms": a.expires_ms,
                    "persisted": persisted,
                }),
            ),
            Err(e) => flag_error(flag, &e),
        }
    }

    async fn disable(&self, session: &mut ServerSession, flag: &str) -> Response<Vec<u8>> {
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e),
        };
        let req: DisableRequest = if body.iter().all(u8::is_ascii_whitespace) {
            DisableRequest::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        &format!("body must be empty or JSON {{\"actor\"?, \"reason\"?}}: {e}"),
                    )
                }
            }
        };
        let actor = req.actor.unwrap_or_else(|| "admin-api".to_string());
        let reason = req.reason.unwrap_or_default();
        match self.shared.disable_flag(flag, &actor, &reason).await {
            Ok((was_on, persisted)) => json_reply(
                StatusCode::OK,
                json!({"flag": flag, "active": false, "was_active": was_on, "persisted": persisted}),
            ),
            Err(e) => flag_error(flag, &e),
        }
    }

    /// The real decision with charging switched off (a dry run of the same
    /// pipeline), for the request the query describes: fleet buckets are peeked
    /// at in Redis, local ones in memory; nothing is charged or taken.
    async fn explain(&self, session: &mut ServerSession) -> Result<serde_json::Value, String> {
        use rampart_policy::{BodyRead, Charging, Observation, Rejection, Step};
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let mut ip = None;
        let mut path = "/".to_string();
        let mut method = "GET".to_string();
        let mut host = None;
        let mut ja4 = None;
        let mut headers = http::HeaderMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "ip" => ip = Some(v),
                "path" => path = v,
                "method" => method = v.to_ascii_uppercase(),
                "host" => host = Some(v),
                "ja4" => ja4 = Some(rampart_policy::Ja4::parse(&v)?),
                "header" => {
                    let (name, value) = v
                        .split_once(':')
                        .ok_or(format!("header \"{v}\" must be name:value"))?;
                    let name = http::HeaderName::try_from(name.trim())
                        .map_err(|_| format!("\"{name}\" is not a header name"))?;
                    let value = http::HeaderValue::try_from(value.trim())
                        .map_err(|_| format!("\"{value}\" is not a header value"))?;
                    headers.append(name, value);
                }
                other => {
                    return Err(format!(
                        "unknown parameter \"{other}\" (use ip, path, method, host, header, ja4)"
                    ))
                }
            }
        }
        let ip_text = ip.ok_or(
            "ip is required, e.g. /debug/explain?ip=203.0.113.7&path=/api/auth/login&method=POST",
        )?;
        let ip: std::net::IpAddr = ip_text
            .parse()
            .map_err(|_| format!("\"{ip_text}\" is not an IP address"))?;
        let ip = rampart_config::canonical_ip(ip);
        let body = if session.req_header().method == Method::POST {
            if let Some(ct) = session.req_header().headers.get(http::header::CONTENT_TYPE) {
                headers.insert(http::header::CONTENT_TYPE, ct.clone());
            }
            Some(read_body(session).await?)
        } else {
            None
        };
        let snapshot = self.shared.snapshot();
        let geo = &snapshot.geo;
        let info = geo.lookup(ip);
        let (path_only, query_part) = match path.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (path.clone(), None),
        };
        let options = rampart_policy::CanonicalOptions {
            allow_semicolons: snapshot.config.request.allow_semicolons,
        };
        let canonical = rampart_policy::check_method(&method)
            .and_then(|()| rampart_policy::canonicalize_path(&path_only, options));
        let modes = &snapshot.flags.modes;
        let (verdict, trace, canonical_path) = match canonical {
            Err(refusal) => (
                rampart_policy::Verdict {
                    refusal: Some(Rejection::NonCanonical { refusal }),
                    ..Default::default()
                },
                Vec::new(),
                path_only.clone(),
            ),
            Ok(canonical_path) => {
                let canonical_path = canonical_path.into_owned();
                let facts = rampart_policy::RequestFacts {
                    ip,
                    geo: info,
                    host: host.as_deref(),
                    path: &canonical_path,
                    query: query_part.as_deref(),
                    method: &method,
                    headers: &headers,
                    flags: modes,
                    ja4,
                    identity: snapshot.identity_source(),
                };
                let mut evaluation = snapshot.policy.evaluate(Charging::DryRun);
                let mut verdict = loop {
                    match evaluation.next(&facts) {
                        Step::Done(verdict) => break verdict,
                        Step::NeedBody { .. } => evaluation.give_body(match &body {
                            Some(bytes) => BodyRead::Complete(bytes.clone()),
                            None => BodyRead::NotGiven,
                        }),
                        Step::NeedFleet(checks) => {
                            let answers = match &self.shared.fleet {
                                Some(fleet) => {
                                    fleet
                                        .peek(
                                            &snapshot.config.limits,
                                            &checks,
                                            &self.shared.metrics,
                                        )
                                        .await
                                }
                                None => Vec::new(),
                            };
                            evaluation.give_fleet(answers);
                        }
                    }
                };
                if verdict.refusal.is_none() {
                    verdict.refusal = verdict.pool.and_then(|p| snapshot.unhealthy_pool(p));
                }
                (verdict, evaluation.take_trace(), canonical_path)
            }
        };
        let refusal = verdict.refusal.as_ref();
        Ok(json!({
            "ip": ip.to_string(),
            "path": canonical_path,
            "country": info.country.map(|c| c.to_string()),
            "asn": info.asn,
            "as_organization": geo.as_organization(ip),
            "ja4": ja4.map(|j| j.to_string()),
            "route": verdict.route.and_then(|r| snapshot.config.routes.get(r)).map(|r| r.name.clone()),
            "pool": verdict.pool.and_then(|p| snapshot.pools.get(p)).map(|p| p.name().to_string()),
            "verdict": verdict.label(),
            "status": refusal.map(|r| r.status()),
            "rule": refusal.and_then(|r| r.rule()),
            "detail": refusal.map(|r| r.detail()),
            "allowed_by": verdict.allowed_by.as_deref(),
            // What jwt rules made of the bearer token (`header=authorization:Bearer …`):
            // `verified` or why not, never a claim. Null when no jwt rule asked.
            "jwt": verdict.identity.as_ref().map(|i| match i {
                rampart_policy::IdentityOutcome::Verified { cached, .. } => json!({
                    "result": "verified",
                    "cached": cached,
                    "claim_missing": verdict.claim_missing,
                }),
                rampart_policy::IdentityOutcome::Unverified(why) => json!({
                    "result": why.as_label(),
                    "detail": why.describe(),
                }),
            }),
            "observations": verdict.observations.iter().map(|o| match o {
                Observation::Shadow { rule } => json!({"kind": "shadow", "rule": rule.as_ref()}),
                Observation::Preview { flag } => json!({"kind": "preview", "flag": flag.as_ref()}),
            }).collect::<Vec<_>>(),
            "rules": trace.iter().map(|r| json!({
                "name": r.name.as_ref(),
                "kind": r.kind.as_label(),
                "key": r.key,
                "detail": r.detail,
                "outcome": r.outcome.as_label(),
                "would_reject": matches!(r.outcome, rampart_policy::engine::TraceOutcome::Refused | rampart_policy::engine::TraceOutcome::Observed),
                "shadow": r.shadow,
            })).collect::<Vec<_>>(),
        }))
    }

    fn status(&self) -> serde_json::Value {
        let snapshot = self.shared.snapshot();
        let pools: Vec<_> = snapshot
            .pools
            .iter()
            .map(|p| {
                json!({
                    "name": p.name(),
                    "servers": p.servers.iter().map(|s| json!({
                        "address": s.addr.to_string(),
                        "healthy": s.health.is_healthy(),
                        "probed": s.health.is_probed(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "generation": snapshot.generation,
            "ready": snapshot.is_ready(),
            "config_path": self.shared.config_path.display().to_string(),
            "pools": pools,
            "tls": self.shared.tls_certs.iter().map(|c| c.status()).collect::<Vec<_>>(),
        })
    }
}
