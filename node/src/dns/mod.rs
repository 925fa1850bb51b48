//! The agent's DNS server: authoritative for `svc.starling`, answering from the node's
//! [`ServiceTable`] as the agent last built it. This module owns the sockets, the per-client
//! rate limit, the answers and their counters; the table and where to listen come from the
//! agent ([`serve`]).
//!
//! What it answers (all authoritative, AA set):
//! - `NAME.svc.starling` A: per listener ([`ServiceAnswer`]), the service's stable loopback
//!   address, where the local proxy listens, or a fixed address (a container bridge's
//!   gateway). AAAA: none (service addresses are IPv4), unless the fixed address is IPv6.
//! - `_PORT._tcp.NAME.svc.starling` (or `_udp`) SRV: one record per ready instance of the
//!   port (priority 0, weight 1, the instance's port, target `rINDEX.NAME.svc.starling`), with
//!   the targets' addresses as additional records. Instances that are starting, failing their
//!   health check or draining are left out.
//! - `rINDEX.NAME.svc.starling` A and AAAA: the node addresses of the replica's ready
//!   instances.
//! - Any other type of a name that exists: NODATA (NOERROR, no records, the zone's SOA in
//!   authority for negative caching). A name in the zone that names nothing: NXDOMAIN.
//! - A name outside the zone: REFUSED. The server does not forward or recurse: a stub
//!   resolver given a REFUSED asks its next server, so list this server beside the host's
//!   resolvers, not instead of them.
//!
//! Why a loop of our own around hickory-proto's `Message` rather than hickory-server's
//! `ServerFuture`: the rate limit runs per packet before any decoding (the server never parses
//! what it will drop), malformed packets are counted (the server drops undecodable ones before
//! a handler sees them), and TCP connections have our own caps and timeouts. The wire format is
//! all hickory's: nothing here parses or writes DNS bytes by hand.
//!
//! Limits: [`TCP_CONNECTIONS_MAX`] TCP connections per listener, each closed after
//! [`TCP_IDLE_TIMEOUT`] without a complete message or write; UDP queries of up to
//! [`UDP_QUERY_BYTES_MAX`] bytes; answers of 512 bytes on UDP without EDNS and up to
//! [`UDP_PAYLOAD_BYTES_MAX`] with it (larger ones are cut with TC set); one rate-limit bucket
//! per client address for at most 4,096 clients (see `limit`).

mod answer;
mod counters;
mod limit;
mod server;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_protocol::service::ServiceTable;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use answer::UDP_PAYLOAD_BYTES_MAX;
pub use counters::DnsCounters;

/// TTL of `NAME.svc.starling`: its address is derived from the set of service names and moves
/// only when a new name collides with it, so it may be cached longer than instances, but not
/// much: a service applied a moment ago should resolve within seconds everywhere.
pub const SERVICE_TTL_SECS: u32 = 5;

/// TTL of SRV and replica answers: an instance that fails its health check or stops must leave
/// clients' caches within one gossip round plus its health interval, so they are cached for
/// no longer than a gossip round takes to spread.
pub const INSTANCE_TTL_SECS: u32 = 2;

/// TTL of NXDOMAIN and NODATA answers (the SOA's minimum): a service just applied must not be
/// hidden by a cached "no such name" for longer than it takes to spread.
pub const NEGATIVE_TTL_SECS: u32 = 2;

/// The per-client rate the agent uses unless told otherwise: far above what a program
/// resolving names needs, far below what it takes to keep a core busy.
pub const PER_CLIENT_QPS_DEFAULT: u32 = 1000;

/// TCP connections open at once per listener; more are closed on accept (and counted).
pub const TCP_CONNECTIONS_MAX: usize = 128;

/// A TCP connection is closed when a message takes longer than this to arrive (or its answer
/// to be taken), so idle or trickling clients give their slot back.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest UDP query read; a longer datagram is cut to this and most likely fails to decode
/// (real queries are well under 512 bytes).
pub const UDP_QUERY_BYTES_MAX: usize = 4096;

/// Where and how the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Sockets to serve on (UDP and TCP on each), each with what `NAME.svc.starling` answers there.
    pub listen: Vec<Listener>,
    /// Queries per second allowed per client IP (token bucket, burst = 2x), beyond which
    /// queries are dropped and counted. At least 1 (0 is taken as 1); default
    /// [`PER_CLIENT_QPS_DEFAULT`].
    pub per_client_qps: u32,
}

/// One address to serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The UDP and TCP address. With port 0 both get one port chosen by the system (tests).
    pub addr: SocketAddr,
    /// What `NAME.svc.starling` resolves to for clients asking here.
    pub answer: ServiceAnswer,
}

/// What `NAME.svc.starling` answers on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAnswer {
    /// The service's loopback address (clients on this host: the proxy listens there).
    ServiceAddress,
    /// A fixed address (for containers: the bridge gateway address where the proxy also listens).
    Fixed(IpAddr),
}

/// A running server. Dropping it or [`DnsServer::shutdown`] stops it.
#[derive(Debug)]
pub struct DnsServer {
    local_addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// The bound addresses, one per listener in the order configured (UDP and TCP share it).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Stops every task and waits until they are gone, so the ports are free on return.
    pub async fn shutdown(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            // Aborted tasks end with a cancellation error: that is the point.
            let _ = task.await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds every listener (UDP and TCP), then serves until the returned handle is dropped or
/// shut down. Each query reads the table `table` holds at that moment. Fails if any bind fails,
/// naming the address and the protocol; nothing is left bound then.
pub async fn serve(
    config: DnsConfig,
    table: watch::Receiver<Arc<ServiceTable>>,
    counters: Arc<DnsCounters>,
) -> io::Result<DnsServer> {
    let zone = answer::Zone::new().map_err(|e| io::Error::other(format!("DNS zone: {e}")))?;
    let mut sockets = Vec::with_capacity(config.listen.len());
    for listener in &config.listen {
        sockets.push((server::bind(listener.addr).await?, listener.answer));
    }
    let shared = Arc::new(server::Shared {
        table,
        counters,
        limiter: Mutex::new(limit::RateLimiter::new(
            config.per_client_qps,
            crate::clock::monotonic(),
        )),
        zone,
    });
    let local_addrs = sockets.iter().map(|(bound, _)| bound.addr).collect();
    let mut tasks = Vec::with_capacity(2 * sockets.len());
    for (bound, service_answer) in sockets {
        tasks.push(tokio::spawn(server::serve_udp(
            bound.udp,
            service_answer,
            shared.clone(),
        )));
        tasks.push(tokio::spawn(server::serve_tcp(
            bound.tcp,
            service_answer,
            shared.clone(),
        )));
    }
    Ok(DnsServer { local_addrs, tasks })
}
