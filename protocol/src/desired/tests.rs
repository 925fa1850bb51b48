use proptest::prelude::*;

use super::*;
use crate::names::NodeId;

fn spec(name: &str, replicas: u32) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"60\"]\nreplicas = {replicas}"
    ))
    .expect("valid spec")
}

fn ts(physical_ms: u64, logical: u32, node: &str) -> Timestamp {
    Timestamp {
        physical_ms,
        logical,
        node: NodeId::new(node).expect("valid id"),
    }
}

fn name(n: &str) -> WorkloadName {
    WorkloadName::new(n).expect("valid name")
}

/// A write as the generators produce it: (workload index, replicas or delete, timestamp).
type Write = (usize, Option<u32>, u64, u32, usize);

const NAMES: [&str; 5] = ["web", "db", "cache", "queue", "cron"];
const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn to_entry(w: &Write) -> DesiredEntry {
    let (n, replicas, physical, logical, node) = *w;
    DesiredEntry {
        name: name(NAMES[n]),
        register: LWWReg {
            val: replicas.map(|r| Revision::first(spec(NAMES[n], r))),
            marker: ts(physical, logical, NODES[node]),
        },
        writes: Vec::new(),
    }
}

fn state_of(writes: &[Write]) -> DesiredState {
    let mut s = DesiredState::new();
    for w in writes {
        s.merge_entry(to_entry(w));
    }
    s
}

fn writes() -> impl Strategy<Value = Vec<Write>> {
    proptest::collection::vec(
        (
            0..NAMES.len(),
            proptest::option::of(0u32..4),
            0u64..6,
            0u32..3,
            0..NODES.len(),
        ),
        0..25,
    )
}

