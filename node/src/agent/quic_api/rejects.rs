//! What the API doors refuse before any handler sees it, counted by why: QUIC handshakes that
//! failed (a certificate from another CA, a forged or damaged Initial, a dialer that went
//! silent) and requests that could not be read (over the size limit, undecodable, or decoded
//! but invalid, such as a name with a path in it). Hostile input shows up here, not in a log
//! line per packet.

use std::sync::atomic::{AtomicU64, Ordering};

use starling_protocol::wire::WireError;

use crate::api::ApiError;

/// QUIC handshakes that did not complete, by why (`starling_quic_handshake_failures_total`).
#[derive(Debug, Default)]
pub struct HandshakeFailures {
    /// TLS refused: a certificate of another CA (ours refused theirs, or theirs ours), or
    /// another TLS failure (crypto error codes 0x100 to 0x1ff).
    pub tls: AtomicU64,
    /// The dialer broke the QUIC protocol: a forged or damaged Initial that does not
    /// authenticate, or another transport error.
    pub protocol: AtomicU64,
    /// The dialer went silent mid-handshake (a spoofed address, or a replayed Initial).
    pub timeout: AtomicU64,
    /// Anything else: reset, closed by the application, no connection ids left.
    pub other: AtomicU64,
}

/// Crypto (TLS alert) error codes of QUIC transport errors (RFC 9000, 20.1).
const CRYPTO_ERRORS: std::ops::Range<u64> = 0x100..0x200;

impl HandshakeFailures {
    /// Counts a failed handshake under its reason; returns the reason's label.
    pub fn count(&self, error: &quinn::ConnectionError) -> &'static str {
        use quinn::ConnectionError as E;
        let code = match error {
            E::TransportError(e) => Some(u64::from(e.code)),
            E::ConnectionClosed(close) => Some(u64::from(close.error_code)),
            _ => None,
        };
        let (counter, label) = match (error, code) {
            (_, Some(code)) if CRYPTO_ERRORS.contains(&code) => (&self.tls, "tls"),
            (E::TransportError(_) | E::ConnectionClosed(_) | E::VersionMismatch, _) => {
                (&self.protocol, "protocol")
            }
            (E::TimedOut, _) => (&self.timeout, "timeout"),
            _ => (&self.other, "other"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        label
    }
}

/// API requests refused unread, at either door (`starling_api_bad_requests_total`).
#[derive(Debug, Default)]
pub struct BadRequests {
    /// A frame longer than the message limit (refused before its body is read).
    pub too_large: AtomicU64,
    /// Undecodable: not a message, truncated, trailing bytes.
    pub malformed: AtomicU64,
    /// Decoded but invalid: a bad name (a path, upper case, too long), a spec over its limit.
    pub invalid: AtomicU64,
    /// Another protocol version.
    pub version: AtomicU64,
}

impl BadRequests {
    /// Counts a request that could not be read under its reason; a connection that failed
    /// mid-way (`ApiError::Io`) is not a bad request and is not counted.
    pub fn count(&self, error: &ApiError) -> Option<&'static str> {
        let (counter, label) = match error {
            ApiError::Wire(WireError::TooLarge { .. }) => (&self.too_large, "too_large"),
            ApiError::Wire(WireError::Malformed(_)) => (&self.malformed, "malformed"),
            ApiError::Wire(WireError::Invalid(_)) => (&self.invalid, "invalid"),
            ApiError::Wire(WireError::Version { .. }) => (&self.version, "version"),
            ApiError::Io(_) | ApiError::Connect { .. } | ApiError::Remote(_) => return None,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alert_counts_as_tls_whichever_side_sent_it() {
        let failures = HandshakeFailures::default();
        let ours = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(48),
            frame_type: None,
            reason: Default::default(),
        });
        let protocol = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: Default::default(),
        });
        assert_eq!(failures.count(&ours), "tls");
        assert_eq!(failures.count(&protocol), "protocol");
        assert_eq!(failures.count(&quinn::ConnectionError::TimedOut), "timeout");
        assert_eq!(failures.count(&quinn::ConnectionError::Reset), "other");
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            [
                &failures.tls,
                &failures.protocol,
                &failures.timeout,
                &failures.other
            ]
            .map(load),
            [1, 1, 1, 1]
        );
    }

    #[test]
    fn requests_are_counted_by_why_they_were_unreadable_and_broken_connections_are_not() {
        let bad = BadRequests::default();
        let too_large = WireError::TooLarge { bytes: 9, max: 1 };
        assert_eq!(bad.count(&too_large.into()), Some("too_large"));
        let invalid = WireError::Invalid("workload name \"../etc\"".into());
        assert_eq!(bad.count(&invalid.into()), Some("invalid"));
        assert_eq!(
            bad.count(&WireError::Malformed("truncated".into()).into()),
            Some("malformed")
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(bad.count(&io.into()), None);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        assert_eq!(
            [&bad.too_large, &bad.malformed, &bad.invalid, &bad.version].map(load),
            [1, 1, 1, 0]
        );
    }
}
