//! Whether the public listeners accept connections yet. Pingora binds each
//! service's listeners on that service's own thread, so the admin listener can
//! answer before a public one is bound; `/readyz` waits for all of them, or a
//! load balancer could send traffic to a port that refuses it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// The public listeners of this process (from the config it started with: they
/// only change on restart), and whether all of them were seen listening.
#[derive(Debug)]
pub struct ListenerProbe {
    addrs: Vec<SocketAddr>,
    up: AtomicBool,
}

impl ListenerProbe {
    /// A probe for `addrs`.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Self {
            addrs,
            up: AtomicBool::new(false),
        }
    }

    /// Whether every listener's port is in the LISTEN state. Once true, stays
    /// true without looking again. Where `/proc/net/tcp` cannot be read (not
    /// Linux), there is nothing to look at and the answer is true.
    pub fn all_listening(&self) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let all = match listening_ports() {
            Some(ports) => self.addrs.iter().all(|a| ports.contains(&a.port())),
            None => true,
        };
        if all {
            self.up.store(true, Ordering::Relaxed);
        }
        all
    }
}

/// TCP ports in the LISTEN state in this network namespace; `None` when neither
/// `/proc/net/tcp` nor `/proc/net/tcp6` can be read.
fn listening_ports() -> Option<HashSet<u16>> {
    let mut ports = HashSet::new();
    let mut read_any = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            read_any = true;
            ports.extend(parse_listening(&text));
        }
    }
    read_any.then_some(ports)
}

/// Local ports of the sockets in state `0A` (LISTEN) of a `/proc/net/tcp` table.
fn parse_listening(text: &str) -> impl Iterator<Item = u16> + '_ {
    text.lines().skip(1).filter_map(|line| {
        // sl local_address rem_address st ...
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != "0A" {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_count() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F91 0100007F:A3B2 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3 1 0 100 0 0 10 0
garbage
";
        let ports: Vec<u16> = parse_listening(table).collect();
        assert_eq!(ports, vec![8080, 80]);
    }

    #[test]
    fn a_bound_port_is_seen_and_an_unbound_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let bound = listener.local_addr().expect("addr");
        assert!(ListenerProbe::new(vec![bound]).all_listening());
        // The local port of a connected client socket is in use (nobody else can
        // listen on it while the socket lives) but is not listening.
        let client = std::net::TcpStream::connect(bound).expect("connect");
        let not_listening = client.local_addr().expect("addr");
        if listening_ports().is_some() {
            assert!(!ListenerProbe::new(vec![bound, not_listening]).all_listening());
        }
    }
}