proptest! {
    #[test]
    fn merge_is_commutative(a in writes(), b in writes()) {
        let (sa, sb) = (state_of(&a), state_of(&b));
        let mut ab = sa.clone();
        ab.merge(&sb);
        let mut ba = sb.clone();
        ba.merge(&sa);
        prop_assert_eq!(&ab, &ba);
        prop_assert_eq!(ab.digest().root(), ba.digest().root());
    }

    #[test]
    fn merge_is_associative(a in writes(), b in writes(), c in writes()) {
        let (sa, sb, sc) = (state_of(&a), state_of(&b), state_of(&c));
        let mut left = sa.clone();
        left.merge(&sb);
        left.merge(&sc);
        let mut bc = sb.clone();
        bc.merge(&sc);
        let mut right = sa.clone();
        right.merge(&bc);
        prop_assert_eq!(left, right);
    }

    #[test]
    fn merge_is_idempotent(a in writes(), b in writes()) {
        let mut s = state_of(&a);
        s.merge(&state_of(&b));
        let once = s.clone();
        prop_assert_eq!(s.merge(&once), 0);
        prop_assert_eq!(s, once);
    }

    /// Any delivery order (with duplicates) of the same writes ends in the same state, and the
    /// winner of each name is its write with the greatest marker.
    #[test]
    fn any_delivery_order_converges(w in writes(), seed in any::<u64>()) {
        let reference = state_of(&w);
        let mut shuffled: Vec<Write> = w.iter().chain(w.iter().take(3)).cloned().collect();
        // A deterministic shuffle from the seed, without drawing on ambient randomness.
        let mut x = seed;
        for i in (1..shuffled.len()).rev() {
            x = crate::hash::mix64(x);
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(&state_of(&shuffled), &reference);
        for (n, register) in reference.entries() {
            let best = w.iter().map(to_entry).filter(|e| &e.name == n).map(|e| e.register.marker).max();
            prop_assert_eq!(Some(register.marker.clone()), best);
        }
    }

    /// The digest finds exactly the buckets of the names whose entries differ.
    #[test]
    fn digest_diff_finds_exactly_the_differing_buckets(a in writes(), b in writes()) {
        let (sa, sb) = (state_of(&a), state_of(&b));
        let diff = sa.digest().diff(&sb.digest());
        let mut expected: Vec<usize> = NAMES.iter().map(|n| name(n)).filter(|n| sa.entry(n) != sb.entry(n)).map(|n| bucket_of(&n)).collect();
        expected.sort_unstable();
        expected.dedup();
        prop_assert_eq!(diff, expected);
    }

    /// Pulling what the summaries say is missing, both ways, makes two states equal.
    #[test]
    fn summary_exchange_reconciles_two_states(a in writes(), b in writes()) {
        let (mut sa, mut sb) = (state_of(&a), state_of(&b));
        let buckets = sa.digest().diff(&sb.digest());
        let pull_into_a = sa.wanted(&sb.summary(&buckets));
        let pull_into_b = sb.wanted(&sa.summary(&buckets));
        for e in sb.export_page(&pull_into_a, usize::MAX) { sa.merge_any(e); }
        for e in sa.clone().export_page(&pull_into_b, usize::MAX) { sb.merge_any(e); }
        prop_assert_eq!(sa.digest().root(), sb.digest().root());
        prop_assert_eq!(sa, sb);
    }
}

#[test]
fn later_write_wins_and_tombstone_hides_the_workload() {
    let mut s = DesiredState::new();
    assert!(s.write(
        name("web"),
        Some(Revision::first(spec("web", 3))),
        ts(10, 0, "n1")
    ));
    assert!(
        !s.write(name("web"), None, ts(9, 0, "n2")),
        "an older delete loses"
    );
    assert_eq!(s.get(&name("web")).map(|r| r.spec.replicas), Some(3));
    assert!(s.write(name("web"), None, ts(11, 0, "n2")));
    assert!(s.get(&name("web")).is_none());
    assert_eq!(s.len(), 1, "the tombstone stays until collected");
}

#[test]
fn tombstones_are_collected_only_after_the_grace_period() {
    let mut s = DesiredState::new();
    s.write(name("web"), None, ts(1_000, 0, "n1"));
    s.write(
        name("db"),
        Some(Revision::first(spec("db", 1))),
        ts(1_000, 0, "n1"),
    );
    let before = s.digest().root();
    assert_eq!(s.collect_tombstones(2_000, 1_000), 0);
    assert_eq!(s.collect_tombstones(2_001, 1_000), 1);
    assert_eq!(s.len(), 1);
    assert!(
        s.get(&name("db")).is_some(),
        "live entries are never collected"
    );
    assert_ne!(s.digest().root(), before);
    let mut only_db = DesiredState::new();
    only_db.write(
        name("db"),
        Some(Revision::first(spec("db", 1))),
        ts(1_000, 0, "n1"),
    );
    assert_eq!(
        s.digest().root(),
        only_db.digest().root(),
        "bucket hashes are updated on removal"
    );
}

#[test]
fn revisions_keep_one_step_of_history_and_scaling_is_not_a_revision() {
    let r1 = Revision::first(spec("web", 2));
    let scaled = r1.next(spec("web", 5));
    assert_eq!((scaled.number, scaled.previous.is_none()), (1, true));
    let mut changed = spec("web", 5);
    changed.args = vec!["120".into()];
    let r2 = scaled.next(changed.clone());
    assert_eq!(r2.number, 2);
    assert_eq!(
        r2.previous.as_ref().map(|p| p.spec.args.clone()),
        Some(vec!["60".to_string()])
    );
    let back = r2.rollback(None).expect("has a previous revision");
    assert_eq!(
        (back.number, back.spec.args.clone(), back.spec.replicas),
        (3, vec!["60".to_string()], 5)
    );
    assert_eq!(back.previous.map(|p| p.spec), Some(changed));
    assert!(r1.rollback(None).is_none());
}

#[test]
fn entries_with_mismatched_names_are_refused() {
    let entry = DesiredEntry {
        name: name("web"),
        register: LWWReg {
            val: Some(Revision::first(spec("db", 1))),
            marker: ts(1, 0, "n1"),
        },
        writes: Vec::new(),
    };
    assert!(matches!(
        entry.check(),
        Err(EntryError::NameMismatch { .. })
    ));
}

#[test]
fn state_round_trips_through_postcard() {
    let s = state_of(&[(0, Some(2), 5, 0, 0), (1, None, 3, 1, 2)]);
    let bytes = postcard::to_allocvec(&s).expect("serialize");
    let back: DesiredState = postcard::from_bytes(&bytes).expect("deserialize");
    assert_eq!(back, s);
}

/// Replicas of one workload's history: each holds its own state; a write happens at one and
/// merges spread it. Returns the states.
fn replay(ops: &[(usize, Option<usize>)], peers: usize) -> Vec<DesiredState> {
    let mut states = vec![DesiredState::new(); peers];
    let mut clock = 0u64;
    for (i, (at, merge_from)) in ops.iter().enumerate() {
        let at = at % peers;
        match merge_from {
            Some(from) => {
                let from = from % peers;
                let other = states[from].clone();
                states[at].merge(&other);
            }
            None => {
                clock += 1;
                let replicas = (i % 4) as u32;
                let current = states[at].get(&name("web")).cloned();
                let revision = match current {
                    Some(r) => r.next(spec("web", replicas)),
                    None => Revision::first(spec("web", replicas)),
                };
                states[at].write_by(
                    name("web"),
                    Some(revision),
                    ts(clock, 0, NODES[at]),
                    NODES[at],
                );
            }
        }
    }
    states
}

fn exchange_all(states: &mut [DesiredState]) {
    for _ in 0..2 {
        for i in 0..states.len() {
            for j in 0..states.len() {
                let other = states[j].clone();
                states[i].merge(&other);
            }
        }
    }
}

/// A spec whose template differs by `arg` (a new revision, not a scale).
fn spec_arg(name: &str, arg: u32) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"{name}\"\ncommand = \"sleep\"\nargs = [\"{arg}\"]\nreplicas = 1"
    ))
    .expect("valid spec")
}

