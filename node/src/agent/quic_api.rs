//! The agent's QUIC server: who may ask what, decided by the dialer's certificate.
//!
//! - operators (user certificates) and nodes: API requests, served by `dispatch` (which keeps
//!   join tokens for operators);
//! - nodes only: peer messages (anti-entropy, pushed entries, verdicts);
//! - no certificate (a joiner): only the join exchange, checked against the token secret.
//!
//! Certificates from another CA never get this far: the TLS handshake refuses them. Revoked
//! names are refused after the handshake.
//!
//! Anyone who can reach the port may start a handshake, so what a dialer can hold is capped
//! ([`QuicSettings`]): connections in total and per IP address (refused before the handshake,
//! which costs the server nothing but one packet), connections without a certificate (closed
//! right after theirs), streams per connection (the transport's flow control), and the time
//! a stream may take to say what it wants. A connection proven by a certificate of the
//! cluster (a node's or an operator's) leaves its address's count: the per-address cap is
//! against hosts that hold handshakes or joins open, and must not mistake a fleet behind one
//! NAT address, or an operator's script, for a flood.
//!
//! A handshake from a spoofed address never completes but holds its slot until it times out.
//! So once a cap is half taken, a new dialer must first prove its address (a stateless retry,
//! one round trip, which QUIC clients follow by themselves): spoofed handshakes can then take
//! at most half of a cap, and dialers that can prove their address keep the other half.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use starling_protocol::NodeId;
use starling_protocol::wire::{JoinReply, JoinRequest, PeerMessage, Request};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::dispatch::{ApiDoor, Caller};
use super::fleet::PeerCall;
use super::handlers::error as refused;
use crate::api::{read_frame, write_frame};
use crate::identity::Role;
use crate::net::quic::QuicSettings;
use crate::net::tls::peer_of;

/// A join request with the way back.
pub(crate) type JoinCall = (JoinRequest, oneshot::Sender<JoinReply>);

/// Where the server sends what it accepted.
#[derive(Clone)]
pub(crate) struct Routes {
    pub api: ApiDoor,
    pub peers: mpsc::Sender<PeerCall>,
    pub joins: mpsc::Sender<JoinCall>,
    pub revoked: Arc<RwLock<BTreeSet<String>>>,
}

/// What the QUIC server counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Connections refused because all were taken.
    pub refused_connections: AtomicU64,
    /// Connections refused because their IP address held its share.
    pub refused_address: AtomicU64,
    /// Connections without a certificate closed because all joiner slots were taken.
    pub refused_anonymous: AtomicU64,
    /// Connections held now, handshakes included.
    pub connections: AtomicU64,
    /// Connections without a certificate held now.
    pub anonymous: AtomicU64,
    /// Dialers asked to prove their address first (a retry) because a cap was half taken.
    pub validations: AtomicU64,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// All connections are taken.
    Connections,
    /// The dialer's IP address holds its share.
    Address,
    /// All slots for connections without a certificate are taken.
    Anonymous,
}

impl Refusal {
    fn describe(self, caps: &Caps) -> String {
        match self {
            Refusal::Connections => {
                format!("all {} connections are taken", caps.connections_max)
            }
            Refusal::Address => format!(
                "its address holds {} connections already",
                caps.per_address_max
            ),
            Refusal::Anonymous => format!(
                "{} connections without a certificate (joiners) are open already",
                caps.anonymous_max
            ),
        }
    }
}

/// The caps of [`QuicSettings`] the limiter enforces.
#[derive(Debug, Clone, Copy)]
struct Caps {
    connections_max: usize,
    per_address_max: usize,
    anonymous_max: usize,
    refusal_log_every: Duration,
}

/// Counts what dialers hold against the caps; a [`Slot`] gives back what it holds on drop,
/// so a connection that ends in any way (closed, failed handshake, aborted task) frees it.
#[derive(Debug)]
pub(crate) struct Limiter {
    caps: Caps,
    counters: Arc<QuicCounters>,
    held: Mutex<Held>,
    /// When a refusal was last logged, and how many were not logged since.
    warned: Mutex<(Option<Instant>, u64)>,
}

