//! Built-in demo origins for `rampart demo`: a chat API that streams server-sent
//! events and a login/registration service, on the addresses the shipped config
//! points at. For trying Rampart on a fresh machine, not for production.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::time::Duration;

/// Address of the demo chat origin (matches `conf/rampart.toml`).
pub const CHAT_ADDR: &str = "127.0.0.1:9001";
/// Address of the demo auth origin (matches `conf/rampart.toml`).
pub const AUTH_ADDR: &str = "127.0.0.1:9002";

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

async fn chat(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    match req.uri().path() {
        "/healthz" => Ok(full(StatusCode::OK, "text/plain", "ok\n".into())),
        p if p.starts_with("/v1/chat/") => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                for word in ["Hello", " from", " the", " demo", " chat", " origin."] {
                    let event = format!("data: {{\"delta\":\"{word}\"}}\n\n");
                    if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
                    .await;
            });
            let stream = tokio_stream_from(rx);
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
            Ok(r)
        }
        _ => Ok(full(
            StatusCode::NOT_FOUND,
            "application/json",
            "{\"error\":\"not found\"}\n".into(),
        )),
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn auth(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = match path.as_str() {
        "/healthz" => return Ok(full(StatusCode::OK, "text/plain", "ok\n".into())),
        "/api/auth/login" => {
            "{\"result\":\"logged in\",\"session\":\"demo-session\"}\n".to_string()
        }
        "/api/auth/register" => format!("{{\"result\":\"registered\",\"bytes\":{}}}\n", body.len()),
        _ => {
            return Ok(full(
                StatusCode::NOT_FOUND,
                "application/json",
                "{\"error\":\"not found\"}\n".into(),
            ))
        }
    };
    Ok(full(StatusCode::OK, "application/json", reply))
}

/// Starts both demo origins on a thread of their own.
pub fn start_origins() -> Result<(), String> {
    let chat_listener = std::net::TcpListener::bind(CHAT_ADDR)
        .map_err(|e| format!("cannot bind the demo chat origin on {CHAT_ADDR}: {e}"))?;
    let auth_listener = std::net::TcpListener::bind(AUTH_ADDR)
        .map_err(|e| format!("cannot bind the demo auth origin on {AUTH_ADDR}: {e}"))?;
    for l in [&chat_listener, &auth_listener] {
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    std::thread::Builder::new()
        .name("demo-origins".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    log::error!("demo origins: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let (Ok(chat_listener), Ok(auth_listener)) = (
                    tokio::net::TcpListener::from_std(chat_listener),
                    tokio::net::TcpListener::from_std(auth_listener),
                ) else {
                    log::error!("demo origins: cannot register listeners");
                    return;
                };
                tokio::join!(serve(chat_listener, false), serve(auth_listener, true));
            });
        })
        .map_err(|e| e.to_string())?;
    log::info!("demo origins: chat on http://{CHAT_ADDR}, auth on http://{AUTH_ADDR}");
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, is_auth: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let io = TokioIo::new(stream);
            let result = if is_auth {
                builder.serve_connection(io, service_fn(auth)).await
            } else {
                builder.serve_connection(io, service_fn(chat)).await
            };
            if let Err(e) = result {
                log::debug!("demo origin connection: {e}");
            }
        });
    }
}

/// The demo needs an admin token; makes one up (and prints it) when none is set.
/// The demo runs everything on this host and may be driven with forwarding
/// headers from loopback (a trusted-proxy header is how one machine presents
/// many clients): it trusts loopback as a proxy, for itself only. The shipped
/// file trusts nobody, so `rampart run` with it never does.
pub fn trust_loopback(config: &mut rampart_config::Config) {
    for net in ["127.0.0.0/8", "::1/128"] {
        if let Ok(net) = net.parse() {
            if !config.client_ip.trusted_proxies.contains(&net) {
                config.client_ip.trusted_proxies.push(net);
            }
        }
    }
}

pub fn ensure_admin_token() {
    let name = rampart_config::DEFAULT_ADMIN_TOKEN_ENV;
    if std::env::var(name).is_ok() {
        return;
    }
    use std::hash::{BuildHasher, Hasher};
    let mut token = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        token.push_str(&format!("{:016x}", h.finish()));
    }
    std::env::set_var(name, &token);
    println!("demo admin token (export {name}={token} to reuse it):\n  curl -H 'Authorization: Bearer {token}' http://127.0.0.1:9901/status");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_trusts_loopback_and_the_shipped_file_does_not() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../conf/rampart.toml"
        ));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut config = rampart_config::parse(&text, path).unwrap_or_else(|e| panic!("{e}"));
        let loopback: std::net::IpAddr = [127, 0, 0, 1].into();
        assert!(!config.client_ip.is_trusted(loopback));
        super::trust_loopback(&mut config);
        super::trust_loopback(&mut config);
        assert!(config.client_ip.is_trusted(loopback));
        assert!(config
            .client_ip
            .is_trusted("::1".parse().unwrap_or(loopback)));
        assert_eq!(config.client_ip.trusted_proxies.len(), 2);
    }
}
