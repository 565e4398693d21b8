//! Every way Rampart answers a request itself, as one typed value. The same value
//! gives the HTTP status, the response body, the metric label and the log field, so
//! they can never disagree.

use crate::canonical::CanonicalRefusal;
use crate::geo::CountryCode;
use rampart_config::RouteKind;
use std::borrow::Cow;
use std::sync::Arc;

/// Base of the stable problem `type` URIs.
pub const PROBLEM_TYPE_BASE: &str = "https://rampart.dev/problems/";

/// A request answered at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No route matched and `[unmatched]` says reject.
    NoRoute {
        /// Configured status (404 by default).
        status: u16,
    },
    /// Every server of the route's pool is down.
    NoHealthyUpstream {
        /// Pool name.
        pool: String,
    },
    /// The origin could not be reached or failed while answering.
    UpstreamFailed {
        /// 502 (bad gateway) or 504 (timeout).
        status: u16,
    },
    /// An `[[access]]` deny rule matched the client's network.
    DeniedByNetwork {
        /// Rule name.
        rule: Arc<str>,
    },
    /// An `[[access]]` deny rule matched the client's autonomous system.
    DeniedByAsn {
        /// Rule name.
        rule: Arc<str>,
        /// The AS number.
        asn: u32,
    },
    /// An `[[access]]` deny rule matched the client's country.
    DeniedByCountry {
        /// Rule name.
        rule: Arc<str>,
        /// The country.
        country: CountryCode,
    },
    /// An `[[access]]` deny rule matched the JA4 fingerprint of the client's
    /// TLS hello.
    DeniedByJa4 {
        /// Rule name.
        rule: Arc<str>,
    },
    /// The client's country is unknown and `geoip.unknown_country = "deny"`.
    UnknownCountry,
    /// The client's ASN is unknown and `geoip.unknown_asn = "deny"`.
    UnknownAsn,
    /// A `[[limits]]` bucket is empty.
    RateLimited {
        /// Rule name.
        rule: Arc<str>,
        /// Whole seconds until a request would conform, at least 1.
        retry_after: u64,
        /// Requests allowed per `window` (the rule's rate).
        quota: u32,
        /// The rate's period in seconds (at least 1).
        window: u64,
    },
    /// A `[[limits]]` rule's penalty box holds the client's key.
    Banned {
        /// Rule name.
        rule: Arc<str>,
        /// Whole seconds until the ban ends, at least 1.
        retry_after: u64,
    },
    /// A `[[concurrency]]` cap is reached.
    TooManyInFlight {
        /// Rule name.
        rule: Arc<str>,
    },
    /// A lockdown flag put the route in maintenance (503).
    Maintenance {
        /// Flag name.
        flag: Arc<str>,
        /// Seconds until clients should retry.
        retry_after: u64,
        /// Message from the flag's config.
        message: Arc<str>,
    },
    /// A lockdown flag blocks the route.
    LockedDown {
        /// Flag name.
        flag: Arc<str>,
        /// Status from the flag's config.
        status: u16,
        /// Message from the flag's config.
        message: Arc<str>,
    },
    /// A lockdown flag admits only requests with an existing session.
    SessionRequired {
        /// Flag name.
        flag: Arc<str>,
    },
    /// A lockdown flag admits only some networks, ASNs or countries.
    RestrictedByFlag {
        /// Flag name.
        flag: Arc<str>,
    },
    /// A lockdown flag's body rule refused the body (400, 403, 413 or 415).
    BodyRefused {
        /// Flag name.
        flag: Arc<str>,
        /// 400 malformed or ambiguous, 403 not allowed, 413 too large, 415
        /// unsupported media type or coding.
        status: u16,
        /// What was refused and why.
        detail: String,
    },
    /// The request target or method has no single canonical form (400); it is
    /// never forwarded.
    NonCanonical {
        /// What was wrong.
        refusal: CanonicalRefusal,
    },
    /// The route owning the path does not accept the method (405).
    MethodNotAllowed {
        /// Methods the route accepts, comma-separated (the `Allow` field).
        allow: Arc<str>,
    },
    /// The client did not send its request head or body within its deadline (408).
    ClientTimeout,
    /// The request head is larger than allowed or has too many fields (431).
    HeaderTooLarge,
    /// The client sent a malformed request or went away before it was complete;
    /// never counted against an origin.
    ClientError {
        /// 400 for a malformed request, 499 for a client that went away (logged
        /// only: nothing can be written).
        status: u16,
    },
}

