//! Writing a [`Rejection`] to the client.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use rampart_config::RouteKind;
use rampart_policy::Rejection;

/// Writes `rejection` as a complete response, rendered for a route of `kind`.
pub async fn write_rejection(
    session: &mut Session,
    rejection: &Rejection,
    kind: RouteKind,
) -> Result<()> {
    let (content_type, body) = rejection.render(kind);
    let mut header = ResponseHeader::build(rejection.status(), Some(5))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    for (name, value) in rejection.headers() {
        header.insert_header(name, value)?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await
}
