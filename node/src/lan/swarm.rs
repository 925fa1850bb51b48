//! The libp2p side of LAN discovery: one swarm (TCP with noise and yamux, mDNS, identify, and
//! a request-response protocol that carries admission tokens) driven by its own task.
//!
//! Every peer mDNS finds is dialled once, so identify runs both ways on that connection: the
//! dialled side learns of the dialler too, which matters because mDNS answers tell a querier
//! about the others but not the others about the querier. Connections close when idle
//! (nothing keeps them open after identify), so a quiet LAN costs mDNS's own refresh only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, identify, mdns};
use starling_protocol::NodeId;
use starling_protocol::api::PendingRow;
use tokio::sync::{mpsc, oneshot};

use super::{
    AdmitAnswer, AdmitOffer, Announcement, Found, LanError, PendingBook, Role, classify,
    discovery_addr,
};
use crate::clock::now_ms;

/// The identify protocol's version string.
const IDENTIFY_PROTOCOL: &str = "/starling/id/1";
/// The admission protocol.
const ADMIT_PROTOCOL: &str = "/starling/admit/1";
/// How long a device stays listed once mDNS no longer holds it (mDNS's own expiry also
/// removes it; this catches a device found only through its own dial).
const PENDING_TTL_MS: u64 = 7 * 60 * 1000;
/// How long an admission waits for the device's answer.
const ADMIT_TIMEOUT: Duration = Duration::from_secs(15);
/// How often unidentified peers are dialled again and the waiting book tidied.
const TIDY_EVERY: Duration = Duration::from_secs(5);
/// How long a waiting device keeps its discovery running after it answered a token.
const ANSWER_FLUSH: Duration = Duration::from_millis(500);
/// How often mDNS asks the LAN who is there (it also asks at start, and answers every
/// query at once). Every member answers every query, so this is the LAN's steady cost.
const QUERY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(NetworkBehaviour)]
struct Behaviour {
    mdns: mdns::tokio::Behaviour,
    identify: identify::Behaviour,
    admit: request_response::json::Behaviour<AdmitOffer, AdmitAnswer>,
}

