//! rampart-loadgen: the benchmark harness's HTTP/1.1 load generator. Presents many
//! client addresses through `X-Forwarded-For` (every proxy under test trusts
//! loopback), tags each request with `X-Class` (the origin logs it, so attack
//! traffic reaching the origin can be counted), and runs closed-loop (as fast as
//! `--connections` allow) or open-loop (`--rate`, latency measured from each
//! request's scheduled time, so queueing is not hidden). Bounded by `--duration`
//! and `--max-requests`. Prints one JSON line.
//!
//! Clients (`--clients`):
//! - `fixed:IP`: one address;
//! - `pool:FILE`: a random address from a random network of FILE (one CIDR a line);
//! - `distinct:CIDR`: a new address for every request, in order (floods).
//!
//! Connections: kept alive by default. `--new-connections` opens one per request
//! (`Connection: close`, and waits for the server to close first, so no
//! TIME_WAIT piles up on the client's ports); a connection the server closes or
//! resets before any byte of an answer is counted as `dropped` (its latency
//! counts in p50/p99 like an answer's). `--bind IP`
//! connects from that local address (any 127.x.y.z on loopback) and
//! `--no-forwarded-for` sends no X-Forwarded-For: the proxy sees the socket
//! peer as the client (closing connections at accept is decided on it).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    target: String,
    path: String,
    duration: Duration,
    connections: usize,
    rate: Option<f64>,
    clients: String,
    class: String,
    max_requests: u64,
    new_connections: bool,
    bind: Option<IpAddr>,
    forwarded_for: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: "127.0.0.1:8080".into(),
        path: "/".into(),
        duration: Duration::from_secs(5),
        connections: 32,
        rate: None,
        clients: "fixed:127.0.0.1".into(),
        class: "legit".into(),
        max_requests: u64::MAX,
        new_connections: false,
        bind: None,
        forwarded_for: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.target = value(),
            "--path" => a.path = value(),
            "--duration" => a.duration = Duration::from_secs_f64(value().parse().expect("seconds")),
            "--connections" => a.connections = value().parse().expect("count"),
            "--rate" => a.rate = Some(value().parse().expect("requests per second")),
            "--clients" => a.clients = value(),
            "--class" => a.class = value(),
            "--max-requests" => a.max_requests = value().parse().expect("count"),
            "--new-connections" => a.new_connections = true,
            "--bind" => a.bind = Some(value().parse().expect("IP")),
            "--no-forwarded-for" => a.forwarded_for = false,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// Where client addresses come from.
enum Clients {
    Fixed(IpAddr),
    Pool(Vec<IpNet>),
    Distinct {
        base: u128,
        v6: bool,
        size: u128,
        next: AtomicU64,
    },
}

fn rand64(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

impl Clients {
    fn parse(spec: &str) -> Self {
        let (kind, arg) = spec.split_once(':').expect("KIND:ARG");
        match kind {
            "fixed" => Clients::Fixed(arg.parse().expect("IP")),
            "pool" => {
                let text = std::fs::read_to_string(arg).expect("pool file");
                let nets: Vec<IpNet> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
                assert!(!nets.is_empty(), "empty pool {arg}");
                Clients::Pool(nets)
            }
            "distinct" => {
                let net: IpNet = arg.parse().expect("CIDR");
                let (base, v6, bits) = match net {
                    IpNet::V4(n) => (
                        u128::from(u32::from(n.network())),
                        false,
                        32 - n.prefix_len(),
                    ),
                    IpNet::V6(n) => (u128::from(n.network()), true, 128 - n.prefix_len()),
                };
                Clients::Distinct {
                    base,
                    v6,
                    size: if bits >= 64 {
                        u128::from(u64::MAX)
                    } else {
                        1u128 << bits
                    },
                    next: AtomicU64::new(1),
                }
            }
            other => panic!("unknown clients kind {other}"),
        }
    }

    fn pick(&self, rng: &mut u64) -> IpAddr {
        match self {
            Clients::Fixed(ip) => *ip,
            Clients::Pool(nets) => {
                let net = nets[(rand64(rng) as usize) % nets.len()];
                offset(net, rand64(rng))
            }
            Clients::Distinct {
                base,
                v6,
                size,
                next,
            } => {
                let n = u128::from(next.fetch_add(1, Ordering::Relaxed)) % size;
                if *v6 {
                    IpAddr::V6(Ipv6Addr::from(base + n))
                } else {
                    IpAddr::V4(Ipv4Addr::from((base + n) as u32))
                }
            }
        }
    }
}

fn offset(net: IpNet, r: u64) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let span = 1u64 << (32 - n.prefix_len());
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + (r % span) as u32))
        }
        IpNet::V6(n) => {
            let bits = 128 - u32::from(n.prefix_len());
            let mask = if bits >= 64 {
                u128::from(u64::MAX)
            } else {
                (1u128 << bits) - 1
            };
            IpAddr::V6(Ipv6Addr::from(
                u128::from(n.network()) + (u128::from(r) & mask),
            ))
        }
    }
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    ok: u64,
    limited: u64,
    forbidden: u64,
    other: u64,
    errors: u64,
    dropped: u64,
}

/// How one exchange ended.
enum Outcome {
    /// An answer with this status; `close`: the server will close the connection.
    Answer { status: u16, close: bool },
    /// The server closed or reset the connection before any byte of an answer.
    Dropped,
    /// Anything else (a partial answer, a write or read error after bytes came).
    Failed,
}

