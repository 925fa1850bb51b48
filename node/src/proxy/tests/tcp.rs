//! TCP through the proxy: spreading, retries, draining, locality, half-close, listeners that
//! follow the table, metrics.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[tokio::test]
async fn connections_spread_over_every_ready_instance() {
    let ip = service_address(10);
    let port = free_port(ip);
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let instances = (0..3)
        .map(|i| ready("web", i, backends[i as usize]))
        .collect();
    let proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    // Held open, so each choice sees the others' load.
    let mut open = Vec::new();
    let mut by_backend: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..30 {
        let (stream, id) = greeted(SocketAddr::new(ip.into(), port)).await;
        *by_backend
            .entry(id.expect("a backend answered"))
            .or_default() += 1;
        open.push(stream);
    }
    assert_eq!(by_backend.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    for (id, address) in ["a", "b", "c"].iter().zip(backends) {
        let series = format!(
            "starling_proxy_connections_active{{service=\"web\",port=\"http\",instance=\"{address}\"}}"
        );
        assert_eq!(proxy.metric(&series), Some(by_backend[*id]), "{series}");
    }
}

#[tokio::test]
async fn a_refusing_instance_is_retried_and_the_client_never_notices() {
    let ip = service_address(11);
    let port = free_port(ip);
    let dead = closed_port();
    let live = backend("live").await;
    // The dead instance is local, so it is always tried first and every connection retries.
    let instances = vec![
        instance("web", 0, "http", dead, EndpointState::Ready, true),
        ready("web", 1, live),
    ];
    let proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    for _ in 0..5 {
        let (mut stream, id) = greeted(SocketAddr::new(ip.into(), port)).await;
        assert_eq!(id.as_deref(), Some("live"));
        assert_eq!(echo(&mut stream, "ping").await, "ping");
    }
    let labels = |address| format!("{{service=\"web\",port=\"http\",instance=\"{address}\"}}");
    assert_eq!(
        proxy.metric("starling_proxy_retries_total{service=\"web\",port=\"http\"}"),
        Some(5)
    );
    assert_eq!(
        proxy.metric(&format!(
            "starling_proxy_connect_failures_total{}",
            labels(dead)
        )),
        Some(5)
    );
    assert_eq!(
        proxy.metric(&format!(
            "starling_proxy_retried_connections_total{}",
            labels(live)
        )),
        Some(5)
    );
}

#[tokio::test]
async fn a_client_is_closed_only_when_no_instance_is_left() {
    let ip = service_address(12);
    let port = free_port(ip);
    let instances = vec![
        ready("web", 0, closed_port()),
        ready("web", 1, closed_port()),
    ];
    let proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    let (_, id) = greeted(SocketAddr::new(ip.into(), port)).await;
    assert_eq!(id, None);
    let unserved = |reason| {
        proxy.metric(&format!(
            "starling_proxy_unserved_total{{service=\"web\",port=\"http\",reason=\"{reason}\"}}"
        ))
    };
    // Both were tried (one retry), then the client was closed.
    until("the client counted as unserved", || {
        unserved("connect_failed") == Some(1)
    })
    .await;
    assert_eq!(
        proxy.metric("starling_proxy_retries_total{service=\"web\",port=\"http\"}"),
        Some(1)
    );
    proxy.set(table(vec![service(
        "web",
        ip,
        port,
        PortProtocol::Tcp,
        vec![],
    )]));
    let (_, id) = greeted(SocketAddr::new(ip.into(), port)).await;
    assert_eq!(id, None);
    until("the client counted as finding no instance", || {
        unserved("no_instance") == Some(1)
    })
    .await;
}

#[tokio::test]
async fn a_draining_instance_takes_no_new_connections_but_keeps_its_open_ones() {
    let ip = service_address(13);
    let port = free_port(ip);
    let (old, new) = (backend("old").await, backend("new").await);
    let with = |state| {
        table(vec![service(
            "web",
            ip,
            port,
            PortProtocol::Tcp,
            vec![
                instance("web", 0, "http", old, state, true),
                ready("web", 1, new),
            ],
        )])
    };
    let proxy = Proxy::start(ProxyConfig::default(), with(EndpointState::Ready));
    let address = SocketAddr::new(ip.into(), port);
    let (mut held, id) = greeted(address).await;
    assert_eq!(id.as_deref(), Some("old"), "the local instance first");
    for state in [EndpointState::Draining, EndpointState::Unhealthy] {
        proxy.set(with(state));
        for _ in 0..5 {
            let (_, id) = greeted(address).await;
            assert_eq!(id.as_deref(), Some("new"), "{state} takes nothing new");
        }
        assert_eq!(echo(&mut held, "still there").await, "still there");
    }
    // Gone from the table altogether: the open connection still runs.
    proxy.set(table(vec![service(
        "web",
        ip,
        port,
        PortProtocol::Tcp,
        vec![ready("web", 1, new)],
    )]));
    let (_, id) = greeted(address).await;
    assert_eq!(id.as_deref(), Some("new"));
    assert_eq!(echo(&mut held, "and still").await, "and still");
}

#[tokio::test]
async fn local_instances_are_preferred_whatever_their_load() {
    let ip = service_address(14);
    let port = free_port(ip);
    let instances = vec![
        ready("web", 0, backend("far").await),
        ready("web", 1, backend("farther").await),
        instance(
            "web",
            2,
            "http",
            backend("near").await,
            EndpointState::Ready,
            true,
        ),
    ];
    let _proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    let mut open = Vec::new();
    for _ in 0..10 {
        let (stream, id) = greeted(SocketAddr::new(ip.into(), port)).await;
        assert_eq!(id.as_deref(), Some("near"));
        open.push(stream);
    }
}

#[tokio::test]
async fn a_half_close_reaches_the_instance_and_its_answer_still_comes_back() {
    let ip = service_address(15);
    let port = free_port(ip);
    let instances = vec![ready("web", 0, backend("a").await)];
    let _proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    let (mut stream, id) = greeted(SocketAddr::new(ip.into(), port)).await;
    assert_eq!(id.as_deref(), Some("a"));
    stream.write_all(b"hello").await.expect("write");
    stream.shutdown().await.expect("shut down writing");
    // The backend writes `bye` only once it has read EOF.
    let mut rest = String::new();
    stream.read_to_string(&mut rest).await.expect("read to EOF");
    assert_eq!(rest, "hellobye");
}

#[tokio::test]
async fn listeners_follow_the_table_and_closing_one_cuts_no_connection() {
    let (web_ip, api_ip) = (service_address(16), service_address(17));
    let extra: Ipv4Addr = "127.64.9.17".parse().expect("an address");
    let port = free_port(web_ip);
    let web = service(
        "web",
        web_ip,
        port,
        PortProtocol::Tcp,
        vec![ready("web", 0, backend("web").await)],
    );
    let api = service(
        "api",
        api_ip,
        port,
        PortProtocol::Tcp,
        vec![ready("api", 0, backend("api").await)],
    );
    let config = ProxyConfig {
        extra_addresses: vec![extra.into()],
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(config, table(vec![web.clone()]));
    let (web_address, api_address, extra_address) = (
        SocketAddr::new(web_ip.into(), port),
        SocketAddr::new(api_ip.into(), port),
        SocketAddr::new(extra.into(), port),
    );
    let (mut held, id) = greeted(web_address).await;
    assert_eq!(id.as_deref(), Some("web"));
    assert_eq!(greeted(extra_address).await.1.as_deref(), Some("web"));
    // `api` comes: its own address opens, and the extra address's port moves to it (first by
    // name).
    proxy.set(table(vec![web, api.clone()]));
    assert_eq!(greeted(api_address).await.1.as_deref(), Some("api"));
    let mut moved = false;
    for _ in 0..(PATIENCE.as_millis() / POLL.as_millis()) {
        if greeted(extra_address).await.1.as_deref() == Some("api") {
            moved = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(moved, "the extra address never moved to api");
    // `web` goes: its listener closes; the connection it accepted does not.
    proxy.set(table(vec![api]));
    until("web's listener to close", || {
        std::net::TcpStream::connect(web_address).is_err()
    })
    .await;
    assert_eq!(echo(&mut held, "alive").await, "alive");
    assert_eq!(proxy.metric("starling_proxy_listeners"), Some(2));
}

#[tokio::test]
async fn a_failed_bind_is_retried_at_the_next_table_change() {
    let ip = service_address(18);
    let port = free_port(ip);
    let squatter = std::net::TcpListener::bind((ip, port)).expect("take the port first");
    let web = service(
        "web",
        ip,
        port,
        PortProtocol::Tcp,
        vec![ready("web", 0, backend("web").await)],
    );
    let proxy = Proxy::start(ProxyConfig::default(), table(vec![web.clone()]));
    until("the bind failure to be counted", || {
        proxy.metric("starling_proxy_bind_failures_total") >= Some(1)
    })
    .await;
    assert_eq!(proxy.metric("starling_proxy_listeners"), Some(0));
    drop(squatter);
    // Any change will do, even to another service.
    let other = service(
        "other",
        service_address(19),
        port,
        PortProtocol::Tcp,
        vec![],
    );
    proxy.set(table(vec![web, other]));
    let (_, id) = greeted(SocketAddr::new(ip.into(), port)).await;
    assert_eq!(id.as_deref(), Some("web"));
}

#[tokio::test]
async fn metrics_count_per_instance_and_forget_instances_that_left() {
    let ip = service_address(20);
    let port = free_port(ip);
    let a = backend("a").await;
    let web = |instances| table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]);
    let proxy = Proxy::start(ProxyConfig::default(), web(vec![ready("web", 0, a)]));
    let (mut stream, _) = greeted(SocketAddr::new(ip.into(), port)).await;
    assert_eq!(echo(&mut stream, "12345").await, "12345");
    let labels = format!("service=\"web\",port=\"http\",instance=\"{a}\"");
    let text = proxy.metrics();
    for line in [
        "# TYPE starling_proxy_connections_total counter".to_string(),
        "# TYPE starling_proxy_connections_active gauge".to_string(),
        format!("starling_proxy_connections_total{{{labels}}} 1"),
        format!("starling_proxy_connections_active{{{labels}}} 1"),
        // The client sent 5; the backend greeted (2) and echoed (5).
        format!("starling_proxy_bytes_total{{{labels},direction=\"to_instance\"}} 5"),
        format!("starling_proxy_bytes_total{{{labels},direction=\"from_instance\"}} 7"),
        format!("starling_proxy_connect_failures_total{{{labels}}} 0"),
        "starling_proxy_retries_total{service=\"web\",port=\"http\"} 0".to_string(),
        "starling_proxy_listeners 1".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line} in:\n{text}"
        );
    }
    // The instance leaves the table: kept while its connection is open, forgotten after.
    // Another service comes in the same change: its listener opening shows the change was
    // handled.
    let other = service(
        "other",
        service_address(21),
        port,
        PortProtocol::Tcp,
        vec![],
    );
    let mut next = (*web(vec![])).clone();
    next.services.insert(other.name.clone(), other);
    proxy.set(Arc::new(next));
    until("the change to be handled", || {
        proxy.metric("starling_proxy_listeners") == Some(2)
    })
    .await;
    let active = format!("starling_proxy_connections_active{{{labels}}}");
    assert_eq!(proxy.metric(&active), Some(1));
    drop(stream);
    until("the instance to be forgotten", || {
        !proxy.metrics().contains(&a.to_string())
    })
    .await;
}

#[tokio::test]
async fn clients_beyond_the_connection_cap_are_closed_and_counted() {
    let ip = service_address(22);
    let port = free_port(ip);
    let config = ProxyConfig {
        connections_max: 1,
        ..ProxyConfig::default()
    };
    let instances = vec![ready("web", 0, backend("a").await)];
    let proxy = Proxy::start(
        config,
        table(vec![service("web", ip, port, PortProtocol::Tcp, instances)]),
    );
    let address = SocketAddr::new(ip.into(), port);
    let (mut held, id) = greeted(address).await;
    assert_eq!(id.as_deref(), Some("a"));
    let (_, id) = greeted(address).await;
    assert_eq!(id, None, "the second client is closed");
    assert_eq!(proxy.metric("starling_proxy_refused_total"), Some(1));
    assert_eq!(echo(&mut held, "first").await, "first");
    drop(held);
    // The slot comes back once the first connection has ended.
    let mut served = false;
    for _ in 0..(PATIENCE.as_millis() / POLL.as_millis()) {
        if greeted(address).await.1.is_some() {
            served = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert!(served, "the slot never came back");
}
