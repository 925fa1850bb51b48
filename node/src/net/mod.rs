//! Networking between processes: QUIC with mutual TLS (API, desired-state sync, joins) and
//! the sealed UDP socket of the failure detector.

pub mod probe;
pub mod quic;
pub mod tls;
