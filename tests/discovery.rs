//! Service discovery and load balancing on real agents, each in its own network namespace (its
//! own loopback, DNS port and service addresses, as on separate devices): clients find a
//! service by name through the agent's DNS and through `STARLING_SVC_*`, the proxy spreads
//! them over the instances on other hosts, a killed instance leaves the DNS answer and costs
//! no client a failed request, and a partition leaves each side served by what it reaches.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use nix::sys::signal::Signal;
use support::netns::NetLab;
use support::{Fleet, pids, signal, spec, wait_for};

/// Answers with the node it runs on, on the port the agent picked for it.
const SERVER: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["STARLING_NODE"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["STARLING_PORT_HTTP"])), H).serve_forever()
"#;

/// A new connection every 100 ms, alternately by DNS name and by `STARLING_SVC_WEB_HTTP`;
/// one line per request: `TIME HOW ok NODE` or `TIME HOW fail WHY`.
const CLIENT: &str = r#"
import http.client, os, time
out = open(os.path.join(os.environ["OUT"], os.environ["STARLING_NODE"] + ".log"), "a", buffering=1)
env_host, env_port = os.environ.get("STARLING_SVC_WEB_HTTP", "missing:0").rsplit(":", 1)
i = 0
while True:
    i += 1
    host, port, how = ("web.svc.starling", 8080, "dns") if i % 2 else (env_host, int(env_port), "env")
    t = time.time()
    try:
        c = http.client.HTTPConnection(host, port, timeout=5)
        c.request("GET", "/")
        body = c.getresponse().read().decode()
        c.close()
        out.write(f"{t:.3f} {how} ok {body}\n")
    except Exception as e:
        out.write(f"{t:.3f} {how} fail {type(e).__name__}: {e}\n")
    time.sleep(0.1)
"#;

fn toml_string(text: &str) -> String {
    format!("'''{text}'''")
}

/// One client request as logged.
#[derive(Debug)]
struct Request {
    at: f64,
    how: String,
    ok: bool,
    detail: String,
}

fn requests(dir: &std::path::Path, node: &str) -> Vec<Request> {
    let text = std::fs::read_to_string(dir.join(format!("{node}.log"))).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.splitn(4, ' ');
            Some(Request {
                at: words.next()?.parse().ok()?,
                how: words.next()?.to_string(),
                ok: words.next()? == "ok",
                detail: words.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Asks a DNS server over UDP; `None` when it does not answer in time.
fn ask(server: SocketAddr, name: &str, kind: RecordType) -> Option<Message> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name).ok()?, kind));
    socket.send_to(&query.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

/// The ports of the SRV answer for web's http port.
fn srv_ports(server: SocketAddr) -> Option<Vec<u16>> {
    let answer = ask(server, "_http._tcp.web.svc.starling.", RecordType::SRV)?;
    let mut ports: Vec<u16> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.port),
            _ => None,
        })
        .collect();
    ports.sort();
    Some(ports)
}

