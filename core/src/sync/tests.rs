use proptest::prelude::*;
use starling_protocol::WorkloadName;
use starling_protocol::desired::Revision;
use starling_protocol::hlc::Timestamp;
use starling_protocol::spec::WorkloadSpec;

use super::*;

fn id(name: &str) -> NodeId {
    NodeId::new(name).expect("valid id")
}

/// A state holding `names`, each written at `at` by `node`, with specs of about `pad` bytes.
fn state(names: &[&str], at: u64, node: &str, pad: usize) -> DesiredState {
    let mut desired = DesiredState::new();
    for name in names {
        write(&mut desired, name, at, node, pad);
    }
    desired
}

fn write(desired: &mut DesiredState, name: &str, at: u64, node: &str, pad: usize) {
    let spec = WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\n[env]\nPAD = \"{}\"",
        "x".repeat(pad.max(1))
    ))
    .expect("valid spec");
    desired.write(
        WorkloadName::new(name).expect("valid name"),
        Some(Revision::first(spec)),
        Timestamp {
            physical_ms: at,
            logical: 0,
            node: id(node),
        },
    );
}

fn outputs(sync: &mut Sync) -> Vec<SyncOutput> {
    std::iter::from_fn(|| sync.poll_output()).collect()
}

fn config(page_bytes: usize) -> SyncConfig {
    SyncConfig {
        page_bytes,
        ..SyncConfig::default()
    }
}

/// Runs `puller`'s machine against `server` until it is idle, answering every request
/// (unless `drop` says to lose it); merges pulled pages into `mine`. Returns the outputs
/// other than sends and merges.
fn run_pull(
    sync: &mut Sync,
    mine: &mut DesiredState,
    server: &DesiredState,
    server_id: &NodeId,
    now: u64,
    mut drop: impl FnMut() -> bool,
) -> Vec<SyncOutput> {
    let mut hlc = Hlc::new(id("me"), 1_000);
    let mut rest = Vec::new();
    sync.handle_tick(now, mine, &[(server_id.clone(), server.digest().root())]);
    loop {
        let batch = outputs(sync);
        if batch.is_empty() {
            return rest;
        }
        for output in batch {
            match output {
                SyncOutput::Send { id, to, message } => {
                    assert_eq!(&to, server_id);
                    if drop() {
                        sync.handle_answer(now, id, Err("lost".into()), mine);
                    } else {
                        let answer = answer(server, &message, sync.config().page_bytes)
                            .expect("a sync request");
                        sync.handle_answer(now, id, Ok(answer), mine);
                    }
                }
                SyncOutput::Merge { entries, .. } => {
                    if let Some(next) = merge(mine, entries, &mut hlc, now).next {
                        *mine = next;
                    }
                }
                other => rest.push(other),
            }
        }
    }
}

#[test]
fn a_pull_brings_every_entry_page_by_page() {
    let server = state(&["a", "b", "c", "d", "e"], 10, "s", 2_000);
    let mut mine = state(&["a"], 5, "me", 10);
    // Pages of one entry each: five pages (a is older here, so it is pulled too).
    let mut sync = Sync::new(config(1));
    let rest = run_pull(&mut sync, &mut mine, &server, &id("s"), 100, || false);
    for name in ["a", "b", "c", "d", "e"] {
        let name = WorkloadName::new(name).expect("name");
        assert_eq!(mine.get(&name), server.get(&name));
    }
    assert_eq!(
        rest,
        vec![SyncOutput::PullDone {
            from: id("s"),
            pages: 5
        }]
    );
    assert_eq!(sync.in_flight(), 0);
    assert!(sync.pulling_from().is_none());
}

#[test]
fn nothing_is_pulled_from_a_peer_with_the_same_root() {
    let server = state(&["a"], 10, "s", 10);
    let mine = server.clone();
    let mut sync = Sync::new(SyncConfig::default());
    sync.handle_tick(0, &mine, &[(id("s"), server.digest().root())]);
    assert!(outputs(&mut sync).is_empty());
}

