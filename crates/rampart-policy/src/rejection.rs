//! Every way Rampart answers a request itself, as one typed value. The same value
//! gives the HTTP status, the response body, the metric label and the log field, so
//! they can never disagree.

use rampart_config::RouteKind;

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
}

impl Rejection {
    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::NoRoute { status } => *status,
            Rejection::NoHealthyUpstream { .. } => 503,
            Rejection::UpstreamFailed { status } => *status,
        }
    }

    /// Closed-set label for metrics and the access log's `verdict` field.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::NoRoute { .. } => "no_route",
            Rejection::NoHealthyUpstream { .. } => "no_healthy_upstream",
            Rejection::UpstreamFailed { .. } => "upstream_failed",
        }
    }

    /// Short human title.
    pub fn title(&self) -> &'static str {
        match self {
            Rejection::NoRoute { .. } => "No such route",
            Rejection::NoHealthyUpstream { .. } => "Service unavailable",
            Rejection::UpstreamFailed { status: 504 } => "Gateway timeout",
            Rejection::UpstreamFailed { .. } => "Bad gateway",
        }
    }

    /// Human explanation.
    pub fn detail(&self) -> String {
        match self {
            Rejection::NoRoute { .. } => "No route is configured for this request.".to_string(),
            Rejection::NoHealthyUpstream { pool } => {
                format!("No healthy origin server in pool \"{pool}\"; try again shortly.")
            }
            Rejection::UpstreamFailed { .. } => {
                "The origin server could not complete the request.".to_string()
            }
        }
    }

    /// Seconds a client should wait before retrying, when that is known.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Rejection::NoHealthyUpstream { .. } => Some(5),
            _ => None,
        }
    }

    /// The body and its content type for a route of `kind`.
    ///
    /// API routes get RFC 9457 `application/problem+json`; browser routes a small
    /// HTML page.
    pub fn render(&self, kind: RouteKind) -> (&'static str, String) {
        match kind {
            RouteKind::Api => {
                let mut body = format!(
                    "{{\"type\":\"{PROBLEM_TYPE_BASE}{}\",\"title\":{},\"status\":{},\"detail\":{},\"rule\":\"{}\"}}",
                    self.label().replace('_', "-"),
                    json_string(self.title()),
                    self.status(),
                    json_string(&self.detail()),
                    self.label(),
                );
                body.push('\n');
                ("application/problem+json", body)
            }
            RouteKind::Browser => (
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><title>{0}</title></head><body><h1>{0}</h1><p>{1}</p></body></html>\n",
                    html_escape(self.title()),
                    html_escape(&self.detail())
                ),
            ),
        }
    }
}

/// A JSON string literal for `s`.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn browser_routes_get_escaped_html() {
        let (ct, body) = Rejection::NoRoute { status: 404 }.render(RouteKind::Browser);
        assert!(ct.starts_with("text/html"));
        assert!(body.contains("<h1>No such route</h1>"));
    }
}