/// Every refusal label ([`Rejection::label`]).
pub const LABELS: &[&str] = &[
    "no_route",
    "no_healthy_upstream",
    "upstream_failed",
    "denied_network",
    "denied_asn",
    "denied_country",
    "denied_ja4",
    "unknown_country",
    "unknown_asn",
    "rate_limited",
    "too_many_in_flight",
    "banned",
    "maintenance",
    "locked_down",
    "session_required",
    "restricted_by_flag",
    "body_refused",
    "non_canonical",
    "method_not_allowed",
    "client_timeout",
    "header_too_large",
    "client_error",
];

impl Rejection {
    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::NoRoute { status } => *status,
            Rejection::NoHealthyUpstream { .. } => 503,
            Rejection::UpstreamFailed { status } => *status,
            Rejection::DeniedByNetwork { .. }
            | Rejection::DeniedByAsn { .. }
            | Rejection::DeniedByCountry { .. }
            | Rejection::DeniedByJa4 { .. }
            | Rejection::UnknownCountry
            | Rejection::UnknownAsn => 403,
            Rejection::RateLimited { .. }
            | Rejection::TooManyInFlight { .. }
            | Rejection::Banned { .. } => 429,
            Rejection::Maintenance { .. } => 503,
            Rejection::LockedDown { status, .. } | Rejection::BodyRefused { status, .. } => *status,
            Rejection::SessionRequired { .. } | Rejection::RestrictedByFlag { .. } => 403,
            Rejection::NonCanonical { .. } => 400,
            Rejection::MethodNotAllowed { .. } => 405,
            Rejection::ClientTimeout => 408,
            Rejection::HeaderTooLarge => 431,
            Rejection::ClientError { status } => *status,
        }
    }

    /// The configured rule that fired, when one did.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Rejection::DeniedByNetwork { rule }
            | Rejection::DeniedByAsn { rule, .. }
            | Rejection::DeniedByCountry { rule, .. }
            | Rejection::DeniedByJa4 { rule }
            | Rejection::RateLimited { rule, .. }
            | Rejection::Banned { rule, .. }
            | Rejection::TooManyInFlight { rule } => Some(rule),
            Rejection::Maintenance { flag, .. }
            | Rejection::LockedDown { flag, .. }
            | Rejection::SessionRequired { flag }
            | Rejection::RestrictedByFlag { flag }
            | Rejection::BodyRefused { flag, .. } => Some(flag),
            Rejection::NonCanonical { refusal } => Some(refusal.rule()),
            _ => None,
        }
    }

    /// Extra response headers: `Retry-After` and, for rate limits, the
    /// `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(s) = self.retry_after() {
            out.push(("retry-after", s.to_string()));
        }
        if let Rejection::MethodNotAllowed { allow } = self {
            out.push(("allow", allow.to_string()));
        }
        if let Rejection::RateLimited {
            rule,
            retry_after,
            quota,
            window,
        } = self
        {
            let name = sf_string(rule);
            out.push(("ratelimit-policy", format!("{name};q={quota};w={window}")));
            out.push(("ratelimit", format!("{name};r=0;t={retry_after}")));
        }
        out
    }

    /// Closed-set label for metrics and the access log's `verdict` field.
    pub fn label(&self) -> &'static str {
        // Keep LABELS in step.
        match self {
            Rejection::NoRoute { .. } => "no_route",
            Rejection::NoHealthyUpstream { .. } => "no_healthy_upstream",
            Rejection::UpstreamFailed { .. } => "upstream_failed",
            Rejection::DeniedByNetwork { .. } => "denied_network",
            Rejection::DeniedByAsn { .. } => "denied_asn",
            Rejection::DeniedByCountry { .. } => "denied_country",
            Rejection::DeniedByJa4 { .. } => "denied_ja4",
            Rejection::UnknownCountry => "unknown_country",
            Rejection::UnknownAsn => "unknown_asn",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::TooManyInFlight { .. } => "too_many_in_flight",
            Rejection::Banned { .. } => "banned",
            Rejection::Maintenance { .. } => "maintenance",
            Rejection::LockedDown { .. } => "locked_down",
            Rejection::SessionRequired { .. } => "session_required",
            Rejection::RestrictedByFlag { .. } => "restricted_by_flag",
            Rejection::BodyRefused { .. } => "body_refused",
            Rejection::NonCanonical { .. } => "non_canonical",
            Rejection::MethodNotAllowed { .. } => "method_not_allowed",
            Rejection::ClientTimeout => "client_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::ClientError { .. } => "client_error",
        }
    }

    /// Short human title.
    pub fn title(&self) -> &'static str {
        match self {
            Rejection::NoRoute { .. } => "No such route",
            Rejection::NoHealthyUpstream { .. } => "Service unavailable",
            Rejection::UpstreamFailed { status: 504 } => "Gateway timeout",
            Rejection::UpstreamFailed { .. } => "Bad gateway",
            Rejection::DeniedByNetwork { .. }
            | Rejection::DeniedByAsn { .. }
            | Rejection::DeniedByCountry { .. }
            | Rejection::DeniedByJa4 { .. }
            | Rejection::UnknownCountry
            | Rejection::UnknownAsn => "Forbidden",
            Rejection::RateLimited { .. } => "Too many requests",
            Rejection::TooManyInFlight { .. } => "Too many requests in flight",
            Rejection::Banned { .. } => "Too many refused requests",
            Rejection::Maintenance { .. } => "Down for maintenance",
            Rejection::LockedDown { .. } => "Temporarily closed",
            Rejection::SessionRequired { .. } => "Existing sessions only",
            Rejection::RestrictedByFlag { .. } => "Forbidden",
            Rejection::BodyRefused { status: 413, .. } => "Request body too large",
            Rejection::BodyRefused { status: 400, .. } => "Malformed request body",
            Rejection::BodyRefused { status: 415, .. } => "Unsupported media type",
            Rejection::NonCanonical { .. } => "Bad request",
            Rejection::MethodNotAllowed { .. } => "Method not allowed",
            Rejection::ClientTimeout => "Request timeout",
            Rejection::HeaderTooLarge => "Request header fields too large",
            Rejection::ClientError { .. } => "Bad request",
            Rejection::BodyRefused { .. } => "Request refused",
        }
    }

    /// Human explanation. Fixed texts are borrowed; only the few that name a
    /// value (pool, AS, country, wait) are put together.
    pub fn detail(&self) -> Cow<'_, str> {
        match self.detail_parts() {
            (text, Piece::None, "") => Cow::Borrowed(text),
            (head, middle, tail) => {
                let mut out = String::with_capacity(head.len() + tail.len() + 24);
                out.push_str(head);
                match middle {
                    Piece::None => {}
                    Piece::Text(t) => out.push_str(t),
                    Piece::Number(n) => push_decimal(&mut out, n),
                }
                out.push_str(tail);
                Cow::Owned(out)
            }
        }
    }

    /// [`Self::detail`] as fixed text, one value and fixed text, so that it can
    /// be written out without being put together first.
    fn detail_parts(&self) -> (&str, Piece<'_>, &'static str) {
        match self {
            Rejection::NoRoute { .. } => {
                ("No route is configured for this request.", Piece::None, "")
            }
            Rejection::NoHealthyUpstream { pool } => (
                "No healthy origin server in pool \"",
                Piece::Text(pool),
                "\"; try again shortly.",
            ),
            Rejection::UpstreamFailed { .. } => (
                "The origin server could not complete the request.",
                Piece::None,
                "",
            ),
            Rejection::DeniedByNetwork { .. } => (
                "Requests from your network are not accepted.",
                Piece::None,
                "",
            ),
            Rejection::DeniedByAsn { asn, .. } => (
                "Requests from AS",
                Piece::Number(u64::from(*asn)),
                " are not accepted.",
            ),
            Rejection::DeniedByCountry { country, .. } => (
                "Requests from country ",
                Piece::Text(country.as_str()),
                " are not accepted.",
            ),
            Rejection::DeniedByJa4 { .. } => (
                "Requests from your TLS client are not accepted.",
                Piece::None,
                "",
            ),
            Rejection::UnknownCountry => (
                "Requests from addresses with no known country are not accepted.",
                Piece::None,
                "",
            ),
            Rejection::UnknownAsn => (
                "Requests from addresses with no known network operator are not accepted.",
                Piece::None,
                "",
            ),
            Rejection::RateLimited { retry_after, .. } => (
                "Rate limit exceeded; retry in ",
                Piece::Number(*retry_after),
                " s.",
            ),
            Rejection::TooManyInFlight { .. } => (
                "Too many of your requests are in progress; wait for one to finish.",
                Piece::None,
                "",
            ),
            Rejection::Banned { retry_after, .. } => (
                "Too many of your requests were refused; requests are not accepted for ",
                Piece::Number(*retry_after),
                " s.",
            ),
            Rejection::Maintenance { message, .. } | Rejection::LockedDown { message, .. } => {
                (message, Piece::None, "")
            }
            Rejection::SessionRequired { .. } => (
                "Only signed-in users are served right now; new sessions are not accepted.",
                Piece::None,
                "",
            ),
            Rejection::RestrictedByFlag { .. } => (
                "This part of the service is temporarily restricted to some networks and regions.",
                Piece::None,
                "",
            ),
            Rejection::BodyRefused { detail, .. } => (detail, Piece::None, ""),
            Rejection::NonCanonical { refusal } => (refusal.detail(), Piece::None, ""),
            Rejection::MethodNotAllowed { allow } => {
                ("This path accepts only ", Piece::Text(allow), ".")
            }
            Rejection::ClientTimeout => (
                "The request was not received in time; the connection is closed.",
                Piece::None,
                "",
            ),
            Rejection::HeaderTooLarge => (
                "The request head is too large or has too many header fields.",
                Piece::None,
                "",
            ),
            Rejection::ClientError { .. } => {
                ("The request is malformed or incomplete.", Piece::None, "")
            }
        }
    }

    /// Appends the detail with `push` escaping each text part (numbers need none).
    fn push_detail(&self, out: &mut String, push: fn(&mut String, &str)) {
        let (head, middle, tail) = self.detail_parts();
        push(out, head);
        match middle {
            Piece::None => {}
            Piece::Text(t) => push(out, t),
            Piece::Number(n) => push_decimal(out, n),
        }
        push(out, tail);
    }

    /// Seconds a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::NoHealthyUpstream { .. } => Some(5),
            Rejection::RateLimited { retry_after, .. } | Rejection::Banned { retry_after, .. } => {
                Some(*retry_after)
            }
            Rejection::TooManyInFlight { .. } => Some(1),
            Rejection::Maintenance { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The body and its content type for a route of `kind`.
    ///
    /// API routes get RFC 9457 `application/problem+json`; browser routes a small
    /// HTML page.
    ///
    /// Written into one buffer sized up front: a flood of rejections renders one
    /// of these per request (benches/instructions.sh measures the whole path).
    pub fn render(&self, kind: RouteKind) -> (&'static str, String) {
        let mut body = String::new();
        let content_type = self.render_into(kind, &mut body);
        (content_type, body)
    }

    /// [`Self::render`] appended to `body` (a buffer kept across requests makes
    /// no allocation); returns the content type.
    pub fn render_into(&self, kind: RouteKind, body: &mut String) -> &'static str {
        let title = self.title();
        match kind {
            RouteKind::Api => {
                let rule = self.rule().unwrap_or(self.label());
                body.reserve(PROBLEM_TYPE_BASE.len() + title.len() + 2 * rule.len() + 200);
                body.push_str("{\"type\":\"");
                body.push_str(PROBLEM_TYPE_BASE);
                body.extend(self.label().chars().map(|c| if c == '_' { '-' } else { c }));
                body.push_str("\",\"title\":");
                push_json_string(body, title);
                body.push_str(",\"status\":");
                push_decimal(body, u64::from(self.status()));
                body.push_str(",\"detail\":\"");
                self.push_detail(body, push_json_chars);
                body.push_str("\",\"rule\":");
                push_json_string(body, rule);
                if let Rejection::RateLimited { .. } | Rejection::TooManyInFlight { .. } = self {
                    body.push_str(",\"violated-policies\":[");
                    push_json_string(body, rule);
                    body.push(']');
                }
                body.push_str("}\n");
                "application/problem+json"
            }
            RouteKind::Browser => {
                body.reserve(2 * title.len() + 200);
                body.push_str("<!doctype html><html><head><title>");
                push_html(body, title);
                body.push_str("</title></head><body><h1>");
                push_html(body, title);
                body.push_str("</h1><p>");
                self.push_detail(body, push_html);
                body.push_str("</p></body></html>\n");
                "text/html; charset=utf-8"
            }
        }
    }

    /// The whole HTTP/1.1 response, head and body, written into `out` (cleared
    /// first) with `body` as scratch space: the same status, fields and body as
    /// [`Self::render`] and [`Self::headers`] give, plus `date` and
    /// `connection: close` when `close`. Both buffers are meant to be kept across
    /// requests, so that a refusal allocates nothing. Returns where `date` starts
    /// in `out`, so that a kept response can be given a new date in place.
    pub fn write_http1(
        &self,
        kind: RouteKind,
        date: &[u8],
        close: bool,
        out: &mut Vec<u8>,
        body: &mut String,
    ) -> usize {
        body.clear();
        let content_type = self.render_into(kind, body);
        out.clear();
        let status = self.status();
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal_bytes(out, u64::from(status));
        out.push(b' ');
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        push_decimal_bytes(out, body.len() as u64);
        out.extend_from_slice(b"\r\ncache-control: no-store\r\n");
        if let Some(wait) = self.retry_after() {
            out.extend_from_slice(b"retry-after: ");
            push_decimal_bytes(out, wait);
            out.extend_from_slice(b"\r\n");
        }
        if let Rejection::MethodNotAllowed { allow } = self {
            out.extend_from_slice(b"allow: ");
            out.extend_from_slice(allow.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Rejection::RateLimited {
            rule,
            retry_after,
            quota,
            window,
        } = self
        {
            out.extend_from_slice(b"ratelimit-policy: ");
            push_sf_string(out, rule);
            out.extend_from_slice(b";q=");
            push_decimal_bytes(out, u64::from(*quota));
            out.extend_from_slice(b";w=");
            push_decimal_bytes(out, *window);
            out.extend_from_slice(b"\r\nratelimit: ");
            push_sf_string(out, rule);
            out.extend_from_slice(b";r=0;t=");
            push_decimal_bytes(out, *retry_after);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"date: ");
        let date_at = out.len();
        out.extend_from_slice(date);
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(body.as_bytes());
        date_at
    }
}

/// One value inside a detail text.
enum Piece<'a> {
    None,
    Text(&'a str),
    Number(u64),
}

/// Appends `n` in decimal to bytes.
fn push_decimal_bytes(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `s` as a structured-field string (RFC 8941), as [`sf_string`] does:
/// quotes and backslashes escaped, anything but printable ASCII (which a
/// field value cannot carry) replaced by `?`.
fn push_sf_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for b in s.bytes() {
        match b {
            b'\\' | b'"' => out.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => out.push(b),
            _ => out.push(b'?'),
        }
    }
    out.push(b'"');
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| char::from(d)));
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    push_json_chars(out, s);
    out.push('"');
}