#[derive(Debug, Default)]
struct Held {
    connections: usize,
    per_address: BTreeMap<IpAddr, usize>,
    anonymous: usize,
}

/// One admitted connection.
#[derive(Debug)]
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    /// The address whose count this connection is in (none once it proved a node).
    address: Option<IpAddr>,
    anonymous: bool,
}

impl Limiter {
    /// A limiter for `settings`' caps, reporting into `counters`.
    pub fn new(settings: &QuicSettings, counters: Arc<QuicCounters>) -> Arc<Self> {
        Arc::new(Limiter {
            caps: Caps {
                connections_max: settings.connections_max,
                per_address_max: settings.per_address_max,
                anonymous_max: settings.anonymous_max,
                refusal_log_every: settings.refusal_log_every,
            },
            counters,
            held: Mutex::default(),
            warned: Mutex::default(),
        })
    }

    /// Admits a new connection from `remote` before its handshake, or says (and counts, and
    /// logs now and then) which cap refuses it.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<Slot, Refusal> {
        // An IPv4 dialer reaching a dual-stack socket shows as ::ffff:a.b.c.d: one address.
        let address = remote.ip().to_canonical();
        let mut held = self.lock();
        if held.connections >= self.caps.connections_max {
            drop(held);
            return Err(self.refuse(remote, Refusal::Connections));
        }
        let of_address = held.per_address.get(&address).copied().unwrap_or(0);
        if of_address >= self.caps.per_address_max {
            drop(held);
            return Err(self.refuse(remote, Refusal::Address));
        }
        held.connections += 1;
        held.per_address.insert(address, of_address + 1);
        self.publish(&held);
        Ok(Slot {
            limiter: self.clone(),
            address: Some(address),
            anonymous: false,
        })
    }

    /// Whether a dialer from `remote` must prove its address before it is admitted: the
    /// total or its address's share is half taken.
    pub fn wants_validation(&self, remote: SocketAddr) -> bool {
        let address = remote.ip().to_canonical();
        let held = self.lock();
        let of_address = held.per_address.get(&address).copied().unwrap_or(0);
        held.connections * 2 >= self.caps.connections_max
            || of_address * 2 >= self.caps.per_address_max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Counts are updated under the lock in one step each, so a poisoned lock is whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, remote: SocketAddr, why: Refusal) -> Refusal {
        let counter = match why {
            Refusal::Connections => &self.counters.refused_connections,
            Refusal::Address => &self.counters.refused_address,
            Refusal::Anonymous => &self.counters.refused_anonymous,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // One line per `refusal_log_every`: a flood must not flood the log too.
        let now = crate::clock::monotonic();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned
            .0
            .is_none_or(|at| now.duration_since(at) >= self.caps.refusal_log_every);
        if due {
            let unlogged = warned.1;
            *warned = (Some(now), 0);
            drop(warned);
            tracing::warn!(
                %remote,
                unlogged,
                "refused a QUIC connection from {remote}: {} (starling_quic_refused_total counts every refusal)",
                why.describe(&self.caps)
            );
        } else {
            warned.1 += 1;
        }
        why
    }

    fn publish(&self, held: &Held) {
        let c = &self.counters;
        c.connections
            .store(held.connections as u64, Ordering::Relaxed);
        c.anonymous.store(held.anonymous as u64, Ordering::Relaxed);
    }
}

impl Slot {
    /// The connection proved a certificate of the cluster (a node's or an operator's): it no
    /// longer counts against its address, only in the total.
    pub fn proven(&mut self) {
        let Some(address) = self.address.take() else {
            return;
        };
        let mut held = self.limiter.lock();
        release_address(&mut held, address);
    }

    /// The connection presented no certificate (a joiner): it takes a joiner slot, or is
    /// refused (counted, logged now and then) when all are taken.
    pub fn anonymous(&mut self, remote: SocketAddr) -> Result<(), Refusal> {
        if self.anonymous {
            return Ok(());
        }
        let mut held = self.limiter.lock();
        if held.anonymous >= self.limiter.caps.anonymous_max {
            drop(held);
            return Err(self.limiter.refuse(remote, Refusal::Anonymous));
        }
        held.anonymous += 1;
        self.anonymous = true;
        self.limiter.publish(&held);
        Ok(())
    }
}

