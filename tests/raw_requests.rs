//! Bad requests sent raw, past the CLI (which refuses bad input before sending), to the
//! agent's two API doors: its Unix socket and QUIC. Each one gets an error naming what is
//! wrong, the desired state stays as it was, and the agent keeps serving. Also who may mint
//! join tokens over QUIC, and the CLI's handling of an empty `STARLING_CLUSTER_DIR`.

mod support;

use std::process::Command;

use starling_node::api::read_frame;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::wire::{self, ApiRequest, ApiResponse, ObjectKind, Request};
use support::{BIN, Fleet};
use tokio::io::AsyncWriteExt;

/// A bad request: what it is, its bytes as sent, and what the answer must say (in its
/// message or its field errors' reasons).
struct Bad {
    what: &'static str,
    bytes: Vec<u8>,
    says: Vec<String>,
    /// The spec field the answer must name among its field errors, if any.
    field: Option<&'static str>,
}

const RESOURCES: &str = "command = \"sleep\"\nargs = [\"600\"]\nreplicas = 0\n\
                         [resources]\ncpu = \"10m\"\nmemory = \"1Mi\"\n";

fn apply(spec: WorkloadSpec) -> ApiRequest {
    ApiRequest::Apply {
        spec: Box::new(spec),
        ack_replicas: 0,
    }
}

fn valid_spec(name: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!("name = \"{name}\"\n{RESOURCES}")).expect("valid")
}

/// A postcard length prefix (varint), for names no client can build.
fn varint(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out
}

/// An encoded `Apply` of a valid spec with its name replaced by `name` (the types refuse to
/// build such a spec, so it is spliced into the bytes; the name is the spec's first field).
fn apply_named(body: Vec<u8>, name: &[u8]) -> Vec<u8> {
    let placeholder = b"placeholder-name";
    let mut old = varint(placeholder.len());
    old.extend_from_slice(placeholder);
    let at = body
        .windows(old.len())
        .position(|w| w == old.as_slice())
        .expect("the name is in the encoding");
    let mut new = varint(name.len());
    new.extend_from_slice(name);
    let mut out = body[..at].to_vec();
    out.extend(new);
    out.extend_from_slice(&body[at + old.len()..]);
    out
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(body);
    out
}

/// The bad requests; `quic` wraps them as the first frame of a QUIC stream (`Request::Api`).
fn bad_requests(quic: bool) -> Vec<Bad> {
    let body = |request: ApiRequest| {
        if quic {
            wire::encode(&Request::Api(request))
        } else {
            wire::encode(&request)
        }
        .expect("encodes")
    };
    let encode = |request: ApiRequest| framed(&body(request));
    let named = |name: &[u8]| {
        framed(&apply_named(
            body(apply(valid_spec("placeholder-name"))),
            name,
        ))
    };
    // What the types let through and only the spec's own check refuses.
    let mut unchecked = valid_spec("unchecked");
    unchecked.replicas = 20_000;
    unchecked.command = None;
    // postcard by hand for what no client can build: the version, [Request::Api = 0,]
    // ApiRequest::Delete = 1, then a name the types refuse.
    let delete = |name: &[u8]| {
        let v = wire::PROTOCOL_VERSION as u8;
        let mut body = if quic { vec![v, 0, 1] } else { vec![v, 1] };
        assert!(name.len() < 16_384, "two-byte length at most");
        if name.len() < 128 {
            body.push(name.len() as u8);
        } else {
            body.extend([(name.len() as u8) | 0x80, (name.len() >> 7) as u8]);
        }
        body.extend_from_slice(name);
        framed(&body)
    };
    let long = "x".repeat(200);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&[1; 10]);
    vec![
        Bad {
            what: "a spec with an invalid name",
            bytes: named(b"Bad_Name"),
            says: vec!["bad request".into(), "workload name \"Bad_Name\"".into()],
            field: None,
        },
        Bad {
            what: "a spec that fails its checks",
            bytes: encode(apply(unchecked)),
            says: vec!["nothing was changed".into(), "between 0 and 10000".into()],
            field: Some("replicas"),
        },
        Bad {
            what: "a spec with an over-long name",
            bytes: named(long.as_bytes()),
            says: vec!["bad request".into(), "at most 63".into()],
            field: None,
        },
        Bad {
            what: "a delete of an invalid name",
            bytes: delete(b"Bad Name"),
            says: vec!["workload name \"Bad Name\"".into(), "lowercase".into()],
            field: None,
        },
        Bad {
            what: "a delete of an over-long name",
            bytes: delete(long.as_bytes()),
            says: vec!["workload name".into(), "at most 63".into()],
            field: None,
        },
        Bad {
            what: "garbage (an HTTP request)",
            bytes: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            says: vec!["bad request".into(), "over the limit".into()],
            field: None,
        },
        Bad {
            what: "a truncated frame",
            bytes: truncated,
            says: vec!["bad request".into(), "truncated".into()],
            field: None,
        },
    ]
}

fn check_answer(bad: &Bad, door: &str, answer: Option<ApiResponse>) {
    let Some(ApiResponse::Error(error)) = answer else {
        panic!("{door}, {}: expected an error, got {answer:?}", bad.what);
    };
    let text = error
        .fields
        .iter()
        .fold(error.message.clone(), |text, f| text + "\n" + &f.reason);
    for says in &bad.says {
        assert!(
            text.contains(says.as_str()),
            "{door}, {}: {text:?} should say {says:?}",
            bad.what
        );
    }
    if let Some(field) = bad.field {
        assert!(
            error.fields.iter().any(|f| f.path == field),
            "{door}, {}: no error for field {field}: {error:?}",
            bad.what
        );
    } else if error.fields.is_empty() {
        assert!(
            !error.message.is_empty(),
            "{door}, {}: empty error",
            bad.what
        );
    } else {
        assert!(
            error.fields.iter().all(|f| !f.reason.is_empty()),
            "{door}, {}: {error:?}",
            bad.what
        );
    }
}

