//! Scenario 7, hostile input (issue 19): random, truncated and replayed datagrams at the gossip
//! and probe sockets of a 3-agent fleet, garbage, truncated and forged QUIC Initials, dialers
//! holding a certificate of another CA, an oversized spec and names with paths in them. Each is
//! refused, counted in `/metrics` under its reason, answered with nothing (datagrams) or with an
//! error naming the field or limit (the API), and the fleet goes on as before: the same
//! members alive, the same replicas on the same nodes, the same lease holder, no panic.
//!
//! The replayed packets are real: every agent gets a seed address that is a socket of this
//! test, so each agent's gossip round knocks at it with a sealed Syn. The test delivers each
//! captured packet once to another member (as the network would have) and then replays it
//! byte for byte, from another port, to that member's gossip socket and to every probe socket.
//! Probes go only to members, so one probe to each member is read off loopback (root only;
//! required when STARLING_REQUIRE_NETNS is set) and replayed to that member's probe socket and
//! to every gossip socket.

mod support;

#[path = "hostile/net.rs"]
mod net;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use net::{
    Rng, Tap, capture_quic_initials, counters, delta, other_cluster, quic_call, silent, tree,
};
use starling_protocol::wire::{ApiRequest, Request};
use support::{BIN, Fleet, spec, wait_for};

/// Replays of each captured packet per destination socket.
const REPLAYS: u64 = 5;
/// Random datagrams per socket, and under an unknown key id.
const RANDOM: usize = 40;
const UNKNOWN_KEY: usize = 10;
/// The sealed header, nonce and tag: shorter packets are malformed, longer ones fail to open.
const SEALED_MIN: usize = 1 + 4 + 8 + 8 + 24 + 16;

const SLEEPER: &str = "command = \"sleep\"\nargs = [\"600\"]\n\
                       [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n";

/// What was sent to one node, by socket and reason, as the metric series it must move.
type Expected = BTreeMap<String, u64>;

fn expect(e: &mut Expected, family: &str, reason: &str, n: u64) {
    *e.entry(format!("{family}{{reason=\"{reason}\"}}"))
        .or_default() += n;
}

/// Sends `packet` to `to`, paced so loopback's receive buffers never overflow.
fn send(socket: &UdpSocket, packet: &[u8], to: SocketAddr) {
    socket.send_to(packet, to).expect("send a datagram");
    std::thread::sleep(Duration::from_millis(1));
}

/// Asserts the CLI failed saying `says` (in its output or error), and prints what it said.
fn refused(out: &std::process::Output, what: &str, says: &str) {
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains(says),
        "{what}: {said}"
    );
    let line = said.lines().find(|l| l.contains(says)).unwrap_or_default();
    println!("refused, {what}: {}", line.trim());
}

/// Placement of the running replicas and every node's view of the lease, as node 0 sees them.
fn fleet_state(fleet: &Fleet) -> (Vec<(String, u64, String)>, Vec<String>) {
    let mut running = fleet.running(0).expect("status");
    running.sort();
    let holders = (0..3)
        .map(|i| {
            let v = fleet.json(i, &["get", "leases"]).expect("leases");
            format!("{}@{}", v[0]["holder"], v[0]["token"])
        })
        .collect();
    (running, holders)
}

