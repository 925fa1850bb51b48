//! The server on real sockets (127.0.0.1, port 0), asked with messages hickory-proto builds:
//! what each kind of name answers here; abuse (malformed packets, floods, truncation, TCP) in
//! `abuse`; the pure `respond` against arbitrary bytes in `fuzz`.

mod abuse;
mod fuzz;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use starling_protocol::names::{NodeId, WorkloadName};
use starling_protocol::placement::{Liveness, ReplicaId};
use starling_protocol::service::{Endpoint, EndpointState, ServiceTable};
use starling_protocol::spec::WorkloadSpec;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::*;

/// `web` (tcp `http` 8080, udp `stats` 9000) and `db` (tcp `pg` 5432), three replicas each.
fn specs() -> Vec<WorkloadSpec> {
    let spec = |name: &str, ports: &str| {
        WorkloadSpec::from_toml(&format!(
            "name = \"{name}\"\ncommand = \"sleep\"\nreplicas = 3\n{ports}"
        ))
        .expect("valid spec")
    };
    vec![
        spec(
            "web",
            "[[ports]]\nname = \"http\"\nport = 8080\n[[ports]]\nname = \"stats\"\nport = 9000\nprotocol = \"udp\"\n",
        ),
        spec("db", "[[ports]]\nname = \"pg\"\nport = 5432\n"),
    ]
}

/// A published instance of `workload`.
fn entry(workload: &str, index: u32, port: &str, address: &str, state: EndpointState) -> String {
    Endpoint {
        replica: ReplicaId {
            workload: WorkloadName::new(workload).expect("name"),
            index,
        },
        port: port.into(),
        address: address.parse().expect("address"),
        state,
    }
    .entry()
}

/// The table node `a` builds when it alone publishes `entries`.
fn table(entries: &[String]) -> Arc<ServiceTable> {
    let me = NodeId::new("a").expect("node");
    let specs = specs();
    Arc::new(ServiceTable::build(
        &specs,
        &me,
        [(&me, Liveness::Alive, entries)],
    ))
}

/// `web`'s http: r0 ready, r1 unhealthy, r2 ready on two nodes, r3 draining.
fn web_entries() -> Vec<String> {
    vec![
        entry("web", 0, "http", "10.0.0.1:31000", EndpointState::Ready),
        entry("web", 1, "http", "10.0.0.2:31001", EndpointState::Unhealthy),
        entry("web", 2, "http", "10.0.0.3:31002", EndpointState::Ready),
        entry("web", 2, "http", "[fd00::3]:31003", EndpointState::Ready),
        entry("web", 3, "http", "10.0.0.4:31004", EndpointState::Draining),
    ]
}

/// A running server with its table's sender and counters.
struct Running {
    server: DnsServer,
    tables: watch::Sender<Arc<ServiceTable>>,
    counters: Arc<DnsCounters>,
}

impl Running {
    fn addr(&self) -> SocketAddr {
        self.server.local_addrs()[0]
    }
}

async fn start_with(
    listen: Vec<ServiceAnswer>,
    per_client_qps: u32,
    table: Arc<ServiceTable>,
) -> Running {
    let (tables, receiver) = watch::channel(table);
    let counters = Arc::new(DnsCounters::default());
    let config = DnsConfig {
        listen: listen
            .into_iter()
            .map(|answer| Listener {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                answer,
            })
            .collect(),
        per_client_qps,
    };
    let server = serve(config, receiver, counters.clone())
        .await
        .expect("serve");
    Running {
        server,
        tables,
        counters,
    }
}

async fn start(table: Arc<ServiceTable>) -> Running {
    start_with(vec![ServiceAnswer::ServiceAddress], 1000, table).await
}

/// A query for `name`, with an EDNS record offering `edns_payload` bytes if given.
fn query(name: &str, rtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message
}

/// Sends `bytes` from `socket` to `server`; the answer's bytes, or `None` after 500 ms.
async fn exchange(socket: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(bytes, server).await.expect("send");
    let mut buffer = vec![0u8; 65_536];
    let received = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buffer));
    let len = received.await.ok()?.expect("receive");
    buffer.truncate(len);
    Some(buffer)
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("client socket")
}

/// Asks `name` over UDP; checks the answer echoes the id and the question.
async fn ask_with(server: SocketAddr, message: Message) -> Message {
    let socket = client().await;
    let bytes = exchange(&socket, server, &message.to_vec().expect("encode"))
        .await
        .expect("an answer");
    let answer = Message::from_vec(&bytes).expect("the answer decodes");
    assert_eq!(answer.metadata.id, message.metadata.id, "the id is echoed");
    assert_eq!(answer.metadata.message_type, MessageType::Response);
    assert_eq!(answer.queries, message.queries, "the question is echoed");
    assert!(answer.metadata.recursion_desired, "RD is copied");
    assert!(!answer.metadata.recursion_available, "no recursion here");
    answer
}

async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    ask_with(server, query(name, rtype, None)).await
}