fn release_address(held: &mut Held, address: IpAddr) {
    if let Some(n) = held.per_address.get_mut(&address) {
        // Every slot with an address was counted there when admitted.
        debug_assert!(*n > 0);
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.per_address.remove(&address);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        // Every slot was counted when admitted, so the count cannot be zero here.
        debug_assert!(held.connections > 0);
        held.connections = held.connections.saturating_sub(1);
        if let Some(address) = self.address.take() {
            release_address(&mut held, address);
        }
        if self.anonymous {
            debug_assert!(held.anonymous > 0);
            held.anonymous = held.anonymous.saturating_sub(1);
        }
        self.limiter.publish(&held);
    }
}

/// Accepts connections on `endpoint` until it closes, within `limiter`'s caps; a stream's
/// request must arrive within `request_timeout`.
pub(crate) fn serve(
    endpoint: quinn::Endpoint,
    routes: Routes,
    limiter: Arc<Limiter>,
    request_timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let remote = incoming.remote_address();
            if incoming.may_retry() && limiter.wants_validation(remote) {
                limiter.counters.validations.fetch_add(1, Ordering::Relaxed);
                // Cannot fail: `may_retry` said the address is not validated yet.
                let _ = incoming.retry();
                continue;
            }
            // Refused before the handshake: a flood costs one packet each, no task, no crypto.
            let Ok(mut slot) = limiter.admit(remote) else {
                incoming.refuse();
                continue;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else {
                    return;
                };
                let who = peer_of(&conn);
                match &who {
                    Some(_) => slot.proven(),
                    None => {
                        if slot.anonymous(conn.remote_address()).is_err() {
                            conn.close(2u32.into(), b"too many joiners at once; retry in a moment");
                            return;
                        }
                    }
                }
                if let Some((_, name)) = &who {
                    let revoked = routes
                        .revoked
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(name);
                    if revoked {
                        tracing::warn!(%name, "refused a revoked certificate");
                        conn.close(1u32.into(), b"certificate revoked");
                        return;
                    }
                }
                while let Ok((send, recv)) = conn.accept_bi().await {
                    // A revocation applies to open connections too, from their next request.
                    if let Some((_, name)) = &who
                        && routes
                            .revoked
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .contains(name)
                    {
                        conn.close(1u32.into(), b"certificate revoked");
                        return;
                    }
                    let (routes, who) = (routes.clone(), who.clone());
                    tokio::spawn(async move {
                        stream(send, recv, who, routes, request_timeout).await;
                    });
                }
                // The slot goes with this task: the connection is over.
                drop(slot);
            });
        }
    })
}

