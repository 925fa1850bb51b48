//! UDP through the proxy: flows per client, replies to the right client, expiry.

use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::*;

/// A UDP backend answering each datagram with `ID:PAYLOAD`.
async fn udp_backend(id: &'static str) -> SocketAddr {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a backend");
    let address = socket.local_addr().expect("its address");
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = format!("{id}:").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    address
}

/// Sends `payload` to `to` until an answer comes (the listener may not be open yet, and UDP
/// may drop); returns the answer.
async fn ask(client: &UdpSocket, to: SocketAddr, payload: &str) -> String {
    let deadline = crate::clock::monotonic() + PATIENCE;
    let mut buf = [0u8; 2048];
    loop {
        let _ = client.send_to(payload.as_bytes(), to).await;
        if let Ok(Ok((n, from))) = tokio::time::timeout(POLL * 10, client.recv_from(&mut buf)).await
        {
            assert_eq!(from, to, "the answer comes from the address dialled");
            return String::from_utf8(buf[..n].to_vec()).expect("ascii");
        }
        assert!(crate::clock::monotonic() < deadline, "no answer from {to}");
    }
}

fn dns_instance(index: u32, address: SocketAddr) -> Instance {
    instance("dns", index, "dns", address, EndpointState::Ready, false)
}

#[tokio::test]
async fn udp_clients_each_get_their_own_replies_from_one_instance() {
    let ip = service_address(30);
    let port = free_port(ip);
    let instances = vec![
        dns_instance(0, udp_backend("x").await),
        dns_instance(1, udp_backend("y").await),
    ];
    let proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("dns", ip, port, PortProtocol::Udp, instances)]),
    );
    let to = SocketAddr::new(ip.into(), port);
    let one = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let two = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let first = ask(&one, to, "one").await;
    let (id, payload) = first.split_once(':').expect("ID:PAYLOAD");
    assert_eq!(payload, "one");
    assert_eq!(
        ask(&two, to, "two").await.split_once(':').map(|p| p.1),
        Some("two")
    );
    // A flow sticks to its instance.
    for i in 0..5 {
        let text = format!("again{i}");
        assert_eq!(ask(&one, to, &text).await, format!("{id}:{text}"));
    }
    let flows: u64 = proxy
        .metrics()
        .lines()
        .filter(|l| l.starts_with("starling_proxy_udp_flows_active{service=\"dns\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(flows, 2);
}

#[tokio::test]
async fn idle_udp_flows_are_forgotten() {
    let ip = service_address(31);
    let port = free_port(ip);
    let backend = udp_backend("x").await;
    let config = ProxyConfig {
        udp_idle: Duration::from_millis(50),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(
        config,
        table(vec![service(
            "dns",
            ip,
            port,
            PortProtocol::Udp,
            vec![dns_instance(0, backend)],
        )]),
    );
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    assert_eq!(
        ask(&client, SocketAddr::new(ip.into(), port), "hi").await,
        "x:hi"
    );
    let labels = format!("{{service=\"dns\",port=\"dns\",instance=\"{backend}\"}}");
    assert!(proxy.metric(&format!("starling_proxy_udp_flows_total{labels}")) >= Some(1));
    until("the idle flow to expire", || {
        proxy.metric(&format!("starling_proxy_udp_flows_active{labels}")) == Some(0)
    })
    .await;
}

#[tokio::test]
async fn udp_flows_beyond_the_cap_are_dropped_and_counted() {
    let ip = service_address(32);
    let port = free_port(ip);
    let config = ProxyConfig {
        udp_flows_max: 1,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::start(
        config,
        table(vec![service(
            "dns",
            ip,
            port,
            PortProtocol::Udp,
            vec![dns_instance(0, udp_backend("x").await)],
        )]),
    );
    let to = SocketAddr::new(ip.into(), port);
    let one = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    assert_eq!(ask(&one, to, "hi").await, "x:hi");
    let two = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    two.send_to(b"hi", to).await.expect("send");
    until("the second client's datagram to be dropped", || {
        proxy.metric(
            "starling_proxy_udp_dropped_total{service=\"dns\",port=\"dns\",reason=\"flows_full\"}",
        ) == Some(1)
    })
    .await;
}

#[tokio::test]
async fn a_refusing_udp_instance_is_replaced_at_the_next_datagram() {
    let ip = service_address(33);
    let port = free_port(ip);
    // Nothing listens there: the kernel answers port unreachable.
    let dead = {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket.local_addr().expect("its address")
    };
    let instances = vec![
        instance("dns", 0, "dns", dead, EndpointState::Ready, true),
        dns_instance(1, udp_backend("live").await),
    ];
    let _proxy = Proxy::start(
        ProxyConfig::default(),
        table(vec![service("dns", ip, port, PortProtocol::Udp, instances)]),
    );
    let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    // The local (dead) instance is picked first; its refusal ends the flow, and a resent
    // datagram goes to the other.
    assert_eq!(
        ask(&client, SocketAddr::new(ip.into(), port), "hi").await,
        "live:hi"
    );
}