#[test]
fn one_pull_at_a_time_round_robin_over_differing_peers() {
    let mine = DesiredState::new();
    let peers = [(id("p1"), 1u128), (id("p2"), 2u128)];
    let mut sync = Sync::new(SyncConfig::default());
    let mut seen = Vec::new();
    for round in 0..4u64 {
        sync.handle_tick(round * 100, &mine, &peers);
        let batch = outputs(&mut sync);
        assert_eq!(batch.len(), 1, "one request per pull start");
        let SyncOutput::Send { id, to, .. } = &batch[0] else {
            panic!("a send: {batch:?}");
        };
        // While it runs, ticks start nothing else.
        sync.handle_tick(round * 100 + 1, &mine, &peers);
        assert!(outputs(&mut sync).is_empty());
        seen.push(to.clone());
        sync.handle_answer(
            round * 100 + 2,
            *id,
            Ok(PeerMessage::Summary(Default::default())),
            &mine,
        );
        let done = outputs(&mut sync);
        assert!(matches!(
            done.as_slice(),
            [SyncOutput::PullDone { pages: 0, .. }]
        ));
    }
    assert_eq!(seen, vec![id("p2"), id("p1"), id("p2"), id("p1")]);
}

#[test]
fn an_unanswered_request_fails_at_its_timeout_and_a_late_answer_is_ignored() {
    let mine = DesiredState::new();
    let mut sync = Sync::new(SyncConfig {
        request_timeout_ms: 1_000,
        warn_every_ms: 10_000,
        ..SyncConfig::default()
    });
    let peers = [(id("p"), 7u128)];
    sync.handle_tick(0, &mine, &peers);
    let [SyncOutput::Send { id: first, .. }] = outputs(&mut sync)[..] else {
        panic!("one send");
    };
    assert_eq!(sync.poll_timeout(), Some(1_000));
    sync.handle_tick(999, &mine, &peers);
    assert!(outputs(&mut sync).is_empty(), "not yet overdue");
    // Overdue: failed (warned, the first), and a new pull starts at once.
    sync.handle_tick(1_000, &mine, &peers);
    let batch = outputs(&mut sync);
    assert!(matches!(
        &batch[0],
        SyncOutput::PullFailed {
            failures: 1,
            warn: true,
            ..
        }
    ));
    assert!(matches!(&batch[1], SyncOutput::Send { .. }));
    // The late answer to the first request changes nothing.
    sync.handle_answer(
        1_001,
        first,
        Ok(PeerMessage::Summary(Default::default())),
        &mine,
    );
    assert!(outputs(&mut sync).is_empty());
    // The second failure in a row is not warned about, the one past warn_every_ms is.
    sync.handle_tick(2_000, &mine, &peers);
    let batch = outputs(&mut sync);
    assert!(matches!(
        &batch[0],
        SyncOutput::PullFailed {
            failures: 2,
            warn: false,
            ..
        }
    ));
    let mut warned_at = None;
    for t in 3..=11u64 {
        sync.handle_tick(t * 1_000, &mine, &peers);
        for output in outputs(&mut sync) {
            if let SyncOutput::PullFailed { warn: true, .. } = output {
                warned_at.get_or_insert(t * 1_000);
            }
        }
    }
    // Warned first at 1,000 ms: next at 11,000.
    assert_eq!(warned_at, Some(11_000));
}

#[test]
fn a_failed_summary_names_what_came_instead() {
    let mine = DesiredState::new();
    let mut sync = Sync::new(SyncConfig::default());
    sync.handle_tick(0, &mine, &[(id("p"), 1)]);
    let [SyncOutput::Send { id: request, .. }] = outputs(&mut sync)[..] else {
        panic!("one send");
    };
    sync.handle_answer(1, request, Ok(PeerMessage::Stored), &mine);
    let batch = outputs(&mut sync);
    let [SyncOutput::PullFailed { reason, .. }] = &batch[..] else {
        panic!("a failure: {batch:?}");
    };
    assert_eq!(reason, "expected a summary, got stored");
}