#[test]
fn hostile_packets_specs_and_certificates_are_refused_counted_and_change_nothing() {
    let tap = Tap::bind();
    let seed = tap.addr.to_string();
    let fleet = Fleet::start_with(3, BIN.into(), &["--seed", &seed]);
    let bases: Vec<SocketAddr> = fleet
        .nodes
        .iter()
        .map(|n| n.base.parse().expect("base address"))
        .collect();
    let mut captures = tap.capture(&bases, Duration::from_secs(20));
    let probes: Vec<SocketAddr> = bases
        .iter()
        .map(|b| starling_node::cluster::probe_addr(*b))
        .collect();
    let probe_captures = net::capture_probes(&probes, Duration::from_secs(20));
    let real_probes = probe_captures.as_ref().map_or(0, Vec::len);
    captures.extend(probe_captures.into_iter().flatten());

    // What must not move: 3 replicas and a singleton holding its lease.
    let steady = support::spec(
        fleet.tmp.path(),
        "steady",
        &format!("name = \"steady\"\nreplicas = 3\n{SLEEPER}"),
    );
    let leader = support::spec(
        fleet.tmp.path(),
        "leader",
        &format!("name = \"leader\"\nsingleton = true\nlease_ttl = \"2s\"\n{SLEEPER}"),
    );
    for file in [&steady, &leader] {
        let out = fleet.cli(0, &["apply", "-f", file]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let before = wait_for(
        "4 replicas running and the lease held everywhere",
        Duration::from_secs(30),
        || {
            let state = fleet_state(&fleet);
            let held = state
                .1
                .iter()
                .all(|h| h == &state.1[0] && !h.starts_with("null"));
            (state.0.len() == 4 && held).then_some(state)
        },
    );
    let tree_before = tree(fleet.tmp.path());
    let scraped: Vec<BTreeMap<String, u64>> = bases.iter().map(|b| counters(*b)).collect();

    // Datagrams at the gossip and probe sockets of every node.
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    let mut expected: Vec<Expected> = vec![Expected::new(); 3];
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, base) in bases.iter().enumerate() {
        let probe = starling_node::cluster::probe_addr(*base);
        for (port, family) in [
            (*base, "starling_gossip_dropped_total"),
            (probe, "starling_probe_dropped_total"),
        ] {
            for _ in 0..RANDOM {
                let mut packet = rng.bytes(1, 1_400);
                // Not this format's version byte: malformed from the first byte.
                if packet[0] == 2 {
                    packet[0] = 3;
                }
                send(&stranger, &packet, port);
                expect(&mut expected[i], family, "malformed", 1);
                *sent.entry("random").or_default() += 1;
            }
            for _ in 0..UNKNOWN_KEY {
                let mut packet = rng.bytes(SEALED_MIN, 1_000);
                packet[0] = 2;
                packet[1..5].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
                send(&stranger, &packet, port);
                expect(&mut expected[i], family, "unknown_key", 1);
                *sent.entry("random under an unknown key").or_default() += 1;
            }
            for capture in &captures {
                let len = capture.bytes.len();
                for cut in [
                    1,
                    2,
                    21,
                    45,
                    SEALED_MIN - 1,
                    SEALED_MIN,
                    len / 2,
                    len - 16,
                    len - 1,
                ] {
                    send(&stranger, &capture.bytes[..cut], port);
                    let reason = if cut < SEALED_MIN {
                        "malformed"
                    } else {
                        "auth"
                    };
                    expect(&mut expected[i], family, reason, 1);
                    *sent.entry("truncated").or_default() += 1;
                }
                // A replay at every socket of the other kind (sealed for the one it came
                // from), and at the socket that accepted it once (at another one of its kind
                // its first arrival could still be fresh).
                let at_probe = port == probe;
                if capture.probe != at_probe || capture.to == port {
                    for _ in 0..REPLAYS {
                        send(&stranger, &capture.bytes, port);
                        expect(&mut expected[i], family, "replay", 1);
                        *sent.entry("replayed").or_default() += 1;
                    }
                }
            }
        }
    }
    assert!(silent(&stranger), "a dropped datagram is never answered");

    // QUIC: garbage and truncated datagrams (quinn drops them unread: no answer, no count),
    // forged Initials (counted), certificates of another CA (counted, refused to the dialer).
    let quic = starling_node::cluster::quic_addr(bases[0]);
    const FORGED: usize = 5;
    let initials = capture_quic_initials(&fleet.client, FORGED);
    let initial = &initials[0];
    let quic_stranger = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for _ in 0..RANDOM {
        send(&quic_stranger, &rng.bytes(1, 1_199), quic);
        *sent.entry("QUIC random").or_default() += 1;
    }
    for cut in [1, 6, 20, 100, 600, initial.len() - 1] {
        send(&quic_stranger, &initial[..cut], quic);
        *sent.entry("QUIC truncated Initial").or_default() += 1;
    }
    assert!(
        silent(&quic_stranger),
        "garbage at the QUIC port is never answered"
    );
    // Real Initials (each its own connection id) with the tag's last byte flipped: the header
    // reads well, so each becomes a handshake, which fails authentication.
    for real in &initials {
        let mut forged = real.clone();
        *forged.last_mut().expect("not empty") ^= 0xff;
        send(&quic_stranger, &forged, quic);
        *sent.entry("QUIC forged Initial").or_default() += 1;
    }
    expect(
        &mut expected[0],
        "starling_quic_handshake_failures_total",
        "protocol",
        FORGED as u64,
    );
    assert!(silent(&quic_stranger), "a forged Initial is never answered");

    let other = other_cluster(fleet.tmp.path());
    let out = std::process::Command::new(BIN)
        .arg("--cluster-dir")
        .arg(&other.client)
        .args(["--peer", &fleet.nodes[0].base, "get", "workloads"])
        .output()
        .expect("cli runs");
    refused(&out, "another CA's operator", "certificate");
    let (ours, theirs) = (net::operator(&fleet.client), net::operator(&other.client));
    // Trusting our CA, so that our server is the one that refuses: theirs is the only certificate.
    let mixed = starling_node::net::tls::TlsIdentity {
        ca: ours.ca.clone(),
        ..theirs
    };
    let answer = quic_call(&mixed, quic, &Request::Api(ApiRequest::Status));
    match answer {
        Err(e) => println!("refused, another CA's certificate trusting ours: {e}"),
        Ok(a) => panic!("a certificate of another CA got an answer: {a:?}"),
    }
    expect(
        &mut expected[0],
        "starling_quic_handshake_failures_total",
        "tls",
        2,
    );
    *sent.entry("QUIC certificate of another CA").or_default() += 2;

    // The API: an oversized spec and names with paths, by the CLI and by raw requests.
    let specs = tempfile::tempdir().expect("tempdir");
    let big = spec(
        specs.path(),
        "big",
        &format!(
            "name = \"big\"\nreplicas = 1\nargs = [\"{}\"]\ncommand = \"sleep\"\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
            "x".repeat(2 << 20)
        ),
    );
    let out = fleet.cli(0, &["apply", "-f", &big]);
    refused(&out, "apply of a 2 MiB spec", "over 1 MiB");
    expect(
        &mut expected[0],
        "starling_api_bad_requests_total",
        "invalid",
        1,
    );
    for name in ["../etc", "a/b", "..", "/etc/passwd"] {
        let file = spec(
            specs.path(),
            "traversal",
            &format!("name = \"{name}\"\n{SLEEPER}"),
        );
        let out = fleet.cli(0, &["apply", "-f", &file]);
        refused(&out, &format!("apply of {name:?}"), "name");
        for kind in ["secret", "config"] {
            let out = fleet.cli(0, &[kind, "set", name, "--from-literal", "k=v"]);
            refused(&out, &format!("{kind} set {name:?}"), name);
        }
        *sent.entry("CLI names with paths").or_default() += 3;
    }
    let operator = net::operator(&fleet.client);
    for (bytes, says, reason) in net::raw_requests() {
        let answer = net::raw_call(&operator, quic, &bytes);
        println!("refused, raw request ({reason}): {answer}");
        assert!(
            answer.contains(&says),
            "raw request: {answer:?} should say {says:?}"
        );
        expect(
            &mut expected[0],
            "starling_api_bad_requests_total",
            reason,
            1,
        );
        *sent.entry("raw API requests").or_default() += 1;
    }
    // The local socket's door counts the same way.
    let (bytes, says, reason) = net::raw_requests().pop().expect("a truncated frame");
    let answer = net::socket_call(&fleet.nodes[0].dir, &bytes);
    assert!(
        answer.contains(&says),
        "socket: {answer:?} should say {says:?}"
    );
    expect(
        &mut expected[0],
        "starling_api_bad_requests_total",
        reason,
        1,
    );
    *sent.entry("raw API requests").or_default() += 1;

    // Longer than a down verdict (400 ms) and the lease's TTL (2 s): a barrage that disturbed
    // the failure detector or the lease would show by now.
    std::thread::sleep(Duration::from_secs(3));

    // Every drop counted where it was sent, under its reason, and nothing else moved there.
    for (i, base) in bases.iter().enumerate() {
        let name = &fleet.nodes[i].name;
        let seen = wait_for(
            &format!("{name}'s counters"),
            Duration::from_secs(10),
            || {
                let now = delta(&scraped[i], &counters(*base));
                expected[i]
                    .iter()
                    .all(|(k, v)| now.get(k).copied().unwrap_or(0) >= *v)
                    .then_some(now)
            },
        );
        for family in [
            "starling_gossip_dropped_total",
            "starling_probe_dropped_total",
            "starling_quic_handshake_failures_total",
            "starling_api_bad_requests_total",
        ] {
            let got: BTreeMap<&String, &u64> = seen
                .iter()
                .filter(|(k, v)| k.starts_with(family) && **v > 0)
                .collect();
            let want: BTreeMap<&String, &u64> = expected[i]
                .iter()
                .filter(|(k, _)| k.starts_with(family))
                .collect();
            println!("{name} {family}: {got:?}");
            assert_eq!(got, want, "{name}: {family}");
        }
        assert_eq!(
            seen.get("starling_failover_events_total"),
            None,
            "{name} saw a node go down"
        );
    }
    println!(
        "sent: {sent:?}; real packets captured: {} gossip, {real_probes} probes",
        captures.len() - real_probes
    );

    // The fleet as it was: members, placement, lease, no stray file, and it still takes writes.
    for i in 0..3 {
        for node in &fleet.nodes {
            assert_eq!(
                fleet.state_of(i, &node.name).as_deref(),
                Some("alive"),
                "{} at node {i}",
                node.name
            );
        }
    }
    assert_eq!(fleet_state(&fleet), before, "replicas or the lease moved");
    let workloads = fleet
        .json(0, &["get", "workloads"])
        .expect("workloads")
        .to_string();
    assert!(
        !workloads.contains("etc") && !workloads.contains("a/b") && !workloads.contains("big"),
        "{workloads}"
    );
    let tree_after = tree(fleet.tmp.path());
    let stray: Vec<_> = tree_after
        .difference(&tree_before)
        .filter(|p| {
            let top = p
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let traversal = p.iter().any(|c| c == "etc" || c == "passwd");
            traversal
                || !top.is_some_and(|t| {
                    t.starts_with("node-") || t == "other-node" || t == "other-client"
                })
        })
        .collect();
    assert!(
        stray.is_empty(),
        "files appeared outside the data dirs: {stray:?}"
    );
    let after = spec(
        specs.path(),
        "after",
        &format!("name = \"after\"\n{SLEEPER}"),
    );
    let out = fleet.cli(1, &["apply", "-f", &after]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the new workload runs", Duration::from_secs(30), || {
        fleet
            .running(2)
            .filter(|r| r.iter().any(|(w, _, _)| w == "after"))
            .map(|_| ())
    });
    for node in &fleet.nodes {
        let log = std::fs::read_to_string(node.dir.with_extension("log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "{} panicked:\n{log}", node.name);
    }
}
