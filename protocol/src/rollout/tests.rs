use proptest::prelude::*;

use super::*;
use crate::spec::{Canary, UpdateStrategy, WorkloadSpec};

fn revision(replicas: u32, update: UpdateStrategy) -> Revision {
    let mut spec = WorkloadSpec::from_toml(&format!(
        "name = \"web\"\ncommand = \"sleep\"\nreplicas = {replicas}"
    ))
    .expect("valid spec");
    spec.update = update;
    Revision::first(spec)
}

fn strategy(order: UpdateOrder, batch: u32, unavailable: u32, surge: u32) -> UpdateStrategy {
    UpdateStrategy {
        batch_size: batch,
        max_unavailable: unavailable,
        max_surge: surge,
        order,
        ..UpdateStrategy::DEFAULT
    }
}

fn old(n: u32) -> Observations {
    (0..n)
        .map(|i| {
            (
                i,
                Observed {
                    serving: true,
                    ..Observed::default()
                },
            )
        })
        .collect()
}

fn done() -> Observed {
    Observed {
        on_target: true,
        updated: true,
        serving: true,
        failing: false,
    }
}

fn goes(rev: &Revision, seen: &Observations) -> Vec<u32> {
    (0..rev.spec.replicas)
        .filter(|&i| !seen.get(&i).is_some_and(|o| o.on_target))
        .filter(|&i| gate(rev, i, seen, false) == Gate::Go)
        .collect()
}

#[test]
fn start_first_moves_one_surge_at_a_time_in_index_order() {
    let rev = revision(6, strategy(UpdateOrder::StartFirst, 2, 0, 1));
    let mut seen = old(6);
    assert_eq!(goes(&rev, &seen), vec![0], "batch of 2 but one surge");
    seen.insert(0, done());
    assert_eq!(goes(&rev, &seen), vec![1]);
    seen.insert(1, done());
    assert_eq!(goes(&rev, &seen), vec![2]);
    // Replica 2 starting, not settled: 3 is in the same batch but the surge is used.
    seen.insert(
        2,
        Observed {
            on_target: true,
            serving: true,
            ..Observed::default()
        },
    );
    assert_eq!(gate(&rev, 3, &seen, false), Gate::Wait(Hold::Surge));
    assert_eq!(
        gate(&rev, 4, &seen, false),
        Gate::Wait(Hold::EarlierBatch { index: 2 })
    );
}

#[test]
fn stop_first_keeps_the_floor_even_with_a_replica_already_down() {
    let rev = revision(6, strategy(UpdateOrder::StopFirst, 3, 2, 0));
    let mut seen = old(6);
    assert_eq!(goes(&rev, &seen), vec![0, 1]);
    // Replica 5 crashed (not the rollout's doing): only one may go now.
    seen.get_mut(&5).expect("there").serving = false;
    assert_eq!(
        goes(&rev, &seen),
        vec![0],
        "5 waits for its batch all the same"
    );
}

#[test]
fn a_replica_that_does_not_serve_moves_at_no_cost() {
    let rev = revision(3, strategy(UpdateOrder::StartFirst, 1, 0, 1));
    let mut seen = old(3);
    seen.insert(
        0,
        Observed {
            on_target: true,
            failing: true,
            ..Observed::default()
        },
    );
    seen.get_mut(&1).expect("there").serving = false;
    assert_eq!(
        gate(&rev, 1, &seen, false),
        Gate::Wait(Hold::EarlierBatch { index: 0 })
    );
    let rev = revision(3, strategy(UpdateOrder::StopFirst, 2, 1, 0));
    assert_eq!(gate(&rev, 1, &seen, false), Gate::Go);
}

#[test]
fn a_canary_rollout_waits_for_a_promote_and_a_paused_one_for_resume() {
    let mut update = strategy(UpdateOrder::StartFirst, 1, 0, 2);
    update.canary = Some(Canary {
        count: 2,
        auto_promote_after_ms: None,
    });
    let mut rev = revision(5, update);
    let mut seen = old(5);
    assert_eq!(goes(&rev, &seen), vec![0, 1], "both canaries, surge 2");
    seen.insert(0, done());
    seen.insert(1, done());
    assert!(canaries_settled(&rev, &seen));
    assert_eq!(
        gate(&rev, 2, &seen, false),
        Gate::Wait(Hold::Promote { canaries: 2 })
    );
    assert_eq!(gate(&rev, 2, &seen, true), Gate::Go, "auto-promoted");
    rev.rollout.promoted = true;
    assert_eq!(
        goes(&rev, &seen),
        vec![2],
        "batches of one after the canaries"
    );
    rev.rollout.paused = true;
    assert!(goes(&rev, &seen).is_empty());
}