/// The addresses in `records` (A and AAAA), in order.
fn addresses(records: &[hickory_proto::rr::Record]) -> Vec<IpAddr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

/// (port, target) of each SRV record, sorted.
fn srv_targets(answer: &Message) -> Vec<(u16, String)> {
    let mut out: Vec<(u16, String)> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.port, srv.target.to_ascii())),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn web_address(table: &ServiceTable) -> Ipv4Addr {
    table.services[&WorkloadName::new("web").expect("name")].address
}

#[tokio::test]
async fn a_service_name_answers_its_loopback_address() {
    let table = table(&web_entries());
    let running = start(table.clone()).await;
    let answer = ask(running.addr(), "Web.SVC.starling.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative, "AA for the zone");
    assert_eq!(
        addresses(&answer.answers),
        [IpAddr::V4(web_address(&table))]
    );
    assert_eq!(answer.answers[0].ttl, SERVICE_TTL_SECS);
    assert_eq!(
        answer.answers[0].name.to_ascii(),
        "Web.SVC.starling.",
        "the owner is the name as asked"
    );
    // Service addresses are IPv4: AAAA is NODATA, with the SOA for negative caching.
    let answer = ask(running.addr(), "web.svc.starling.", RecordType::AAAA).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities.len(), 1);
    assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(running.counters.answered.load(Ordering::Relaxed), 1);
    assert_eq!(running.counters.nodata.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn srv_lists_only_ready_instances_with_their_addresses() {
    let running = start(table(&web_entries())).await;
    let answer = ask(
        running.addr(),
        "_http._tcp.web.svc.starling.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(
        srv_targets(&answer),
        [
            (31000, "r0.web.svc.starling.".to_string()),
            (31002, "r2.web.svc.starling.".to_string()),
            (31003, "r2.web.svc.starling.".to_string()),
        ],
        "unhealthy r1 and draining r3 are left out; r2's two instances share a target"
    );
    assert!(answer.answers.iter().all(|r| r.ttl == INSTANCE_TTL_SECS));
    for record in &answer.answers {
        let RData::SRV(srv) = &record.data else {
            panic!("not SRV: {record:?}");
        };
        assert_eq!((srv.priority, srv.weight), (0, 1));
    }
    let mut extra: Vec<(String, IpAddr)> = answer
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), addresses(std::slice::from_ref(r))[0]))
        .collect();
    extra.sort();
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    assert_eq!(
        extra,
        [
            ("r0.web.svc.starling.".to_string(), v4(10, 0, 0, 1)),
            ("r2.web.svc.starling.".to_string(), v4(10, 0, 0, 3)),
            (
                "r2.web.svc.starling.".to_string(),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3))
            ),
        ]
    );
    // The SRV name has no address of its own: NODATA.
    let answer = ask(
        running.addr(),
        "_http._tcp.web.svc.starling.",
        RecordType::A,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
}

#[tokio::test]
async fn an_instance_that_stops_being_ready_leaves_srv_at_once() {
    let ready = [
        entry("db", 0, "pg", "10.0.0.1:5432", EndpointState::Ready),
        entry("db", 1, "pg", "10.0.0.2:5432", EndpointState::Ready),
    ];
    let running = start(table(&ready)).await;
    let name = "_pg._tcp.db.svc.starling.";
    assert_eq!(
        srv_targets(&ask(running.addr(), name, RecordType::SRV).await).len(),
        2
    );
    let unhealthy = [
        entry("db", 0, "pg", "10.0.0.1:5432", EndpointState::Ready),
        entry("db", 1, "pg", "10.0.0.2:5432", EndpointState::Unhealthy),
    ];
    running.tables.send_replace(table(&unhealthy));
    assert_eq!(
        srv_targets(&ask(running.addr(), name, RecordType::SRV).await),
        [(5432, "r0.db.svc.starling.".to_string())]
    );
    let draining = [
        entry("db", 0, "pg", "10.0.0.1:5432", EndpointState::Draining),
        entry("db", 1, "pg", "10.0.0.2:5432", EndpointState::Unhealthy),
    ];
    running.tables.send_replace(table(&draining));
    let answer = ask(running.addr(), name, RecordType::SRV).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty(), "no ready instance: NODATA");
    // The replica name still exists but has no ready address either.
    let answer = ask(running.addr(), "r1.db.svc.starling.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
}

#[tokio::test]
async fn replica_names_answer_their_ready_node_addresses_by_family() {
    let running = start(table(&web_entries())).await;
    let answer = ask(running.addr(), "r2.web.svc.starling.", RecordType::A).await;
    assert_eq!(addresses(&answer.answers), [IpAddr::from([10, 0, 0, 3])]);
    assert_eq!(answer.answers[0].ttl, INSTANCE_TTL_SECS);
    let answer = ask(running.addr(), "r2.web.svc.starling.", RecordType::AAAA).await;
    assert_eq!(
        addresses(&answer.answers),
        [IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3))]
    );
    let answer = ask(running.addr(), "r1.web.svc.starling.", RecordType::A).await;
    assert!(answer.answers.is_empty(), "r1 is unhealthy");
    let answer = ask(running.addr(), "r2.web.svc.starling.", RecordType::MX).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty(), "other types: NODATA");
}