/// Answers every push request of `batch` from `peer` with `stored`.
fn answer_pushes(
    sync: &mut Sync,
    batch: Vec<SyncOutput>,
    peer: &str,
    stored: bool,
) -> Vec<SyncOutput> {
    let mut rest = Vec::new();
    for output in batch {
        match output {
            SyncOutput::Send { id, to, .. } if to == self::id(peer) => {
                let answer = if stored {
                    Ok(PeerMessage::Stored)
                } else {
                    Err("refused".to_string())
                };
                sync.handle_answer(0, id, answer, &DesiredState::new());
            }
            other => rest.push(other),
        }
    }
    rest
}

#[test]
fn a_push_is_acked_once_enough_peers_stored_every_page() {
    let entries = state(&["a", "b", "c"], 1, "me", 10).export_entries(&[
        WorkloadName::new("a").expect("name"),
        WorkloadName::new("b").expect("name"),
        WorkloadName::new("c").expect("name"),
    ]);
    // One entry per page: three pages per peer, sent one after the other.
    let mut sync = Sync::new(config(1));
    let peers = [id("p1"), id("p2"), id("p3")];
    let push = sync.push(0, entries, 2, &peers);
    let mut batch = outputs(&mut sync);
    assert_eq!(batch.len(), 3, "page 1 to each peer");
    for _ in 0..3 {
        batch = answer_pushes(&mut sync, batch, "p1", true);
        batch.extend(outputs(&mut sync));
    }
    // p1 holds all three pages: one of the two wanted.
    assert!(
        !batch
            .iter()
            .any(|o| matches!(o, SyncOutput::PushAcked { .. }))
    );
    for _ in 0..3 {
        batch = answer_pushes(&mut sync, batch, "p2", true);
        batch.extend(outputs(&mut sync));
    }
    assert!(batch.contains(&SyncOutput::PushAcked { push, stored: 2 }));
    batch.retain(|o| !matches!(o, SyncOutput::PushAcked { .. }));
    // p3 fails: nothing more is reported, and the push is forgotten.
    let rest = answer_pushes(&mut sync, batch, "p3", false);
    assert!(rest.is_empty());
    assert!(outputs(&mut sync).is_empty());
    assert_eq!(sync.in_flight(), 0);
}

#[test]
fn a_push_that_cannot_reach_its_count_says_how_far_it_got() {
    let entries =
        state(&["a"], 1, "me", 10).export_entries(&[WorkloadName::new("a").expect("name")]);
    let mut sync = Sync::new(SyncConfig::default());
    let push = sync.push(0, entries.clone(), 3, &[id("p1"), id("p2")]);
    let batch = outputs(&mut sync);
    let batch = answer_pushes(&mut sync, batch, "p1", true);
    let batch = answer_pushes(&mut sync, batch, "p2", false);
    assert!(batch.is_empty());
    assert_eq!(
        outputs(&mut sync),
        vec![SyncOutput::PushShort {
            push,
            stored: 1,
            wanted: 3,
            asked: 2
        }]
    );
    // Nobody to push to: short at once when acks were asked for, silent when not.
    let push = sync.push(0, entries.clone(), 1, &[]);
    assert_eq!(
        outputs(&mut sync),
        vec![SyncOutput::PushShort {
            push,
            stored: 0,
            wanted: 1,
            asked: 0
        }]
    );
    sync.push(0, entries, 0, &[]);
    assert!(outputs(&mut sync).is_empty());
}

