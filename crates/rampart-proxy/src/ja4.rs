//! JA4 on TLS listeners: the ClientHello is read before the handshake, in
//! Pingora's pre-TLS hook (after a PROXY header, see [`PreTls`]), put back in
//! front of the stream byte for byte (Pingora's `Stream::rewind`, the same
//! read-and-replay its own `try_peek` does), and its fingerprint is attached
//! to the connection for every request on it.
//!
//! **Where the fingerprint travels.** Pingora 0.9 gives a pre-TLS stream one
//! slot for data of the application's own that reaches the request: the
//! stream's `ProxyDigest` (`user_data`), which the TLS stream passes through
//! and both the HTTP/1.1 and HTTP/2 sessions copy into their digest. Its
//! documented use is the CONNECT proxy of an *upstream* connection; a
//! downstream connection has none, and Pingora reads it on upstream
//! connections only. So [`attach`] stores the fingerprint there (with an
//! empty response header, which nothing reads) and [`of_session`] reads it
//! back, one downcast per request.
//!
//! **Bounds.** The hello must arrive within `client_header_timeout` (else the
//! connection is closed, `reason="tls_hello_timeout"`) and at most
//! [`rampart_policy::ja4::MAX_READ_BYTES`] are read. Bytes that are not TLS,
//! a malformed hello and one over the caps get no fingerprint: the bytes are
//! put back and the TLS library decides, as without JA4; their requests are
//! keyed by address where a rule asks for JA4. Each outcome is counted in
//! `rampart_tls_client_hellos_total`.

use crate::state::Shared;
use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::GetProxyDigest;
use rampart_policy::ja4::{HelloError, Ja4, MAX_READ_BYTES};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no hello could be read (the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloReadError {
    /// The hello did not arrive within the deadline.
    TimedOut,
    /// The client closed the connection or the read failed.
    Closed,
}

/// Reads from `stream` until its first bytes are a whole ClientHello, or show
/// that they are not one, within `deadline`. Returns every byte read (for the
/// caller to put back) and the fingerprint or why there is none.
pub async fn read_hello<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    deadline: Duration,
) -> Result<(Vec<u8>, Result<Ja4, HelloError>), HelloReadError> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let room = MAX_READ_BYTES.saturating_sub(buf.len()).min(chunk.len());
            let n = stream
                .read(&mut chunk[..room])
                .await
                .map_err(|_| HelloReadError::Closed)?;
            if n == 0 {
                return Err(HelloReadError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            match Ja4::from_stream(&buf) {
                Err(HelloError::Incomplete) if buf.len() < MAX_READ_BYTES => continue,
                // Within the caps a hello is complete by MAX_READ_BYTES.
                Err(HelloError::Incomplete) => return Ok(Err(HelloError::TooLarge)),
                done => return Ok(done),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(result)) => Ok((buf, result)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HelloReadError::TimedOut),
    }
}

/// The fingerprint as the connection carries it.
#[derive(Debug, Clone, Copy)]
struct Ja4Tag(Ja4);

/// Attaches `ja4` to a connection before its handshake (see the module
/// documentation).
pub fn attach(stream: &mut L4Stream, ja4: Ja4) {
    let header = match pingora::http::ResponseHeader::build(200, Some(0)) {
        Ok(h) => h,
        // A constant status: cannot fail; without it the request is keyed
        // by address.
        Err(_) => return,
    };
    stream.set_proxy_digest(ProxyDigest::new(
        Box::new(header),
        Some(Box::new(Ja4Tag(ja4))),
    ));
}

/// The JA4 of the connection a request came on: `None` on plaintext
/// listeners and for hellos that could not be fingerprinted.
pub fn of_session(session: &ServerSession) -> Option<Ja4> {
    of_digest(session.digest()?.proxy_digest.as_ref())
}

/// The JA4 attached to a connection's stream (see [`of_session`]).
pub fn of_stream<S: GetProxyDigest + ?Sized>(stream: &S) -> Option<Ja4> {
    of_digest(stream.get_proxy_digest().as_ref())
}

fn of_digest(digest: Option<&Arc<ProxyDigest>>) -> Option<Ja4> {
    digest?
        .user_data
        .as_ref()?
        .downcast_ref::<Ja4Tag>()
        .map(|t| t.0)
}

/// The JA4 step of a new TLS connection: reads the hello, puts it back,
/// attaches the fingerprint and counts the outcome. An error closes the
/// connection.
pub async fn on_tls_accept(stream: &mut L4Stream, shared: &Shared) -> Result<(), HelloReadError> {
    let deadline = shared.snapshot().config.server.client.header_timeout;
    match read_hello(stream, deadline).await {
        Ok((bytes, result)) => {
            stream.rewind(&bytes);
            shared.metrics.client_hello(result.map(|_| ()));
            if let Ok(ja4) = result {
                attach(stream, ja4);
            }
            Ok(())
        }
        Err(e) => {
            if e == HelloReadError::TimedOut {
                shared.metrics.client_connection_closed("tls_hello_timeout");
            }
            Err(e)
        }
    }
}

/// Pingora's pre-TLS hook of the public TLS listeners: the PROXY header
/// first (on listeners that take one: it comes before the ClientHello),
/// then the ClientHello's JA4 (peeked, left in place for the handshake).
pub struct PreTls {
    /// Config, deadlines and counters.
    pub shared: Arc<Shared>,
}

impl std::fmt::Debug for PreTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreTls")
    }
}

#[async_trait]
impl pingora::listeners::PreTlsProcess for PreTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        use std::os::unix::io::AsRawFd;
        let fd = stream.as_raw_fd();
        crate::proxy_protocol::on_accept(stream, fd, &self.shared)
            .await
            .map_err(|why| {
                pingora::Error::explain(pingora::ErrorType::AcceptError, why.as_label())
            })?;
        on_tls_accept(stream, &self.shared).await.map_err(|why| {
            pingora::Error::explain(
                pingora::ErrorType::AcceptError,
                match why {
                    HelloReadError::TimedOut => "tls_hello_timeout",
                    HelloReadError::Closed => "client closed before its ClientHello",
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_what_it_needs_and_stops() {
        let hello = hello_bytes();
        let mut more = hello.clone();
        more.extend_from_slice(b"after");
        let mut cursor = std::io::Cursor::new(more.clone());
        let (read, result) = read_hello(&mut cursor, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(result.is_ok());
        // Everything read is returned, to be put back.
        assert!(more.starts_with(&read) && read.len() >= hello.len());
        // Not TLS: refused at the first byte.
        let mut http = std::io::Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec());
        let (_, result) = read_hello(&mut http, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(result, Err(HelloError::NotTls));
        // A client that stops half way: closed.
        let mut short = std::io::Cursor::new(hello[..hello.len() / 2].to_vec());
        assert_eq!(
            read_hello(&mut short, Duration::from_secs(5)).await.err(),
            Some(HelloReadError::Closed)
        );
    }

    #[tokio::test]
    async fn a_silent_client_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        assert_eq!(
            read_hello(&mut server, Duration::from_millis(20))
                .await
                .err(),
            Some(HelloReadError::TimedOut)
        );
    }

    /// A TLS 1.2 ClientHello record: one cipher, no extensions.
    fn hello_bytes() -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let mut message = vec![0x01, 0, 0, u8::try_from(body.len()).unwrap_or(0)];
        message.extend_from_slice(&body);
        let mut record = vec![
            0x16,
            0x03,
            0x01,
            0,
            u8::try_from(message.len()).unwrap_or(0),
        ];
        record.extend_from_slice(&message);
        record
    }
}