/// The desired state as the agent lists it (names and revisions), over its socket.
async fn workloads(fleet: &Fleet) -> Vec<starling_protocol::api::WorkloadRow> {
    let mut client = starling_node::api::Client::connect(&fleet.nodes[0].dir)
        .await
        .expect("the agent still serves its socket");
    match client
        .call(&ApiRequest::Get {
            kind: ObjectKind::Workloads,
        })
        .await
        .expect("answer")
    {
        ApiResponse::Workloads(rows) => rows,
        other => panic!("get workloads: {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn bad_requests_on_the_socket_and_over_quic_are_refused_by_name_and_change_nothing() {
    let fleet = Fleet::start(1);
    let keep = support::spec(
        fleet.tmp.path(),
        "keep",
        &format!("name = \"keep\"\n{RESOURCES}"),
    );
    let out = fleet.cli(0, &["apply", "-f", &keep]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    runtime().block_on(async {
        let before = workloads(&fleet).await;
        assert!(
            before.iter().any(|w| w.name.as_str() == "keep"),
            "{before:?}"
        );
        let socket = starling_node::api::socket_path(&fleet.nodes[0].dir);
        for bad in bad_requests(false) {
            let mut stream = tokio::net::UnixStream::connect(&socket)
                .await
                .expect("the agent still accepts on its socket");
            stream.write_all(&bad.bytes).await.expect("send");
            // The end of the request, so a truncated frame is seen as one.
            stream.shutdown().await.expect("shutdown");
            let answer = read_frame::<ApiResponse, _>(&mut stream)
                .await
                .ok()
                .flatten();
            check_answer(&bad, "socket", answer);
            assert_eq!(workloads(&fleet).await, before, "socket, {}", bad.what);
        }

        let tls = starling_node::cluster::ClientDir {
            dir: fleet.client.clone(),
        }
        .tls()
        .expect("operator certificate");
        let config = starling_node::net::tls::client_config(&tls).expect("tls");
        let quic = starling_node::net::quic::Quic::dialer(config).expect("dialer");
        let base = starling_node::cluster::resolve(&fleet.nodes[0].base).expect("address");
        let conn = quic
            .connect(starling_node::cluster::quic_addr(base))
            .await
            .expect("connect");
        for bad in bad_requests(true) {
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(&bad.bytes).await.expect("send");
            send.finish().expect("finish");
            let answer = read_frame::<ApiResponse, _>(&mut recv).await.ok().flatten();
            check_answer(&bad, "QUIC", answer);
            assert_eq!(workloads(&fleet).await, before, "QUIC, {}", bad.what);
        }
    });
}

#[test]
fn join_tokens_come_from_a_peer_for_operators_and_never_for_nodes() {
    let fleet = Fleet::start(1);
    // The operator's certificate: the peer makes a token that lets a new node in.
    let out = fleet.cli(0, &["token", "create"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        token.contains(&fleet.nodes[0].base),
        "names the peer as seed: {token}"
    );
    let joiner = fleet.tmp.path().join("joiner");
    let out = Command::new(BIN)
        .args(["join", &token, "--node-id", "joiner", "--data-dir"])
        .arg(&joiner)
        .output()
        .expect("join runs");
    assert!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(joiner.join("cluster/node.pem").exists(), "enrolled");

    // A node's certificate may talk to the API, but not mint tokens.
    runtime().block_on(async {
        let membership =
            starling_node::cluster::Membership::load(&fleet.nodes[0].dir).expect("membership");
        let tls = membership.tls().expect("node certificate");
        let config = starling_node::net::tls::client_config(&tls).expect("tls");
        let quic = starling_node::net::quic::Quic::dialer(config).expect("dialer");
        let base = starling_node::cluster::resolve(&fleet.nodes[0].base).expect("address");
        let addr = starling_node::cluster::quic_addr(base);
        let (mut send, mut recv) = quic
            .open(addr, &Request::Api(ApiRequest::TokenCreate))
            .await
            .expect("stream");
        send.finish().expect("finish");
        let answer = read_frame::<ApiResponse, _>(&mut recv).await.ok().flatten();
        let Some(ApiResponse::Error(error)) = answer else {
            panic!("a node got a token: {answer:?}");
        };
        assert!(error.message.contains("only operators"), "{error:?}");
        // Anything else it may still ask.
        let (mut send, mut recv) = quic
            .open(addr, &Request::Api(ApiRequest::Status))
            .await
            .expect("stream");
        send.finish().expect("finish");
        let status = read_frame::<ApiResponse, _>(&mut recv).await.ok().flatten();
        assert!(
            matches!(status, Some(ApiResponse::Replicas(_))),
            "{status:?}"
        );
    });
}

#[test]
fn an_empty_starling_cluster_dir_counts_as_unset() {
    let fleet = Fleet::start(1);
    let home = tempfile::tempdir().expect("home");
    std::fs::create_dir_all(home.path().join(".config")).expect("mkdir");
    std::os::unix::fs::symlink(&fleet.client, home.path().join(".config/starling"))
        .expect("symlink");
    let out = Command::new(BIN)
        .env("STARLING_CLUSTER_DIR", "")
        .env("HOME", home.path())
        .args(["--peer", &fleet.nodes[0].base, "status"])
        .output()
        .expect("cli runs");
    assert!(
        out.status.success(),
        "the default cluster dir was used: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
