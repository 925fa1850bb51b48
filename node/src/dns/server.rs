//! The sockets: binding, the UDP loop, the TCP accept loop and its connections. Each message
//! goes through [`Shared::handle`]: counted, rate-limited, answered by `answer::respond`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_protocol::service::ServiceTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::answer::{self, Transport, Zone};
use super::limit::RateLimiter;
use super::{
    DnsCounters, ServiceAnswer, TCP_CONNECTIONS_MAX, TCP_IDLE_TIMEOUT, UDP_QUERY_BYTES_MAX,
};

/// Tries at binding TCP to the port the system gave UDP, when asked for port 0.
const BIND_TRIES: usize = 8;

/// Pause after a failed receive or accept, so a persistent error (out of descriptors) does not
/// spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What every task of one server shares.
pub(super) struct Shared {
    pub(super) table: watch::Receiver<Arc<ServiceTable>>,
    pub(super) counters: Arc<DnsCounters>,
    pub(super) limiter: Mutex<RateLimiter>,
    pub(super) zone: Zone,
}

impl Shared {
    /// Counts `request`, drops it if `client` is over its rate, else answers it (`None`: send
    /// nothing).
    fn handle(
        &self,
        request: &[u8],
        client: IpAddr,
        service_answer: ServiceAnswer,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.counters.queries.fetch_add(1, Ordering::Relaxed);
        let now = crate::clock::monotonic();
        // A panic elsewhere while holding the lock leaves buckets that are still buckets.
        let admitted = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(client, now);
        if !admitted {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Clone the Arc and let the borrow go at once: the agent's write waits on it.
        let table = Arc::clone(&self.table.borrow());
        let reply = answer::respond(request, &table, &self.zone, service_answer, transport);
        self.counters.count(reply.outcome, reply.truncated);
        reply.bytes
    }

    fn io_error(&self, what: &str, e: &io::Error) {
        self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("DNS {what}: {e}");
    }
}

/// One listener's sockets.
pub(super) struct Bound {
    pub(super) udp: UdpSocket,
    pub(super) tcp: TcpListener,
    pub(super) addr: SocketAddr,
}

/// Binds UDP and TCP on `addr`. With port 0, TCP takes the port the system gave UDP, since
/// clients retry truncated answers over TCP at the same address; another program may hold that
/// TCP port already, so a few ports are tried.
pub(super) async fn bind(addr: SocketAddr) -> io::Result<Bound> {
    let named = |protocol: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot serve DNS on {addr} ({protocol}): {e}"),
        )
    };
    for _ in 0..BIND_TRIES {
        let udp = UdpSocket::bind(addr).await.map_err(|e| named("UDP", e))?;
        let bound = udp.local_addr().map_err(|e| named("UDP", e))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => {
                return Ok(Bound {
                    udp,
                    tcp,
                    addr: bound,
                });
            }
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(named("TCP", e)),
        }
    }
    Err(named(
        "TCP",
        io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no free TCP port beside a UDP one in {BIND_TRIES} tries"),
        ),
    ))
}

/// Answers datagrams one after the other until aborted: an answer takes microseconds, so one
/// task per socket keeps up with far more than the rate limit lets in.
pub(super) async fn serve_udp(
    socket: UdpSocket,
    service_answer: ServiceAnswer,
    shared: Arc<Shared>,
) {
    let mut buffer = vec![0u8; UDP_QUERY_BYTES_MAX];
    loop {
        let (len, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                shared.io_error("UDP receive", &e);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(request) = buffer.get(..len) else {
            continue;
        };
        let Some(bytes) = shared.handle(request, client.ip(), service_answer, Transport::Udp)
        else {
            continue;
        };
        if let Err(e) = socket.send_to(&bytes, client).await {
            shared.io_error("UDP send", &e);
        }
    }
}

/// Accepts connections until aborted; aborting it drops `connections`, which aborts them all.
pub(super) async fn serve_tcp(
    listener: TcpListener,
    service_answer: ServiceAnswer,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    if connections.len() >= TCP_CONNECTIONS_MAX {
                        shared.counters.tcp_refused.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let shared = shared.clone();
                    connections.spawn(serve_connection(stream, client.ip(), service_answer, shared));
                }
                Err(e) => {
                    shared.io_error("TCP accept", &e);
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            },
            // Reap finished connections so `len` counts the open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers length-prefixed messages (RFC 1035 section 4.2.2) in order until the client closes,
/// idles past [`TCP_IDLE_TIMEOUT`] or fails.
async fn serve_connection(
    mut stream: TcpStream,
    client: IpAddr,
    service_answer: ServiceAnswer,
    shared: Arc<Shared>,
) {
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut prefix)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut request = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if !matches!(
            timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut request)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(bytes) = shared.handle(&request, client, service_answer, Transport::Tcp) else {
            continue;
        };
        // `respond` keeps TCP answers within 65,535 bytes; one that is not has no frame.
        let Ok(len) = u16::try_from(bytes.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(2 + bytes.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&bytes);
        match timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.io_error("TCP send", &e);
                return;
            }
            Err(_) => return,
        }
    }
}
