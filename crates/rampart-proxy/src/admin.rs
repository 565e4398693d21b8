//! The admin HTTP service, on its own listener (loopback by default), never on the
//! public one. Every endpoint but `/healthz` and `/readyz` requires
//! `Authorization: Bearer <token>`, compared in constant time.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | 200 while the process runs (no token) |
//! | GET | `/readyz` | 200 once every pool had its first health check, else 503 (no token) |
//! | GET | `/metrics` | Prometheus text format |
//! | GET | `/status` | config generation, pools and server health as JSON |
//! | POST | `/reload` | re-read the config file; 200 or 400 with every error |

use crate::state::{ReloadError, Shared};
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
                return if self.shared.snapshot().is_ready() {
                    reply(StatusCode::OK, "text/plain", b"ready\n".to_vec())
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        b"waiting for the first health checks\n".to_vec(),
                    )
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
            (Method::GET, "/metrics") => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            (Method::GET, "/status") => json_reply(StatusCode::OK, self.status()),
            (Method::POST, "/reload") => match self.shared.reload().await {
                Ok(generation) => json_reply(
                    StatusCode::OK,
                    json!({"result": "reloaded", "generation": generation}),
                ),
                Err(ReloadError::Invalid(e)) => json_reply(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "result": "refused",
                        "detail": "the new config is invalid; the old config keeps serving",
                        "errors": e.to_string().lines().collect::<Vec<_>>(),
                    }),
                ),
                Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            },
            (_, "/metrics" | "/status" | "/reload") => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this path",
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "unknown admin path (known: /healthz, /readyz, /metrics, /status, /reload)",
            ),
        }
    }
}

impl AdminService {
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
        })
    }
}
