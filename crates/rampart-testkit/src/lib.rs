//! Test helpers for Rampart: mock origins, a real `rampart` process on ephemeral
//! ports, and polling with deadlines instead of sleeps. Never shipped in the
//! release binary.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

pub mod config;
pub mod geo;
pub mod jwt;
pub mod origin;
pub mod redis;
pub mod relay;

pub use config::ConfigBuilder;
pub use origin::{read_request, MockOrigin, Recorded};

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token every test instance uses.
pub const TEST_TOKEN: &str = "test-admin-token-0123456789";

/// A free TCP port on `ip` (the port is released before returning). The kernel
/// may hand the same ephemeral port out again soon, so ports this process has
/// already handed out are skipped: two listeners of one test never collide.
///
/// Another process can still take the port before whoever it is meant for binds
/// it; prefer [`HeldPort`] when the server sets `SO_REUSEPORT` (Rampart under
/// the testkit, HAProxy), and use this only for servers that do not (Redis,
/// Prometheus).
pub fn free_port(ip: &str) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind((ip, 0))
            .expect("bind ephemeral port")
            .local_addr()
            .expect("local addr")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An ephemeral TCP port held by this process: a socket bound to it with
/// `SO_REUSEPORT` that never listens. While it lives, no other process can bind
/// the port or get it as an ephemeral port (Linux lets only sockets of the same
/// user that also set `SO_REUSEPORT` share it), and connections to it are
/// refused until a server of ours binds it with `SO_REUSEPORT` and listens; the
/// kernel hands connections only to listening sockets, so holding the port
/// longer (across a restart, say) changes nothing for the server.
#[derive(Debug)]
pub struct HeldPort {
    addr: SocketAddr,
    _socket: socket2::Socket,
}

impl HeldPort {
    /// Binds an ephemeral port on `ip` (`"127.0.0.1"`, `"::1"`) and holds it.
    pub fn new(ip: &str) -> Self {
        let ip: std::net::IpAddr = ip.parse().expect("an IP address");
        let any = SocketAddr::new(ip, 0);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(any),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("TCP socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket.bind(&any.into()).expect("bind ephemeral port");
        let addr = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an IP socket");
        Self {
            addr,
            _socket: socket,
        }
    }

    /// The held address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// An address where nothing listens: a [`HeldPort`], so nothing can start
/// listening there while it lives; connections to it are refused.
pub fn dead_addr() -> HeldPort {
    HeldPort::new("127.0.0.1")
}

/// Polls `check` every 20 ms until it returns true or `deadline` passes.
pub async fn wait_until<F, Fut>(deadline: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Set for every `rampart run` the testkit starts, so its listeners share the
/// [`HeldPort`]s the testkit holds; `rampart_proxy::TEST_REUSE_PORT_ENV`.
const TEST_REUSE_PORT_ENV: &str = "RAMPART_TEST_REUSE_PORT";

/// A running `rampart run` process with its own config, on ephemeral ports.
/// Its ports are [`HeldPort`]s held as long as this value lives, restarts
/// included. Killed when dropped.
pub struct Rampart {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Public listener (the first one).
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// `{listen2}` when the config used it.
    pub addr2: Option<SocketAddr>,
    /// `{listen3}` when the config used it.
    pub addr3: Option<SocketAddr>,
    /// `{listen6}` when the config used it.
    pub addr6: Option<SocketAddr>,
    _ports: Vec<HeldPort>,
}

/// Environment variable naming the HTTP/1.1 request loop every test instance
/// runs (`server.http1_loop`: "rampart" or "pingora-proxy"), so that the whole
/// suite can be run against either: `RAMPART_TEST_HTTP1_LOOP=pingora-proxy
/// cargo nextest run`. Unset: the config's own choice (the default loop). A
/// config that sets `http1_loop` itself keeps its choice.
pub const TEST_HTTP1_LOOP_ENV: &str = "RAMPART_TEST_HTTP1_LOOP";

/// `text` with `server.http1_loop` set from [`TEST_HTTP1_LOOP_ENV`], when set.
fn with_http1_loop(text: String) -> String {
    let Ok(choice) = std::env::var(TEST_HTTP1_LOOP_ENV) else {
        return text;
    };
    if text.contains("http1_loop") {
        // A test that names its loop tests that loop.
        return text;
    }
    let line = format!("http1_loop = \"{choice}\"\n");
    match text.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}{line}{}", &text[..end], &text[end..])
        }
        None => format!("[server]\n{line}{text}"),
    }
}

