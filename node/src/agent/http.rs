//! The agent's local HTTP server (hyper, HTTP/1.1): `/metrics`, `/v1/leases/NAME` (see
//! `metrics`), `POST /v1/report`, where replicas report custom metrics (see `report`), and the
//! web view (`/` and `/v1/view`, see `web`).
//!
//! Anyone who can reach the port may connect, without credentials, so everything a client can
//! hold is capped: connections in total and per client address, long polls in total and in
//! duration. Over a cap the server answers 503 at once and closes, without a task or a read,
//! so a refused client holds a descriptor for microseconds. The caps are sized from the
//! process's descriptor limit, so a flood never takes the descriptors the store needs (seen
//! before the caps: 1,100 long polls took all 1,024 descriptors and every API write failed
//! with `desired.tmp: Too many open files`). A long poll ends when its client closes, so a
//! flood that goes away gives its slots back at once rather than when its waits run out.
//! Time is capped too: a client has [`LocalSettings::http_head_timeout`] to send its whole
//! request head and [`LocalSettings::http_write_timeout`] to take its answer, so trickling
//! bytes holds a slot no longer than that.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::metrics::{LeaseBoard, Metrics};
use super::report::Reports;
use super::web::WebDoor;
use super::{AgentError, LocalSettings};

/// Caps of the HTTP server. Defaults ([`HttpLimits::for_fd_limit`] at a large descriptor
/// limit): 256 connections, 32 per client address, 128 long polls of at most 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once, all clients together.
    pub connections_max: usize,
    /// Connections open at once from one non-loopback address. Loopback clients (the node's
    /// own singletons, a local Prometheus) all share 127.0.0.1, so for them only the total
    /// applies: a per-address cap there would be a second, smaller total.
    pub per_client_max: usize,
    /// Long polls (`?wait=`) waiting at once.
    pub long_polls_max: usize,
    /// Longest wait a long poll may ask for; longer asks are cut to this.
    pub wait_max_s: u64,
}

impl HttpLimits {
    /// Caps for a process allowed `fd_limit` open descriptors: HTTP clients get at most a
    /// quarter of them (never more than 256), so the rest stays for the store, the runtimes,
    /// replicas' logs and QUIC whatever the clients do.
    pub fn for_fd_limit(fd_limit: u64) -> Self {
        let quarter = usize::try_from(fd_limit / 4).unwrap_or(usize::MAX);
        let connections_max = quarter.clamp(8, 256);
        HttpLimits {
            connections_max,
            per_client_max: (connections_max / 8).max(1),
            long_polls_max: (connections_max / 2).max(1),
            wait_max_s: 60,
        }
    }
}

/// What the HTTP server counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpCounters {
    /// Failed accepts (out of descriptors, mostly): each one is followed by a pause.
    pub accept_errors: AtomicU64,
    /// Connections refused because all were taken.
    pub refused_connections: AtomicU64,
    /// Connections refused because their client address had its share.
    pub refused_client: AtomicU64,
    /// Long polls refused because all were taken.
    pub refused_long_polls: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Long polls waiting now.
    pub long_polls: AtomicU64,
}

/// Which cap refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// All connections are taken.
    Connections,
    /// The client's address holds its share of connections.
    Client,
    /// All long polls are taken.
    LongPolls,
}

/// Counts what clients hold against [`HttpLimits`]; slots give themselves back on drop, so
/// a task that ends in any way (answer, error, closed client, abort) releases what it held.
#[derive(Debug)]
pub struct Limiter {
    limits: HttpLimits,
    counters: Arc<HttpCounters>,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    connections: usize,
    per_client: BTreeMap<IpAddr, usize>,
    long_polls: usize,
}

/// One admitted connection.
#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<Limiter>,
    client: IpAddr,
}

/// One admitted long poll.
#[derive(Debug)]
pub struct LongPollSlot {
    limiter: Arc<Limiter>,
}

impl Limiter {
    /// A limiter that reports what it holds and refuses into `counters`.
    pub fn new(limits: HttpLimits, counters: Arc<HttpCounters>) -> Arc<Self> {
        Arc::new(Limiter {
            limits,
            counters,
            held: Mutex::default(),
        })
    }

