//! Rampart's policy engine: pure functions from request facts and the current
//! config to a decision. Nothing here does I/O or imports Pingora, so every rule is
//! testable with plain values (and, for limiters, a fake clock).

pub mod client_ip;
pub mod rejection;
pub mod route;

pub use client_ip::resolve_client_ip;
pub use rejection::Rejection;
pub use route::{RouteMatch, RouteTable};
