use std::time::Duration;

use starling_protocol::WorkloadName;
use starling_protocol::api::CanaryReport;
use starling_protocol::rollout::Progress as Counts;

use super::*;

fn report(updated: u32, pending: u32) -> RolloutReport {
    RolloutReport {
        name: WorkloadName::new("web").expect("valid"),
        revision: 4,
        id: None,
        previous: Some(3),
        progress: Counts {
            replicas: 5,
            updated,
            pending,
            failing: 0,
            serving: 5,
        },
        paused: false,
        canary: None,
        rollback_of: None,
        auto_rollback: true,
    }
}

#[test]
fn elapsed_reads_in_the_largest_useful_unit() {
    assert_eq!(elapsed(Duration::from_millis(850)), "850 ms");
    assert_eq!(elapsed(Duration::from_millis(12_400)), "12 s");
    assert_eq!(elapsed(Duration::from_secs(185)), "3 min 05 s");
}

#[test]
fn a_rollout_state_says_how_many_replicas_are_done_and_what_it_waits_for() {
    assert_eq!(
        with_elapsed(&rollout_state(&report(3, 1)), Duration::from_secs(12)),
        "web: 3/5 replicas updated and healthy, 1 pending, 0 failing, 5 serving, \
         revision 4 (from 3), 12 s"
    );
    let mut paused = report(1, 0);
    paused.paused = true;
    assert!(
        rollout_state(&paused).ends_with(", paused (starling rollout resume web)"),
        "{}",
        rollout_state(&paused)
    );
    let mut canary = report(1, 0);
    canary.canary = Some(CanaryReport {
        count: 1,
        promoted: false,
        settled: true,
        auto_promote_after_ms: None,
    });
    assert!(
        rollout_state(&canary).contains("waiting for starling rollout promote web"),
        "{}",
        rollout_state(&canary)
    );
}

#[test]
fn a_transfer_shows_bytes_of_the_total_and_the_mean_rate() {
    assert_eq!(
        transfer("app.tar", 12 << 20, 40 << 20, Duration::from_secs(2)),
        "app.tar: 12Mi of 40Mi (30%), 6Mi/s, 2 s"
    );
    // An empty archive is done at once, not a division by zero.
    assert_eq!(
        transfer("empty.tar", 0, 0, Duration::ZERO),
        "empty.tar: 0 of 0 (100%), 0/s, 0 ms"
    );
}

#[test]
fn a_long_line_is_cut_to_the_terminal_width() {
    assert_eq!(fit("short", 80), "short");
    let line = "web: 0/2 replicas updated and healthy, 2 pending, 0 failing, 2 serving, \
                revision 2 (from 1), 3 min 05 s";
    let cut = fit(line, 60);
    assert_eq!(cut.chars().count(), 60, "{cut}");
    assert!(
        cut.starts_with("web: 0/2 replicas updated and healthy, "),
        "{cut}"
    );
    assert!(
        cut.ends_with("…, 3 min 05 s"),
        "the time stays in view: {cut}"
    );
    // A very narrow terminal still gets a line that fits.
    assert_eq!(fit("0123456789abcdef", 10), "0123…bcdef");
}

#[test]
fn on_a_terminal_the_line_is_redrawn_in_place_and_cleared_before_a_lasting_line() {
    let mut p = Progress::new(Vec::new(), true, 80);
    p.update("a", "a, 1 s");
    p.update("a", "a, 2 s");
    p.say("done");
    let out = String::from_utf8(p.into_inner()).expect("utf-8");
    assert_eq!(out, "\r\x1b[2Ka, 1 s\r\x1b[2Ka, 2 s\r\x1b[2Kdone\n");
}

#[test]
fn in_a_log_a_line_is_written_per_change_with_no_control_characters() {
    let mut p = Progress::new(Vec::new(), false, 80);
    p.update("a", "a, 1 s");
    p.update("a", "a, 2 s");
    p.update("b", "b, 3 s");
    p.clear();
    p.say("done");
    let out = String::from_utf8(p.into_inner()).expect("utf-8");
    assert_eq!(out, "a, 1 s\nb, 3 s\ndone\n");
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
}

#[test]
fn a_join_step_names_the_seed_and_what_happened() {
    let node = NodeId::new("edge-7").expect("valid");
    let addr: std::net::SocketAddr = "10.0.0.1:7001".parse().expect("addr");
    let contacting = join_step(
        &JoinStep::Contacting("gw:7000", addr),
        &node,
        Duration::ZERO,
    );
    assert!(
        contacting.starts_with("join: contacting gw:7000 (10.0.0.1:7001): TLS handshake"),
        "{contacting}"
    );
    assert_eq!(
        join_step(
            &JoinStep::Unanswered("gw:7000", "timed out"),
            &node,
            Duration::ZERO
        ),
        "join: gw:7000 did not answer (timed out); trying the next seed"
    );
    assert_eq!(
        join_step(
            &JoinStep::Accepted("gw:7000"),
            &node,
            Duration::from_millis(40)
        ),
        "join: gw:7000 accepted node edge-7: certificate and cluster keys received after 40 ms"
    );
}
