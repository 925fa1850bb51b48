//! The hostile test's tools: a tap that captures real sealed gossip, a real QUIC Initial, a
//! second cluster (another CA), raw API requests no client builds, and `/metrics` deltas.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use starling_node::api::read_frame;
use starling_node::net::quic::Quic;
use starling_node::net::tls::{TlsIdentity, client_config};
use starling_protocol::names::WorkloadName;
use starling_protocol::objects::ObjectKey;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::wire::{self, ApiRequest, ApiResponse, Request};

use crate::support::{BIN, http_get};

/// A deterministic generator (xorshift64): the same barrage on every run.
pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Random bytes, `min` to `min + spread - 1` of them.
    pub fn bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let len = min + self.below(spread);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A real packet, as sealed by `from` and delivered once to `to`.
pub struct Capture {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    /// Sealed for the probe socket (else for gossip).
    pub probe: bool,
}

/// A socket given to every agent as a seed: their gossip rounds knock at it with sealed Syns.
pub struct Tap {
    pub addr: SocketAddr,
    socket: UdpSocket,
}

impl Tap {
    pub fn bind() -> Tap {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the tap");
        let addr = socket.local_addr().expect("tap address");
        Tap { addr, socket }
    }

    /// One packet from each of `bases` (gossip sockets), each delivered at once to the next
    /// base, so every capture is a packet its receiver has already accepted.
    pub fn capture(&self, bases: &[SocketAddr], within: Duration) -> Vec<Capture> {
        let started = Instant::now();
        let mut captures: Vec<Capture> = Vec::new();
        let mut buf = vec![0u8; 65_536];
        self.socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        while captures.len() < bases.len() {
            assert!(
                started.elapsed() < within,
                "the tap heard {} of {} agents within {within:?}",
                captures.len(),
                bases.len()
            );
            let Ok((len, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let Some(i) = bases.iter().position(|b| *b == from) else {
                continue;
            };
            if captures.iter().any(|c| c.from == from) {
                continue;
            }
            let to = bases[(i + 1) % bases.len()];
            self.socket
                .send_to(&buf[..len], to)
                .expect("deliver the capture");
            captures.push(Capture {
                from,
                to,
                bytes: buf[..len].to_vec(),
                probe: false,
            });
        }
        captures
    }
}

/// One probe datagram between members addressed to each of `probes`, read off loopback as
/// someone on the wire would (an `AF_PACKET` socket: root only). `None` without root, unless
/// STARLING_REQUIRE_NETNS is set (CI), which makes it a failure.
pub fn capture_probes(probes: &[SocketAddr], within: Duration) -> Option<Vec<Capture>> {
    use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
    use std::os::fd::AsRawFd;
    let fd = match nix::sys::socket::socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK,
        SockProtocol::EthAll,
    ) {
        Ok(fd) => fd,
        Err(e) if std::env::var_os("STARLING_REQUIRE_NETNS").is_some() => {
            panic!("capturing probes needs root (CAP_NET_RAW): {e}")
        }
        Err(e) => {
            println!("not replaying captured probes (reading the wire needs root): {e}");
            return None;
        }
    };
    let started = Instant::now();
    let mut captures: Vec<Capture> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while captures.len() < probes.len() {
        assert!(
            started.elapsed() < within,
            "caught probes to {} of {} members within {within:?}",
            captures.len(),
            probes.len()
        );
        let Ok(n) = nix::sys::socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        let Some((from, to, payload)) = udp_of(&buf[..n]) else {
            continue;
        };
        if probes.contains(&from) && probes.contains(&to) && captures.iter().all(|c| c.to != to) {
            captures.push(Capture {
                from,
                to,
                bytes: payload.to_vec(),
                probe: true,
            });
        }
    }
    Some(captures)
}

/// Source, destination and payload of an Ethernet frame holding an IPv4 UDP datagram.
fn udp_of(frame: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(usize::from(ip[0] & 0x0f) * 4..)?;
    let addr = |ip: &[u8], port: &[u8]| -> Option<SocketAddr> {
        let ip: [u8; 4] = ip.try_into().ok()?;
        Some(SocketAddr::from((
            ip,
            u16::from_be_bytes(port.try_into().ok()?),
        )))
    };
    let from = addr(ip.get(12..16)?, udp.get(0..2)?)?;
    let to = addr(ip.get(16..20)?, udp.get(2..4)?)?;
    let len = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    Some((from, to, udp.get(8..len)?))
}

/// Nothing arrives at `socket` within 300 ms.
pub fn silent(socket: &UdpSocket) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 2_048];
    socket.recv_from(&mut buf).is_err()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The operator certificate of a cluster dir.
pub fn operator(client: &Path) -> TlsIdentity {
    starling_node::cluster::ClientDir {
        dir: client.to_path_buf(),
    }
    .tls()
    .expect("operator certificate")
}

