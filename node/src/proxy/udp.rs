//! UDP: a flow per client address, each a connected socket to one instance.
//!
//! The listener's task reads every client datagram and sends it on the client's flow (opening
//! one on first sight); each flow's own task reads the instance's replies and sends them to the
//! client from the listener's socket, so the client sees answers come from the address it
//! dialled. Flows idle for `udp_idle` (no datagram either way) are forgotten, as are flows
//! whose instance refused (an ICMP port unreachable): the client's next datagram picks again.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::counters::{Active, InstanceStats};
use super::{ListenerContext, Rng};

/// The largest UDP payload over IPv4 or IPv6 without jumbograms.
const DATAGRAM_BYTES_MAX: usize = 65_535;

/// Forwards datagrams until the task is aborted. Aborting it drops every flow (and stops
/// their reply tasks): replies could not leave without the listener's socket anyway.
pub(super) async fn serve(socket: UdpSocket, context: ListenerContext, mut rng: Rng) {
    let socket = Arc::new(socket);
    let mut flows = Flows {
        by_client: BTreeMap::new(),
        started: crate::clock::monotonic(),
    };
    let idle_ms = millis(context.shared.config.udp_idle).max(1);
    // Expiry is checked a few times per idle period, so a flow outlives its idleness by at
    // most a quarter of it (and by no more than five seconds).
    let mut sweep = tokio::time::interval(Duration::from_millis((idle_ms / 4).clamp(10, 5_000)));
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, client)) => {
                    let datagram = &buf[..len];
                    flows.forward(&socket, &context, &mut rng, client, datagram).await;
                }
                Err(e) => tracing::debug!(
                    "proxy: UDP receive on {}/{} failed: {e}",
                    context.route.service,
                    context.route.port
                ),
            },
            _ = sweep.tick() => flows.expire(idle_ms),
        }
    }
}

/// A listener's flows.
struct Flows {
    by_client: BTreeMap<SocketAddr, Flow>,
    /// What flow times are measured from.
    started: Instant,
}

/// One client's flow to one instance.
struct Flow {
    upstream: Arc<UdpSocket>,
    state: Arc<FlowState>,
    /// Reads the instance's replies; aborted when the flow is dropped.
    replies: JoinHandle<()>,
    /// Counts the flow in its instance's open flows while it lives.
    active: Active,
}