/// A member's discovery: its task, and the devices waiting that it found.
pub struct Lan {
    book: Arc<Mutex<PendingBook>>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Command {
    Admit {
        peer: PeerId,
        offer: AdmitOffer,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Whether a waiting device takes a token: `Err` says why not.
type Check = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// What the task does with what it hears.
enum Mode {
    /// A member: seeds go to `found`, waiting devices to `book`.
    Member {
        found: mpsc::Sender<(NodeId, SocketAddr)>,
        book: Arc<Mutex<PendingBook>>,
    },
    /// A device waiting to join: a token that `check` accepts goes to `taken`.
    Pending {
        check: Box<Check>,
        taken: mpsc::Sender<String>,
    },
}

impl Lan {
    /// Starts a member's discovery on `listen`'s discovery port. Members of its cluster that
    /// it finds go to `found` as `(node, base address)`.
    pub fn start(
        listen: SocketAddr,
        me: &Announcement,
        found: mpsc::Sender<(NodeId, SocketAddr)>,
    ) -> Result<Lan, LanError> {
        let swarm = build(listen, me)?;
        let book = Arc::new(Mutex::new(PendingBook::default()));
        let (commands, rx) = mpsc::channel(16);
        let driver = Driver::new(
            swarm,
            me.role.clone(),
            Mode::Member {
                found,
                book: book.clone(),
            },
        );
        let task = tokio::spawn(driver.run(Some(rx)));
        Ok(Lan {
            book,
            commands,
            task,
        })
    }

    /// The devices waiting to join, as found so far.
    pub fn pending(&self) -> Vec<PendingRow> {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rows(now_ms())
    }

    /// The devices an admission names, with the peer to send each token to (see
    /// [`PendingBook::pick`]).
    pub fn pick(&self, nodes: &[NodeId], all: bool) -> Vec<(NodeId, Result<String, String>)> {
        self.book
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pick(nodes, all)
    }

    /// Hands `token` to the waiting device `peer` and waits for its answer.
    pub fn admit(
        &self,
        peer: &str,
        token: String,
        by: &NodeId,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static + use<> {
        let commands = self.commands.clone();
        let book = self.book.clone();
        let peer_text = peer.to_string();
        let offer = AdmitOffer {
            token,
            by: by.to_string(),
        };
        async move {
            let peer: PeerId = peer_text
                .parse()
                .map_err(|_| format!("{peer_text:?} is not a discovery peer id"))?;
            let (reply, answer) = oneshot::channel();
            commands
                .send(Command::Admit { peer, offer, reply })
                .await
                .map_err(|_| "LAN discovery has stopped".to_string())?;
            let outcome = answer
                .await
                .unwrap_or_else(|_| Err("LAN discovery has stopped".to_string()));
            if outcome.is_ok() {
                book.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget_peer(&peer_text);
            }
            outcome
        }
    }
}

/// Announces this device as waiting to join, on `listen`'s discovery port, until a member
/// sends it a token that `check` accepts; returns that token. Every token offered is
/// answered: taken, or refused with `check`'s reason.
pub async fn wait_for_admission(
    listen: SocketAddr,
    me: &Announcement,
    check: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
) -> Result<String, LanError> {
    let swarm = build(listen, me)?;
    let (taken, mut tokens) = mpsc::channel(1);
    let driver = Driver::new(
        swarm,
        Role::Pending,
        Mode::Pending {
            check: Box::new(check),
            taken,
        },
    );
    let task = tokio::spawn(driver.run(None));
    let token = tokens.recv().await;
    // "Sent" means handed to the stream: keep the swarm polled a moment so the answer leaves
    // before the connection goes with the task (the member would count the device as silent).
    tokio::time::sleep(ANSWER_FLUSH).await;
    task.abort();
    token.ok_or_else(|| LanError::Start {
        addr: discovery_addr(listen),
        why: "discovery stopped before any member admitted this device".into(),
    })
}

fn multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

fn build(listen: SocketAddr, me: &Announcement) -> Result<Swarm<Behaviour>, LanError> {
    let addr = discovery_addr(listen);
    let failed = |why: String| LanError::Start { addr, why };
    let agent_version = me.encode();
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .map_err(|e| failed(format!("noise: {e}")))?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mdns = mdns::tokio::Behaviour::new(
                mdns::Config {
                    query_interval: QUERY_INTERVAL,
                    ..mdns::Config::default()
                },
                peer,
            )?;
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(agent_version)
                    // Announcements never change in a life; no pushes, no periodic repeats.
                    .with_push_listen_addr_updates(false)
                    .with_interval(Duration::from_secs(3600)),
            );
            let admit = request_response::json::Behaviour::new(
                [(StreamProtocol::new(ADMIT_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(ADMIT_TIMEOUT),
            );
            Ok(Behaviour {
                mdns,
                identify,
                admit,
            })
        })
        .map_err(|e| failed(format!("mDNS: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(10)))
        .build();
    swarm
        .listen_on(multiaddr(addr))
        .map_err(|e| failed(e.to_string()))?;
    Ok(swarm)
}

struct Driver {
    swarm: Swarm<Behaviour>,
    me: Role,
    mode: Mode,
    /// Where each open connection comes from: the address a seed is taken at.
    remotes: BTreeMap<ConnectionId, IpAddr>,
    /// Peers already identified, so a refreshed mDNS record is not dialled again.
    identified: BTreeSet<PeerId>,
    /// Admissions waiting for the device's answer.
    admitting: BTreeMap<request_response::OutboundRequestId, oneshot::Sender<Result<(), String>>>,
    /// Tokens this device took, by the inbound request that brought them.
    taking: BTreeMap<request_response::InboundRequestId, String>,
}

impl Driver {
    fn new(swarm: Swarm<Behaviour>, me: Role, mode: Mode) -> Self {
        Driver {
            swarm,
            me,
            mode,
            remotes: BTreeMap::new(),
            identified: BTreeSet::new(),
            admitting: BTreeMap::new(),
            taking: BTreeMap::new(),
        }
    }

    async fn run(mut self, mut commands: Option<mpsc::Receiver<Command>>) {
        let mut tidy = tokio::time::interval(TIDY_EVERY);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event).await,
                command = recv(&mut commands) => match command {
                    Some(command) => self.on_command(command),
                    // The agent dropped its handle: it is stopping.
                    None => return,
                },
                _ = tidy.tick() => {
                    self.redial();
                    self.refresh_book();
                }
            }
        }
    }

    /// Dials again the peers mDNS holds that were never identified: a dial that failed (the
    /// peer's listener not up yet, a lost packet) is otherwise never retried, since mDNS
    /// reports a record once until it expires.
    fn redial(&mut self) {
        let unknown: Vec<PeerId> = self
            .swarm
            .behaviour()
            .mdns
            .discovered_nodes()
            .filter(|p| !self.identified.contains(*p) && !self.swarm.is_connected(p))
            .copied()
            .collect();
        for peer in unknown {
            // mDNS hands the swarm the addresses it holds for the peer.
            let dial = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(dial) {
                tracing::debug!(%peer, "LAN discovery: cannot dial again: {e}");
            }
        }
    }

    fn dial_all(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        for (peer, addr) in found {
            if self.identified.contains(&peer) || self.swarm.is_connected(&peer) {
                continue;
            }
            let dial = DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(dial) {
                tracing::debug!(%peer, %addr, "LAN discovery: cannot dial: {e}");
            }
        }
    }

    /// Keeps listed the waiting devices mDNS still holds (identify ran once, when each was
    /// found), and drops those it has not held for [`PENDING_TTL_MS`].
    fn refresh_book(&mut self) {
        let Mode::Member { book, .. } = &self.mode else {
            return;
        };
        let held: BTreeSet<String> = self
            .swarm
            .behaviour()
            .mdns
            .discovered_nodes()
            .map(|p| p.to_string())
            .collect();
        let now = now_ms();
        let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
        for peer in book.peers() {
            if held.contains(&peer) {
                book.touch(&peer, now);
            }
        }
        book.expire(now, PENDING_TTL_MS);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Admit { peer, offer, reply } => {
                let id = self.swarm.behaviour_mut().admit.send_request(&peer, offer);
                self.admitting.insert(id, reply);
            }
        }
    }

    async fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                connection_id,
                endpoint,
                ..
            } => {
                if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                    self.remotes.insert(connection_id, ip);
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.remotes.remove(&connection_id);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::debug!(%address, "LAN discovery listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.on_mdns(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                connection_id,
                peer_id,
                info,
            })) => {
                self.on_identified(connection_id, peer_id, &info.agent_version)
                    .await
            }
            SwarmEvent::Behaviour(BehaviourEvent::Admit(event)) => self.on_admit(event).await,
            _ => {}
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        match event {
            mdns::Event::Discovered(found) => self.dial_all(found),
            mdns::Event::Expired(gone) => {
                for (peer, _) in gone {
                    // A peer with several addresses expires once per address: forget it once
                    // mDNS holds none.
                    let still = self
                        .swarm
                        .behaviour()
                        .mdns
                        .discovered_nodes()
                        .any(|p| *p == peer);
                    if !still {
                        self.identified.remove(&peer);
                        if let Mode::Member { book, .. } = &self.mode {
                            book.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .forget_peer(&peer.to_string());
                        }
                    }
                }
            }
        }
    }