/// Appends `s` escaped for the inside of a JSON string literal; text with
/// nothing to escape (the usual case) is copied whole.
fn push_json_chars(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(char::from(HEX[(c as usize) >> 4]));
                out.push(char::from(HEX[(c as usize) & 0xf]));
            }
            c => out.push(c),
        }
    }
}

/// Appends `s` with HTML's special characters escaped.
fn push_html(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    push_json_string(&mut out, s);
    out
}

/// A Structured Fields string (RFC 8941): quoted, with `"` and `\\` escaped.
/// Rule names are validated to `[a-z0-9_-]`, so nothing else needs care.
fn sf_string(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len() + 2);
    push_sf_string(&mut out, s);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of refusal with awkward values (quotes, backslashes, control
    /// characters, non-ASCII) where a value can be chosen.
    fn samples() -> Vec<Rejection> {
        let rule: Arc<str> = Arc::from("r \"q\" \\ é");
        vec![
            Rejection::NoRoute { status: 404 },
            Rejection::NoHealthyUpstream {
                pool: "p\"\n".into(),
            },
            Rejection::UpstreamFailed { status: 502 },
            Rejection::UpstreamFailed { status: 504 },
            Rejection::DeniedByNetwork { rule: rule.clone() },
            Rejection::DeniedByAsn {
                rule: rule.clone(),
                asn: 4_200_000_000,
            },
            Rejection::DeniedByCountry {
                rule: rule.clone(),
                country: CountryCode::parse("KP").expect("code"),
            },
            Rejection::DeniedByJa4 { rule: rule.clone() },
            Rejection::UnknownCountry,
            Rejection::UnknownAsn,
            Rejection::RateLimited {
                rule: rule.clone(),
                retry_after: 17,
                quota: 5,
                window: 60,
            },
            Rejection::Banned {
                rule: rule.clone(),
                retry_after: 3600,
            },
            Rejection::TooManyInFlight { rule: rule.clone() },
            Rejection::Maintenance {
                flag: "maintenance".into(),
                retry_after: 120,
                message: "<b>back</b> \"soon\"\t".into(),
            },
            Rejection::LockedDown {
                flag: "f".into(),
                status: 503,
                message: "closed".into(),
            },
            Rejection::SessionRequired { flag: "f".into() },
            Rejection::RestrictedByFlag { flag: "f".into() },
            Rejection::BodyRefused {
                flag: "f".into(),
                status: 413,
                detail: "too \"big\"".into(),
            },
            Rejection::MethodNotAllowed {
                allow: "GET, POST".into(),
            },
            Rejection::ClientTimeout,
            Rejection::HeaderTooLarge,
            Rejection::ClientError { status: 400 },
        ]
    }

    #[test]
    fn the_written_response_is_the_rendered_body_with_the_same_fields() {
        let (mut out, mut scratch) = (Vec::new(), String::new());
        for r in samples() {
            for kind in [RouteKind::Api, RouteKind::Browser] {
                for close in [false, true] {
                    let date_at = r.write_http1(
                        kind,
                        b"Mon, 30 Nov 2026 10:00:00 GMT",
                        close,
                        &mut out,
                        &mut scratch,
                    );
                    assert_eq!(
                        &out[date_at..date_at + 29],
                        b"Mon, 30 Nov 2026 10:00:00 GMT"
                    );
                    let text = String::from_utf8(out.clone()).expect("utf-8");
                    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
                    let (content_type, rendered) = r.render(kind);
                    assert_eq!(body, rendered, "{r:?}");
                    let mut lines = head.split("\r\n");
                    let status_line = lines.next().expect("status line");
                    let reason = http::StatusCode::from_u16(r.status())
                        .expect("status")
                        .canonical_reason()
                        .expect("reason");
                    assert_eq!(status_line, format!("HTTP/1.1 {} {reason}", r.status()));
                    let mut fields: Vec<(String, String)> = lines
                        .map(|l| {
                            let (n, v) = l.split_once(": ").expect("field");
                            (n.to_string(), v.to_string())
                        })
                        .collect();
                    let mut expected: Vec<(String, String)> = vec![
                        ("content-type".into(), content_type.into()),
                        ("content-length".into(), rendered.len().to_string()),
                        ("cache-control".into(), "no-store".into()),
                        ("date".into(), "Mon, 30 Nov 2026 10:00:00 GMT".into()),
                    ];
                    expected.extend(r.headers().into_iter().map(|(n, v)| (n.to_string(), v)));
                    if close {
                        expected.push(("connection".into(), "close".into()));
                    }
                    fields.sort();
                    expected.sort();
                    assert_eq!(fields, expected, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn details_put_together_match_their_parts() {
        for r in samples() {
            let mut pieces = String::new();
            r.push_detail(&mut pieces, |out, s| out.push_str(s));
            assert_eq!(r.detail(), pieces, "{r:?}");
        }
        let banned = Rejection::Banned {
            rule: "b".into(),
            retry_after: 90,
        };
        assert_eq!(
            banned.detail(),
            "Too many of your requests were refused; requests are not accepted for 90 s."
        );
        assert!(matches!(Rejection::UnknownAsn.detail(), Cow::Borrowed(_)));
    }

    #[test]
    fn problem_json_names_type_status_and_rule() {
        let r = Rejection::NoHealthyUpstream {
            pool: "chat \"x\"".into(),
        };
        let (ct, body) = r.render(RouteKind::Api);
        assert_eq!(ct, "application/problem+json");
        assert_eq!(
            body,
            "{\"type\":\"https://rampart.dev/problems/no-healthy-upstream\",\"title\":\"Service unavailable\",\"status\":503,\"detail\":\"No healthy origin server in pool \\\"chat \\\"x\\\"\\\"; try again shortly.\",\"rule\":\"no_healthy_upstream\"}\n"
        );
    }

    #[test]
    fn rate_limited_carries_retry_after_and_ratelimit_fields() {
        let r = Rejection::RateLimited {
            rule: "login-ip".into(),
            retry_after: 3,
            quota: 10,
            window: 60,
        };
        assert_eq!(r.status(), 429);
        assert_eq!(
            r.headers(),
            vec![
                ("retry-after", "3".to_string()),
                ("ratelimit-policy", "\"login-ip\";q=10;w=60".to_string()),
                ("ratelimit", "\"login-ip\";r=0;t=3".to_string()),
            ]
        );
        let (_, body) = r.render(RouteKind::Api);
        assert!(
            body.contains("\"rule\":\"login-ip\",\"violated-policies\":[\"login-ip\"]}"),
            "{body}"
        );
    }

    #[test]
    fn browser_routes_get_escaped_html() {
        let (ct, body) = Rejection::NoRoute { status: 404 }.render(RouteKind::Browser);
        assert!(ct.starts_with("text/html"));
        assert!(body.contains("<h1>No such route</h1>"));
        let maintenance = Rejection::Maintenance {
            flag: "m".into(),
            retry_after: 60,
            message: "Back <soon> & \"fast\"".into(),
        };
        let (_, body) = maintenance.render(RouteKind::Browser);
        assert_eq!(
            body,
            "<!doctype html><html><head><title>Down for maintenance</title></head><body>\
             <h1>Down for maintenance</h1><p>Back &lt;soon&gt; &amp; &quot;fast&quot;</p>\
             </body></html>\n"
        );
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        assert_eq!(
            json_string("a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é"),
            "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001fh\u{7f}é\""
        );
        let mut out = String::new();
        for n in [0, 7, 10, 429, 65_535, u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
