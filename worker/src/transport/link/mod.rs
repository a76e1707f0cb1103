//! The QUIC link between agents: endpoints ([`quic`]) with mutual TLS 1.3 against the
//! cluster CA ([`pki`]).

pub mod pki;
pub mod quic;
pub mod stats;
