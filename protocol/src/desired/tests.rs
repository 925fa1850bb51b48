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
        let mut expected: Vec<usize> = NAMES.iter().map(|n| name(n)).filter(|n| sa.register(n) != sb.register(n)).map(|n| bucket_of(&n)).collect();
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
        for e in sb.export(&pull_into_a) { sa.merge_entry(e); }
        for e in sa.clone().export(&pull_into_b) { sb.merge_entry(e); }
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
    assert_eq!(s.collect_tombstones(1_999, 1_000), 0);
    assert_eq!(s.collect_tombstones(2_000, 1_000), 1);
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
    let back = r2.rollback().expect("has a previous revision");
    assert_eq!(
        (back.number, back.spec.args.clone(), back.spec.replicas),
        (3, vec!["60".to_string()], 5)
    );
    assert_eq!(back.previous.map(|p| p.spec), Some(changed));
    assert!(r1.rollback().is_none());
}

#[test]
fn entries_with_mismatched_names_are_refused() {
    let entry = DesiredEntry {
        name: name("web"),
        register: LWWReg {
            val: Some(Revision::first(spec("db", 1))),
            marker: ts(1, 0, "n1"),
        },
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