async fn stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    who: Option<(Role, String)>,
    routes: Routes,
    request_timeout: Duration,
) {
    let read = tokio::time::timeout(request_timeout, read_frame::<Request, _>(&mut recv)).await;
    let request = match read {
        Ok(Ok(Some(request))) => request,
        Ok(Ok(None)) => return,
        Err(_) => {
            let _ = write_frame(
                &mut send,
                &refused(format!(
                    "no request within {} ms; closing the stream",
                    request_timeout.as_millis()
                )),
            )
            .await;
            let _ = send.finish();
            return;
        }
        Ok(Err(e)) => {
            // A malformed request gets a clear answer and changes nothing.
            let _ = write_frame(&mut send, &refused(format!("bad request: {e}"))).await;
            let _ = send.finish();
            return;
        }
    };
    match (request, who) {
        (Request::Api(request), Some((role, name))) => {
            let caller = match role {
                Role::Node => Caller::Node(name),
                Role::User => Caller::Operator(name),
            };
            routes.api.serve(request, &caller, &mut send).await;
        }
        (Request::Peer(message), Some((Role::Node, name))) => {
            let Ok(from) = NodeId::new(name) else {
                return;
            };
            let (tx, rx) = oneshot::channel();
            let call = PeerCall {
                from,
                message,
                reply: tx,
            };
            if routes.peers.send(call).await.is_err() {
                return;
            }
            if let Ok(answer) = rx.await {
                let _ = write_frame::<PeerMessage, _>(&mut send, &answer).await;
            }
        }
        (Request::Join(request), None) => {
            let (tx, rx) = oneshot::channel();
            if routes.joins.send((request, tx)).await.is_err() {
                return;
            }
            if let Ok(answer) = rx.await {
                let _ = write_frame(&mut send, &answer).await;
            }
        }
        (Request::Join(_), Some(_)) => {
            let _ = write_frame(
                &mut send,
                &JoinReply::Refused("this certificate already belongs to the cluster".into()),
            )
            .await;
        }
        (Request::Peer(_), Some((Role::User, name))) => {
            tracing::warn!(%name, "refused a peer message from a user certificate");
            let _ = write_frame(
                &mut send,
                &refused(format!(
                    "{name} is a user, not a node: peer messages refused"
                )),
            )
            .await;
        }
        (_, None) => {
            let _ = write_frame(
                &mut send,
                &refused("refused: no client certificate from this cluster".into()),
            )
            .await;
        }
    }
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClusterCa;
    use crate::net::quic::Quic;
    use crate::net::tls::{self, NODE_SERVER_NAME, TlsIdentity};
    use crate::runtime::Runtimes;
    use crate::runtime::process::{ProcessConfig, ProcessRuntime};

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    fn limiter(settings: &QuicSettings) -> (Arc<Limiter>, Arc<QuicCounters>) {
        let counters = Arc::new(QuicCounters::default());
        (Limiter::new(settings, counters.clone()), counters)
    }

    fn small() -> QuicSettings {
        QuicSettings {
            connections_max: 6,
            per_address_max: 3,
            anonymous_max: 2,
            ..QuicSettings::default()
        }
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_in() {
        let (limiter, counters) = limiter(&small());
        let greedy = [10, 0, 0, 7];
        let held: Vec<Slot> = (0..3)
            .map(|port| limiter.admit(addr(greedy, port)).expect("room"))
            .collect();
        assert_eq!(limiter.admit(addr(greedy, 9)).err(), Some(Refusal::Address));
        assert_eq!(counters.refused_address.load(Ordering::Relaxed), 1);
        let other = limiter
            .admit(addr([10, 0, 0, 8], 1))
            .expect("another address");
        assert_eq!(counters.connections.load(Ordering::Relaxed), 4);
        drop(held);
        drop(other);
        assert_eq!(counters.connections.load(Ordering::Relaxed), 0);
        assert!(
            limiter.admit(addr(greedy, 9)).is_ok(),
            "closed ones free the share"
        );
    }

    #[test]
    fn connections_over_the_total_are_refused_until_one_closes() {
        let (limiter, counters) = limiter(&small());
        let held: Vec<Slot> = (0..6)
            .map(|i| limiter.admit(addr([10, 0, 1, i], 1)).expect("room"))
            .collect();
        assert_eq!(
            limiter.admit(addr([10, 0, 2, 1], 1)).err(),
            Some(Refusal::Connections)
        );
        assert_eq!(counters.refused_connections.load(Ordering::Relaxed), 1);
        drop(held);
        assert!(limiter.admit(addr([10, 0, 2, 1], 1)).is_ok());
    }

    #[test]
    fn a_proven_dialer_leaves_its_address_count_but_not_the_total() {
        let (limiter, counters) = limiter(&small());
        let nat = [192, 0, 2, 1];
        // More nodes behind one address than its share: each proves itself after admission.
        let nodes: Vec<Slot> = (0..5)
            .map(|port| {
                let mut slot = limiter.admit(addr(nat, port)).expect("room");
                slot.proven();
                slot
            })
            .collect();
        assert_eq!(counters.connections.load(Ordering::Relaxed), 5);
        let _sixth = limiter
            .admit(addr(nat, 99))
            .expect("the total still has room");
        assert_eq!(
            limiter.admit(addr(nat, 100)).err(),
            Some(Refusal::Connections),
            "proven nodes still count in the total"
        );
        drop(nodes);
    }

    #[test]
    fn joiners_share_a_small_total_and_free_it_on_close() {
        let (limiter, counters) = limiter(&small());
        let mut first = limiter.admit(addr([10, 1, 0, 1], 1)).expect("room");
        let mut second = limiter.admit(addr([10, 1, 0, 2], 1)).expect("room");
        let mut third = limiter.admit(addr([10, 1, 0, 3], 1)).expect("room");
        first
            .anonymous(addr([10, 1, 0, 1], 1))
            .expect("joiner slot");
        second
            .anonymous(addr([10, 1, 0, 2], 1))
            .expect("joiner slot");
        assert_eq!(
            third.anonymous(addr([10, 1, 0, 3], 1)).err(),
            Some(Refusal::Anonymous)
        );
        assert_eq!(counters.refused_anonymous.load(Ordering::Relaxed), 1);
        assert_eq!(counters.anonymous.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(counters.anonymous.load(Ordering::Relaxed), 1);
        assert!(third.anonymous(addr([10, 1, 0, 3], 1)).is_ok());
    }

    #[test]
    fn dialers_prove_their_address_once_a_cap_is_half_taken() {
        let (limiter, _) = limiter(&small());
        let dialer = addr([10, 2, 0, 1], 1);
        assert!(!limiter.wants_validation(dialer));
        let _first = limiter.admit(dialer).expect("room");
        assert!(
            !limiter.wants_validation(dialer),
            "1 of 3 from this address"
        );
        let _second = limiter.admit(dialer).expect("room");
        assert!(limiter.wants_validation(dialer), "2 of 3 from this address");
        let elsewhere = addr([10, 2, 0, 2], 1);
        assert!(!limiter.wants_validation(elsewhere), "2 of 6 in total");
        let _third = limiter.admit(elsewhere).expect("room");
        assert!(limiter.wants_validation(elsewhere), "3 of 6 in total");
    }

    #[test]
    fn an_ipv4_dialer_on_a_dual_stack_socket_is_one_address() {
        let (limiter, _) = limiter(&small());
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("address");
        let _held: Vec<Slot> = (0..3)
            .map(|port| limiter.admit(SocketAddr::new(mapped, port)).expect("room"))
            .collect();
        assert_eq!(
            limiter.admit(addr([10, 0, 0, 7], 1)).err(),
            Some(Refusal::Address)
        );
    }

    /// A real server with `settings`, whose loop refuses every join.
    struct Server {
        addr: SocketAddr,
        ca: ClusterCa,
        counters: Arc<QuicCounters>,
        _quic: Quic,
        _dir: tempfile::TempDir,
        _calls: mpsc::Receiver<super::super::dispatch::LoopCall>,
        _peers: mpsc::Receiver<PeerCall>,
    }

    async fn server(settings: QuicSettings) -> Server {
        let ca = ClusterCa::create("edge").expect("ca");
        let me = NodeId::new("srv").expect("id");
        let issued = ca.issue(Role::Node, &me).expect("cert");
        let identity = TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
            .expect("identity");
        let quic = Quic::serve(addr([127, 0, 0, 1], 0), &identity, &settings).expect("serve");
        let dir = tempfile::tempdir().expect("tempdir");
        let (events, _) = crate::channel::bounded(1, Arc::default());
        let process = ProcessRuntime::new(
            dir.path().join("runtime"),
            events.clone(),
            ProcessConfig::default(),
        );
        let runtime = Arc::new(Runtimes::new(process, &[], Default::default(), me, events).await);
        let (calls, calls_rx) = mpsc::channel(1);
        let (peers, peers_rx) = mpsc::channel(1);
        let (joins, mut joins_rx) = mpsc::channel::<JoinCall>(4);
        tokio::spawn(async move {
            while let Some((_, reply)) = joins_rx.recv().await {
                let _ = reply.send(JoinReply::Refused("not in this test".into()));
            }
        });
        let counters = Arc::new(QuicCounters::default());
        let routes = Routes {
            api: ApiDoor {
                calls,
                logs: super::super::logs::LogSource {
                    runtime,
                    locator: Arc::default(),
                    quic: None,
                    follow_interval: Duration::from_millis(250),
                },
            },
            peers,
            joins,
            revoked: Arc::default(),
        };
        serve(
            quic.endpoint().clone(),
            routes,
            Limiter::new(&settings, counters.clone()),
            settings.request_timeout,
        );
        Server {
            addr: quic.local_addr().expect("bound"),
            ca,
            counters,
            _quic: quic,
            _dir: dir,
            _calls: calls_rx,
            _peers: peers_rx,
        }
    }

    impl Server {
        fn client(&self, role: Role, name: &str) -> quinn::ClientConfig {
            let issued = self
                .ca
                .issue(role, &NodeId::new(name).expect("id"))
                .expect("cert");
            let identity =
                TlsIdentity::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
                    .expect("identity");
            tls::client_config(&identity).expect("client config")
        }

        fn joiner(&self) -> quinn::ClientConfig {
            tls::join_client_config(self.ca.fingerprint()).expect("join config")
        }
    }

    /// A connection from local address `from` (any of 127/8 is this host).
    async fn dial(
        from: [u8; 4],
        config: quinn::ClientConfig,
        to: SocketAddr,
    ) -> Result<(quinn::Endpoint, quinn::Connection), String> {
        let mut endpoint = quinn::Endpoint::client(addr(from, 0)).map_err(|e| e.to_string())?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(to, NODE_SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "handshake timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok((endpoint, conn))
    }

    /// One join exchange: served connections answer it (a member's certificate is told it
    /// belongs already; a joiner hears the loop's refusal).
    async fn exchange(conn: &quinn::Connection) -> Result<JoinReply, String> {
        let run = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let request = Request::Join(JoinRequest {
                node: NodeId::new("newcomer").expect("id"),
                secret: [0; 16],
            });
            write_frame(&mut send, &request)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            match read_frame::<JoinReply, _>(&mut recv).await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) => Err("no answer".to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = crate::clock::monotonic() + Duration::from_secs(5);
        while !done() {
            assert!(crate::clock::monotonic() < deadline, "{what} within 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn dialers_over_their_address_share_are_refused_while_others_are_served() {
        let srv = server(QuicSettings {
            per_address_max: 3,
            ..QuicSettings::default()
        })
        .await;
        // Joiners prove nothing, so they stay in their address's count.
        let mut held = Vec::new();
        for _ in 0..3 {
            let (endpoint, conn) = dial([127, 0, 0, 1], srv.joiner(), srv.addr)
                .await
                .expect("within the share");
            assert!(exchange(&conn).await.is_ok(), "served");
            held.push((endpoint, conn));
        }
        for refused in [srv.joiner(), srv.client(Role::Node, "n1")] {
            assert!(
                dial([127, 0, 0, 1], refused, srv.addr).await.is_err(),
                "a fourth from one address is refused before its handshake, whoever it is"
            );
        }
        assert_eq!(srv.counters.refused_address.load(Ordering::Relaxed), 2);
        assert!(
            srv.counters.validations.load(Ordering::Relaxed) >= 2,
            "past half its share, each dialer proved its address first"
        );

        // Another address is served meanwhile: a joiner, an operator, a node.
        let (_endpoint, conn) = dial([127, 0, 0, 2], srv.joiner(), srv.addr)
            .await
            .expect("another address gets in");
        assert!(matches!(
            exchange(&conn).await,
            Ok(JoinReply::Refused(why)) if why.contains("not in this test")
        ));
        for role in [Role::User, Role::Node] {
            let (_endpoint, conn) = dial([127, 0, 0, 2], srv.client(role, "n2"), srv.addr)
                .await
                .expect("another address gets in");
            assert!(matches!(
                exchange(&conn).await,
                Ok(JoinReply::Refused(why)) if why.contains("already belongs")
            ));
        }

        // A closed connection gives its share back.
        let (endpoint, conn) = held.pop().expect("held");
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        // Three joiners were left: two here, one from the other address.
        until("the server notices the close", || {
            srv.counters.anonymous.load(Ordering::Relaxed) == 3
        })
        .await;
        let (_endpoint, conn) = dial([127, 0, 0, 1], srv.client(Role::Node, "n1"), srv.addr)
            .await
            .expect("room again");
        assert!(exchange(&conn).await.is_ok());
    }

    #[tokio::test]
    async fn members_and_operators_behind_one_address_are_not_capped_by_its_share() {
        let srv = server(QuicSettings {
            per_address_max: 2,
            ..QuicSettings::default()
        })
        .await;
        let mut held = Vec::new();
        for i in 0..6 {
            let role = if i % 2 == 0 { Role::Node } else { Role::User };
            let name = format!("n{i}");
            let (endpoint, conn) = dial([127, 0, 0, 1], srv.client(role, &name), srv.addr)
                .await
                .expect("a proven dialer is not counted against its address");
            assert!(exchange(&conn).await.is_ok());
            held.push((endpoint, conn));
        }
        assert_eq!(srv.counters.connections.load(Ordering::Relaxed), 6);
        assert_eq!(srv.counters.refused_address.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn joiners_beyond_their_total_are_closed_and_members_still_served() {
        let srv = server(QuicSettings {
            anonymous_max: 2,
            ..QuicSettings::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let (endpoint, conn) = dial([127, 0, 0, 1], srv.joiner(), srv.addr)
                .await
                .expect("handshake");
            assert!(matches!(
                exchange(&conn).await,
                Ok(JoinReply::Refused(why)) if why.contains("not in this test")
            ));
            held.push((endpoint, conn));
        }
        let (_endpoint, third) = dial([127, 0, 0, 1], srv.joiner(), srv.addr)
            .await
            .expect("the handshake completes; the cap applies after it");
        assert!(exchange(&third).await.is_err(), "closed by the server");
        let why = tokio::time::timeout(Duration::from_secs(5), third.closed())
            .await
            .expect("closed within 5 s")
            .to_string();
        assert!(why.contains("too many joiners"), "{why}");
        assert_eq!(srv.counters.refused_anonymous.load(Ordering::Relaxed), 1);
        let (_endpoint, member) = dial([127, 0, 0, 1], srv.client(Role::Node, "n1"), srv.addr)
            .await
            .expect("a member gets in");
        assert!(exchange(&member).await.is_ok());
    }

    #[tokio::test]
    async fn a_stream_that_never_sends_its_request_is_closed() {
        let srv = server(QuicSettings {
            request_timeout: Duration::from_millis(200),
            ..QuicSettings::default()
        })
        .await;
        let (_endpoint, conn) = dial([127, 0, 0, 1], srv.client(Role::User, "ops"), srv.addr)
            .await
            .expect("connects");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        // A stream reaches the server with its first bytes: send half a frame header.
        tokio::io::AsyncWriteExt::write_all(&mut send, &[0, 0])
            .await
            .expect("write");
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            read_frame::<starling_protocol::wire::ApiResponse, _>(&mut recv),
        )
        .await
        .expect("answered within 5 s")
        .expect("a frame")
        .expect("not the end");
        assert!(
            format!("{answer:?}").contains("no request within 200 ms"),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_opens_at_most_its_streams_at_once() {
        let srv = server(QuicSettings {
            streams_per_connection_max: 2,
            ..QuicSettings::default()
        })
        .await;
        let (_endpoint, conn) = dial([127, 0, 0, 1], srv.client(Role::User, "ops"), srv.addr)
            .await
            .expect("connects");
        let mut open = Vec::new();
        for _ in 0..2 {
            let (mut send, recv) = conn.open_bi().await.expect("within the cap");
            // Half a frame header: the server holds the stream, waiting for the rest.
            tokio::io::AsyncWriteExt::write_all(&mut send, &[0, 0])
                .await
                .expect("write");
            open.push((send, recv));
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), conn.open_bi())
                .await
                .is_err(),
            "a third stream waits for one of the two to end"
        );
        let (mut send, mut recv) = open.pop().expect("open");
        let _ = send.finish();
        // The server answers the truncated request and ends the stream.
        let _ = read_frame::<starling_protocol::wire::ApiResponse, _>(&mut recv).await;
        let _ = recv.read_to_end(1 << 10).await;
        let (_send, _recv) = tokio::time::timeout(Duration::from_secs(5), conn.open_bi())
            .await
            .expect("room for another stream once one ended")
            .expect("stream");
    }
}
