//! An origin's answer read and written by Rampart itself, for the common case
//! of the HTTP/1.1 loop (see `lean`): an HTTP/1.1 final status with a body of
//! at most [`PLAIN_BODY_MAX`] bytes framed by one plain `Content-Length`, to a
//! request that went out as bytes from a kept-alive client. Its head is parsed
//! with `httparse` in its strict configuration, read whole with its body, and
//! written to the client in one write: the origin's fields in its spelling and
//! order, `Date` and `Connection: keep-alive` set in place as Pingora's writer
//! sets them. No header map is built on either side.
//!
//! Any other answer (chunked or close-delimited streams such as SSE, 1xx,
//! 101, 204 and 304, HTTP/1.0, larger bodies, two lengths, a head `httparse`
//! refuses in its strict configuration, or longer than [`ANSWER_HEAD_MAX`]) is
//! read again from its first byte by Pingora: the bytes already read are put in
//! front of the connection ([`Replay`]) and Pingora's reading and writing go on
//! as before, so that Pingora's rules (its lenient parsing of responses
//! included) decide everything this reading does not.

use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::ErrorType;
use std::cell::RefCell;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The largest origin body Rampart reads whole to write with its head.
pub(crate) const PLAIN_BODY_MAX: usize = 64 * 1024;

/// The longest answer head Rampart reads itself; a longer one goes to Pingora.
const ANSWER_HEAD_MAX: usize = 16 * 1024;

/// The most fields in an answer head Rampart reads itself.
const ANSWER_FIELDS: usize = 64;

thread_local! {
    /// Buffers kept across requests on this thread (a few: requests of other
    /// connections hold theirs while they wait on an origin).
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A byte buffer for one request, taken from the thread's kept ones and given
/// back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Buffer(pub(crate) Vec<u8>);

impl Buffer {
    /// Room for a usual head, so that writing one does not grow the buffer.
    const ROOM: usize = 2048;
    /// Buffers kept per thread.
    const KEPT: usize = 16;
    /// A buffer grown past this (a large body) is not kept.
    const KEPT_MAX: usize = PLAIN_BODY_MAX + ANSWER_HEAD_MAX;

    pub(crate) fn take() -> Self {
        let kept = BUFFERS
            .try_with(|kept| kept.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten();
        Self(kept.unwrap_or_else(|| Vec::with_capacity(Self::ROOM)))
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        if buffer.capacity() == 0 || buffer.capacity() > Self::KEPT_MAX {
            return;
        }
        buffer.clear();
        let _ = BUFFERS.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut() {
                if kept.len() < Self::KEPT {
                    kept.push(buffer);
                }
            }
        });
    }
}

/// What Rampart's own reading of an origin's answer came to.
#[derive(Debug)]
pub(crate) enum Reading {
    /// Read whole and rendered into the output buffer.
    Rendered {
        /// The origin's status.
        status: u16,
        /// The origin connection can carry another request.
        reusable: bool,
    },
    /// Not an answer Rampart renders: the bytes read so far, to be read again
    /// by Pingora from the first.
    Pingora(Vec<u8>),
}

/// Reads the origin's answer on `stream` into `read`, each read within
/// `limit`, and renders it into `out` when it is one Rampart writes itself
/// (see the module documentation). A connection that ends before any byte of
/// an answer is the error Pingora's reading gives (`ConnectionClosed`), so
/// that a pooled connection the origin had closed is retried as before.
pub(crate) async fn read_answer(
    stream: &mut Stream,
    limit: Option<Duration>,
    date: &[u8],
    read: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<Reading> {
    read.clear();
    let (head, length, reusable, status) = loop {
        if read_some(stream, limit, read, 4096).await? == 0 {
            if read.is_empty() {
                return Err(Error::explain(
                    ErrorType::ConnectionClosed,
                    "the origin closed the connection before answering",
                )
                .into_up());
            }
            // A head cut short: Pingora's reading reports it as it does.
            return Ok(Reading::Pingora(std::mem::take(read)));
        }
        match look(read, date, out) {
            Look::Rendered {
                head,
                length,
                reusable,
                status,
            } => break (head, length, reusable, status),
            Look::Pingora => return Ok(Reading::Pingora(std::mem::take(read))),
            Look::More => {}
        }
    };
    let body = read.get(head..).unwrap_or_default();
    // Bytes past the body were not asked for: the connection is not reused
    // (Pingora's reading does the same).
    let reusable = reusable && body.len() <= length;
    out.extend_from_slice(&body[..body.len().min(length)]);
    let mut missing = length.saturating_sub(body.len());
    while missing > 0 {
        let before = out.len();
        if read_some(stream, limit, out, missing).await? == 0 {
            return Err(Error::explain(
                ErrorType::ConnectionClosed,
                "the origin's body ended before its Content-Length",
            )
            .into_up());
        }
        let got = out.len() - before;
        if got > missing {
            // More than the body: not part of this answer.
            out.truncate(before + missing);
            return Ok(Reading::Rendered {
                status,
                reusable: false,
            });
        }
        missing -= got;
    }
    Ok(Reading::Rendered { status, reusable })
}

/// What one look at the bytes of an answer read so far came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// A head Rampart renders: rendered into the output buffer.
    Rendered {
        /// The head's length in the bytes read.
        head: usize,
        /// The body's length.
        length: usize,
        /// The origin keeps its connection.
        reusable: bool,
        /// The origin's status.
        status: u16,
    },
    /// An answer for Pingora to read (see the module documentation).
    Pingora,
    /// The head is not whole yet.
    More,
}

