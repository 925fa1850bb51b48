use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::ReplicaState;

use super::*;

fn spec(args: &str, update: &str) -> WorkloadSpec {
    WorkloadSpec::from_toml(&format!(
        "name = \"web\"\ncommand = \"sleep\"\nargs = [\"{args}\"]\nreplicas = 3\n{update}"
    ))
    .expect("valid spec")
}

/// Revision 2 of `web` (from 1), with `update` as its `[update]` table.
fn second(update: &str) -> Revision {
    Revision::first(spec("1", update)).next(spec("2", update))
}

fn canary() -> Revision {
    second("[update]\nstrategy = \"canary\"\ncanary = 1")
}

fn status(revision: u64, state: ReplicaState, settled: bool) -> ReplicaStatus {
    ReplicaStatus {
        revision,
        state,
        healthy: state == ReplicaState::Running,
        restarts: 0,
        last_exit_code: None,
        reason: None,
        settled,
        outgoing: None,
    }
}

fn progress(updated: u32) -> Progress {
    Progress {
        replicas: 3,
        updated,
        pending: 0,
        failing: 0,
        serving: 3,
    }
}

#[test]
fn pause_and_resume_keep_the_number_and_flip_only_the_flag() {
    let current = second("");
    let paused = controlled(&current, RolloutAction::Pause, &progress(1))
        .expect("a rollout under way can be paused")
        .expect("it changes");
    assert_eq!(paused.number, 2);
    assert!(paused.rollout.paused);
    assert_eq!(paused.spec, current.spec);
    assert_eq!(paused.previous, current.previous);
    let resumed = controlled(&paused, RolloutAction::Resume, &progress(1))
        .expect("a paused rollout can be resumed")
        .expect("it changes");
    assert_eq!(resumed, current);
}

#[test]
fn pausing_twice_or_resuming_what_runs_changes_nothing() {
    let current = second("");
    assert_eq!(
        controlled(&current, RolloutAction::Resume, &progress(1)),
        Ok(None)
    );
    let paused = controlled(&current, RolloutAction::Pause, &progress(1))
        .expect("allowed")
        .expect("changes");
    assert_eq!(
        controlled(&paused, RolloutAction::Pause, &progress(1)),
        Ok(None)
    );
}

#[test]
fn there_is_nothing_to_pause_without_a_previous_revision_or_once_complete() {
    let first = Revision::first(spec("1", ""));
    let why = controlled(&first, RolloutAction::Pause, &progress(0)).expect_err("refused");
    assert!(why.contains("revision 1 is the first one"), "{why}");
    let why = controlled(&second(""), RolloutAction::Pause, &progress(3)).expect_err("refused");
    assert!(why.contains("complete"), "{why}");
}

#[test]
fn promote_sets_the_flag_of_a_canary_rollout_only() {
    let promoted = controlled(&canary(), RolloutAction::Promote, &progress(1))
        .expect("a canary rollout can be promoted")
        .expect("it changes");
    assert_eq!(promoted.number, 2);
    assert!(promoted.rollout.promoted);
    assert!(!promoted.rollout.paused);
    assert_eq!(
        controlled(&promoted, RolloutAction::Promote, &progress(1)),
        Ok(None)
    );
    let why = controlled(&second(""), RolloutAction::Promote, &progress(1)).expect_err("refused");
    assert!(why.contains("not a canary rollout"), "{why}");
}

#[test]
fn the_report_counts_replicas_on_the_revision_by_every_report() {
    let revision = canary();
    let settled = status(2, ReplicaState::Running, true);
    let starting = status(2, ReplicaState::Starting, false);
    let crashing = status(2, ReplicaState::CrashLoop, false);
    let old = status(1, ReplicaState::Running, true);
    // Replica 1 is reported twice (a stale report from its old node): the best one counts.
    let reports = [(0, &settled), (1, &old), (1, &starting), (2, &crashing)];
    let report = report(&revision, None, reports);
    assert_eq!(report.revision, 2);
    assert_eq!(report.previous, Some(1));
    assert_eq!(
        report.progress,
        Progress {
            replicas: 3,
            updated: 1,
            pending: 1,
            failing: 1,
            serving: 2,
        }
    );
    let canary = report.canary.expect("a canary rollout");
    assert!(canary.settled && !canary.promoted);
    assert!(report.waiting_for_promote());
    assert!(!report.complete());
}

#[test]
fn the_report_of_an_automatic_rollback_says_what_failed() {
    let failed = second("");
    let rollback = failed
        .rollback(Some("replica 0 crash loops".into()))
        .expect("revision 2 has a previous one");
    let report = report(&rollback, None, []);
    assert_eq!(report.revision, 3);
    let of = report.automatic_rollback().expect("an automatic rollback");
    assert_eq!(of.number, 2);
    assert_eq!(of.failure.as_deref(), Some("replica 0 crash loops"));
    let by_hand = report_of_hand_rollback();
    assert!(by_hand.automatic_rollback().is_none());
    assert!(by_hand.rollback_of.is_some());
}

fn report_of_hand_rollback() -> RolloutReport {
    let rollback = second("").rollback(None).expect("has a previous one");
    report(&rollback, None, [])
}
