//! The autoscaler in the core: one scaler per workload, the holder of its lease.

use super::*;

fn scaled() -> WorkloadSpec {
    spec(
        "web",
        2,
        "[resources]\ncpu = \"100m\"\n[scaling]\nmin = 1\nmax = 4\nmetric = \"cpu\"\ntarget = 50",
    )
}

fn web() -> WorkloadName {
    WorkloadName::new("web").expect("valid")
}

#[test]
fn the_lease_holder_scales_up_on_sustained_load_and_losing_the_lease_stops_nothing() {
    let mut s = Single::new(&[scaled()]);
    s.advance(2_000);
    assert_eq!(s.starts.len(), 2);
    assert!(
        s.campaigns.contains(&(web(), true)),
        "a node running a replica campaigns for the scaler's lease: {:?}",
        s.campaigns
    );
    // Without the lease, load is ignored.
    for t in 0..4u64 {
        s.core
            .handle_load(s.now + t * 5_000, web(), [(0, 200), (1, 200)].into());
    }
    s.drain();
    assert!(s.scales.is_empty(), "not the holder");
    s.core.handle_lease(s.now, web(), Some(7));
    s.drain();
    assert!(s.core.scales(&web()) || s.scales.is_empty());
    let mut now = s.now;
    for _ in 0..4 {
        now += 5_000;
        s.core.handle_load(now, web(), [(0, 200), (1, 200)].into());
        s.drain();
    }
    assert_eq!(
        s.scales,
        vec![(web(), 2, 4)],
        "200% of request, target 50%: to max"
    );
    assert_eq!(s.core.scale_decisions(&web()).len(), 1);
    let stops = s.stops.len();
    s.core.handle_lease(now, web(), None);
    s.drain();
    assert_eq!(s.stops.len(), stops, "the scaler's lease fences nothing");
    assert!(!s.core.scales(&web()));
}

#[test]
fn a_rollout_under_way_holds_the_count() {
    let mut s = Single::new(&[scaled()]);
    s.advance(10_000);
    s.core.handle_lease(s.now, web(), Some(7));
    s.drain();
    let first = s.desired_rev("web");
    let mut next = scaled();
    next.args = vec!["2".into()];
    next.update.min_healthy_ms = 3_600_000;
    s.core
        .handle_desired(s.now, desired_at(&[first.next(next)], 100));
    s.drain();
    let mut now = s.now;
    for _ in 0..6 {
        now += 5_000;
        s.core.handle_load(now, web(), [(0, 200), (1, 200)].into());
        s.drain();
    }
    assert!(
        s.scales.is_empty(),
        "no scale while the rollout runs: {:?}",
        s.scales
    );
}
