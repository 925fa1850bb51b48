use proptest::prelude::*;

use super::*;
use crate::desired::{DIGEST_BUCKETS, Entry, Revision};
use crate::hlc::Hlc;
use crate::names::NodeId;
use crate::spec::WorkloadSpec;

fn ts(physical_ms: u64, node: &str) -> Timestamp {
    Timestamp {
        physical_ms,
        logical: 0,
        node: NodeId::new(node).expect("valid id"),
    }
}

fn name(n: &str) -> WorkloadName {
    WorkloadName::new(n).expect("valid name")
}

fn revision(n: &str) -> Revision {
    Revision::first(
        WorkloadSpec::from_toml(&format!(
            "name = \"{n}\"\ncommand = \"sleep\"\nreplicas = 1"
        ))
        .expect("valid spec"),
    )
}

fn all_buckets() -> Vec<usize> {
    (0..DIGEST_BUCKETS).collect()
}

#[test]
fn only_tombstones_before_the_horizon_go_and_the_horizon_never_moves_back() {
    let mut s = DesiredState::new();
    s.write(name("old-delete"), None, ts(100, "a"));
    s.write(name("new-delete"), None, ts(900, "a"));
    s.write(name("old-live"), Some(revision("old-live")), ts(50, "a"));
    assert_eq!(s.tombstone_count(), 2);
    assert_eq!(s.raise_horizon(500), 1);
    assert_eq!(s.horizon(), Some(500));
    assert!(
        s.get(&name("old-live")).is_some(),
        "live entries are never collected"
    );
    assert!(s.register(&name("new-delete")).is_some());
    assert!(s.register(&name("old-delete")).is_none());
    assert_eq!(s.raise_horizon(200), 0);
    assert_eq!(s.horizon(), Some(500), "a horizon never moves back");
}

#[test]
fn an_old_write_of_a_collected_name_is_refused_and_new_names_are_not() {
    let mut s = DesiredState::new();
    s.write(name("web"), None, ts(100, "a"));
    s.raise_horizon(500);
    let mut stale = DesiredState::new();
    stale.write(name("web"), Some(revision("web")), ts(50, "b"));
    stale.write(name("fresh"), Some(revision("fresh")), ts(600, "b"));
    let entries: Vec<Entry> = stale.all_entries();
    let mut hlc = Hlc::new(NodeId::new("a").expect("valid"), 1_000);
    let report = s.merge_checked(entries, &mut hlc, 1_000);
    assert_eq!(report.changed, 1, "{:?}", report.refused);
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].1.contains("tombstone horizon"));
    assert!(
        s.get(&name("web")).is_none(),
        "the deleted workload stays deleted"
    );
    assert!(s.get(&name("fresh")).is_some());
}

#[test]
fn a_returning_state_forgets_what_the_peer_collected_and_keeps_what_is_newer() {
    let mut peer = DesiredState::new();
    peer.write(name("keep"), Some(revision("keep")), ts(10, "a"));
    peer.write(name("doomed"), None, ts(200, "a"));
    peer.raise_horizon(500);
    let mut back = DesiredState::new();
    back.write(name("keep"), Some(revision("keep")), ts(10, "a"));
    back.write(name("doomed"), Some(revision("doomed")), ts(20, "a"));
    back.write(name("made-away"), Some(revision("made-away")), ts(700, "b"));
    let forget = back.outdated_by(&peer.summary_of(&all_buckets()));
    assert_eq!(forget, vec![Key::Workload(name("doomed"))]);
    assert_eq!(back.forget(&forget), 1);
    assert!(back.get(&name("keep")).is_some());
    assert!(
        back.get(&name("made-away")).is_some(),
        "written after the horizon"
    );
    // A peer without a horizon makes nobody forget anything.
    let young = DesiredState::new();
    assert!(
        back.outdated_by(&young.summary_of(&all_buckets()))
            .is_empty()
    );
}

#[test]
fn only_the_summarized_buckets_are_compared() {
    let mut peer = DesiredState::new();
    peer.raise_horizon(500);
    let mut back = DesiredState::new();
    back.write(name("doomed"), Some(revision("doomed")), ts(20, "a"));
    let bucket = crate::desired::bucket_of(&name("doomed"));
    let others: Vec<usize> = all_buckets().into_iter().filter(|b| *b != bucket).collect();
    assert!(back.outdated_by(&peer.summary_of(&others)).is_empty());
    assert_eq!(back.outdated_by(&peer.summary_of(&[bucket])).len(), 1);
}

