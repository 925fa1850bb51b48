use proptest::prelude::*;

use super::*;
use crate::desired::{DesiredEntry, Entry, Revision};
use crate::spec::WorkloadSpec;

fn ts() -> Timestamp {
    Timestamp {
        physical_ms: 1_700_000_000_000,
        logical: 3,
        node: NodeId::new("n1").expect("valid"),
    }
}

fn entry() -> DesiredEntry {
    let spec = WorkloadSpec::from_toml(
        "name = \"web\"\ncommand = \"sleep\"\nargs = [\"9\"]\n[health]\nexec = [\"true\"]",
    )
    .expect("valid");
    DesiredEntry {
        name: spec.name.clone(),
        register: crdts::LWWReg {
            val: Some(Revision::first(spec)),
            marker: ts(),
        },
        writes: Vec::new(),
    }
}

fn spec() -> Box<WorkloadSpec> {
    Box::new(WorkloadSpec::from_toml("name = \"x\"\ncommand = \"sleep\"").expect("valid"))
}

fn responses() -> Vec<ApiResponse> {
    use crate::api::{LeaseHere, LeaseRow, NodeRow, ReplicaPlace, ReplicaRow, Usage};
    let node = NodeId::new("n1").expect("valid");
    let replica = crate::placement::ReplicaId {
        workload: WorkloadName::new("web").expect("valid"),
        index: 2,
    };
    vec![
        ApiResponse::Replicas(vec![
            ReplicaRow {
                replica: replica.clone(),
                place: ReplicaPlace::On {
                    node: node.clone(),
                    liveness: Some(crate::placement::Liveness::Suspect),
                    status: crate::status::ReplicaStatus {
                        revision: 3,
                        state: crate::status::ReplicaState::Running,
                        healthy: true,
                        restarts: 1,
                        last_exit_code: Some(2),
                        reason: Some("why".into()),
                        settled: true,
                        outgoing: Some(crate::status::Outgoing {
                            revision: 2,
                            healthy: true,
                        }),
                    },
                },
            },
            ReplicaRow {
                replica,
                place: ReplicaPlace::Unplaced {
                    revision: 3,
                    why: crate::placement::Unplaceable::NoNodes,
                },
            },
        ]),
        ApiResponse::Nodes(vec![NodeRow {
            view: crate::placement::NodeView {
                id: node.clone(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                arch: "x86_64".into(),
                runtimes: [crate::spec::RuntimeKind::Process].into(),
                capacity: crate::placement::Capacity::default(),
                weight: 1,
                liveness: crate::placement::Liveness::Alive,
                departure: crate::placement::Departure::Staying,
            },
            departure: crate::placement::Departure::Draining,
            replicas: 4,
            reserved: crate::placement::Capacity::default(),
            usage: Some(Usage {
                cpu: crate::quantity::Millicores(250),
                memory: crate::quantity::Bytes(1 << 20),
            }),
            store_error: None,
            generation: 1_733_000_000_000,
        }]),
        ApiResponse::Leases(vec![LeaseRow {
            name: WorkloadName::new("lock").expect("valid"),
            holder: Some(node.clone()),
            epoch: 2,
            fencing_token: 9,
            expires_in_ms: 1_500,
            here: LeaseHere::Candidate {
                waiting_for: "a majority".into(),
            },
        }]),
        ApiResponse::KeyRotated {
            key: 3,
            installed: 4,
            asked: 4,
        },
        ApiResponse::Revoked(node),
        ApiResponse::Rollout(Box::new(crate::api::RolloutReport {
            name: WorkloadName::new("web").expect("valid"),
            revision: 4,
            id: None,
            previous: Some(3),
            progress: crate::rollout::Progress {
                replicas: 3,
                updated: 1,
                pending: 1,
                failing: 0,
                serving: 3,
            },
            paused: false,
            canary: Some(crate::api::CanaryReport {
                count: 1,
                promoted: false,
                settled: true,
                auto_promote_after_ms: Some(60_000),
            }),
            rollback_of: Some(crate::desired::RollbackOf {
                number: 3,
                failure: Some("replica 0 crash loops".into()),
            }),
            auto_rollback: true,
        })),
    ]
}

fn samples() -> Vec<Vec<u8>> {
    let peer = [
        PeerMessage::Ping { seq: 7 },
        PeerMessage::PingReq {
            target: NodeId::new("n2").expect("valid"),
            seq: 1,
        },
        PeerMessage::Entries(vec![Entry::Workload(entry())]),
        PeerMessage::Summary(crate::desired::tombstones::Summary {
            buckets: vec![3],
            items: vec![],
            horizon: Some(5),
        }),
        PeerMessage::DigestLeaves(vec![0; crate::desired::DIGEST_BUCKETS]),
    ];
    let api = [
        ApiRequest::Apply {
            spec: spec(),
            ack_replicas: 1,
        },
        ApiRequest::Scale {
            name: WorkloadName::new("web").expect("valid"),
            replicas: 3,
        },
        ApiRequest::ApplyIf {
            spec: spec(),
            ack_replicas: 0,
            if_revision: "2@n1:17.0".into(),
        },
        ApiRequest::RolloutStatus {
            name: WorkloadName::new("web").expect("valid"),
        },
        ApiRequest::Rollout {
            name: WorkloadName::new("web").expect("valid"),
            action: RolloutAction::Promote,
        },
        ApiRequest::ApplyWith {
            spec: spec(),
            ack_replicas: 0,
            if_revision: None,
            force: true,
        },
    ];
    let mut out: Vec<Vec<u8>> = peer.iter().map(|m| encode(m).expect("encodes")).collect();
    out.extend(api.iter().map(|m| encode(m).expect("encodes")));
    out.extend(responses().iter().map(|m| encode(m).expect("encodes")));
    out
}

#[test]
fn messages_round_trip() {
    let m = PeerMessage::Entries(vec![Entry::Workload(entry())]);
    assert_eq!(decode::<PeerMessage>(&encode(&m).expect("encodes")), Ok(m));
}

#[test]
fn another_version_is_refused_by_name() {
    let mut bytes = encode(&PeerMessage::Ping { seq: 1 }).expect("encodes");
    bytes[0] = 1;
    assert_eq!(
        decode::<PeerMessage>(&bytes),
        Err(WireError::Version {
            theirs: 1,
            ours: PROTOCOL_VERSION
        })
    );
}

#[test]
fn trailing_bytes_and_oversize_input_are_refused() {
    let mut bytes = encode(&PeerMessage::Ping { seq: 1 }).expect("encodes");
    bytes.push(0);
    assert!(matches!(
        decode::<PeerMessage>(&bytes),
        Err(WireError::Malformed(_))
    ));
    let huge = vec![0u8; MESSAGE_BYTES_MAX + 1];
    assert!(matches!(
        decode::<PeerMessage>(&huge),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn entries_with_invalid_specs_are_refused_after_decoding() {
    let mut bad = entry();
    if let Some(rev) = bad.register.val.as_mut() {
        rev.spec.replicas = 20_000; // out of range: only reachable by a forged message
    }
    let bytes = encode(&PeerMessage::Entries(vec![Entry::Workload(bad)])).expect("encodes");
    assert!(matches!(
        decode::<PeerMessage>(&bytes),
        Err(WireError::Invalid(_))
    ));
    let mut renamed = entry();
    renamed.name = WorkloadName::new("other").expect("valid");
    let bytes = encode(&PeerMessage::Entries(vec![Entry::Workload(renamed)])).expect("encodes");
    assert!(matches!(
        decode::<PeerMessage>(&bytes),
        Err(WireError::Invalid(_))
    ));
}

#[test]
fn unbounded_write_records_and_bad_revisions_are_refused_after_decoding() {
    let mut e = entry();
    let record = crate::desired::WriteRecord {
        at: ts(),
        number: 1,
        by: String::new(),
    };
    e.writes = vec![record; crate::desired::WRITES_KEPT + 1];
    let bytes = encode(&PeerMessage::Entries(vec![Entry::Workload(e)])).expect("encodes");
    let err = decode::<PeerMessage>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("writes"), "{err}");
    let request = ApiRequest::ApplyIf {
        spec: spec(),
        ack_replicas: 0,
        if_revision: "two".into(),
    };
    let err = decode::<ApiRequest>(&encode(&request).expect("encodes")).expect_err("refused");
    assert!(err.to_string().contains("if_revision"), "{err}");
    let request = ApiRequest::ApplyWith {
        spec: spec(),
        ack_replicas: 0,
        if_revision: Some("two".into()),
        force: true,
    };
    let err = decode::<ApiRequest>(&encode(&request).expect("encodes")).expect_err("refused");
    assert!(err.to_string().contains("if_revision"), "{err}");
}

#[test]
fn typed_answers_round_trip() {
    for response in responses() {
        let bytes = encode(&response).expect("encodes");
        assert_eq!(decode::<ApiResponse>(&bytes), Ok(response));
    }
}

#[test]
fn an_applied_spec_is_bounded_by_decode_and_checked_by_the_node() {
    // Field errors are the storing node's to report (`WorkloadSpec::check`): decoding lets an
    // invalid spec through so the node can answer every one of them.
    let mut forged = spec();
    forged.replicas = crate::spec::REPLICAS_MAX + 1;
    forged.command = None;
    let request = ApiRequest::Apply {
        spec: forged.clone(),
        ack_replicas: 0,
    };
    let decoded = decode::<ApiRequest>(&encode(&request).expect("encodes")).expect("decodes");
    assert_eq!(decoded, request);
    let errors = forged.check().expect_err("refused by the node's check");
    assert!(
        errors.errors().iter().any(|e| e.path == "replicas"),
        "{errors:?}"
    );
    assert!(
        errors.errors().iter().any(|e| e.path == "command"),
        "{errors:?}"
    );
    // An oversize one is refused by decoding itself.
    let mut huge = spec();
    huge.args = vec!["x".repeat(64 << 10); 20];
    let bytes = encode(&ApiRequest::Apply {
        spec: huge,
        ack_replicas: 0,
    })
    .expect("encodes");
    let err = decode::<ApiRequest>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("over 1 MiB"), "{err}");
}

#[test]
fn an_enrolment_with_an_empty_keyring_is_refused_naming_the_field() {
    let enrolment = Enrolment {
        cluster: "c".into(),
        ca_pem: "ca".into(),
        ca_key_pem: "ca key".into(),
        gossip_keys: vec![(1, [7; 32])],
        cert_pem: "cert".into(),
        key_pem: "key".into(),
        seeds: vec!["127.0.0.1:7946".into()],
    };
    let good = JoinReply::Accepted(Box::new(enrolment.clone()));
    assert_eq!(
        decode::<JoinReply>(&encode(&good).expect("encodes")).expect("decodes"),
        good
    );
    let mut empty = enrolment.clone();
    empty.gossip_keys.clear();
    let bytes = encode(&JoinReply::Accepted(Box::new(empty))).expect("encodes");
    let err = decode::<JoinReply>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("enrolment.gossip_keys"), "{err}");
    let mut no_cert = enrolment;
    no_cert.cert_pem.clear();
    let bytes = encode(&JoinReply::Accepted(Box::new(no_cert))).expect("encodes");
    let err = decode::<JoinReply>(&bytes).expect_err("refused");
    assert!(err.to_string().contains("enrolment.cert_pem"), "{err}");
}

#[test]
fn an_invalid_name_on_the_wire_is_refused_naming_the_name_and_the_rule() {
    // Version 2, ApiRequest::Delete (variant 1), then a name no client may send.
    let mut bytes = vec![PROTOCOL_VERSION as u8, 1, 8];
    bytes.extend_from_slice(b"Bad Name");
    let err = decode::<ApiRequest>(&bytes).expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, WireError::Invalid(_)), "{err:?}");
    assert!(text.contains("workload name \"Bad Name\""), "{text}");
    assert!(text.contains("lowercase letters"), "{text}");
    // The note does not outlive its decode: a later malformed message says only that.
    let err = decode::<ApiRequest>(&[PROTOCOL_VERSION as u8, 200]).expect_err("refused");
    assert!(!err.to_string().contains("Bad Name"), "{err}");
}

