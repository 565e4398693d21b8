//! Writing a [`Rejection`] to the client.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;
use rampart_config::RouteKind;
use rampart_policy::Rejection;

/// Writes `rejection` as a complete response, rendered for a route of `kind`.
pub async fn write_rejection(
    session: &mut ServerSession,
    rejection: &Rejection,
    kind: RouteKind,
) -> Result<()> {
    let (content_type, body) = rejection.render(kind);
    // Room for every header below and the few Pingora adds, so the map never grows.
    let mut header = ResponseHeader::build(rejection.status(), Some(8))?;
    header.insert_header(CONTENT_TYPE, HeaderValue::from_static(content_type))?;
    header.insert_header(CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    header.insert_header(CACHE_CONTROL, HeaderValue::from_static("no-store"))?;
    for (name, value) in rejection.headers() {
        header.insert_header(name, value)?;
    }
    session.write_response_header(Box::new(header)).await?;
    session.write_response_body(Bytes::from(body), true).await
}