impl Rampart {
    /// Writes `template` as the config and starts `binary run` with it, then waits
    /// until `/readyz` answers 200.
    ///
    /// Placeholders: `{listen}` (127.0.0.1 ephemeral port), `{listen6}` (`[::1]`
    /// ephemeral port), `{listen2}` and `{listen3}` (more 127.0.0.1 ports),
    /// `{admin}`, `{dir}` (the temp folder of this instance). [`ConfigBuilder`]
    /// writes the common part of such a template.
    pub async fn start(binary: &Path, template: &str) -> Self {
        Self::start_with(binary, template, |_| {}).await
    }

    /// Like [`Rampart::start`], calling `prepare` with the instance's folder
    /// (`{dir}`) before the process starts, e.g. to write GeoIP fixtures.
    pub async fn start_with(binary: &Path, template: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        let mut ports = Vec::new();
        let mut text = template.replace("{dir}", &dir.path().display().to_string());
        let mut hold = |placeholder: &str, ip: &str, always: bool| {
            if !always && !text.contains(placeholder) {
                return None;
            }
            let port = HeldPort::new(ip);
            text = text.replace(placeholder, &port.addr().to_string());
            let addr = port.addr();
            ports.push(port);
            Some(addr)
        };
        let addr = hold("{listen}", "127.0.0.1", true).expect("always held");
        let admin = hold("{admin}", "127.0.0.1", true).expect("always held");
        let addr2 = hold("{listen2}", "127.0.0.1", false);
        let addr3 = hold("{listen3}", "127.0.0.1", false);
        let addr6 = hold("{listen6}", "::1", false);
        let text = with_http1_loop(text);
        std::fs::write(dir.path().join("rampart.toml"), text).expect("write config");
        let mut r = Self {
            child: None,
            dir,
            addr,
            admin,
            addr2,
            addr3,
            addr6,
            _ports: ports,
        };
        r.spawn(binary);
        r.wait_ready().await;
        r
    }

    fn spawn(&mut self, binary: &Path) {
        let log = std::fs::File::create(self.dir.path().join("rampart.log")).expect("log file");
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("RAMPART_ADMIN_TOKEN", TEST_TOKEN)
            .env(TEST_REUSE_PORT_ENV, "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start rampart");
        self.child = Some(child);
    }

    /// Stops the process (SIGKILL, like a crash) and starts it again with the same
    /// config, folder and ports; waits until it is ready.
    pub async fn restart(&mut self, binary: &Path) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn(binary);
        self.wait_ready().await;
    }

    /// Waits until `/readyz` answers 200; panics with the process log otherwise.
    pub async fn wait_ready(&mut self) {
        let url = self.admin_url("/readyz");
        let client = reqwest::Client::new();
        let ready = wait_until(Duration::from_secs(20), || {
            let c = client.get(&url).send();
            async move { matches!(c.await, Ok(r) if r.status() == 200) }
        })
        .await;
        if !ready {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "rampart did not become ready (exit: {status:?}); log:\n{}",
                self.log()
            );
        }
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("rampart.toml")
    }

    /// The temp folder of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rampart.log")).unwrap_or_default()
    }

    /// `http://{listen}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://{admin}{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// An admin request with the right token.
    pub fn admin_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, self.admin_url(path))
            .bearer_auth(TEST_TOKEN)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        self.admin_request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one unlabelled series (or a full `name{labels}` series) in `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
    }

    /// `GET path` on the admin API, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin_request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("admin JSON")
    }

    /// Whether lockdown flag `flag` is active (any mode), per `GET /lockdown`.
    pub async fn flag_active(&self, flag: &str) -> bool {
        self.admin_json("/lockdown").await["flags"]
            .as_array()
            .is_some_and(|flags| {
                flags
                    .iter()
                    .any(|f| f["name"] == flag && f["active"] == true)
            })
    }

    /// Waits up to `within` until `rampart_fleet_degraded` reads `degraded`.
    pub async fn fleet_degraded_becomes(&self, degraded: bool, within: Duration) -> bool {
        let want = if degraded { 1.0 } else { 0.0 };
        wait_until(within, || async {
            self.metric("rampart_fleet_degraded").await == Some(want)
        })
        .await
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> serde_json::Value {
        self.admin_request(reqwest::Method::GET, "/status")
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("status json")
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits up to `deadline` for the process to exit and returns whether it did.
    pub async fn wait_exit(&mut self, deadline: Duration) -> bool {
        let child = self.child.as_mut().expect("running");
        wait_until(deadline, || {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            async move { exited }
        })
        .await
    }
}

impl Drop for Rampart {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
