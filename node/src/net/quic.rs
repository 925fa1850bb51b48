//! QUIC endpoints: one per agent (serves and dials), one per CLI call (dials).
//!
//! Every exchange is one bidirectional stream: the dialer writes one framed
//! [`Request`], the server answers with frames (see `wire`). Connections to peers are pooled
//! by address, so probes of the same peer reuse one handshake.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use starling_protocol::wire::{Check, PeerMessage, Request};
use tokio::sync::Mutex;

use super::tls::{self, NODE_SERVER_NAME, TlsIdentity};
use crate::api::{ApiError, read_frame, write_frame};
use crate::identity::Role;

/// Errors of a QUIC exchange.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// TLS settings could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}/udp for QUIC: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No connection to the peer.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// Why (TLS refusals say which certificate was refused).
        reason: String,
    },
    /// The stream failed.
    #[error("exchange with {addr} failed: {reason}")]
    Exchange {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The peer took too long.
    #[error("{addr} did not answer within {ms} ms")]
    Timeout {
        /// The peer.
        addr: SocketAddr,
        /// The limit.
        ms: u64,
    },
}

/// Timeouts and caps of QUIC: the transport's (both sides), and the agent's server's (who may
/// hold how many connections). Defaults suit a LAN; a later network profile sets them per
/// network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicSettings {
    /// Longest wait for a new connection's handshake when dialing (default 3 s).
    pub connect_timeout: Duration,
    /// How long closing an endpoint waits for its peers to learn of it (default 200 ms).
    pub close_wait: Duration,
    /// Keep-alive interval on open connections, so pooled peer connections stay open between
    /// exchanges (default 5 s).
    pub keep_alive_interval: Duration,
    /// A connection that hears nothing this long is closed (default 30 s).
    pub idle_timeout: Duration,
    /// Bidirectional streams the other side may have open at once on one connection (default
    /// 64): every exchange is one stream, so this bounds the requests one connection has in
    /// progress (further ones wait for a stream). Unidirectional streams are not used and
    /// refused (0).
    pub streams_per_connection_max: u32,
    /// How long a dialer has to send its request once it opened a stream (default 60 s): a
    /// stream that never says what it wants is answered with an error and closed. Generous,
    /// because a request can be large: a 256 KiB sync page takes 13 s at 20 KB/s.
    pub request_timeout: Duration,
    /// Connections the agent's server holds at once, handshakes included, all dialers
    /// together (default 1024). Beyond it a new connection is refused before its handshake.
    pub connections_max: usize,
    /// Connections from one IP address at once that have not proven a certificate of the
    /// cluster (default 32): handshakes and joiners. A node's or an operator's connection
    /// leaves this count once its handshake proves it (it stays in the total): a fleet behind
    /// one NAT address reaches a peer with one connection per node, and an operator's script
    /// may run many commands.
    pub per_address_max: usize,
    /// Connections without a certificate (joiners) at once, all addresses together (default
    /// 16). A joiner over it is closed right after its handshake, told to retry.
    pub anonymous_max: usize,
    /// Refused connections are logged at most this often (default 10 s); the metric
    /// `starling_quic_refused_total` counts every one.
    pub refusal_log_every: Duration,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            connect_timeout: Duration::from_secs(3),
            close_wait: Duration::from_millis(200),
            keep_alive_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            streams_per_connection_max: 64,
            request_timeout: Duration::from_secs(60),
            connections_max: 1024,
            per_address_max: 32,
            anonymous_max: 16,
            refusal_log_every: Duration::from_secs(10),
        }
    }
}

/// How long a one-shot client waits for its close packet to leave ([`Quic::close_now`]).
const CLOSE_SEND_WAIT: Duration = Duration::from_millis(20);

/// A QUIC endpoint with pooled client connections.
pub struct Quic {
    endpoint: quinn::Endpoint,
    /// Handshake wait and close wait (see [`QuicSettings`]).
    connect_timeout: Duration,
    close_wait: Duration,
    pool: Mutex<BTreeMap<SocketAddr, quinn::Connection>>,
    /// The node each address is known to belong to: every dialer verifies only that a peer
    /// is a node of the cluster (`node.starling`), so this checks it is the node meant.
    expected: std::sync::RwLock<BTreeMap<SocketAddr, String>>,
}

impl Quic {
    /// An agent's endpoint: serves on `addr` and dials with the node certificate, both with
    /// `settings`' transport.
    pub fn serve(
        addr: SocketAddr,
        identity: &TlsIdentity,
        settings: &QuicSettings,
    ) -> Result<Self, QuicError> {
        let server = tls::server_config(identity, settings)?;
        let mut endpoint = quinn::Endpoint::server(server, addr)
            .map_err(|source| QuicError::Bind { addr, source })?;
        endpoint.set_default_client_config(tls::client_config_with(identity, settings)?);
        Ok(Quic {
            endpoint,
            connect_timeout: settings.connect_timeout,
            close_wait: settings.close_wait,
            pool: Mutex::new(BTreeMap::new()),
            expected: std::sync::RwLock::default(),
        })
    }

