//! The proxy over real sockets: backends on 127.0.0.1, services on 127.64.7.x (Linux routes
//! all of 127/8 to `lo`, so any of those addresses can be bound). Each test has addresses of
//! its own, so they run in parallel. Nothing here asserts on time: waits poll until a
//! condition holds, within a generous bound.

mod tcp;
mod udp;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use starling_protocol::placement::ReplicaId;
use starling_protocol::service::{EndpointState, Instance, Service, ServicePort, ServiceTable};
use starling_protocol::spec::PortProtocol;
use starling_protocol::{NodeId, WorkloadName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::{ListenKey, ProxyConfig, ProxyCounters, Route, run, wanted};

/// How long a wait may poll before the test fails: far beyond anything a healthy run needs.
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

fn name(text: &str) -> WorkloadName {
    WorkloadName::new(text).expect("a valid name")
}

fn service_address(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 64, 7, last)
}

/// An instance of port `http` (or whichever `port`) at `address`.
fn instance(
    service: &str,
    index: u32,
    port: &str,
    address: SocketAddr,
    state: EndpointState,
    local: bool,
) -> Instance {
    Instance {
        node: NodeId::new(if local { "here" } else { "there" }).expect("a valid node id"),
        replica: ReplicaId {
            workload: name(service),
            index,
        },
        port: port.to_string(),
        address,
        state,
        local,
    }
}

fn ready(service: &str, index: u32, address: SocketAddr) -> Instance {
    instance(service, index, "http", address, EndpointState::Ready, false)
}

/// A service with one port (`http`, TCP, or `dns`, UDP) at `address:port`.
fn service(
    service: &str,
    address: Ipv4Addr,
    port: u16,
    protocol: PortProtocol,
    instances: Vec<Instance>,
) -> Service {
    let port_name = match protocol {
        PortProtocol::Tcp => "http",
        PortProtocol::Udp => "dns",
    };
    Service {
        name: name(service),
        address,
        ports: vec![ServicePort {
            name: port_name.to_string(),
            port,
            protocol,
        }],
        instances,
    }
}

fn table(services: Vec<Service>) -> Arc<ServiceTable> {
    Arc::new(ServiceTable {
        services: services.into_iter().map(|s| (s.name.clone(), s)).collect(),
    })
}

/// A port free for both TCP and UDP at `ip` right now.
fn free_port(ip: Ipv4Addr) -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind((ip, 0)).expect("bind a probe listener");
        let port = tcp.local_addr().expect("its address").port();
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
}

/// The running proxy of one test.
struct Proxy {
    table: watch::Sender<Arc<ServiceTable>>,
    counters: Arc<ProxyCounters>,
}

impl Proxy {
    fn start(config: ProxyConfig, first: Arc<ServiceTable>) -> Proxy {
        let (table, receiver) = watch::channel(first);
        let counters = Arc::new(ProxyCounters::new());
        tokio::spawn(run(config, receiver, counters.clone()));
        Proxy { table, counters }
    }

    fn set(&self, next: Arc<ServiceTable>) {
        self.table.send_replace(next);
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        self.counters.render(&mut out);
        out
    }

    /// The value of the series `series` (name and labels, as rendered), if rendered.
    fn metric(&self, series: &str) -> Option<u64> {
        self.metrics().lines().find_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            (head == series).then(|| value.parse().expect("an integer value"))
        })
    }
}

/// Polls `condition` until it holds; fails the test after [`PATIENCE`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = crate::clock::monotonic() + PATIENCE;
    while !condition() {
        assert!(crate::clock::monotonic() < deadline, "never: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A TCP backend: greets each connection with its id and a newline, echoes until the client's
/// EOF, then writes `bye` and closes. Runs until the test's runtime ends.
async fn backend(id: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a backend");
    let address = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(format!("{id}\n").as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf[..n]).await;
                }
                let _ = stream.write_all(b"bye").await;
                let _ = stream.shutdown().await;
            });
        }
    });
    address
}

/// An address where nothing listens: connects to it are refused.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("its address")
}

/// Connects to `address`, waiting for its listener to open.
async fn dial(address: SocketAddr) -> TcpStream {
    let deadline = crate::clock::monotonic() + PATIENCE;
    loop {
        match TcpStream::connect(address).await {
            Ok(stream) => return stream,
            Err(e) => assert!(
                crate::clock::monotonic() < deadline,
                "{address} never listened: {e}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Dials `address` and reads the greeting: the id of the backend the proxy chose. `None` when
/// the proxy closed the connection without one.
async fn greeted(address: SocketAddr) -> (TcpStream, Option<String>) {
    let mut stream = dial(address).await;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => return (stream, None),
        }
    }
    (stream, Some(String::from_utf8(line).expect("an ascii id")))
}

/// Sends `text` on an open connection and reads back its echo.
async fn echo(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; text.len()];
    stream.read_exact(&mut buf).await.expect("read the echo");
    String::from_utf8(buf).expect("ascii")
}

#[test]
fn an_extra_address_port_goes_to_the_first_service_by_name() {
    let extra = "127.64.9.1".parse().expect("an address");
    let t = table(vec![
        service("web", service_address(1), 80, PortProtocol::Tcp, vec![]),
        service("api", service_address(2), 80, PortProtocol::Tcp, vec![]),
        service("dns", service_address(3), 80, PortProtocol::Udp, vec![]),
        service("idle", service_address(4), 0, PortProtocol::Tcp, vec![]),
    ]);
    let w = wanted(&t, &[extra]);
    let at = |ip: std::net::IpAddr, protocol| ListenKey {
        protocol,
        address: SocketAddr::new(ip, 80),
    };
    let route = |s: &str, p: &str| Route {
        service: name(s),
        port: p.to_string(),
    };
    assert_eq!(
        w.routes.get(&at(extra, PortProtocol::Tcp)),
        Some(&route("api", "http"))
    );
    // Another protocol is another port: UDP 80 there is free for `dns`.
    assert_eq!(
        w.routes.get(&at(extra, PortProtocol::Udp)),
        Some(&route("dns", "dns"))
    );
    assert_eq!(
        w.routes
            .get(&at(service_address(1).into(), PortProtocol::Tcp)),
        Some(&route("web", "http"))
    );
    assert_eq!(
        w.skipped,
        vec![(
            at(extra, PortProtocol::Tcp),
            route("web", "http"),
            route("api", "http")
        )]
    );
    // Port 0 is nothing to dial: no listener.
    assert_eq!(w.routes.len(), 5);
}