/// Looks at the bytes of an answer read so far (`read`): when they start with
/// a whole head Rampart renders, renders it into `out` with `date`. Public for
/// the `answer_head` fuzz target.
pub fn look(read: &[u8], date: &[u8], out: &mut Vec<u8>) -> Look {
    let mut fields = [httparse::EMPTY_HEADER; ANSWER_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    match resp.parse(read) {
        Ok(httparse::Status::Complete(head)) if head <= ANSWER_HEAD_MAX => {
            let Some((length, reusable)) = plain_framing(&resp) else {
                return Look::Pingora;
            };
            let status = resp.code.unwrap_or(0);
            render_head(
                status,
                resp.reason.unwrap_or("").as_bytes(),
                resp.headers.iter().map(|f| (f.name.as_bytes(), f.value)),
                date,
                out,
            );
            Look::Rendered {
                head,
                length,
                reusable,
                status,
            }
        }
        Ok(httparse::Status::Partial) if read.len() < ANSWER_HEAD_MAX => Look::More,
        _ => Look::Pingora,
    }
}

/// One read of at most `want` bytes appended to `buf`, within `limit`; the
/// errors are the ones Pingora's reading of an answer gives.
async fn read_some(
    stream: &mut Stream,
    limit: Option<Duration>,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<usize> {
    buf.reserve(want);
    let read = stream.read_buf(buf);
    let read = match limit {
        Some(limit) => match tokio::time::timeout(limit, read).await {
            Ok(read) => read,
            Err(_) => {
                return Err(Error::explain(
                    ErrorType::ReadTimedout,
                    "the origin's answer did not come within read_timeout",
                )
                .into_up())
            }
        },
        None => read.await,
    };
    read.map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                ErrorType::ConnectionClosed
            }
            _ => ErrorType::ReadError,
        };
        Error::because(kind, "while reading the origin's answer", e).into_up()
    })
}

/// The body length of an answer Rampart renders, and whether the origin keeps
/// its connection: HTTP/1.1, a final status that has a body, one plain
/// `Content-Length` of at most [`PLAIN_BODY_MAX`], no `Transfer-Encoding`.
fn plain_framing(resp: &httparse::Response<'_, '_>) -> Option<(usize, bool)> {
    let code = resp.code?;
    if resp.version != Some(1) || !(200..=599).contains(&code) || code == 204 || code == 304 {
        return None;
    }
    let (mut length, mut close) = (None, false);
    for field in resp.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return None;
            }
            length = Some(plain_length(field.value)?);
        }
        if name.eq_ignore_ascii_case(b"connection") {
            close |= field
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    Some((length?, !close))
}

/// A `Content-Length` of one to six digits, at most [`PLAIN_BODY_MAX`].
pub(crate) fn plain_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 6 {
        return None;
    }
    let length = value.iter().try_fold(0usize, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + usize::from(b - b'0'))
    })?;
    (length <= PLAIN_BODY_MAX).then_some(length)
}

