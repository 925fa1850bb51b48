//! Rolling updates on one node: the gate, start-first and stop-first moves, the health gate
//! and the rollback it asks for, canaries and pause.

use super::*;
use starling_protocol::desired::RolloutControl;

fn web(replicas: u32, extra: &str) -> WorkloadSpec {
    spec("web", replicas, extra)
}

/// Runs `web` v1 with `v1`, then writes v2 with `v2` and returns the harness at that moment.
fn updated(replicas: u32, v1: &str, v2: &str) -> Single {
    let mut s = Single::new(&[web(replicas, v1)]);
    s.advance(10_000);
    assert_eq!(s.starts.len(), replicas as usize);
    let first = s.desired_rev("web");
    s.starts.clear();
    s.peak = s.live.len();
    s.core.handle_desired(
        s.now,
        desired_at(
            &[first.next(web(replicas, &format!("args = [\"2\"]\n{v2}")))],
            100,
        ),
    );
    s.drain();
    s
}

fn new_revision_stops(s: &Single) -> usize {
    s.stops
        .iter()
        .filter(|(_, why)| *why == StopReason::NewRevision)
        .count()
}

#[test]
fn start_first_moves_one_replica_at_a_time_beside_its_old_instance() {
    let mut s = updated(3, "", "");
    assert_eq!(s.starts.len(), 1, "replica 0's new instance only");
    assert_eq!(new_revision_stops(&s), 0, "its old instance serves on");
    assert_eq!(s.live.len(), 4);
    let status = s.core.status();
    let r0 = &status.replicas[&replica("web", 0)];
    assert_eq!(r0.revision, 2);
    assert_eq!(r0.outgoing.map(|o| o.revision), Some(1));
    // Not settled before min_healthy (5 s): nothing else moves.
    s.advance(s.now + 4_000);
    assert_eq!((s.starts.len(), new_revision_stops(&s)), (1, 0));
    s.advance(s.now + 30_000);
    assert_eq!(s.starts.len(), 3, "each replica once, on the new revision");
    assert_eq!(new_revision_stops(&s), 3, "each old instance once");
    assert_eq!(s.peak, 4, "never more than replicas + max_surge");
    assert_eq!(s.live.len(), 3);
    let status = s.core.status();
    assert!(
        status
            .replicas
            .values()
            .all(|r| r.revision == 2 && r.settled && r.outgoing.is_none()),
        "{status:?}"
    );
}

#[test]
fn stop_first_keeps_replicas_minus_max_unavailable_running() {
    let v = "[update]\norder = \"stop-first\"\nmax_unavailable = 1";
    let mut s = updated(4, v, v);
    assert_eq!(new_revision_stops(&s), 1, "one replica at a time");
    assert_eq!(s.starts.len(), 1, "restarted at once on the new revision");
    let mut low = s.live.len();
    while s.starts.len() < 4 && s.now < 200_000 {
        s.advance(s.now + 500);
        low = low.min(s.live.len());
    }
    assert_eq!((s.starts.len(), new_revision_stops(&s)), (4, 4));
    assert!(low >= 3, "at most one down at a time, saw {low} running");
}

#[test]
fn a_crash_looping_revision_asks_for_a_rollback_and_the_old_instance_never_stopped() {
    let mut s = updated(3, "", "");
    let r0 = replica("web", 0);
    for _ in 0..3 {
        s.exit(&r0, 1);
        let due = s.core.poll_timeout().expect("a restart is due");
        s.advance(due);
    }
    assert_eq!(
        s.rollbacks,
        vec![(WorkloadName::new("web").expect("valid"), 2)]
    );
    assert!(s.events.iter().any(|e| matches!(
        e,
        CoreEvent::RolloutFailed {
            revision: 2,
            rolling_back: true,
            ..
        }
    )));
    assert_eq!(new_revision_stops(&s), 0, "no old instance was stopped");
    assert_eq!(
        s.starts.len(),
        4,
        "replica 0 only: 1 + 3 restarts; the others wait"
    );
    // The rollback arrives (written by this node or another detector).
    let failed = s.desired_rev("web");
    let back = failed
        .rollback(Some("crash".into()))
        .expect("has a previous");
    let starts = s.starts.len();
    s.core.handle_desired(s.now, desired_at(&[back], 200));
    s.drain();
    s.advance(s.now + 30_000);
    assert_eq!(
        s.starts.len(),
        starts,
        "the old instance was kept: nothing starts"
    );
    let status = s.core.status();
    assert!(
        status
            .replicas
            .values()
            .all(|r| r.revision == 3 && r.outgoing.is_none()),
        "all on revision 3 (the old template): {status:?}"
    );
    assert_eq!(s.live.len(), 3);
    assert_eq!(s.rollbacks.len(), 1, "a rollback is never rolled back");
}