    /// Admits a connection from `client`, or says which cap refuses it.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut held = self.lock();
        if held.connections >= self.limits.connections_max {
            return Err(self.refuse(Refusal::Connections));
        }
        let capped = !client.is_loopback();
        let of_client = held.per_client.get(&client).copied().unwrap_or(0);
        if capped && of_client >= self.limits.per_client_max {
            return Err(self.refuse(Refusal::Client));
        }
        held.connections += 1;
        if capped {
            held.per_client.insert(client, of_client + 1);
        }
        self.publish(&held);
        Ok(ConnectionSlot {
            limiter: self.clone(),
            client,
        })
    }

    /// Admits a long poll, or refuses it when all are taken.
    pub fn long_poll(self: &Arc<Self>) -> Result<LongPollSlot, Refusal> {
        let mut held = self.lock();
        if held.long_polls >= self.limits.long_polls_max {
            return Err(self.refuse(Refusal::LongPolls));
        }
        held.long_polls += 1;
        self.publish(&held);
        Ok(LongPollSlot {
            limiter: self.clone(),
        })
    }

    /// The caps in force.
    pub fn limits(&self) -> HttpLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, why: Refusal) -> Refusal {
        let counter = match why {
            Refusal::Connections => &self.counters.refused_connections,
            Refusal::Client => &self.counters.refused_client,
            Refusal::LongPolls => &self.counters.refused_long_polls,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        why
    }

    fn publish(&self, held: &Held) {
        let c = &self.counters;
        c.connections
            .store(held.connections as u64, Ordering::Relaxed);
        c.long_polls
            .store(held.long_polls as u64, Ordering::Relaxed);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        // Every slot was counted when made, so the counts cannot be zero here.
        debug_assert!(held.connections > 0);
        held.connections = held.connections.saturating_sub(1);
        if let Some(n) = held.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.per_client.remove(&self.client);
            }
        }
        self.limiter.publish(&held);
    }
}

impl Drop for LongPollSlot {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        debug_assert!(held.long_polls > 0);
        held.long_polls = held.long_polls.saturating_sub(1);
        self.limiter.publish(&held);
    }
}

/// Largest request head read (hyper's smallest read buffer): the request line and a few
/// headers are all any route needs.
const HEAD_BYTES_MAX: usize = 8192;

/// Binds the HTTP port. Fails the agent's start when taken: a singleton's
/// `STARLING_LEASE_URL` points here, so running without it would leave instances blind.
pub(super) async fn bind(
    addr: SocketAddr,
    chosen_by_flag: bool,
) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let how = if chosen_by_flag {
            "given by --metrics"
        } else {
            "the default: 127.0.0.1 at the --listen port"
        };
        AgentError::Http {
            addr,
            why: format!(
                "{source} ({how}); stop what holds it or choose a free address with --metrics HOST:PORT"
            ),
        }
    })
}

/// What the server answers from.
#[derive(Clone, Default)]
pub(super) struct Sources {
    /// Counters and gauges for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Leases for `/v1/leases/NAME`.
    pub leases: Arc<LeaseBoard>,
    /// Where `POST /v1/report` puts replicas' values.
    pub reports: Arc<Reports>,
    /// The web view (`/` and `/v1/view`); `None` answers them 404.
    pub web: Option<Arc<WebDoor>>,
}

/// What every connection's task shares.
struct Shared {
    limiter: Arc<Limiter>,
    local: LocalSettings,
    sources: Sources,
}

