use std::net::{IpAddr, SocketAddr};

use super::limits::{Refusal, Slot};
use super::*;
use crate::identity::ClusterCa;
use crate::net::quic::Quic;
use crate::net::quic::QuicSettings;
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
    let identity =
        TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).expect("identity");
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
            events: crate::events::EventSource {
                node: NodeId::new("srv").expect("id"),
                log: Arc::new(std::sync::Mutex::new(crate::events::EventLog::open(
                    dir.path().join("events"),
                    crate::events::SEGMENT_BYTES_DEFAULT,
                ))),
                members: Arc::default(),
                quic: None,
                peer_timeout: Duration::from_secs(1),
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
        let identity = TlsIdentity::from_pem(self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem)
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
    for role in [Role::User(OperatorRole::Admin), Role::Node] {
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
        let role = if i % 2 == 0 {
            Role::Node
        } else {
            Role::User(OperatorRole::Admin)
        };
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
    let (_endpoint, conn) = dial(
        [127, 0, 0, 1],
        srv.client(Role::User(OperatorRole::Admin), "ops"),
        srv.addr,
    )
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
    let (_endpoint, conn) = dial(
        [127, 0, 0, 1],
        srv.client(Role::User(OperatorRole::Admin), "ops"),
        srv.addr,
    )
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

#[tokio::test]
async fn a_viewer_is_refused_a_write_at_the_door_and_counted() {
    let srv = server(QuicSettings::default()).await;
    let viewer = srv.client(Role::User(OperatorRole::Viewer), "eve");
    let (_endpoint, conn) = dial([127, 0, 0, 1], viewer, srv.addr)
        .await
        .expect("a viewer's certificate connects");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let delete = starling_protocol::wire::ApiRequest::Delete {
        name: starling_protocol::WorkloadName::new("web").expect("valid"),
    };
    write_frame(&mut send, &Request::Api(delete))
        .await
        .expect("write");
    let _ = send.finish();
    // The server's loop never answers in this test: only the door can have answered.
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        read_frame::<starling_protocol::wire::ApiResponse, _>(&mut recv),
    )
    .await
    .expect("answered within 5 s")
    .expect("a frame")
    .expect("not the end");
    assert!(
        format!("{answer:?}").contains(
            "operator eve (viewer) may not delete workloads; ask an admin for a deployer certificate"
        ),
        "{answer:?}"
    );
    let refused = &srv.counters.refused_requests;
    assert_eq!(refused.viewer.load(Ordering::Relaxed), 1);
    assert_eq!(refused.deployer.load(Ordering::Relaxed), 0);
}