#[test]
fn a_write_overwritten_by_a_concurrent_one_stays_on_record_everywhere() {
    let mut base = DesiredState::new();
    base.write_by(
        name("web"),
        Some(Revision::first(spec("web", 1))),
        ts(10, 0, "n1"),
        "alice",
    );
    let current = base.get(&name("web")).cloned().expect("written");
    // Two operators change web at two peers in the same moment, both from revision 1.
    let (mut a, mut b) = (base.clone(), base.clone());
    a.write_by(
        name("web"),
        Some(current.next(spec_arg("web", 3))),
        ts(20, 0, "n1"),
        "alice",
    );
    b.write_by(
        name("web"),
        Some(current.next(spec_arg("web", 5))),
        ts(20, 1, "n2"),
        "bob",
    );
    assert_eq!(a.get(&name("web")).map(|r| r.number), Some(2));
    assert_eq!(b.get(&name("web")).map(|r| r.number), Some(2));
    // Same number, different writes: the ids tell them apart.
    assert_ne!(a.revision_id(&name("web")), b.revision_id(&name("web")));
    let (mut ab, mut ba) = (a.clone(), b.clone());
    ab.merge(&b);
    ba.merge(&a);
    assert_eq!(ab, ba);
    assert_eq!(ab.get(&name("web")).map(|r| r.by.as_str()), Some("bob"));
    let lost = ab.overwritten(&name("web"));
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(
        (lost[0].number, lost[0].at.clone(), lost[0].by.as_str()),
        (2, ts(20, 0, "n1"), "alice")
    );
    // The next write made over the winner keeps the record: the loser was never built on.
    let winner = ab.get(&name("web")).cloned().expect("live");
    ab.write_by(
        name("web"),
        Some(winner.next(spec_arg("web", 6))),
        ts(30, 0, "n3"),
        "carol",
    );
    assert_eq!(ab.overwritten(&name("web")).len(), 1);
    assert!(RevisionMatch::Number(3).matches(ab.revision_id(&name("web")).as_ref()));
}

#[test]
fn revision_ids_print_and_parse_back() {
    let id = RevisionId {
        number: 4,
        at: ts(1_764_867_785_123, 2, "node-1"),
    };
    assert_eq!(id.to_string(), "4@node-1:1764867785123.2");
    let parsed: RevisionMatch = id.to_string().parse().expect("parses");
    assert_eq!(parsed, RevisionMatch::Id(id.clone()));
    assert!(parsed.matches(Some(&id)));
    assert_eq!("4".parse::<RevisionMatch>(), Ok(RevisionMatch::Number(4)));
    assert!(RevisionMatch::Number(0).matches(None));
    assert!(!RevisionMatch::Number(4).matches(None));
    for bad in ["", "x", "4@", "4@node-1", "4@node-1:12", "4@Bad Node:1.0"] {
        let err = bad.parse::<RevisionMatch>().expect_err(bad);
        assert!(err.contains("not a revision"), "{err}");
    }
}

#[test]
fn oversized_write_records_are_refused() {
    let mut s = DesiredState::new();
    s.write_by(
        name("web"),
        Some(Revision::first(spec("web", 1))),
        ts(1, 0, "n1"),
        &"x".repeat(1_000),
    );
    let mut entry = s.entry(&name("web")).expect("entry");
    assert_eq!(entry.writes[0].by.len(), BY_MAX, "who is truncated");
    entry.check().expect("a bounded entry passes");
    entry.writes = vec![entry.writes[0].clone(); WRITES_KEPT + 1];
    let err = entry.check().expect_err("too many writes");
    assert!(err.to_string().contains("writes"), "{err}");
}

proptest! {
    /// Writes made one after another, each at a peer that had merged everything before it,
    /// overwrite nothing, however long the history.
    #[test]
    fn sequential_writes_overwrite_nothing(peers in proptest::collection::vec(0usize..3, 1..30)) {
        let mut ops = Vec::new();
        for p in &peers {
            ops.push((*p, None));
            for q in 0..3 {
                ops.push((q, Some(*p)));
            }
        }
        let states = replay(&ops, 3);
        for s in &states {
            prop_assert!(s.overwritten(&name("web")).is_empty(), "{:?}", s.overwritten(&name("web")));
        }
    }

    /// Any interleaving of writes and merges: once everyone has merged everything, every
    /// replica holds the same entry (write records included), and a write that lost to one
    /// that never saw it is on record unless newer writes pushed it out.
    #[test]
    fn write_records_converge(ops in proptest::collection::vec((0usize..3, proptest::option::of(0usize..3)), 1..40)) {
        let mut states = replay(&ops, 3);
        exchange_all(&mut states);
        prop_assert_eq!(&states[0], &states[1]);
        prop_assert_eq!(&states[1], &states[2]);
        let lost = states[0].overwritten(&name("web"));
        if let Some(current) = states[0].revision_id(&name("web")) {
            prop_assert!(lost.iter().all(|w| w.at != current.at));
        }
    }
}