/// Serves `/metrics`, `/v1/leases/NAME`, `/v1/report` and the web view on `listener` within
/// `limiter`'s caps and `local`'s timeouts.
pub(super) fn serve(
    listener: TcpListener,
    limiter: Arc<Limiter>,
    local: LocalSettings,
    sources: Sources,
) -> JoinHandle<()> {
    let shared = Arc::new(Shared {
        limiter,
        local,
        sources,
    });
    tokio::spawn(async move {
        let mut warned = false;
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    let errors = &shared.sources.metrics.http.accept_errors;
                    errors.fetch_add(1, Ordering::Relaxed);
                    // One line per burst: the metric counts the rest.
                    if !warned {
                        tracing::warn!("HTTP accept failed, pausing between retries: {e}");
                        warned = true;
                    }
                    tokio::time::sleep(shared.local.accept_backoff).await;
                    continue;
                }
            };
            warned = false;
            match shared.limiter.admit(client.ip()) {
                Ok(slot) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        connection(stream, client, shared).await;
                    });
                }
                Err(why) => refuse_now(&stream, why, shared.limiter.limits()),
            }
        }
    })
}

/// Answers 503 with what one non-blocking write takes and drops the connection: no task, no
/// read, so refusing costs the server nothing it could run out of.
fn refuse_now(stream: &TcpStream, why: Refusal, limits: HttpLimits) {
    let body = unavailable(why, limits);
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(text.as_bytes());
}

fn unavailable(why: Refusal, limits: HttpLimits) -> String {
    match why {
        Refusal::Connections => format!(
            "this agent serves at most {} HTTP connections at once; retry later\n",
            limits.connections_max
        ),
        Refusal::Client => format!(
            "this agent serves at most {} HTTP connections per client address; retry later\n",
            limits.per_client_max
        ),
        Refusal::LongPolls => format!(
            "this agent holds at most {} long polls (?wait=) at once; retry later\n",
            limits.long_polls_max
        ),
    }
}

/// The body every answer has: whole, in memory (the largest is `/metrics`).
pub(super) type Body = Full<Bytes>;