/// An origin's answer head as the client gets it, into `out` (cleared first):
/// what Pingora's writer sends for a kept-alive HTTP/1.1 client. The status
/// line carries the origin's reason; the origin's fields keep their spelling
/// and order; `Date` and `Connection` are set where the origin's stood (once,
/// however many it sent), else after the others, `Date` first.
pub(crate) fn render_head<'a>(
    code: u16,
    reason: &[u8],
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    date: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    let mut digits = [b'0'; 3];
    for (i, d) in digits.iter_mut().enumerate() {
        let place = [100, 10, 1][i];
        *d = b'0' + u8::try_from(code / place % 10).unwrap_or(0);
    }
    for part in [&b"HTTP/1.1 "[..], &digits, b" ", reason, b"\r\n"] {
        out.extend_from_slice(part);
    }
    let (mut dated, mut connected) = (false, false);
    let mut field = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        let (name, value) = if name.eq_ignore_ascii_case(b"date") {
            if std::mem::replace(&mut dated, true) {
                return;
            }
            (&b"Date"[..], date)
        } else if name.eq_ignore_ascii_case(b"connection") {
            if std::mem::replace(&mut connected, true) {
                return;
            }
            (&b"Connection"[..], &b"keep-alive"[..])
        } else {
            (name, value)
        };
        for part in [name, b": ", value, b"\r\n"] {
            out.extend_from_slice(part);
        }
    };
    for (name, value) in fields {
        field(out, name, value);
    }
    field(out, b"date", b"");
    field(out, b"connection", b"");
    out.extend_from_slice(b"\r\n");
}

/// An origin connection whose first bytes Rampart read and Pingora must read
/// again: those bytes, then the connection.
#[derive(Debug)]
pub(crate) struct Replay {
    prefix: Bytes,
    inner: Stream,
}

impl Replay {
    pub(crate) fn wrap(prefix: Vec<u8>, inner: Stream) -> Stream {
        Box::new(Self {
            prefix: Bytes::from(prefix),
            inner,
        })
    }

    /// The connection as it was before [`Replay::wrap`], once its replayed
    /// bytes were all read; `None` when some were not (the connection cannot
    /// carry another request). Any other connection is given back as it is.
    pub(crate) fn unwrap(stream: Stream) -> Option<Stream> {
        if !stream.as_any().is::<Self>() {
            return Some(stream);
        }
        let replay = stream.into_any().downcast::<Self>().ok()?;
        replay.prefix.is_empty().then_some(replay.inner)
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        let bytes = self.prefix.split_to(n);
        buf.put_slice(&bytes);
        Poll::Ready(Ok(()))
    }
}