/// What a flow's two tasks share.
#[derive(Debug, Default)]
struct FlowState {
    /// When a datagram last passed either way, in ms since [`Flows::started`].
    last_ms: AtomicU64,
    /// The instance refused (or the socket failed): the flow is to be replaced.
    dead: AtomicBool,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

impl Flows {
    fn now_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    /// Sends one client datagram on its flow, opening the flow first if it has none (or a
    /// dead one). Dropped and counted when no instance is ready, the listener has all the
    /// flows it may, or the send fails.
    async fn forward(
        &mut self,
        listener: &Arc<UdpSocket>,
        context: &ListenerContext,
        rng: &mut Rng,
        client: SocketAddr,
        datagram: &[u8],
    ) {
        let stats = &context.stats;
        let now_ms = self.now_ms();
        let live = self
            .by_client
            .get(&client)
            .is_some_and(|f| !f.state.dead.load(Ordering::Relaxed));
        if !live {
            // A dead flow's instance is not picked again for this client right away.
            let tried: Vec<SocketAddr> = self
                .by_client
                .remove(&client)
                .map(|f| f.active.address)
                .into_iter()
                .collect();
            if self.by_client.len() >= context.shared.config.udp_flows_max {
                stats.flows_full.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let opened = open(listener, context, rng, client, &tried, self.started).await;
            let Some(flow) = opened else {
                return;
            };
            self.by_client.insert(client, flow);
        }
        let Some(flow) = self.by_client.get(&client) else {
            return;
        };
        flow.state.last_ms.store(now_ms, Ordering::Relaxed);
        // A send waits only for the socket's first readiness (a fresh socket is not known to
        // be writable until the reactor has seen it): a UDP send does not wait for the peer,
        // as the kernel drops rather than queues what the receiver has no room for.
        match flow.upstream.send(datagram).await {
            Ok(sent) => {
                let instance = &flow.active.stats;
                instance
                    .datagrams_to_instance
                    .fetch_add(1, Ordering::Relaxed);
                instance
                    .bytes_to_instance
                    .fetch_add(sent as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.send_failed.fetch_add(1, Ordering::Relaxed);
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    flow.state.dead.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Forgets flows idle for `idle_ms` or dead.
    fn expire(&mut self, idle_ms: u64) {
        let now_ms = self.now_ms();
        self.by_client.retain(|_, f| {
            let last_ms = f.state.last_ms.load(Ordering::Relaxed);
            now_ms.saturating_sub(last_ms) < idle_ms && !f.state.dead.load(Ordering::Relaxed)
        });
    }
}

/// Opens a flow for `client`: picks an instance (from the table as it is now) and connects a
/// socket to it. `None` (counted) when no instance is ready or the socket fails.
async fn open(
    listener: &Arc<UdpSocket>,
    context: &ListenerContext,
    rng: &mut Rng,
    client: SocketAddr,
    tried: &[SocketAddr],
    started: Instant,
) -> Option<Flow> {
    let stats = &context.stats;
    let table = context.shared.table.borrow().clone();
    let active = table
        .services
        .get(&context.route.service)
        .and_then(|s| stats.choose(s, &context.route.port, tried, rng.draw()));
    let Some(active) = active else {
        stats.no_instance.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    let upstream = match connected(active.address).await {
        Ok(socket) => Arc::new(socket),
        Err(e) => {
            stats.send_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                "proxy: UDP socket to {} ({}/{}) failed: {e}",
                active.address,
                context.route.service,
                context.route.port
            );
            return None;
        }
    };
    active.stats.opened.fetch_add(1, Ordering::Relaxed);
    let state = Arc::new(FlowState {
        last_ms: AtomicU64::new(millis(started.elapsed())),
        dead: AtomicBool::new(false),
    });
    let replies = tokio::spawn(replies(
        upstream.clone(),
        Arc::downgrade(listener),
        client,
        state.clone(),
        active.stats.clone(),
        started,
    ));
    Some(Flow {
        upstream,
        state,
        replies,
        active,
    })
}

/// A socket bound to an ephemeral port and connected to `instance`, so only its datagrams
/// come back on it.
async fn connected(instance: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = match instance.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(instance).await?;
    Ok(socket)
}

/// Sends the instance's replies to `client` from the listener's socket, until the flow is
/// dropped (which aborts this task) or the instance refuses. Holds the listener weakly, so a
/// closed listener's address is free at once.
async fn replies(
    upstream: Arc<UdpSocket>,
    listener: Weak<UdpSocket>,
    client: SocketAddr,
    state: Arc<FlowState>,
    instance: Arc<InstanceStats>,
    started: Instant,
) {
    loop {
        if upstream.readable().await.is_err() {
            break;
        }
        // Allocated per reply rather than held per flow: thousands of idle flows would
        // otherwise pin 64 KiB each. It is not zeroed (the receive fills spare capacity).
        let mut datagram = Vec::with_capacity(DATAGRAM_BYTES_MAX);
        match upstream.try_recv_buf(&mut datagram) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        state
            .last_ms
            .store(millis(started.elapsed()), Ordering::Relaxed);
        instance
            .datagrams_from_instance
            .fetch_add(1, Ordering::Relaxed);
        instance
            .bytes_from_instance
            .fetch_add(datagram.len() as u64, Ordering::Relaxed);
        let Some(listener) = listener.upgrade() else {
            return;
        };
        // A reply that cannot be sent is lost, as UDP may; the client retries if it cares.
        let _ = listener.send_to(&datagram, client).await;
    }
    // The instance's port is closed (ICMP refused) or the socket failed: let the client's next
    // datagram open a flow to another instance.
    state.dead.store(true, Ordering::Relaxed);
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
