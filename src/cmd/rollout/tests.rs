use starling_protocol::api::CanaryReport;
use starling_protocol::desired::RollbackOf;
use starling_protocol::rollout::Progress;

use super::*;

fn report(revision: u64, updated: u32, failing: u32) -> RolloutReport {
    RolloutReport {
        name: WorkloadName::new("web").expect("valid"),
        revision,
        id: None,
        previous: Some(revision - 1),
        progress: Progress {
            replicas: 3,
            updated,
            pending: 3 - updated - failing,
            failing,
            serving: 3,
        },
        paused: false,
        canary: None,
        rollback_of: None,
        auto_rollback: false,
    }
}

fn rollback(of: u64, failure: Option<&str>) -> RolloutReport {
    RolloutReport {
        rollback_of: Some(RollbackOf {
            number: of,
            failure: failure.map(str::to_string),
        }),
        ..report(of + 1, 0, 0)
    }
}

#[test]
fn a_rollout_is_followed_until_every_replica_is_updated() {
    assert_eq!(verdict(&report(3, 2, 0), 3), Verdict::Going);
    assert_eq!(verdict(&report(3, 3, 0), 3), Verdict::Complete);
    assert_eq!(Verdict::Complete.code(), 0);
    assert_eq!(Verdict::Complete.json()["verdict"], "complete");
}

#[test]
fn paused_and_canary_rollouts_are_waited_for() {
    let mut r = report(3, 1, 0);
    r.paused = true;
    r.canary = Some(CanaryReport {
        count: 1,
        promoted: false,
        settled: true,
        auto_promote_after_ms: None,
    });
    assert_eq!(verdict(&r, 3), Verdict::Going);
}

#[test]
fn a_rollback_of_the_followed_revision_ends_with_code_2_and_its_reason() {
    let v = verdict(&rollback(3, Some("replica 1 crash loops")), 3);
    assert_eq!(v.code(), 2);
    assert_eq!(v.json()["verdict"], "rolled_back");
    assert_eq!(v.json()["exit_code"], 2);
    assert_eq!(
        v,
        Verdict::RolledBack(
            "web: revision 3 was rolled back by revision 4: replica 1 crash loops".into()
        )
    );
    let by_hand = verdict(&rollback(3, None), 3);
    assert_eq!(by_hand.code(), 2);
    assert!(matches!(by_hand, Verdict::RolledBack(why) if why.ends_with("by hand")));
}

#[test]
fn following_an_automatic_rollback_ends_at_once_with_code_2() {
    let v = verdict(&rollback(3, Some("health deadline passed")), 4);
    assert_eq!(v.code(), 2);
    assert!(
        matches!(&v, Verdict::RolledBack(why) if why.contains("automatic rollback of revision 3") && why.ends_with("health deadline passed")),
        "{v:?}"
    );
    // A rollback by hand is a rollout like another: followed to its end.
    assert_eq!(verdict(&rollback(3, None), 4), Verdict::Going);
}

#[test]
fn failing_replicas_end_the_watch_only_when_nothing_will_roll_back() {
    let failing = report(3, 1, 1);
    let v = verdict(&failing, 3);
    assert_eq!(v.code(), 1);
    assert!(matches!(&v, Verdict::Failed(why) if why.contains("auto_rollback is off")));
    let rolls_back = RolloutReport {
        auto_rollback: true,
        ..failing.clone()
    };
    assert_eq!(verdict(&rolls_back, 3), Verdict::Going);
    let first = RolloutReport {
        previous: None,
        ..rolls_back
    };
    assert!(matches!(verdict(&first, 3), Verdict::Failed(why) if why.contains("no previous")));
    let failing_rollback = RolloutReport {
        auto_rollback: true,
        progress: failing.progress.clone(),
        ..rollback(2, None)
    };
    assert!(
        matches!(verdict(&failing_rollback, 3), Verdict::Failed(why) if why.contains("never rolls back"))
    );
}

#[test]
fn a_revision_replaced_by_another_write_ends_with_code_1() {
    let v = verdict(&report(5, 0, 0), 3);
    assert_eq!(v.code(), 1);
    assert!(matches!(&v, Verdict::Failed(why) if why.contains("replaced by revision 5")));
}