/// `n` real client Initials of an operator of `client`'s cluster (each dial has its own
/// connection id), caught at a socket that never answers.
pub fn capture_quic_initials(client: &Path, n: usize) -> Vec<Vec<u8>> {
    let config = client_config(&operator(client)).expect("tls");
    runtime().block_on(async {
        let mut initials = Vec::new();
        for _ in 0..n {
            let tap = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = tap.local_addr().expect("addr");
            let quic = Quic::dialer(config.clone()).expect("dialer");
            let dial = tokio::spawn(async move { quic.connect(addr).await.map(|_| ()) });
            let mut buf = vec![0u8; 65_536];
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), tap.recv_from(&mut buf))
                .await
                .expect("the dialer sends its Initial")
                .expect("recv");
            dial.abort();
            initials.push(buf[..len].to_vec());
        }
        initials
    })
}

/// A second cluster, made by `starling init` as an operator would: another CA.
pub struct OtherCluster {
    pub client: PathBuf,
}

pub fn other_cluster(root: &Path) -> OtherCluster {
    let client = root.join("other-client");
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(root.join("other-node"))
        .arg("--cluster-dir")
        .arg(&client)
        .args(["--cluster", "other", "--node-id", "other-1"])
        .args(["--advertise", "127.0.0.1:9"])
        .output()
        .expect("init runs");
    assert!(
        out.status.success(),
        "init of another cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    OtherCluster { client }
}

/// One request over QUIC with `identity`: the answer, or why there was none.
pub fn quic_call(
    identity: &TlsIdentity,
    addr: SocketAddr,
    request: &Request,
) -> Result<ApiResponse, String> {
    runtime().block_on(async {
        let config = client_config(identity).map_err(|e| e.to_string())?;
        let quic = Quic::dialer(config).map_err(|e| e.to_string())?;
        let (mut send, mut recv) = quic.open(addr, request).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        match read_frame::<ApiResponse, _>(&mut recv).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err("no answer".into()),
            Err(e) => Err(e.to_string()),
        }
    })
}

/// `bytes` sent raw as one QUIC stream with an operator's certificate; the answer's text.
pub fn raw_call(identity: &TlsIdentity, addr: SocketAddr, bytes: &[u8]) -> String {
    runtime().block_on(async {
        let quic = Quic::dialer(client_config(identity).expect("tls")).expect("dialer");
        let conn = quic.connect(addr).await.expect("connect");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(bytes).await.expect("send");
        send.finish().expect("finish");
        match read_frame::<ApiResponse, _>(&mut recv).await {
            Ok(Some(ApiResponse::Error(e))) => e.message,
            other => panic!("expected an error, got {other:?}"),
        }
    })
}

/// `bytes` sent raw to the agent's Unix socket in `data_dir`; the answer as text.
pub fn socket_call(data_dir: &Path, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let path = starling_node::api::socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("the API socket");
    stream.write_all(bytes).expect("send");
    // The end of the request, so a truncated frame is seen as one.
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8_lossy(&answer).into_owned()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(body);
    out
}

/// `request` encoded with the name `placeholder-name` replaced by `name` (the types refuse
/// to build it; a name's length prefix is one byte here).
fn renamed(request: ApiRequest, name: &str) -> Vec<u8> {
    let body = wire::encode(&Request::Api(request)).expect("encodes");
    let old = [&[16u8][..], b"placeholder-name"].concat();
    let at = body
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .expect("the name is in the encoding");
    let new = [&[name.len() as u8][..], name.as_bytes()].concat();
    framed(&[&body[..at], &new, &body[at + old.len()..]].concat())
}

/// Requests no client builds: (bytes, what the error must say, the reason counted).
pub fn raw_requests() -> Vec<(Vec<u8>, String, &'static str)> {
    let placeholder = || WorkloadName::new("placeholder-name").expect("name");
    let spec = WorkloadSpec::from_toml(
        "name = \"placeholder-name\"\ncommand = \"sleep\"\n\
         [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    )
    .expect("spec");
    let mut out = Vec::new();
    for name in ["../etc", "a/b"] {
        let says = format!("workload name \"{name}\"");
        let apply = ApiRequest::Apply {
            spec: Box::new(spec.clone()),
            ack_replicas: 0,
        };
        out.push((renamed(apply, name), says.clone(), "invalid"));
        for key in [
            ObjectKey::secret(placeholder()),
            ObjectKey::config(placeholder()),
        ] {
            out.push((
                renamed(ApiRequest::ObjectDelete { key }, name),
                says.clone(),
                "invalid",
            ));
        }
    }
    // A frame announcing 5 MiB: refused before its body is read.
    let mut huge = (5u32 << 20).to_be_bytes().to_vec();
    huge.extend_from_slice(&[0; 64]);
    out.push((
        huge,
        format!("over the limit of {}", wire::MESSAGE_BYTES_MAX),
        "too_large",
    ));
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    out.push((truncated, "truncated".into(), "malformed"));
    out
}

/// Every integer series of a node's `/metrics` (`name{labels}` to value).
pub fn counters(base: SocketAddr) -> BTreeMap<String, u64> {
    let text = http_get(base, "/metrics").expect("metrics answer");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The series that grew from `before` to `after`, by how much.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let grown = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (grown > 0).then(|| (k.clone(), grown))
        })
        .collect()
}

/// Every path under `root`, relative to it.
pub fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path.clone());
            }
            if let Ok(relative) = path.strip_prefix(root) {
                out.insert(relative.to_path_buf());
            }
        }
    }
    out
}