/// One request on a connection.
async fn exchange(conn: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> Outcome {
    buf.clear();
    if conn.write_all(request).await.is_err() {
        // Closed before the request could be written: nothing was answered.
        return Outcome::Dropped;
    }
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) if buf.is_empty() => return Outcome::Dropped,
            Ok(0) | Err(_) => return Outcome::Failed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let Some(head) = std::str::from_utf8(&buf[..head_end]).ok() else {
        return Outcome::Failed;
    };
    let Some(status) = head.get(9..12).and_then(|s| s.parse::<u16>().ok()) else {
        return Outcome::Failed;
    };
    let lower = head.to_ascii_lowercase();
    let length: usize = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return Outcome::Failed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Outcome::Answer {
        status,
        close: lower.contains("connection: close"),
    }
}

/// A new connection to `target`, from `bind` when given.
async fn connect(target: &str, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(target).await;
    };
    let to: std::net::SocketAddr = tokio::net::lookup_host(target)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(to).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Arc::new(parse_args());
    let clients = Arc::new(Clients::parse(&args.clients));
    let stats = Arc::new(Mutex::new(Stats::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + args.duration;
    // SIGINT ends the run early and still prints the summary.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::Relaxed);
            }
        });
    }
    let per_conn_interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r.max(0.001)));
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (args, clients, stats, sent, stop) = (
            args.clone(),
            clients.clone(),
            stats.clone(),
            sent.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((c as u64 + 1) * 0x1000_0001);
            let mut local = Stats::default();
            let mut conn: Option<TcpStream> = None;
            let mut buf = Vec::with_capacity(8192);
            // Open loop: each connection has its own schedule, staggered.
            let mut due = start
                + per_conn_interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(c as f64 / args.connections as f64)
                });
            loop {
                let now = Instant::now();
                if now >= end
                    || stop.load(Ordering::Relaxed)
                    || sent.fetch_add(1, Ordering::Relaxed) >= args.max_requests
                {
                    break;
                }
                let scheduled = if let Some(interval) = per_conn_interval {
                    if due > now {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let s = due;
                    due += interval;
                    s
                } else {
                    now
                };
                if Instant::now() >= end {
                    break;
                }
                let ip = clients.pick(&mut rng);
                let forwarded = if args.forwarded_for {
                    format!("X-Forwarded-For: {ip}\r\n")
                } else {
                    String::new()
                };
                let close = if args.new_connections {
                    "Connection: close\r\n"
                } else {
                    ""
                };
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: bench\r\n{forwarded}X-Class: {}\r\n{close}\r\n",
                    args.path, args.class
                );
                let fresh = conn.is_none();
                if fresh {
                    conn = connect(&args.target, args.bind).await.ok();
                    if let Some(s) = &conn {
                        let _ = s.set_nodelay(true);
                    }
                }
                let Some(stream) = conn.as_mut() else {
                    local.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let result = exchange(stream, request.as_bytes(), &mut buf).await;
                let latency = scheduled.elapsed();
                let status = match result {
                    // With --new-connections, a connection closed before its
                    // request was answered is dropped; otherwise (kept-alive
                    // connections) it is an error, as before.
                    Outcome::Dropped if fresh && args.new_connections => {
                        conn = None;
                        local.dropped += 1;
                        local
                            .latencies_us
                            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                        continue;
                    }
                    Outcome::Dropped => {
                        conn = None;
                        local.errors += 1;
                        continue;
                    }
                    Outcome::Failed => {
                        conn = None;
                        local.errors += 1;
                        continue;
                    }
                    Outcome::Answer { status, close } => {
                        if close || args.new_connections {
                            if let Some(mut s) = conn.take() {
                                // Let the server close first: its side keeps the
                                // TIME_WAIT, the client's ports are free at once.
                                let mut rest = [0u8; 512];
                                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                    while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                                })
                                .await;
                            }
                        }
                        status
                    }
                };
                local
                    .latencies_us
                    .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                match status {
                    200..=299 => local.ok += 1,
                    429 => local.limited += 1,
                    403 => local.forbidden += 1,
                    _ => local.other += 1,
                }
            }
            let mut s = stats.lock().unwrap();
            s.latencies_us.extend(local.latencies_us);
            s.ok += local.ok;
            s.limited += local.limited;
            s.forbidden += local.forbidden;
            s.other += local.other;
            s.errors += local.errors;
            s.dropped += local.dropped;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut s = stats.lock().unwrap();
    s.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        if s.latencies_us.is_empty() {
            return 0;
        }
        let i = ((s.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        s.latencies_us[i]
    };
    let answered = s.ok + s.limited + s.forbidden + s.other;
    println!(
        "{{\"class\":\"{}\",\"answered\":{answered},\"rps\":{:.1},\"ok\":{},\"limited\":{},\"forbidden\":{},\"other\":{},\"errors\":{},\"dropped\":{},\"dropped_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"seconds\":{elapsed:.2}}}",
        args.class,
        answered as f64 / elapsed,
        s.ok,
        s.limited,
        s.forbidden,
        s.other,
        s.errors,
        s.dropped,
        s.dropped as f64 / elapsed,
        pct(0.50),
        pct(0.99),
    );
}
