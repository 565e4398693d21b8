//! [`ConfigBuilder`]: the part of a test config every integration test shares
//! (listener, admin, pools, routes, lockdown files), written once; each test
//! adds its own rules as raw TOML.
//!
//! The text keeps the placeholders of [`crate::Rampart::start`] (`{listen}`,
//! `{admin}`, `{dir}`, ...), which fills them in.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Builds the TOML text of a test instance. [`ConfigBuilder::new`] gives one
/// public listener on `{listen}`, the admin listener on `{admin}` and the
/// lockdown state and audit log in the instance folder (the config defaults,
/// spelled out); pools, routes and `[server]` keys are added by method, and
/// everything else (limits, flags, `[client_ip]`, ...) as raw TOML sections.
///
/// The text is written in this order: `[server]`, listeners, `[admin]`, pools,
/// routes, `[lockdown]`, raw sections in the order given. Raw sections must not
/// repeat a table the builder writes (`[server]`, `[admin]`, `[lockdown]`).
///
/// ```
/// # use rampart_testkit::ConfigBuilder;
/// # let origin: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
/// let text = ConfigBuilder::new()
///     .pool("web", &[origin])
///     .route("login", "/api/auth/login", "web")
///     .raw("[[limits]]\nname = \"login-ip\"\nkey = \"ip\"\nrate = \"3/h\"\nburst = 3")
///     .build();
/// assert!(text.contains("[[routes]]\nname = \"login\""));
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    server: String,
    listeners: Vec<String>,
    pools: String,
    routes: String,
    raw: Vec<String>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// One public listener on `{listen}`, admin on `{admin}`, no pools or routes.
    pub fn new() -> Self {
        Self {
            server: String::new(),
            listeners: vec!["address = \"{listen}\"\n".to_string()],
            pools: String::new(),
            routes: String::new(),
            raw: Vec::new(),
        }
    }

    /// Adds `keys` (TOML lines) to `[server]`.
    pub fn server(mut self, keys: &str) -> Self {
        push_lines(&mut self.server, keys);
        self
    }

    /// Adds `keys` (TOML lines) to the first listener, the one on `{listen}`.
    pub fn first_listener(mut self, keys: &str) -> Self {
        push_lines(&mut self.listeners[0], keys);
        self
    }

    /// Adds a listener on `address` (usually a placeholder: `{listen2}`,
    /// `{listen3}`, `{listen6}`) with `keys` (TOML lines, may be empty).
    pub fn listener(mut self, address: &str, keys: &str) -> Self {
        let mut table = format!("address = \"{address}\"\n");
        push_lines(&mut table, keys);
        self.listeners.push(table);
        self
    }

    /// Adds `[pools.NAME]` with `servers`.
    pub fn pool(self, name: &str, servers: &[SocketAddr]) -> Self {
        self.pool_with(name, servers, "")
    }

    /// Adds `[pools.NAME]` with `servers` and `keys` (TOML lines, e.g.
    /// `connect_timeout = "500ms"`).
    pub fn pool_with(mut self, name: &str, servers: &[SocketAddr], keys: &str) -> Self {
        let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
        let _ = writeln!(
            self.pools,
            "[pools.{name}]\nservers = [{}]",
            list.join(", ")
        );
        push_lines(&mut self.pools, keys);
        self
    }

    /// Adds `[pools.POOL.health_check]` with `keys`; call it right after the
    /// pool.
    pub fn health_check(mut self, pool: &str, keys: &str) -> Self {
        let _ = writeln!(self.pools, "[pools.{pool}.health_check]");
        push_lines(&mut self.pools, keys);
        self
    }

    /// Adds a route `name` for paths under `path_prefix` to `pool`. Routes
    /// are matched in the order they are added.
    pub fn route(self, name: &str, path_prefix: &str, pool: &str) -> Self {
        self.route_with(name, path_prefix, pool, "")
    }

    /// Like [`ConfigBuilder::route`], with `keys` (TOML lines, e.g.
    /// `methods = ["POST"]`).
    pub fn route_with(mut self, name: &str, path_prefix: &str, pool: &str, keys: &str) -> Self {
        let _ = writeln!(
            self.routes,
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{path_prefix}\"\npool = \"{pool}\""
        );
        push_lines(&mut self.routes, keys);
        self
    }

    /// Adds a route `name` without a path prefix (every path) to `pool`.
    pub fn catch_all_route(mut self, name: &str, pool: &str) -> Self {
        let _ = writeln!(
            self.routes,
            "[[routes]]\nname = \"{name}\"\npool = \"{pool}\""
        );
        self
    }

    /// Appends `toml` as it is: the test's own rules (limits, flags, access
    /// lists, `[client_ip]`, ...).
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push(toml.to_string());
        self
    }

    /// The config text, placeholders left for [`crate::Rampart::start`].
    pub fn build(&self) -> String {
        let mut out = String::new();
        if !self.server.is_empty() {
            let _ = write!(out, "[server]\n{}", self.server);
        }
        for listener in &self.listeners {
            let _ = write!(out, "[[listeners]]\n{listener}");
        }
        out.push_str("[admin]\naddress = \"{admin}\"\n");
        out.push_str(&self.pools);
        out.push_str(&self.routes);
        out.push_str(
            "[lockdown]\nstate_file = \"{dir}/state/lockdown.json\"\naudit_log = \"{dir}/state/lockdown-audit.jsonl\"\n",
        );
        for section in &self.raw {
            push_lines(&mut out, section);
        }
        out
    }
}

/// Appends `lines` to `out`, ending with a newline; nothing for blank `lines`.
fn push_lines(out: &mut String, lines: &str) {
    let lines = lines.trim_matches('\n');
    if !lines.trim().is_empty() {
        out.push_str(lines);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preamble_comes_first_and_raw_sections_last_in_order() {
        let origin: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let text = ConfigBuilder::new()
            .server("client_header_timeout = \"1s\"")
            .first_listener("proxy_protocol = \"any\"")
            .listener("{listen2}", "h2c = true")
            .pool_with("web", &[origin, origin], "connect_timeout = \"500ms\"")
            .health_check("web", "interval = \"1s\"")
            .route_with("login", "/login", "web", "methods = [\"POST\"]")
            .catch_all_route("rest", "web")
            .raw("[[limits]]\nname = \"a\"\n")
            .raw("\n[client_ip]\ntrusted_proxies = []\n")
            .build();
        assert_eq!(
            text,
            r#"[server]
client_header_timeout = "1s"
[[listeners]]
address = "{listen}"
proxy_protocol = "any"
[[listeners]]
address = "{listen2}"
h2c = true
[admin]
address = "{admin}"
[pools.web]
servers = ["127.0.0.1:9", "127.0.0.1:9"]
connect_timeout = "500ms"
[pools.web.health_check]
interval = "1s"
[[routes]]
name = "login"
path_prefix = "/login"
pool = "web"
methods = ["POST"]
[[routes]]
name = "rest"
pool = "web"
[lockdown]
state_file = "{dir}/state/lockdown.json"
audit_log = "{dir}/state/lockdown-audit.jsonl"
[[limits]]
name = "a"
[client_ip]
trusted_proxies = []
"#
        );
    }
}