    /// A dial-only endpoint with `client` settings (a user certificate, or the join verifier).
    pub fn dialer(client: quinn::ClientConfig) -> Result<Self, QuicError> {
        let any: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut endpoint =
            quinn::Endpoint::client(any).map_err(|source| QuicError::Bind { addr: any, source })?;
        endpoint.set_default_client_config(client);
        let defaults = QuicSettings::default();
        Ok(Quic {
            endpoint,
            connect_timeout: defaults.connect_timeout,
            close_wait: defaults.close_wait,
            pool: Mutex::new(BTreeMap::new()),
            expected: std::sync::RwLock::default(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// The endpoint, to accept connections.
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    /// From now on, a connection to `addr` must present the certificate of node `name`.
    pub fn expect_node(&self, addr: SocketAddr, name: &str) {
        let mut expected = self.expected.write().unwrap_or_else(|e| e.into_inner());
        if expected.get(&addr).is_none_or(|n| n != name) {
            expected.insert(addr, name.to_string());
        }
    }

    /// The role and name in the certificate of whoever answers at `addr` (a pooled
    /// connection is reused), or why nobody does.
    pub async fn identify(&self, addr: SocketAddr) -> Result<Option<(Role, String)>, QuicError> {
        Ok(tls::peer_of(&self.connect(addr).await?))
    }

    /// A connection to `addr`, reused when one is open.
    pub async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, QuicError> {
        let mut pool = self.pool.lock().await;
        if let Some(conn) = pool.get(&addr) {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            pool.remove(&addr);
        }
        drop(pool);
        let connecting =
            self.endpoint
                .connect(addr, NODE_SERVER_NAME)
                .map_err(|e| QuicError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
        let conn = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| QuicError::Timeout {
                addr,
                ms: self.connect_timeout.as_millis() as u64,
            })?
            .map_err(|e| QuicError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let expected = self
            .expected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .cloned();
        if let Some(name) = expected {
            let presented = tls::peer_of(&conn).map(|(_, n)| n);
            if presented.as_deref() != Some(name.as_str()) {
                conn.close(1u32.into(), b"not the node expected at this address");
                return Err(QuicError::Connect {
                    addr,
                    reason: format!(
                        "expected node {name} there, but it presented the certificate of {}",
                        presented.as_deref().unwrap_or("nobody")
                    ),
                });
            }
        }
        self.pool.lock().await.insert(addr, conn.clone());
        Ok(conn)
    }

    /// Opens a stream to `addr` and sends `request`; the caller reads the answer frames.
    pub async fn open(
        &self,
        addr: SocketAddr,
        request: &Request,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), QuicError> {
        let conn = self.connect(addr).await?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| {
            // A dead pooled connection: forget it so the next call redials.
            let pool = &self.pool;
            if let Ok(mut pool) = pool.try_lock() {
                pool.remove(&addr);
            }
            QuicError::Exchange {
                addr,
                reason: e.to_string(),
            }
        })?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| exchange(addr, e))?;
        Ok((send, recv))
    }

    /// One request, one answer, within `timeout`.
    pub async fn call<M>(
        &self,
        addr: SocketAddr,
        request: &Request,
        timeout: Duration,
    ) -> Result<M, QuicError>
    where
        M: serde::de::DeserializeOwned + Check,
    {
        let exchange_once = async {
            let (mut send, mut recv) = self.open(addr, request).await?;
            let answer = read_frame::<M, _>(&mut recv)
                .await
                .map_err(|e| exchange(addr, e))?
                .ok_or_else(|| QuicError::Exchange {
                    addr,
                    reason: "the peer closed the stream without an answer".into(),
                })?;
            let _ = send.finish();
            Ok(answer)
        };
        tokio::time::timeout(timeout, exchange_once)
            .await
            .map_err(|_| QuicError::Timeout {
                addr,
                ms: timeout.as_millis() as u64,
            })?
    }

    /// Drops the pooled connection to `addr`, so the next exchange dials again. For a caller
    /// whose exchange timed out: a peer that restarted cannot reset the old connection (its
    /// new endpoint has another reset key), which otherwise swallows every request until the
    /// idle timeout closes it.
    pub async fn forget(&self, addr: SocketAddr) {
        self.pool.lock().await.remove(&addr);
    }

    /// A peer message and its one answer.
    pub async fn peer(
        &self,
        addr: SocketAddr,
        message: PeerMessage,
        timeout: Duration,
    ) -> Result<PeerMessage, QuicError> {
        self.call(addr, &Request::Peer(message), timeout).await
    }

    /// Closes every connection and waits for the peers to learn of it (briefly).
    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(self.close_wait, self.endpoint.wait_idle()).await;
    }

    /// Closes every connection and gives the close packet a moment to leave, without waiting
    /// out the draining period: a one-shot client (the CLI) must not leave its connection
    /// open on the agent until the idle timeout, nor pay 200 ms per call.
    pub async fn close_now(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(CLOSE_SEND_WAIT, self.endpoint.wait_idle()).await;
    }
}

fn exchange(addr: SocketAddr, e: ApiError) -> QuicError {
    QuicError::Exchange {
        addr,
        reason: e.to_string(),
    }
}