crate::wrapped::delegate_to_inner!(Replay);

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed-seed xorshift generator.
    fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// `render_head` of a parsed answer, as `read_answer` calls it.
    fn rendered(resp: &httparse::Response<'_, '_>) -> Vec<u8> {
        let mut out = Vec::new();
        render_head(
            resp.code.unwrap_or(0),
            resp.reason.unwrap_or("").as_bytes(),
            resp.headers.iter().map(|f| (f.name.as_bytes(), f.value)),
            b"Mon, 30 Nov 2026 00:00:00 GMT",
            &mut out,
        );
        out
    }

    /// Random answer heads (fixed seed): wherever `plain_framing` takes one,
    /// its length is the one `Content-Length` and no `Transfer-Encoding` is
    /// there; the rendered head parses back to the same status, reason and
    /// fields but for `Date` and `Connection`, which appear once each.
    #[test]
    fn rendered_heads_parse_back_to_the_origin_fields() {
        let mut next = xorshift(0xa11_5eed);
        let fields = [
            ("Content-Length", "5"),
            ("content-length", "05"),
            ("Content-Length", "5, 5"),
            ("Content-Length", "+5"),
            ("Content-Length", "1234567"),
            ("Transfer-Encoding", "chunked"),
            ("Date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("Connection", "close"),
            ("Connection", "keep-alive, Upgrade"),
            ("Set-Cookie", "a=1"),
            ("X-Mixed", "A b"),
            ("Server", "origin"),
        ];
        let starts = [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Here",
            "HTTP/1.1 204 No Content",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 103 Early Hints",
            "HTTP/1.1 599 ",
        ];
        let (mut plain, mut other) = (0, 0);
        for _ in 0..20_000 {
            let mut text = starts[(next() as usize) % starts.len()].to_string() + "\r\n";
            let mut sent = Vec::new();
            if !next().is_multiple_of(4) {
                text += "Content-Length: 12\r\n";
                sent.push(("Content-Length", "12"));
            }
            for _ in 0..(next() % 5) {
                let (n, v) = fields[(next() as usize) % fields.len()];
                text += &format!("{n}: {v}\r\n");
                sent.push((n, v));
            }
            text += "\r\n";
            let mut parsed = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut parsed);
            assert!(resp.parse(text.as_bytes()).is_ok_and(|s| s.is_complete()));
            let Some((length, reusable)) = plain_framing(&resp) else {
                other += 1;
                continue;
            };
            plain += 1;
            let lengths: Vec<_> = sent
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .collect();
            assert_eq!(lengths.len(), 1, "{text}");
            assert_eq!(
                lengths[0]
                    .1
                    .trim_start_matches('0')
                    .parse::<usize>()
                    .unwrap_or(0),
                length
            );
            assert!(
                !sent.iter().any(|(n, _)| *n == "Transfer-Encoding"),
                "{text}"
            );
            assert_eq!(reusable, !sent.contains(&("Connection", "close")), "{text}");
            let out = rendered(&resp);
            let mut again = [httparse::EMPTY_HEADER; 16];
            let mut back = httparse::Response::new(&mut again);
            assert_eq!(
                back.parse(&out).ok(),
                Some(httparse::Status::Complete(out.len()))
            );
            assert_eq!((back.code, back.reason), (resp.code, resp.reason));
            let kept = |h: &[httparse::Header<'_>]| -> Vec<(String, Vec<u8>)> {
                h.iter()
                    .filter(|f| {
                        !f.name.eq_ignore_ascii_case("date")
                            && !f.name.eq_ignore_ascii_case("connection")
                    })
                    .map(|f| (f.name.to_string(), f.value.to_vec()))
                    .collect()
            };
            assert_eq!(kept(back.headers), kept(resp.headers), "{text}");
            for (name, value) in [
                ("Date", &b"Mon, 30 Nov 2026 00:00:00 GMT"[..]),
                ("Connection", b"keep-alive"),
            ] {
                let found: Vec<_> = back.headers.iter().filter(|f| f.name == name).collect();
                assert_eq!(
                    found.len(),
                    1,
                    "{name} in {:?}",
                    String::from_utf8_lossy(&out)
                );
                assert_eq!(found[0].value, value);
            }
        }
        assert!(
            plain > 2_000 && other > 2_000,
            "{plain} plain, {other} other"
        );
    }

    /// Valid answer heads with random bytes changed, dropped or repeated
    /// (fixed seed, 100 000 of them): the strict parse and the framing check
    /// never panic, and every head they take renders to a head that parses
    /// back with the same status and the same length.
    #[test]
    fn mutated_heads_are_taken_whole_or_left_to_pingora() {
        let mut next = xorshift(0xdead_beef);
        let base = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 12\r\nDate: x\r\nConnection: keep-alive\r\n\r\n";
        let alphabet = b"\r\n :,0123456789aAzZ\t\x00\x7f\x80\xff-_/HTTP";
        let mut taken = 0;
        for _ in 0..100_000 {
            let mut head = base.to_vec();
            for _ in 0..(1 + next() % 4) {
                let at = (next() as usize) % head.len();
                match next() % 3 {
                    0 => head[at] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        head.remove(at);
                    }
                    _ => {
                        let byte = head[at];
                        head.insert(at, byte);
                    }
                }
            }
            let mut fields = [httparse::EMPTY_HEADER; ANSWER_FIELDS];
            let mut resp = httparse::Response::new(&mut fields);
            let Ok(httparse::Status::Complete(_)) = resp.parse(&head) else {
                continue;
            };
            let Some((length, _)) = plain_framing(&resp) else {
                continue;
            };
            taken += 1;
            let out = rendered(&resp);
            let mut again = [httparse::EMPTY_HEADER; ANSWER_FIELDS];
            let mut back = httparse::Response::new(&mut again);
            assert_eq!(
                back.parse(&out).ok(),
                Some(httparse::Status::Complete(out.len())),
                "{:?}",
                String::from_utf8_lossy(&head)
            );
            assert_eq!(back.code, resp.code);
            assert_eq!(plain_framing(&back).map(|(n, _)| n), Some(length));
        }
        assert!(taken > 10_000, "{taken} taken");
    }
}