#[test]
fn merge_refuses_bad_entries_and_changes_nothing_for_them() {
    let theirs = state(&["a"], 10, "s", 10);
    let mine = DesiredState::new();
    let mut entries = theirs.export_entries(&[WorkloadName::new("a").expect("name")]);
    // A clock a day ahead of ours is refused.
    if let starling_protocol::desired::Entry::Workload(e) = &mut entries[0] {
        e.register.marker.physical_ms = 86_400_000 + 10;
    }
    let mut hlc = Hlc::new(id("me"), 1_000);
    let merged = merge(&mine, entries, &mut hlc, 10);
    assert!(merged.next.is_none());
    assert_eq!(merged.report.refused.len(), 1);
    let merged = merge(
        &mine,
        theirs.export_entries(&[WorkloadName::new("a").expect("name")]),
        &mut hlc,
        10,
    );
    assert_eq!(merged.report.changed, 1);
    assert_eq!(
        merged.next.map(|n| n.digest().root()),
        Some(theirs.digest().root())
    );
}

proptest! {
    /// Whatever each side holds, however small the pages and whichever requests are lost,
    /// pulls that keep being retried leave the puller holding the merge of both sides.
    #[test]
    fn pulls_converge_despite_lost_answers(
        mine_names in proptest::collection::btree_set(0u8..30, 0..12),
        their_names in proptest::collection::btree_set(0u8..30, 0..12),
        page_bytes in 1usize..3_000,
        losses in proptest::collection::vec(any::<bool>(), 0..40),
    ) {
        let name = |n: &u8| format!("w{n}");
        let mut mine = DesiredState::new();
        for n in &mine_names {
            write(&mut mine, &name(n), 5 + u64::from(*n % 3), "me", 300);
        }
        let mut server = DesiredState::new();
        for n in &their_names {
            write(&mut server, &name(n), 5 + u64::from(*n % 5), "s", 300);
        }
        let mut expected = mine.clone();
        for entry in server.export_entries(&server.workloads().map(|(n, _)| n.clone()).collect::<Vec<_>>()) {
            expected.merge_any(entry);
        }
        let mut sync = Sync::new(config(page_bytes));
        let mut losses = losses.into_iter();
        for round in 0..60u64 {
            run_pull(&mut sync, &mut mine, &server, &id("s"), round * 20_000, || losses.next().unwrap_or(false));
            prop_assert_eq!(sync.in_flight(), 0);
        }
        let names: Vec<WorkloadName> = expected.workloads().map(|(n, _)| n.clone()).collect();
        prop_assert_eq!(mine.workloads().count(), names.len());
        for name in &names {
            prop_assert_eq!(mine.get(name), expected.get(name));
        }
    }
}

