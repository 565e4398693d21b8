//! Closing connections at accept: a connection whose every request the policy
//! would refuse (a deny-listed network, AS or country, an unplaced client under
//! `unknown_country` / `unknown_asn = "deny"`, a banned address, prefix, AS or
//! country) is closed as soon as it is accepted, before a TLS handshake, a
//! buffer or a task is spent on it. The decision is
//! [`rampart_policy::Policy::refusal_at_accept`], on the snapshot in force;
//! this module only hands it the socket peer and counts what it closed
//! (`rampart_client_connections_dropped_at_accept_total{reason}`).
//!
//! Pingora's `connection_filter` runs this in each public listener's accept
//! loop (the admin listener has none), with the socket address only: a peer
//! that is a trusted proxy or a PROXY protocol balancer is always accepted, and
//! its clients are refused on the request path as before. Nothing is written
//! to a closed connection: the client sees the connection closed or reset.

use crate::state::Shared;
use async_trait::async_trait;
use pingora::listeners::ConnectionFilter;
use std::net::SocketAddr;
use std::sync::Arc;

/// The connection filter of the public listeners.
pub struct DropAtAccept {
    shared: Arc<Shared>,
}

impl DropAtAccept {
    /// A filter deciding on `shared`'s current snapshot.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl std::fmt::Debug for DropAtAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropAtAccept")
    }
}

#[async_trait]
impl ConnectionFilter for DropAtAccept {
    /// Whether to keep the connection from `addr`: false when the policy
    /// refuses every request from it. No address (not an IP socket): kept.
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let Some(addr) = addr else {
            return true;
        };
        let snapshot = self.shared.snapshot();
        match snapshot
            .policy
            .refusal_at_accept(addr.ip(), |ip| snapshot.geo.lookup(ip))
        {
            None => true,
            Some(refusal) => {
                self.shared.metrics.connection_dropped_at_accept(&refusal);
                false
            }
        }
    }
}