#[test]
fn token_create_keeps_the_variant_numbers_before_it() {
    // Appended last: every older request keeps its number on the wire (postcard numbers
    // enum variants by position).
    let v = PROTOCOL_VERSION as u8;
    assert_eq!(encode(&ApiRequest::Status).expect("encodes"), vec![v, 6]);
    assert_eq!(
        encode(&ApiRequest::TokenCreate).expect("encodes"),
        vec![v, 13]
    );
}

#[test]
fn a_huge_declared_length_does_not_allocate_it() {
    // Version 1, variant Entries, then a length of u32::MAX entries with no bytes behind it.
    let mut bytes = encode(&PeerMessage::Entries(vec![])).expect("encodes");
    bytes.truncate(bytes.len() - 1);
    bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode::<PeerMessage>(&bytes).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Random bytes never panic the decoder.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<PeerMessage>(&bytes);
        let _ = decode::<ApiRequest>(&bytes);
        let _ = decode::<ApiResponse>(&bytes);
        let _ = decode::<Request>(&bytes);
        let _ = decode::<JoinReply>(&bytes);
    }

    /// Valid messages with bytes flipped, cut or inserted never panic the decoder, and whatever
    /// decodes passes its checks again.
    #[test]
    fn mutated_messages_never_panic(which in 0usize..64, edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6)) {
        let all = samples();
        let mut bytes = all[which % all.len()].clone();
        for (at, value, kind) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = value,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, value),
            }
        }
        if let Ok(m) = decode::<PeerMessage>(&bytes) {
            prop_assert!(m.check().is_ok());
        }
        let _ = decode::<ApiRequest>(&bytes);
        let _ = decode::<ApiResponse>(&bytes);
        if let Ok(r) = decode::<Request>(&bytes) {
            prop_assert!(r.check().is_ok());
        }
    }
}