#[test]
fn a_write_burst_to_one_peer_is_bounded_in_flight_and_queued() {
    let config = SyncConfig {
        in_flight_per_peer: 2,
        queued_per_peer: 3,
        ..SyncConfig::default()
    };
    let mut sync = Sync::new(config);
    let entries =
        state(&["a"], 1, "me", 10).export_entries(&[WorkloadName::new("a").expect("name")]);
    let peer = [id("slow")];
    let pushes: Vec<PushId> = (0..7)
        .map(|_| sync.push(0, entries.clone(), 1, &peer))
        .collect();
    let batch = outputs(&mut sync);
    let sends: Vec<RequestId> = batch
        .iter()
        .filter_map(|o| match o {
            SyncOutput::Send { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    // Two go out, three wait, the last two fail at once (left to anti-entropy).
    assert_eq!(sends.len(), 2);
    let short: Vec<PushId> = batch
        .iter()
        .filter_map(|o| match o {
            SyncOutput::PushShort {
                push, stored: 0, ..
            } => Some(*push),
            _ => None,
        })
        .collect();
    assert_eq!(short, pushes[5..].to_vec());
    assert_eq!(sync.in_flight(), 5);
    // Each answer lets the next queued request out, in order.
    let mut acked = Vec::new();
    let mut next = sends;
    while let Some(id) = next.pop() {
        sync.handle_answer(1, id, Ok(PeerMessage::Stored), &DesiredState::new());
        for output in outputs(&mut sync) {
            match output {
                SyncOutput::Send { id, .. } => next.insert(0, id),
                SyncOutput::PushAcked { push, .. } => acked.push(push),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(sync.in_flight() <= 5);
    }
    acked.sort_unstable();
    assert_eq!(acked, pushes[..5].to_vec());
    assert_eq!(sync.in_flight(), 0);
    // Queued requests time out only from when they were sent: none is left to time out.
    assert_eq!(sync.poll_timeout(), None);
}

fn delete(desired: &mut DesiredState, name: &str, at: u64) {
    desired.write(
        WorkloadName::new(name).expect("valid name"),
        None,
        Timestamp {
            physical_ms: at,
            logical: 0,
            node: id("s"),
        },
    );
}

fn grace(ms: u64) -> SyncConfig {
    SyncConfig {
        tombstone_grace_ms: ms,
        collect_every_ms: 1_000,
        ..SyncConfig::default()
    }
}

#[test]
fn tombstones_are_collected_only_while_in_sync_and_only_past_the_grace() {
    let mut mine = state(&["web"], 10, "s", 10);
    delete(&mut mine, "old", 100);
    let root = mine.digest().root();
    // Cut off from the start: never in sync, so nothing is collected however old.
    let mut cut = Sync::new(grace(1_000));
    cut.handle_tick(50_000, &mine, &[(id("p"), root ^ 1)]);
    assert!(
        !outputs(&mut cut)
            .iter()
            .any(|o| matches!(o, SyncOutput::Shed { .. }))
    );
    // In sync with a peer: the tombstone goes once it is older than the grace.
    let mut sync = Sync::new(grace(1_000));
    sync.handle_tick(1_050, &mine, &[(id("p"), root)]);
    assert!(outputs(&mut sync).is_empty(), "100 + 1000 is not yet past");
    sync.handle_tick(2_200, &mine, &[(id("p"), root)]);
    assert_eq!(
        outputs(&mut sync),
        vec![SyncOutput::Shed {
            from: None,
            forget: Vec::new(),
            horizon: Some(1_200)
        }]
    );
    // Then cut off: the horizon stays at the last time it was in sync, minus the grace.
    sync.handle_tick(9_000, &mine, &[(id("p"), root ^ 1)]);
    assert_eq!(sync.own_horizon(9_000), Some(1_200));
}

#[test]
fn a_node_alone_in_its_fleet_collects_without_peers() {
    let mut mine = DesiredState::new();
    delete(&mut mine, "old", 100);
    let mut sync = Sync::new(grace(1_000));
    sync.set_alone(true);
    sync.handle_tick(5_000, &mine, &[]);
    assert_eq!(
        outputs(&mut sync),
        vec![SyncOutput::Shed {
            from: None,
            forget: Vec::new(),
            horizon: Some(4_000)
        }]
    );
}

#[test]
fn a_returning_node_forgets_what_the_peer_collected_then_takes_its_horizon() {
    let mut peer = state(&["keep"], 10, "s", 10);
    delete(&mut peer, "doomed", 200);
    peer.raise_horizon(500);
    let mut mine = state(&["keep", "doomed"], 10, "s", 10);
    let mut sync = Sync::new(grace(1_000_000));
    let rest = run_pull(&mut sync, &mut mine, &peer, &id("s"), 900, || false);
    assert_eq!(
        rest,
        vec![
            SyncOutput::Shed {
                from: Some(id("s")),
                forget: vec![starling_protocol::desired::Key::Workload(
                    WorkloadName::new("doomed").expect("valid")
                )],
                horizon: None,
            },
            SyncOutput::Shed {
                from: Some(id("s")),
                forget: Vec::new(),
                horizon: Some(500),
            },
            SyncOutput::PullDone {
                from: id("s"),
                pages: 0
            },
        ]
    );
    assert_eq!(sync.in_sync_at(), Some(900));
}