/// Ready instances of web, by node, as node `i` sees them: node -> address.
fn ready_web(fleet: &Fleet, i: usize) -> BTreeMap<String, String> {
    let Some(v) = fleet.json(i, &["get", "services"]) else {
        return BTreeMap::new();
    };
    v["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["service"] == "web")
        .flat_map(|s| s["instances"].as_array().cloned().unwrap_or_default())
        .filter(|i| i["state"] == "ready")
        .filter_map(|i| {
            Some((
                i["node"].as_str()?.to_string(),
                i["address"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn clients_find_a_service_by_name_and_keep_reaching_it_through_kills_and_partitions() {
    if NetLab::required("discovery").is_none() {
        return;
    }
    let lab = NetLab::create(3);
    // `STARLING_LINK_LOSS=10` runs the same test with every host's link dropping that share of
    // its packets both ways (a measurement, not part of the default run).
    let loss: u32 = std::env::var("STARLING_LINK_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if loss > 0 {
        for i in 0..3 {
            lab.loss(i, loss);
        }
    }
    // node-1: a client; node-2: a server; node-3: a client and a server.
    let fleet = Fleet::start_in(&lab, &[], |i| {
        let labels: &[&str] = match i {
            0 => &["client=yes"],
            1 => &["server=yes"],
            _ => &["client=yes", "server=yes"],
        };
        labels
            .iter()
            .flat_map(|l| ["--label".to_string(), l.to_string()])
            .collect()
    });
    let out = fleet.tmp.path().join("client-logs");
    std::fs::create_dir_all(&out).expect("log dir");
    let web = spec(
        fleet.tmp.path(),
        "web",
        &format!(
            "name = \"web\"\ncommand = \"python3\"\nargs = [\"-c\", {}]\nreplicas = 2\n\
             [constraints]\nlabels = {{ server = \"yes\" }}\n\
             [[ports]]\nname = \"http\"\nport = 8080\n\
             [health]\ntcp = \"http\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n",
            toml_string(SERVER)
        ),
    );
    let applied = fleet.cli(0, &["apply", "-f", &web]);
    assert!(applied.status.success(), "{applied:?}");
    let servers = wait_for(
        "web ready on node-2 and node-3",
        Duration::from_secs(30),
        || {
            let ready = ready_web(&fleet, 0);
            (ready.len() == 2).then_some(ready)
        },
    );
    let client = spec(
        fleet.tmp.path(),
        "client",
        &format!(
            "name = \"client\"\ncommand = \"python3\"\nargs = [\"-c\", {}]\nreplicas = 2\n\
             uses = [\"web\"]\nenv = {{ OUT = \"{}\" }}\n\
             [constraints]\nlabels = {{ client = \"yes\" }}\n",
            toml_string(CLIENT),
            out.display()
        ),
    );
    let applied = fleet.cli(0, &["apply", "-f", &client]);
    assert!(applied.status.success(), "{applied:?}");

    // Both ways of finding web work, and node-1's client is spread over both servers.
    wait_for(
        "node-1's client served by both servers, both ways",
        Duration::from_secs(30),
        || {
            let seen = requests(&out, "node-1");
            let ok = |how: &str, node: &str| {
                seen.iter()
                    .any(|r| r.ok && r.how == how && r.detail == node)
            };
            (ok("dns", "node-2")
                && ok("dns", "node-3")
                && ok("env", "node-2")
                && ok("env", "node-3"))
            .then_some(())
        },
    );
    // node-3's client prefers the instance on its own node.
    wait_for("node-3's client served", Duration::from_secs(20), || {
        let seen = requests(&out, "node-3");
        (seen.iter().filter(|r| r.ok).count() >= 10).then_some(())
    });
    let local = requests(&out, "node-3");
    assert!(
        local.iter().filter(|r| r.ok).all(|r| r.detail == "node-3"),
        "node-3's client left its node: {local:?}"
    );
    let dns = SocketAddr::from((lab.addr(0), 53));
    let before = wait_for("node-1's DNS answers SRV", Duration::from_secs(10), || {
        srv_ports(dns)
    });
    assert_eq!(before.len(), 2, "two ready instances in SRV: {before:?}");
    let unknown = wait_for(
        "an answer for an unknown name",
        Duration::from_secs(10),
        || ask(dns, "nothing.svc.starling.", RecordType::A),
    );
    assert_eq!(
        unknown.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );

    // Kill the instance on node-2: it leaves the DNS answer, and no request fails.
    let killed_at = now();
    let old = servers["node-2"].clone();
    let old_port: u16 = old
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    for pid in pids(&fleet.nodes[1].dir, "web") {
        signal(pid, Signal::SIGKILL);
    }
    let started = Instant::now();
    wait_for(
        "the killed instance leaves node-1's SRV answer",
        Duration::from_secs(10),
        || {
            srv_ports(dns)
                .filter(|p| !p.contains(&old_port))
                .map(|_| ())
        },
    );
    let gone_after = started.elapsed();
    eprintln!("killed instance out of node-1's DNS answer after {gone_after:?}");
    wait_for("node-2's web ready again", Duration::from_secs(30), || {
        ready_web(&fleet, 0)
            .get("node-2")
            .filter(|a| **a != old)
            .map(|_| ())
    });
    std::thread::sleep(Duration::from_secs(1));
    for node in ["node-1", "node-3"] {
        let failed: Vec<Request> = requests(&out, node)
            .into_iter()
            .filter(|r| r.at >= killed_at && !r.ok)
            .collect();
        assert!(
            failed.is_empty(),
            "{node}'s client failed after the kill: {failed:?}"
        );
    }

    // Hostile input: garbage and a flood from one client are dropped and counted, and the
    // server keeps answering.
    let flooder = UdpSocket::bind("0.0.0.0:0").expect("socket");
    for garbage in [&b""[..], b"\x00", &[0xffu8; 12][..], &[0x41u8; 300][..]] {
        let _ = flooder.send_to(garbage, dns);
    }
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("web.svc.starling.").expect("name"),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("query");
    // About 4,000 queries a second for a second (paced so the socket buffer does not drop
    // them before the server reads them), eight times the default per-client rate.
    for i in 0..4_000 {
        let _ = flooder.send_to(&bytes, dns);
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let answer = wait_for(
        "node-1's DNS answers after the flood",
        Duration::from_secs(10),
        || ask(dns, "web.svc.starling.", RecordType::A),
    );
    assert_eq!(answer.answers.len(), 1, "{answer:?}");
    let metrics = support::http_get(SocketAddr::from((lab.addr(0), 7946)), "/metrics")
        .expect("node-1's metrics");
    let value = |series: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let malformed = value("starling_dns_dropped_total{reason=\"malformed\"}");
    let limited = value("starling_dns_dropped_total{reason=\"rate_limited\"}");
    eprintln!("node-1's DNS dropped {malformed} malformed and {limited} rate-limited queries");
    assert!(malformed >= 1, "malformed packets are counted: {metrics}");
    assert!(limited >= 1_000, "the flood is rate-limited: {metrics}");
    assert!(
        metrics.contains("starling_proxy_connections_total{service=\"web\""),
        "the proxy counts connections per instance: {metrics}"
    );

    // Cut node-3 off: each side is served by what it reaches, and no request fails.
    let cut_at = now();
    lab.cut(2);
    wait_for("node-1 sees node-3 down", Duration::from_secs(30), || {
        (fleet.state_of(0, "node-3").as_deref() == Some("down")).then_some(())
    });
    let down_at = now();
    std::thread::sleep(Duration::from_secs(3));
    let after_cut = |node: &str| -> Vec<Request> {
        requests(&out, node)
            .into_iter()
            .filter(|r| r.at >= cut_at)
            .collect()
    };
    let one = after_cut("node-1");
    assert!(one.len() >= 10, "node-1's client kept asking: {one:?}");
    assert!(
        one.iter().all(|r| r.ok),
        "node-1's client failed in the partition: {one:?}"
    );
    assert!(
        one.iter()
            .filter(|r| r.at >= down_at)
            .all(|r| r.detail == "node-2"),
        "node-1 is served only from its side once node-3 is down: {one:?}"
    );
    let three = after_cut("node-3");
    assert!(three.len() >= 10, "node-3's client kept asking: {three:?}");
    assert!(
        three.iter().all(|r| r.ok && r.detail == "node-3"),
        "node-3 is served by its own instance in the partition: {three:?}"
    );
    let served = |node: &str| requests(&out, node).iter().filter(|r| r.ok).count();
    eprintln!(
        "requests served: node-1 {}, node-3 {}; failed: none",
        served("node-1"),
        served("node-3")
    );
    lab.heal(2);
}
