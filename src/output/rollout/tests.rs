use starling_protocol::WorkloadName;
use starling_protocol::api::CanaryReport;
use starling_protocol::hlc::Timestamp;
use starling_protocol::names::NodeId;
use starling_protocol::rollout::Progress;

use super::*;

fn report(revision: u64, previous: Option<u64>, updated: u32) -> RolloutReport {
    RolloutReport {
        name: WorkloadName::new("web").expect("valid"),
        revision,
        id: None,
        previous,
        progress: Progress {
            replicas: 6,
            updated,
            pending: 1,
            failing: 0,
            serving: 6,
        },
        paused: false,
        canary: None,
        rollback_of: None,
        auto_rollback: true,
    }
}

fn write(at_s: u64, number: u64, by: &str) -> WriteRecord {
    WriteRecord {
        at: Timestamp {
            physical_ms: at_s * 1000,
            logical: 0,
            node: NodeId::new("n1").expect("valid"),
        },
        number,
        by: by.into(),
    }
}

#[test]
fn a_rollout_under_way_reads_as_one_line() {
    assert_eq!(
        line(&report(3, Some(2), 4)),
        "web: revision 3 (from 2): 4/6 updated, 1 pending, 0 failing, 6 serving"
    );
    assert_eq!(
        line(&report(1, None, 6)),
        "web: revision 1: 6/6 updated, 1 pending, 0 failing, 6 serving, complete"
    );
}

#[test]
fn a_paused_or_waiting_rollout_says_what_it_waits_for() {
    let mut r = report(3, Some(2), 1);
    r.paused = true;
    r.canary = Some(CanaryReport {
        count: 1,
        promoted: false,
        settled: true,
        auto_promote_after_ms: None,
    });
    let text = line(&r);
    assert!(text.ends_with(
        ", paused (starling rollout resume web), canaries settled: waiting for starling \
         rollout promote web"
    ));
    assert_eq!(json(&r)["waiting_for_promote"], true);
    r.canary = r.canary.map(|c| CanaryReport {
        promoted: true,
        ..c
    });
    assert!(!line(&r).contains("canar"));
}

#[test]
fn an_automatic_rollback_reads_with_its_reason() {
    let mut r = report(4, Some(3), 2);
    r.rollback_of = Some(RollbackOf {
        number: 3,
        failure: Some("replica 0 crash loops".into()),
    });
    assert!(
        line(&r).starts_with(
            "web: revision 4 (rollback of 3, whose rollout failed: replica 0 crash loops): 2/6"
        ),
        "{}",
        line(&r)
    );
    let j = json(&r);
    assert_eq!(j["rollback_of"]["revision"], 3);
    assert_eq!(j["rollback_of"]["automatic"], true);
    assert_eq!(j["rollback_of"]["failure"], "replica 0 crash loops");
    r.rollback_of = Some(RollbackOf {
        number: 3,
        failure: None,
    });
    assert!(line(&r).contains("(rollback of 3, by hand)"));
}

#[test]
fn history_tells_who_wrote_each_revision_and_how_it_ended() {
    // Newest first, as a description carries them.
    let writes = [
        write(50, 3, "node n2"),
        write(40, 2, "operator bob"),
        write(30, 2, "operator ada"),
        write(20, 1, "operator ada"),
    ];
    let rollback = RollbackOf {
        number: 2,
        failure: Some("replica 0 crash loops".into()),
    };
    let (rows, j) = history(&writes, &[], Some(&rollback), 60_000);
    let text: Vec<String> = rows.iter().map(|(l, t)| format!("{l}: {t}")).collect();
    assert_eq!(
        text,
        [
            "revision 1: written 40s ago by operator ada at peer n1; replaced by revision 2 \
             30s ago by operator ada",
            "revision 2: written 30s ago by operator ada at peer n1, then 1 write(s) of the \
             same revision (scale, pause, resume or promote), the last 20s ago by operator \
             bob; rolled back 10s ago by node n2 (revision 3): replica 0 crash loops",
            "revision 3: written 10s ago by node n2 at peer n1; current",
        ]
    );
    assert_eq!(j[1]["ended"], "rolled_back");
    assert_eq!(j[1]["ended_by"], "node n2");
    assert_eq!(j[1]["failure"], "replica 0 crash loops");
    assert_eq!(j[2]["ended"], "current");
}

#[test]
fn history_leaves_out_overwritten_writes_and_ends_a_revision_at_a_delete() {
    let lost = write(25, 2, "operator eve");
    let writes = [
        write(40, 1, "operator ada"),
        write(30, 0, "operator bob"),
        lost.clone(),
        write(20, 1, "operator ada"),
    ];
    let (rows, j) = history(&writes, &[lost], None, 60_000);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].1.ends_with("; deleted 30s ago by operator bob"));
    assert!(rows[1].1.ends_with("; current"));
    assert_eq!(j[0]["ended"], "deleted");
    assert_eq!(j[0]["next_revision"], Value::Null);
}

#[test]
fn a_manual_rollback_of_an_older_revision_reads_as_a_replacement() {
    // Only the current revision says it is a rollback: revision 2 was replaced by 3, which
    // was then rolled back by 4.
    let writes = [
        write(40, 4, "operator ada"),
        write(30, 3, "operator ada"),
        write(20, 2, "operator ada"),
    ];
    let rollback = RollbackOf {
        number: 3,
        failure: None,
    };
    let (rows, _) = history(&writes, &[], Some(&rollback), 60_000);
    assert!(rows[0].1.contains("replaced by revision 3"));
    assert!(
        rows[1].1.ends_with("(revision 4): by hand"),
        "{}",
        rows[1].1
    );
}
