//! Route matching on the canonical path: host and path prefix, in config order.
//!
//! Methods are not a routing dimension. The first route whose host and path
//! prefix match owns the request; when the route lists `methods` and the request's
//! method is not among them, the answer is 405 at the edge. A request therefore
//! never falls through from a narrow route (with its flags, body rules and
//! limits) to a broader one because of its method: what a route's rules catch is
//! decided by the path alone. `rampart check` refuses configs where an earlier
//! route covers a later one (the later one would never be reached).

use rampart_config::{Config, RouteConfig, UnmatchedConfig};

/// What the route table decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    /// A configured route (index into the config's routes) sending to a pool.
    Route {
        /// Route index.
        route: usize,
        /// Pool index.
        pool: usize,
    },
    /// No route matched; `[unmatched]` says to proxy to this pool.
    Fallback {
        /// Pool index.
        pool: usize,
    },
    /// A route owns the path but does not accept the method (405).
    MethodNotAllowed {
        /// Route index.
        route: usize,
    },
    /// No route matched; answer with this status at the edge.
    Reject {
        /// HTTP status.
        status: u16,
    },
}

/// The routes of one config, ready for matching.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<RouteConfig>,
    unmatched: UnmatchedConfig,
}

impl RouteTable {
    /// Builds the table from a validated config.
    pub fn new(config: &Config) -> Self {
        Self {
            routes: config.routes.clone(),
            unmatched: config.unmatched.clone(),
        }
    }

    /// The first route whose host and path prefix match; 405 when it does not
    /// accept `method`.
    ///
    /// `path` is the canonical path (see [`crate::canonical`]). `host` may carry a
    /// port, which is ignored; it is compared without regard to case. A prefix
    /// matches whole path segments: `/api/auth/login` matches `/api/auth/login`,
    /// `/api/auth/login/x` and `/api/auth/login;p` but not `/api/auth/loginx`,
    /// unless the prefix itself ends in `/`. Routes with `case_insensitive` compare
    /// ASCII letters without regard to case.
    pub fn find(&self, host: Option<&str>, path: &str, method: &str) -> RouteMatch {
        let host = host.map(strip_port);
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(want) = &route.host {
                match host {
                    Some(h) if h.eq_ignore_ascii_case(want) => {}
                    _ => continue,
                }
            }
            if !prefix_matches(&route.path_prefix, path, route.case_insensitive) {
                continue;
            }
            if !route.methods.is_empty() && !route.methods.iter().any(|m| m == method) {
                return RouteMatch::MethodNotAllowed { route: i };
            }
            return RouteMatch::Route {
                route: i,
                pool: route.pool,
            };
        }
        match self.unmatched {
            UnmatchedConfig::Proxy { pool } => RouteMatch::Fallback { pool },
            UnmatchedConfig::Reject { status } => RouteMatch::Reject { status },
        }
    }

    /// The route at `index`.
    pub fn route(&self, index: usize) -> Option<&RouteConfig> {
        self.routes.get(index)
    }
}

/// The host without port and without the trailing dot of a fully qualified
/// name (`api.example.com.` is `api.example.com` to DNS and to origins).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// Whether `prefix` matches `path` on whole segments (see [`RouteTable::find`]).
pub fn prefix_matches(prefix: &str, path: &str, case_insensitive: bool) -> bool {
    let (p, rest) = (prefix.as_bytes(), path.as_bytes());
    if rest.len() < p.len() {
        return false;
    }
    let (head, rest) = rest.split_at(p.len());
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(p)
    } else {
        head == p
    };
    same && (prefix.ends_with('/') || rest.is_empty() || matches!(rest[0], b'/' | b'?' | b';'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(extra: &str) -> RouteTable {
        let text = format!(
            r#"
[[listeners]]
address = "127.0.0.1:8080"
[pools.chat]
servers = ["127.0.0.1:9001"]
[pools.auth]
servers = ["127.0.0.1:9002"]
[[routes]]
name = "login"
path_prefix = "/api/auth/login"
methods = ["post"]
pool = "auth"
[[routes]]
name = "admin-host"
host = "Admin.Example.com"
pool = "auth"
[[routes]]
name = "chat"
path_prefix = "/v1/"
pool = "chat"
{extra}
"#
        );
        RouteTable::new(&rampart_config::parse(&text, Path::new("t.toml")).unwrap())
    }

    #[test]
    fn matches_in_order_on_path_method_and_host() {
        let t = table("");
        // pools are sorted by name: auth = 0, chat = 1
        assert_eq!(
            t.find(None, "/api/auth/login", "POST"),
            RouteMatch::Route { route: 0, pool: 0 }
        );
        // The login route owns its path for every method: GET is 405, never a
        // fall-through to a broader route.
        assert_eq!(
            t.find(None, "/api/auth/login", "GET"),
            RouteMatch::MethodNotAllowed { route: 0 }
        );
        assert_eq!(
            t.find(None, "/api/auth/login/x", "PUT"),
            RouteMatch::MethodNotAllowed { route: 0 }
        );
        assert_eq!(
            t.find(None, "/api/auth/loginx", "POST"),
            RouteMatch::Reject { status: 404 }
        );
        assert_eq!(
            t.find(Some("admin.example.com:8080"), "/x", "GET"),
            RouteMatch::Route { route: 1, pool: 0 }
        );
        assert_eq!(
            t.find(Some("ADMIN.example.com.:8080"), "/x", "GET"),
            RouteMatch::Route { route: 1, pool: 0 }
        );
        assert_eq!(
            t.find(Some("other"), "/v1/chat/completions", "POST"),
            RouteMatch::Route { route: 2, pool: 1 }
        );
    }

    #[test]
    fn unmatched_may_proxy_to_a_pool() {
        let t = table("[unmatched]\naction = \"proxy\"\npool = \"chat\"\n");
        assert_eq!(
            t.find(None, "/nowhere", "GET"),
            RouteMatch::Fallback { pool: 1 }
        );
    }
}