#[test]
fn the_horizon_is_stored_with_the_state() {
    let mut s = DesiredState::new();
    s.write(name("web"), Some(revision("web")), ts(10, "a"));
    s.raise_horizon(5);
    let bytes = postcard::to_allocvec(&s).expect("encodes");
    let back: DesiredState = postcard::from_bytes(&bytes).expect("decodes");
    assert_eq!(back.horizon(), Some(5));
    assert_eq!(back, s);
    // Format 5 (entries alone) reads as a state without a horizon.
    let v5 = postcard::to_allocvec(&s.all_entries()).expect("encodes");
    let old = crate::desired::legacy::decode_v5(&v5).expect("decodes");
    assert_eq!(old.horizon(), None);
    assert_eq!(old.digest(), s.digest());
}

/// One entry as the generator makes it: (name index, live, written at).
type Gen = (usize, bool, u64);

fn state(entries: &[Gen]) -> DesiredState {
    let mut s = DesiredState::new();
    for (n, live, at) in entries {
        let w = format!("w{n}");
        let value = live.then(|| revision(&w));
        s.write(name(&w), value, ts(*at, "g"));
    }
    s
}

proptest! {
    /// A state back from an absence meets a peer with a horizon. After it forgets what the
    /// peer's summary shows and pulls what it lacks, it holds nothing the peer lacks from
    /// before the peer's horizon, it keeps everything written after it, and the peer refuses
    /// every old name it collected.
    #[test]
    fn forgetting_and_refusing_agree_around_a_horizon(
        peer_entries in proptest::collection::vec((0usize..12, any::<bool>(), 0u64..1_000), 0..20),
        back_entries in proptest::collection::vec((0usize..12, any::<bool>(), 0u64..1_000), 0..20),
        horizon in 0u64..1_000,
    ) {
        let mut peer = state(&peer_entries);
        peer.raise_horizon(horizon);
        let mut back = state(&back_entries);
        let before = back.clone();
        let summary = peer.summary_of(&peer.digest().diff(&back.digest()));
        let forget = back.outdated_by(&summary);
        back.forget(&forget);
        for key in &forget {
            let Key::Workload(n) = key else { continue };
            let register = before.register(n).expect("it was there");
            prop_assert!(register.marker.physical_ms < horizon);
            prop_assert!(peer.register(n).is_none());
        }
        for (n, register) in before.entries() {
            if register.marker.physical_ms >= horizon {
                prop_assert!(back.register(n).is_some(), "{n} written after the horizon was kept");
            }
        }
        // Whatever the returning state still offers, the peer takes only what is not below
        // its horizon for a name it lacks.
        let mut hlc = Hlc::new(NodeId::new("p").expect("valid"), 10_000);
        let mut merged = peer.clone();
        merged.merge_checked(back.all_entries(), &mut hlc, 10_000);
        for (n, register) in merged.entries() {
            if peer.register(n).is_none() {
                prop_assert!(register.marker.physical_ms >= horizon);
            }
        }
    }
}

#[test]
fn a_summary_over_the_differing_buckets_makes_the_returning_state_forget() {
    let mut peer = DesiredState::new();
    peer.write(name("keep"), Some(revision("keep")), ts(10, "a"));
    peer.write(name("fresh"), Some(revision("fresh")), ts(600, "a"));
    peer.write(name("doomed"), None, ts(300, "a"));
    peer.raise_horizon(500);
    let mut back = DesiredState::new();
    back.write(name("keep"), Some(revision("keep")), ts(10, "a"));
    back.write(name("fresh"), Some(revision("fresh")), ts(600, "a"));
    back.write(name("doomed"), Some(revision("doomed")), ts(200, "a"));
    let buckets = peer.digest().diff(&back.digest());
    assert_eq!(buckets, vec![crate::desired::bucket_of(&name("doomed"))]);
    let forget = back.outdated_by(&peer.summary_of(&buckets));
    assert_eq!(forget, vec![Key::Workload(name("doomed"))]);
}
