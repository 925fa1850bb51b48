//! chitchat over the sealed transport, on real UDP sockets on loopback.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, FailureDetectorConfig,
    Serializable, spawn_chitchat,
};
use starling_node::gossip::seal::Keyring;
use starling_node::gossip::{GossipCounters, SealedUdpTransport};

fn free_port() -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr")
}

async fn node(
    name: &str,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    key: [u8; 32],
) -> (ChitchatHandle, Arc<GossipCounters>) {
    let counters = Arc::new(GossipCounters::default());
    let keyring = Arc::new(RwLock::new(Keyring::new(1, key)));
    let transport = SealedUdpTransport::new(keyring, counters.clone(), name, 1);
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
        cluster_id: "test".into(),
        gossip_interval: Duration::from_millis(50),
        listen_addr: addr,
        seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
        failure_detector_config: FailureDetectorConfig {
            initial_interval: Duration::from_millis(100),
            ..FailureDetectorConfig::default()
        },
        marked_for_deletion_grace_period: Duration::from_secs(60),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let handle = spawn_chitchat(config, vec![("role".into(), name.into())], &transport)
        .await
        .expect("chitchat starts");
    (handle, counters)
}

async fn value_seen(handle: &ChitchatHandle, node: &str, key: &str) -> Option<String> {
    handle
        .with_chitchat(|c| {
            c.node_states()
                .iter()
                .find(|(id, _)| &*id.node_id == node)
                .and_then(|(_, s)| s.get(key).map(str::to_string))
        })
        .await
}

#[tokio::test]
async fn nodes_with_the_cluster_key_gossip_and_others_are_dropped_and_counted() {
    let (a_addr, b_addr, c_addr) = (free_port(), free_port(), free_port());
    let (a, a_counters) = node("a", a_addr, &[], [1; 32]).await;
    let (b, _) = node("b", b_addr, &[a_addr], [1; 32]).await;
    let (_c, _) = node("c", c_addr, &[a_addr], [9; 32]).await;
    a.with_chitchat(|c| c.self_node_state().set("hello", "world"))
        .await;
    let mut seen = None;
    for _ in 0..100 {
        seen = value_seen(&b, "a", "hello").await;
        if seen.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("world"),
        "b learns a's state through sealed gossip"
    );
    // A plaintext chitchat packet (what an attacker on the LAN would send) is refused.
    let mut plain = Vec::new();
    ChitchatMessage::BadCluster.serialize(&mut plain);
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    attacker.send_to(&plain, a_addr).await.expect("send");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a_counters.dropped_auth.load(Ordering::Relaxed) > 0,
        "c's packets under another key are counted"
    );
    assert!(
        a_counters.dropped_malformed.load(Ordering::Relaxed) > 0,
        "the plaintext packet is counted"
    );
    assert!(
        value_seen(&a, "c", "role").await.is_none(),
        "c never becomes a member"
    );
    assert!(a_counters.packets_in.load(Ordering::Relaxed) > 0);
}