#[test]
fn progress_counts_each_replica_once() {
    let mut seen = old(4);
    seen.insert(0, done());
    seen.insert(
        1,
        Observed {
            on_target: true,
            serving: true,
            ..Observed::default()
        },
    );
    seen.insert(
        2,
        Observed {
            on_target: true,
            failing: true,
            ..Observed::default()
        },
    );
    seen.insert(9, done());
    let p = Progress::of(4, &seen);
    assert_eq!(
        (p.updated, p.pending, p.failing, p.serving),
        (1, 1, 1, 3),
        "{p:?}"
    );
    assert!(!p.complete());
}

fn arb_strategy() -> impl Strategy<Value = UpdateStrategy> {
    (
        any::<bool>(),
        1u32..5,
        0u32..4,
        0u32..4,
        prop::option::of(1u32..4),
    )
        .prop_map(|(stop_first, batch, unavailable, surge, canary)| {
            let order = if stop_first {
                UpdateOrder::StopFirst
            } else {
                UpdateOrder::StartFirst
            };
            let mut s = strategy(
                order,
                batch,
                unavailable.max(u32::from(stop_first)),
                surge.max(u32::from(!stop_first)),
            );
            s.canary = canary.map(|count| Canary {
                count,
                auto_promote_after_ms: None,
            });
            s
        })
}

/// (on_target, settled, serving) per replica; `updated` needs all three.
fn arb_truth(n: u32) -> impl Strategy<Value = Vec<(bool, bool, bool)>> {
    prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), n as usize)
}

fn build(truth: &[(bool, bool, bool)], stale: &[bool]) -> Observations {
    truth
        .iter()
        .enumerate()
        .map(|(i, &(on_target, settled, serving))| {
            // A stale view has not heard of the progress yet: the replica still looks old.
            let seen_on_target = on_target && !stale[i];
            (
                i as u32,
                Observed {
                    on_target: seen_on_target,
                    updated: seen_on_target && settled && serving,
                    serving,
                    failing: false,
                },
            )
        })
        .collect()
}

proptest! {
    /// The replicas that move at once, each decided by the node that runs it on its own
    /// (possibly stale) view, never take the workload past its budget.
    #[test]
    fn concurrent_decisions_on_stale_views_stay_within_the_budget(
        update in arb_strategy(),
        promoted in any::<bool>(),
        (n, truth, views, chosen) in (1u32..10).prop_flat_map(|n| (
            Just(n),
            arb_truth(n),
            prop::collection::vec(prop::collection::vec(any::<bool>(), n as usize), 1..4),
            prop::collection::vec(any::<prop::sample::Index>(), n as usize),
        )),
    ) {
        let mut rev = revision(n, update);
        rev.rollout.promoted = promoted;
        let real = build(&truth, &vec![false; n as usize]);
        let views: Vec<Observations> = views.iter().map(|stale| build(&truth, stale)).collect();
        let moving: Vec<u32> = (0..n)
            .filter(|i| !real[i].on_target && real[i].serving)
            .filter(|&i| {
                let view = &views[chosen[i as usize].index(views.len())];
                gate(&rev, i, view, false) == Gate::Go
            })
            .collect();
        // Replicas already on their way (on target, not settled) count against the budget
        // too, but only those of the batch under way: earlier batches are done.
        match update.order {
            UpdateOrder::StartFirst => {
                let under_way = moving.iter().copied().max().map_or(0, |last| {
                    let start = batch_start(&rev, last);
                    (start..=last).filter(|j| real[j].on_target && !real[j].updated && real[j].serving && !moving.contains(j)).count()
                });
                prop_assert!(
                    moving.len() + under_way <= update.max_surge as usize,
                    "{moving:?} + {under_way} under way move beside their old instance; surge {}", update.max_surge
                );
            }
            UpdateOrder::StopFirst => {
                let serving = real.values().filter(|o| o.serving).count();
                let after = serving - moving.len();
                let floor = n.saturating_sub(update.max_unavailable) as usize;
                prop_assert!(moving.is_empty() || after >= floor, "{moving:?} stop: {after} serving, floor {floor}");
            }
        }
        // Never two batches at once.
        if let (Some(first), Some(last)) = (moving.first(), moving.last()) {
            prop_assert_eq!(batch_start(&rev, *first), batch_start(&rev, *last));
        }
    }

    /// With no failures, moving every replica the gate lets go, then letting it settle,
    /// finishes the rollout (promoted canaries, not paused).
    #[test]
    fn a_rollout_without_failures_completes(update in arb_strategy(), n in 1u32..12) {
        let mut rev = revision(n, update);
        rev.rollout.promoted = true;
        let mut seen = old(n);
        for _round in 0..(2 * n + 2) {
            let go = goes(&rev, &seen);
            for i in &go {
                seen.insert(*i, Observed { on_target: true, serving: true, ..Observed::default() });
            }
            let settle: Vec<u32> = seen.iter().filter(|(_, o)| o.on_target && !o.updated).map(|(i, _)| *i).collect();
            for i in settle {
                seen.insert(i, done());
            }
        }
        prop_assert!(Progress::of(n, &seen).complete(), "{seen:?}");
    }
}