    async fn on_identified(&mut self, connection: ConnectionId, peer: PeerId, agent_version: &str) {
        let Some(observed) = self.remotes.get(&connection).copied() else {
            return;
        };
        let heard = match Announcement::parse(agent_version) {
            Ok(heard) => heard,
            Err(why) => {
                tracing::debug!(%peer, %observed, "LAN discovery: ignored a peer: {why}");
                return;
            }
        };
        let first = self.identified.insert(peer);
        let Mode::Member { found, book } = &self.mode else {
            return;
        };
        match classify(&self.me, &heard, observed) {
            Found::Seed { node, base } => {
                book.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget_node(&node);
                if first {
                    tracing::info!(%node, %base, "found a member on the LAN");
                }
                let _ = found.send((node, base)).await;
            }
            Found::Waiting(node) => {
                if first {
                    tracing::info!(%node, %observed, %peer, "a device is waiting to join (starling node admit {node})");
                }
                let address = SocketAddr::new(observed, heard.base.port());
                book.lock().unwrap_or_else(|e| e.into_inner()).seen(
                    &peer.to_string(),
                    node,
                    address,
                    now_ms(),
                );
            }
            Found::Ignored(why) => {
                tracing::debug!(node = %heard.node, %observed, "LAN discovery: ignored: {why}");
            }
        }
    }

    async fn on_admit(&mut self, event: request_response::Event<AdmitOffer, AdmitAnswer>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    let answer = match &self.mode {
                        Mode::Pending { check, .. } => match check(&request.token) {
                            Ok(()) => {
                                tracing::info!(by = %request.by, %peer, "took a join token over the LAN");
                                self.taking.insert(request_id, request.token);
                                AdmitAnswer::Taken
                            }
                            Err(why) => {
                                tracing::warn!(by = %request.by, %peer, "refused a join token over the LAN: {why}");
                                AdmitAnswer::Refused(why)
                            }
                        },
                        Mode::Member { .. } => {
                            AdmitAnswer::Refused("this node is already a member".into())
                        }
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .admit
                        .send_response(channel, answer);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.admitting.remove(&request_id) {
                        let _ = reply.send(match response {
                            AdmitAnswer::Taken => Ok(()),
                            AdmitAnswer::Refused(why) => Err(format!("the device refused: {why}")),
                        });
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.admitting.remove(&request_id) {
                    let _ = reply.send(Err(format!(
                        "the device did not answer ({error}); if it took the token anyway it \
                         shows in `starling nodes` shortly, else admit it again"
                    )));
                }
            }
            // The answer is out (or could not be sent: the member's side then times out, and
            // the token is ours all the same): join with it.
            request_response::Event::ResponseSent { request_id, .. }
            | request_response::Event::InboundFailure { request_id, .. } => {
                if let (Some(token), Mode::Pending { taken, .. }) =
                    (self.taking.remove(&request_id), &self.mode)
                {
                    let _ = taken.send(token).await;
                }
            }
        }
    }
}

async fn recv(commands: &mut Option<mpsc::Receiver<Command>>) -> Option<Command> {
    match commands {
        Some(rx) => rx.recv().await,
        // A waiting device takes no commands: never resolves.
        None => std::future::pending().await,
    }
}
