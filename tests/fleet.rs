//! End-to-end tests of a fleet: several real agent processes on loopback, gossiping, probing
//! and syncing over their sealed sockets and QUIC; the CLI talks to them over QUIC with an
//! operator certificate, as an operator would.

mod support;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{BIN, Fleet, alive, http_get, pids, spec, wait_for};

#[test]
fn five_agents_place_fail_over_and_rejoin_without_duplicates() {
    let mut fleet = Fleet::start(5);
    let file = spec(
        fleet.tmp.path(),
        "sleepers",
        "name = \"sleepers\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 4\n\
         [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    // Written at node-3; node-1 reports the fleet.
    let out = fleet.cli(2, &["apply", "-f", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let placed = wait_for("4 replicas running", Duration::from_secs(30), || {
        let running = fleet.running(0)?;
        (running.len() == 4 && fleet.live_processes("sleepers") == 4).then_some(running)
    });
    // Each replica runs where the fleet says: its node's runtime holds a live process for it.
    for (workload, index, node) in &placed {
        let dir = fleet
            .node_dir(node)
            .join(format!("runtime/replicas/{workload}-{index}"));
        assert!(
            dir.exists(),
            "{workload}/{index} is reported on {node} and runs there"
        );
    }
    // Crash a node that runs something (not node-1, which we ask).
    let victim_name = placed
        .iter()
        .map(|(_, _, n)| n.clone())
        .find(|n| n != "node-1")
        .expect("a replica off node-1");
    let victim = fleet
        .nodes
        .iter()
        .position(|n| n.name == victim_name)
        .expect("victim");
    fleet.crash(victim);
    let moved = wait_for(
        "the crashed node's replicas running elsewhere",
        Duration::from_secs(30),
        || {
            let running = fleet.running(0)?;
            (running.len() == 4
                && running.iter().all(|(_, _, n)| *n != victim_name)
                && fleet.live_processes("sleepers") == 4)
                .then_some(running)
        },
    );
    assert_eq!(moved.len(), 4);
    // The node comes back with its data dir: it rejoins, and nothing runs twice. It restarts
    // with the fleet it last saw, so it never plans every replica onto itself.
    fleet.spawn(victim);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let own = pids(&fleet.nodes[victim].dir, "sleepers")
            .into_iter()
            .filter(|p| alive(*p))
            .count();
        assert!(
            own <= 2,
            "the restarted node ran {own} of the 4 replicas at once"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    fleet.wait_members(5);
    wait_for("4 replicas, once each", Duration::from_secs(30), || {
        let running = fleet.running(0)?;
        (running.len() == 4 && fleet.live_processes("sleepers") == 4).then_some(())
    });
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let live = fleet.live_processes("sleepers");
        assert!(
            live <= 5,
            "at most one handover copy at a time, saw {live} processes"
        );
    }
    wait_for(
        "settled at exactly 4 processes",
        Duration::from_secs(30),
        || (fleet.live_processes("sleepers") == 4).then_some(()),
    );
}

#[test]
fn writes_at_two_peers_at_once_converge_everywhere() {
    let mut fleet = Fleet::start(3);
    let a = spec(
        fleet.tmp.path(),
        "a",
        "name = \"shared\"\ncommand = \"sleep\"\nargs = [\"600\"]\nreplicas = 1\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    let b = spec(
        fleet.tmp.path(),
        "b",
        "name = \"shared\"\ncommand = \"sleep\"\nargs = [\"601\"]\nreplicas = 2\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    let c = spec(
        fleet.tmp.path(),
        "c",
        "name = \"other\"\ncommand = \"sleep\"\nargs = [\"602\"]\nreplicas = 1\n[resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n",
    );
    let run = |i: usize, files: Vec<String>| {
        let mut command = Command::new(BIN);
        command.arg("--cluster-dir").arg(&fleet.client).args([
            "--peer",
            &fleet.nodes[i].base,
            "apply",
        ]);
        for f in files {
            command.args(["-f", &f]);
        }
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cli")
    };
    let first = run(0, vec![a]);
    let second = run(1, vec![b, c.clone()]);
    for child in [first, second] {
        let out = child.wait_with_output().expect("cli ends");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_for(
        "the same desired state on every node",
        Duration::from_secs(30),
        || {
            let views: Vec<Value> = (0..3)
                .map(|i| fleet.json(i, &["get", "workloads"]))
                .collect::<Option<Vec<_>>>()?;
            let names = |v: &Value| {
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .map(|w| {
                                (
                                    w["name"].clone(),
                                    w["revision"].clone(),
                                    w["replicas"].clone(),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            let first = names(&views[0]);
            (first.len() == 2 && views.iter().all(|v| names(v) == first)).then_some(())
        },
    );
    // --ack-replicas: answered once that many peers hold the write; more than exist fails
    // with the count (the write itself is stored and still spreads).
    let out = fleet.cli(0, &["apply", "--ack-replicas", "2", "-f", &c]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let talk_port = 40_000 + (std::process::id() % 10_000);
    let talker = spec(
        fleet.tmp.path(),
        "talker",
        &format!(
            "name = \"talker\"\ncommand = \"sh\"\nargs = [\"-c\", \"echo hello from the talker; sleep 600\"]\n\
             [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n[[ports]]\nname = \"talk\"\nport = {talk_port}\nhost_port = {talk_port}\n"
        ),
    );
    let out = fleet.cli(0, &["apply", "--ack-replicas", "5", "-f", &talker]);
    assert!(!out.status.success(), "5 acks from 2 peers cannot succeed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2 of the 5"),
        "the error gives the count: {err}"
    );
    // Logs come from whichever node runs the replica, asked at any node.
    let host = wait_for("the talker running", Duration::from_secs(30), || {
        fleet
            .running(0)?
            .into_iter()
            .find(|(w, _, _)| w == "talker")
            .map(|(_, _, n)| n)
    });
    let elsewhere = (0..3)
        .find(|i| fleet.nodes[*i].name != host)
        .expect("another node");
    wait_for(
        "the talker's log through another node",
        Duration::from_secs(20),
        || {
            let out = fleet.cli(elsewhere, &["logs", "talker"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("hello from the talker")
                .then_some(())
        },
    );
    // Its endpoint is published in gossip and listed by every node.
    wait_for(
        "the talker's endpoint listed elsewhere",
        Duration::from_secs(20),
        || {
            let v = fleet.json(elsewhere, &["get", "endpoints"])?;
            v.as_array()?
                .iter()
                .any(|e| {
                    e["workload"] == "talker"
                        && e["port"] == "talk"
                        && e["node"] == host.as_str()
                        && e["address"] == format!("127.0.0.1:{talk_port}").as_str()
                })
                .then_some(())
        },
    );
    // The same spec text is behind the name everywhere (last writer wins, the same one).
    let described: Vec<String> = (0..3)
        .map(|i| {
            String::from_utf8_lossy(&fleet.cli(i, &["describe", "shared"]).stdout).into_owned()
        })
        .collect();
    let args_of = |text: &str| text.contains("601");
    assert!(
        described
            .iter()
            .all(|d| args_of(d) == args_of(&described[0])),
        "every node holds the same winner:\n{described:#?}"
    );

    // Gossip key rotation while node-3 is down: the live nodes switch, node-3 catches up
    // over QUIC when it comes back and cannot open the new packets.
    fleet.crash(2);
    wait_for("node-3 seen down", Duration::from_secs(20), || {
        fleet.json(0, &["get", "nodes"]).and_then(|v| {
            v.as_array()?
                .iter()
                .any(|n| n["node"] == "node-3" && n["state"] == "down")
                .then_some(())
        })
    });
    let out = fleet.cli(0, &["key", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1/1"),
        "installed on the live peer: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let dirs: Vec<PathBuf> = fleet.nodes.iter().map(|n| n.dir.clone()).collect();
    let primary = |i: usize| {
        std::fs::read_to_string(dirs[i].join("cluster/gossip.keys"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .next()
                    .map(|l| l.split(' ').next().unwrap_or("").to_string())
            })
    };
    wait_for(
        "both live nodes sealing with key 2",
        Duration::from_secs(10),
        || (primary(0).as_deref() == Some("2") && primary(1).as_deref() == Some("2")).then_some(()),
    );
    fleet.spawn(2);
    wait_for(
        "node-3 fetching the new key",
        Duration::from_secs(30),
        || (primary(2).as_deref() == Some("2")).then_some(()),
    );
    fleet.wait_members(3);
}

#[test]
fn strangers_are_refused_and_bad_input_changes_nothing() {
    let fleet = Fleet::start(2);
    // An operator of another cluster (another CA) is refused at the handshake.
    let other = fleet.tmp.path().join("other");
    let other_client = fleet.tmp.path().join("other-client");
    let out = Command::new(BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(&other)
        .arg("--cluster-dir")
        .arg(&other_client)
        .args(["--node-id", "x", "--advertise", "127.0.0.1:1"])
        .output()
        .expect("init");
    assert!(out.status.success());
    let out = Command::new(BIN)
        .arg("--cluster-dir")
        .arg(&other_client)
        .args(["--peer", &fleet.nodes[0].base, "get", "nodes"])
        .output()
        .expect("cli");
    assert!(
        !out.status.success(),
        "a foreign certificate must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect") || err.contains("certificate") || err.contains("TLS"),
        "the error names the cause: {err}"
    );

    // A removed operator is refused by every node, from its next request on.
    let out = Command::new(BIN)
        .args(["user", "add", "bob", "--data-dir"])
        .arg(&fleet.nodes[0].dir)
        .arg("--cluster-dir")
        .arg(fleet.tmp.path().join("bob"))
        .output()
        .expect("user add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let as_bob = |i: usize| {
        Command::new(BIN)
            .arg("--cluster-dir")
            .arg(fleet.tmp.path().join("bob"))
            .args(["--peer", &fleet.nodes[i].base, "get", "nodes"])
            .output()
            .expect("cli")
    };
    assert!(as_bob(1).status.success(), "bob's certificate works");
    let out = fleet.cli(0, &["user", "remove", "bob"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "bob refused at the other node",
        Duration::from_secs(20),
        || (!as_bob(1).status.success()).then_some(()),
    );
    assert!(
        !as_bob(0).status.success(),
        "and at the node that revoked him"
    );
    assert!(
        fleet.cli(1, &["get", "nodes"]).status.success(),
        "admin still works"
    );

    // Gossip packets sealed with another key, and plain garbage, are dropped and counted.
    let gossip: std::net::SocketAddr = fleet.nodes[0].base.parse().expect("addr");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let forged = starling_node::gossip::seal::Keyring::new(1, [9; 32]).seal(
        1,
        1,
        [7; 24],
        b"not from this cluster",
    );
    socket.send_to(&forged, gossip).expect("send");
    socket.send_to(b"plain text", gossip).expect("send");
    wait_for("the drops in /metrics", Duration::from_secs(10), || {
        let text = http_get(gossip, "/metrics")?;
        let value = |reason: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "starling_gossip_dropped_total{{reason=\"{reason}\"}}"
                    ))
                })
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse::<u64>().ok())
        };
        (value("auth")? >= 1 && value("malformed")? >= 1).then_some(())
    });

    // Every node publishes what it measures in use, and the runtimes it offers.
    wait_for(
        "measured usage of both nodes",
        Duration::from_secs(30),
        || {
            let v = fleet.json(1, &["get", "nodes"])?;
            let nodes = v.as_array()?;
            (nodes.len() == 2
                && nodes.iter().all(|n| {
                    n["memory_used_bytes"].as_u64().is_some_and(|m| m > 0)
                        && n["runtimes"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|k| k == "process"))
                }))
            .then_some(())
        },
    );

    // A spec that fails its checks, sent straight to a peer (no CLI-side check), gets every
    // field error and changes nothing.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer = runtime.block_on(async {
        let tls = starling_node::cluster::ClientDir {
            dir: fleet.client.clone(),
        }
        .tls()
        .expect("user certificate");
        let addr = starling_node::cluster::quic_addr(fleet.nodes[1].base.parse().expect("addr"));
        let mut client = starling_node::api::Client::connect_quic(addr, &tls)
            .await
            .expect("connects");
        // What the types let through and only the spec's own check refuses.
        let mut spec = starling_protocol::spec::WorkloadSpec::from_toml(
            "name = \"forged\"\ncommand = \"sleep\"\n",
        )
        .expect("valid");
        spec.replicas = 50_000;
        spec.command = None;
        client
            .call(&starling_protocol::wire::ApiRequest::Apply {
                spec: Box::new(spec),
                ack_replicas: 0,
            })
            .await
            .expect("an answer")
    });
    let starling_protocol::wire::ApiResponse::Error(error) = answer else {
        panic!("a malformed spec must be refused, got {answer:?}");
    };
    let fields: Vec<String> = error.fields.iter().map(|f| f.to_string()).collect();
    assert!(
        fields.iter().any(|f| f.starts_with("replicas"))
            && fields.iter().any(|f| f.starts_with("command")),
        "every field error is named: {fields:?}"
    );
    let workloads = fleet.json(0, &["get", "workloads"]).expect("workloads");
    assert_eq!(
        workloads.as_array().map(Vec::len),
        Some(0),
        "nothing was stored"
    );
}
