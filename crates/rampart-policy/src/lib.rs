//! Rampart's policy engine: pure functions from request facts and the current
//! config to a decision. Nothing here does I/O on the request path or imports
//! Pingora, so every rule is testable with plain values and a fake clock.

pub mod bans;
pub mod body;
pub mod canonical;
pub mod cidr;
pub mod client_ip;
pub mod clients;
pub mod engine;
pub mod escalation;
pub mod geo;
pub mod ja4;
pub mod jwt;
pub mod limits;
pub mod lockdown;
pub mod record;
pub mod rejection;
pub mod route;
pub mod top;

pub use canonical::{canonicalize_path, check_method, CanonicalOptions, CanonicalRefusal};
pub use client_ip::resolve_client_ip;
pub use engine::{
    BodyRead, Charging, Evaluation, FleetAnswer, FleetCheck, IdentitySource, Observation, Policy,
    RequestFacts, Step, TraceEntry, Verdict,
};
pub use geo::{CountryCode, GeoDb, GeoInfo};
pub use ja4::Ja4;
pub use jwt::{IdentityOutcome, JwtKeys, JwtVerifier, Unverified};
pub use lockdown::FlagMode;
pub use rejection::Rejection;
pub use route::{RouteMatch, RouteTable};