#[tokio::test]
async fn unknown_names_are_nxdomain_and_names_outside_are_refused() {
    let running = start(table(&web_entries())).await;
    for unknown in [
        "nope.svc.starling.",
        "r9.web.svc.starling.",
        "_stats._tcp.web.svc.starling.",
        "a.b.web.svc.starling.",
    ] {
        let answer = ask(running.addr(), unknown, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{unknown}"
        );
        assert!(answer.metadata.authoritative, "{unknown}");
        assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(answer.authorities[0].ttl, NEGATIVE_TTL_SECS);
    }
    for outside in ["example.com.", "starling.", "websvc.starling."] {
        let answer = ask(running.addr(), outside, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{outside}"
        );
        assert!(!answer.metadata.authoritative, "{outside}");
        assert!(answer.answers.is_empty());
    }
    // Names that exist only because names below them do are NODATA, not NXDOMAIN: the apex
    // (which has the SOA) and `_tcp.NAME` above the SRV names.
    let answer = ask(running.addr(), "svc.starling.", RecordType::SOA).await;
    assert_eq!(answer.answers[0].record_type(), RecordType::SOA);
    for existing in [
        "svc.starling.",
        "_tcp.web.svc.starling.",
        "_udp.web.svc.starling.",
    ] {
        let answer = ask(running.addr(), existing, RecordType::A).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{existing}"
        );
        assert!(answer.answers.is_empty(), "{existing}");
    }
    let c = &running.counters;
    assert_eq!(c.nxdomain.load(Ordering::Relaxed), 4);
    assert_eq!(c.refused.load(Ordering::Relaxed), 3);
    assert_eq!(c.queries.load(Ordering::Relaxed), 4 + 3 + 1 + 3);
}

#[tokio::test]
async fn a_fixed_listener_answers_its_own_address() {
    let gateway = IpAddr::from([172, 17, 0, 1]);
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let table = table(&web_entries());
    let listen = vec![
        ServiceAnswer::ServiceAddress,
        ServiceAnswer::Fixed(gateway),
        ServiceAnswer::Fixed(v6),
    ];
    let running = start_with(listen, 1000, table.clone()).await;
    let [host, bridge, bridge6] = running.server.local_addrs() else {
        panic!("three listeners: {:?}", running.server.local_addrs());
    };
    let name = "web.svc.starling.";
    let host_answer = ask(*host, name, RecordType::A).await;
    assert_eq!(
        addresses(&host_answer.answers),
        [IpAddr::V4(web_address(&table))]
    );
    assert_eq!(
        addresses(&ask(*bridge, name, RecordType::A).await.answers),
        [gateway]
    );
    assert!(
        ask(*bridge, name, RecordType::AAAA)
            .await
            .answers
            .is_empty()
    );
    assert_eq!(
        addresses(&ask(*bridge6, name, RecordType::AAAA).await.answers),
        [v6]
    );
    assert!(ask(*bridge6, name, RecordType::A).await.answers.is_empty());
    // Replica names are node addresses whatever the listener.
    let replica = ask(*bridge, "r0.web.svc.starling.", RecordType::A).await;
    assert_eq!(addresses(&replica.answers), [IpAddr::from([10, 0, 0, 1])]);
}

#[tokio::test]
async fn binding_a_taken_address_fails_naming_it_and_shutdown_frees_the_port() {
    let running = start(table(&[])).await;
    let taken = running.addr();
    let (_tables, receiver) = watch::channel(table(&[]));
    let config = DnsConfig {
        listen: vec![Listener {
            addr: taken,
            answer: ServiceAnswer::ServiceAddress,
        }],
        per_client_qps: 10,
    };
    let error = serve(config.clone(), receiver.clone(), Arc::default())
        .await
        .expect_err("the port is taken");
    assert!(error.to_string().contains(&taken.to_string()), "{error}");
    running.server.shutdown().await;
    let again = serve(config, receiver, Arc::default())
        .await
        .expect("free again");
    assert_eq!(again.local_addrs(), [taken]);
}

#[test]
fn counters_render_as_prometheus_text() {
    let counters = DnsCounters::default();
    counters.queries.fetch_add(7, Ordering::Relaxed);
    counters.rate_limited.fetch_add(3, Ordering::Relaxed);
    let mut out = String::new();
    counters.render(&mut out);
    assert!(
        out.contains("# TYPE starling_dns_queries_total counter\nstarling_dns_queries_total 7\n")
    );
    assert!(out.contains("starling_dns_dropped_total{reason=\"rate_limited\"} 3\n"));
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("starling_dns_"), "{line}");
        let value = line.rsplit(' ').next().expect("a value");
        assert!(value.parse::<u64>().is_ok(), "{line}");
    }
}