#[test]
fn a_new_instance_not_healthy_by_the_deadline_fails_the_rollout() {
    let check = "[health]\nexec = [\"true\"]\n[update]\nhealth_deadline = \"10s\"";
    let mut s = Single::new(&[web(2, check)]);
    s.advance(2_000);
    for r in [replica("web", 0), replica("web", 1)] {
        let instance = s.running[&r];
        s.core.handle_runtime(
            s.now,
            RuntimeEvent::Health {
                replica: r,
                instance,
                ok: true,
                detail: String::new(),
            },
        );
    }
    s.advance(10_000);
    let first = s.desired_rev("web");
    s.core.handle_desired(
        s.now,
        desired_at(
            &[first.next(web(2, &format!("args = [\"2\"]\n{check}")))],
            100,
        ),
    );
    s.drain();
    s.advance(s.now + 9_000);
    assert!(s.rollbacks.is_empty());
    s.advance(s.now + 2_000);
    assert_eq!(s.rollbacks.len(), 1, "no health by 10 s");
}

#[test]
fn a_new_template_starts_with_a_fresh_back_off() {
    let mut s = Single::new(&[web(1, "")]);
    s.advance(2_000);
    let r0 = replica("web", 0);
    for _ in 0..6 {
        s.exit(&r0, 1);
        if let Some(due) = s.core.poll_timeout() {
            s.advance(due);
        }
    }
    s.exit(&r0, 1);
    let waiting = s.core.poll_timeout().expect("backing off");
    assert!(waiting > s.now + 3_000, "a long back-off by now");
    let first = s.desired_rev("web");
    let starts = s.starts.len();
    s.core.handle_desired(
        s.now,
        desired_at(&[first.next(web(1, "args = [\"2\"]"))], 100),
    );
    s.drain();
    s.advance(s.now);
    assert_eq!(
        s.starts.len(),
        starts + 1,
        "started at once on the new template"
    );
}

#[test]
fn a_canary_rollout_waits_for_promote_and_a_paused_one_for_resume() {
    let v = "[update]\nstrategy = \"canary\"\ncanary = 1";
    let mut s = updated(3, v, v);
    s.advance(s.now + 30_000);
    assert_eq!(s.starts.len(), 1, "the canary only");
    let mut rev = s.desired_rev("web");
    rev.rollout = RolloutControl {
        paused: true,
        promoted: true,
        rollback_of: None,
    };
    s.core
        .handle_desired(s.now, desired_at(&[rev.clone()], 200));
    s.drain();
    s.advance(s.now + 30_000);
    assert_eq!(s.starts.len(), 1, "promoted but paused");
    rev.rollout.paused = false;
    s.core.handle_desired(s.now, desired_at(&[rev], 300));
    s.drain();
    s.advance(s.now + 30_000);
    assert_eq!(s.starts.len(), 3, "resumed: the rest follow");
}

#[test]
fn a_scale_restarts_nothing_and_scales_down_from_the_top() {
    let mut s = Single::new(&[web(3, "")]);
    s.advance(2_000);
    let first = s.desired_rev("web");
    s.core
        .handle_desired(s.now, desired_at(&[first.next(web(1, ""))], 100));
    s.drain();
    let mut stopped: Vec<u32> = s
        .stops
        .iter()
        .filter(|(_, why)| *why == StopReason::NotDesired)
        .map(|(r, _)| r.index)
        .collect();
    stopped.sort();
    assert_eq!(stopped, vec![1, 2]);
    assert_eq!(new_revision_stops(&s), 0);
}
