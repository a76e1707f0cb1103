//! The data plane between agents at different sites (QUIC). So far: the wire format
//! ([`frame`]), specified in docs/protocol.md. The QUIC endpoints, certificates and the
//! reader/writer drivers build on it.

pub mod frame;