/// An answer with a status, a content type and a body.
pub(super) fn answer(
    status: StatusCode,
    kind: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Serves one request on one connection (no keep-alive: a slot is a connection, and a
/// client that wants another answer connects again).
///
/// Time is bounded at both ends: hyper closes a connection whose head is not in within
/// [`LocalSettings::http_head_timeout`], and once the route has its answer, writing it gets
/// [`LocalSettings::http_write_timeout`]. A client that closes while its request waits (a
/// long poll) ends the connection, which drops the route's future and what it held.
async fn connection(stream: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    let answered = Arc::new(Notify::new());
    let service = {
        let (shared, answered) = (shared.clone(), answered.clone());
        service_fn(move |request| {
            let (shared, answered) = (shared.clone(), answered.clone());
            async move {
                let response = route(request, client, &shared).await;
                answered.notify_one();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.local.http_head_timeout)
        .keep_alive(false)
        .max_buf_size(HEAD_BYTES_MAX);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        () = answered.notified() => {}
    }
    let _ = tokio::time::timeout(shared.local.http_write_timeout, conn).await;
}

/// Every route of the port.
async fn route(request: Request<Incoming>, client: SocketAddr, shared: &Shared) -> Response<Body> {
    let Shared {
        limiter, sources, ..
    } = shared;
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if path == "/metrics" {
        return answer(
            StatusCode::OK,
            super::metrics::CONTENT_TYPE,
            sources.metrics.render(),
        );
    }
    if path == "/v1/report" {
        let (status, body) =
            super::report::answer(request, shared.local.http_head_timeout, &sources.reports).await;
        return answer(status, "text/plain; charset=utf-8", body);
    }
    if let Some(name) = path.strip_prefix("/v1/leases/") {
        let wait_s = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("wait="))
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
            .min(limiter.limits().wait_max_s);
        let _poll = if wait_s == 0 {
            None
        } else {
            match limiter.long_poll() {
                Ok(slot) => Some(slot),
                Err(why) => {
                    let mut refused = answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        unavailable(why, limiter.limits()),
                    );
                    refused
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return refused;
                }
            }
        };
        let (status, body) = sources.leases.answer(name, wait_s).await;
        return answer(status, "application/json", body);
    }
    if let Some(web) = &sources.web
        && let Some(response) = web.route(&request, client).await
    {
        return response;
    }
    let body = "try /, /v1/view, /metrics, /v1/leases/NAME or POST /v1/report\n";
    answer(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn limiter(limits: HttpLimits) -> (Arc<Limiter>, Arc<HttpCounters>) {
        let counters = Arc::new(HttpCounters::default());
        (Limiter::new(limits, counters.clone()), counters)
    }

    const SMALL: HttpLimits = HttpLimits {
        connections_max: 4,
        per_client_max: 2,
        long_polls_max: 1,
        wait_max_s: 60,
    };

    #[test]
    fn connections_over_the_total_are_refused_until_one_closes() {
        let (limiter, counters) = limiter(SMALL);
        let local: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..4)
            .map(|_| limiter.admit(local).expect("room"))
            .collect();
        assert_eq!(limiter.admit(local).err(), Some(Refusal::Connections));
        assert_eq!(counters.refused_connections.load(Ordering::Relaxed), 1);
        assert_eq!(counters.connections.load(Ordering::Relaxed), 4);
        drop(held);
        assert_eq!(counters.connections.load(Ordering::Relaxed), 0);
        assert!(limiter.admit(local).is_ok());
    }

    #[test]
    fn one_remote_address_gets_its_share_and_others_still_get_in() {
        let (limiter, counters) = limiter(SMALL);
        let greedy: IpAddr = [10, 0, 0, 7].into();
        let first = limiter.admit(greedy).expect("room");
        let _second = limiter.admit(greedy).expect("room");
        assert_eq!(limiter.admit(greedy).err(), Some(Refusal::Client));
        assert_eq!(counters.refused_client.load(Ordering::Relaxed), 1);
        assert!(limiter.admit([10, 0, 0, 8].into()).is_ok());
        drop(first);
        assert!(
            limiter.admit(greedy).is_ok(),
            "a closed connection frees its share"
        );
    }

    #[test]
    fn loopback_clients_share_only_the_total() {
        let (limiter, _) = limiter(SMALL);
        let local: IpAddr = "::1".parse().expect("address");
        let held: Vec<_> = (0..SMALL.connections_max)
            .map(|_| {
                limiter
                    .admit(local)
                    .expect("loopback is capped by the total only")
            })
            .collect();
        assert_eq!(held.len(), 4);
        assert_eq!(limiter.admit(local).err(), Some(Refusal::Connections));
    }

    #[test]
    fn long_polls_are_capped_and_freed_on_drop() {
        let (limiter, counters) = limiter(SMALL);
        let poll = limiter.long_poll().expect("room");
        assert_eq!(limiter.long_poll().err(), Some(Refusal::LongPolls));
        assert_eq!(counters.long_polls.load(Ordering::Relaxed), 1);
        drop(poll);
        assert_eq!(counters.long_polls.load(Ordering::Relaxed), 0);
        assert!(limiter.long_poll().is_ok());
    }

    #[test]
    fn caps_leave_three_quarters_of_the_descriptors() {
        let at_1024 = HttpLimits::for_fd_limit(1024);
        assert_eq!(at_1024.connections_max, 256);
        assert_eq!(at_1024.long_polls_max, 128);
        assert_eq!(at_1024.per_client_max, 32);
        let at_256 = HttpLimits::for_fd_limit(256);
        assert_eq!(at_256.connections_max, 64);
        assert!(at_256.long_polls_max <= at_256.connections_max);
        assert_eq!(HttpLimits::for_fd_limit(1 << 20).connections_max, 256);
    }

    #[tokio::test]
    async fn a_client_trickling_its_head_is_cut_at_the_head_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (limiter, counters) = limiter(SMALL);
        let local = LocalSettings {
            http_head_timeout: Duration::from_millis(300),
            ..LocalSettings::default()
        };
        let server = serve(listener, limiter, local, Sources::default());
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let started = crate::clock::monotonic();
        // One byte every 50 ms: each read alone is quick, the head never ends.
        let trickle = async {
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
                if client.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
        let held = started.elapsed();
        assert!(
            held < Duration::from_secs(2),
            "the server stopped reading within its head timeout, not per byte: {held:?}"
        );
        let deadline = crate::clock::monotonic() + Duration::from_secs(2);
        while counters.connections.load(Ordering::Relaxed) > 0 {
            assert!(crate::clock::monotonic() < deadline, "the slot was freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.abort();
    }
}
