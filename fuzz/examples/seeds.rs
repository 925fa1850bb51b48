//! Writes the seed corpora of the fuzz targets to `fuzz/seeds/<target>/`: valid inputs of
//! each kind, so the fuzzers start from messages that decode instead of discovering the
//! formats from nothing. Run from `fuzz/`: `cargo run --example seeds` (the files are
//! committed; run it again when a format changes).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, Socket, Transport};
use chitchat::{ChitchatConfig, ChitchatId, ChitchatMessage, FailureDetectorConfig, Serializable};
use starling_fuzz::gossip::seal::{Channel, Keyring, NONCE_BYTES, Sender};
use starling_fuzz::{KEY, KEY_ID, ProbePacket};
use starling_protocol::desired::{
    DIGEST_BUCKETS, DesiredEntry, DesiredState, Entry, Key, Revision,
};
use starling_protocol::hlc::Timestamp;
use starling_protocol::names::{NodeId, WorkloadName};
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::wire::{self, ApiRequest, ApiResponse, JoinRequest, PeerMessage, Request};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("seeds");
    let specs = example_specs(&root.join("../examples/specs"))?;
    let spec = specs[0].1.clone();
    let entry = entry(spec.clone());

    let node = NodeId::new("edge-1")?;
    let peer = vec![
        ("ping", wire::encode(&PeerMessage::Ping { seq: 7 })?),
        (
            "ping-req",
            wire::encode(&PeerMessage::PingReq {
                target: node.clone(),
                seq: 9,
            })?,
        ),
        (
            "digest-leaves",
            wire::encode(&PeerMessage::DigestLeaves(vec![3; DIGEST_BUCKETS]))?,
        ),
        (
            "summary-request",
            wire::encode(&PeerMessage::SummaryRequest(vec![1, 5, 1023]))?,
        ),
        (
            "pull",
            wire::encode(&PeerMessage::Pull(vec![Key::Workload(spec.name.clone())]))?,
        ),
        (
            "entries",
            wire::encode(&PeerMessage::Entries(vec![entry.clone()]))?,
        ),
        (
            "keys",
            wire::encode(&PeerMessage::Keys {
                keys: vec![(1, [4; 32])],
                primary: 1,
            })?,
        ),
        (
            "request-peer",
            wire::encode(&Request::Peer(PeerMessage::KeysRequest))?,
        ),
        (
            "request-join",
            wire::encode(&Request::Join(JoinRequest {
                node: node.clone(),
                secret: [1; 16],
            }))?,
        ),
        (
            "probe",
            wire::encode(&ProbePacket {
                from: node.clone(),
                message: PeerMessage::Ack { seq: 7 },
            })?,
        ),
    ];
    write(&out.join("wire_peer"), peer)?;

    let name = WorkloadName::new("web")?;
    let api = vec![
        (
            "apply",
            wire::encode(&ApiRequest::Apply {
                spec: Box::new(spec.clone()),
                ack_replicas: 1,
            })?,
        ),
        (
            "scale",
            wire::encode(&ApiRequest::Scale {
                name: name.clone(),
                replicas: 3,
            })?,
        ),
        (
            "logs",
            wire::encode(&ApiRequest::Logs {
                name: name.clone(),
                replica: Some(1),
                follow: true,
                tail_lines: 10,
            })?,
        ),
        ("status", wire::encode(&ApiRequest::Status)?),
        (
            "written",
            wire::encode(&ApiResponse::Written {
                name: name.clone(),
                revision: 2,
                at: timestamp(),
                changed: true,
            })?,
        ),
        (
            "log-chunk",
            wire::encode(&ApiResponse::LogChunk {
                lines: vec!["a".into(), "b".into()],
                end: false,
            })?,
        ),
        ("token", wire::encode(&ApiResponse::Token("secret".into()))?),
    ];
    write(&out.join("wire_api"), api)?;

    let mut texts = Vec::new();
    for (file, spec) in &specs {
        let toml = std::fs::read_to_string(file)?;
        texts.push((format!("{}-toml", spec.name), prefixed(0, toml.as_bytes())));
        let json = serde_json::to_string(&spec.to_doc())?;
        texts.push((format!("{}-json", spec.name), prefixed(1, json.as_bytes())));
    }
    write(&out.join("spec"), texts)?;

    let mut state = DesiredState::new();
    state.merge_any(entry.clone());
    let desired = vec![
        ("state", prefixed(0, &postcard::to_allocvec(&state)?)),
        ("entry", prefixed(6, &postcard::to_allocvec(&entry)?)),
        (
            "entries",
            prefixed(7, &postcard::to_allocvec(&vec![entry.clone()])?),
        ),
    ];
    write(&out.join("desired_entries"), desired)?;

    let ring = Keyring::new(KEY_ID, KEY);
    let probe_sender = Sender::new("edge-1", 100, Channel::Probe)?;
    let probe = wire::encode(&ProbePacket {
        from: node,
        message: PeerMessage::Ping { seq: 1 },
    })?;
    let mut framed = vec![2, 6];
    framed.extend_from_slice(b"edge-1");
    framed.extend_from_slice(&probe);
    let mut numbers = [0u8; 16];
    numbers[7] = 100;
    numbers[15] = 1;
    let gossip = vec![
        (
            "sealed-probe",
            prefixed(0, &ring.seal_as(&probe_sender, 1, [5; NONCE_BYTES], &probe)),
        ),
        (
            "framed-probe",
            prefixed(1, &[&numbers[..], &framed].concat()),
        ),
        (
            "replay-ops",
            prefixed(
                2,
                &[0, 1, 0, 5, 0, 1, 0, 5, 1, 2, 0, 70, 0, 1, 0, 4, 2, 0, 0, 1],
            ),
        ),
    ];
    write(&out.join("gossip_open"), gossip)?;

    let messages = chitchat_traffic()?;
    let chitchat = messages
        .iter()
        .enumerate()
        .map(|(i, bytes)| (format!("message-{i}"), bytes.clone()))
        .collect();
    write(&out.join("chitchat_packet"), chitchat)?;
    Ok(())
}

fn example_specs(dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, WorkloadSpec)>> {
    let mut specs = Vec::new();
    for file in std::fs::read_dir(dir)? {
        let path = file?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let spec = WorkloadSpec::from_toml(&std::fs::read_to_string(&path)?)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            specs.push((path, spec));
        }
    }
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    anyhow::ensure!(!specs.is_empty(), "no example specs in {}", dir.display());
    Ok(specs)
}

fn timestamp() -> Timestamp {
    Timestamp {
        physical_ms: 1_700_000_000_000,
        logical: 1,
        node: NodeId::new("edge-1").expect("a valid node id"),
    }
}

fn entry(spec: WorkloadSpec) -> Entry {
    Entry::Workload(DesiredEntry {
        name: spec.name.clone(),
        register: crdts::LWWReg {
            val: Some(Revision::first(spec)),
            marker: timestamp(),
        },
        writes: Vec::new(),
    })
}

fn prefixed(first: u8, rest: &[u8]) -> Vec<u8> {
    [&[first][..], rest].concat()
}

fn write<N: AsRef<str>>(dir: &Path, seeds: Vec<(N, Vec<u8>)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name.as_ref()), bytes)?;
    }
    Ok(())
}

/// Two chitchat nodes with some state gossip in memory for a second; every message either
/// sends is recorded serialized, as the agent's transport seals it.
fn chitchat_traffic() -> anyhow::Result<Vec<Vec<u8>>> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    runtime.block_on(async {
        let transport = Recording {
            inner: ChannelTransport::with_mtu(65_507),
            recorded: recorded.clone(),
        };
        let addrs: Vec<SocketAddr> = vec!["127.0.0.1:10001".parse()?, "127.0.0.1:10002".parse()?];
        let mut handles = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let config = ChitchatConfig {
                chitchat_id: ChitchatId::new(format!("node-{i}"), 1, *addr),
                cluster_id: "fuzz".into(),
                gossip_interval: Duration::from_millis(50),
                listen_addr: *addr,
                seed_nodes: addrs.iter().map(|a| a.to_string()).collect(),
                failure_detector_config: FailureDetectorConfig::default(),
                marked_for_deletion_grace_period: Duration::from_secs(60),
                catchup_callback: None,
                extra_liveness_predicate: None,
            };
            let state = vec![
                ("load".to_string(), format!("{i}")),
                ("role".into(), "edge".into()),
            ];
            handles.push(chitchat::spawn_chitchat(config, state, &transport).await?);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(handles);
        anyhow::Ok(())
    })?;
    let mut messages = recorded
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    messages.sort();
    messages.dedup();
    // The first few of each size class are enough: later rounds repeat them.
    messages.sort_by_key(Vec::len);
    messages.dedup_by_key(|m| m.len() / 16);
    messages.truncate(8);
    Ok(messages)
}

struct Recording {
    inner: ChannelTransport,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl Transport for Recording {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self.inner.open(listen_addr).await?;
        Ok(Box::new(RecordingSocket {
            inner,
            recorded: self.recorded.clone(),
        }))
    }
}

struct RecordingSocket {
    inner: Box<dyn Socket>,
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
}

#[async_trait]
impl Socket for RecordingSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        message.serialize(&mut bytes);
        if let Ok(mut recorded) = self.recorded.lock() {
            recorded.push(bytes);
        }
        self.inner.send(to, message).await
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inner.recv().await
    }
}
