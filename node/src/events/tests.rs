use std::io::Write as _;

use starling_protocol::events::{EventKind, EventScope};
use starling_protocol::{NodeId, WorkloadName};

use super::*;

fn event(n: u64) -> Event {
    Event::new(
        Timestamp {
            physical_ms: 1_000 + n,
            logical: 0,
            node: NodeId::new("n1").expect("valid"),
        },
        EventKind::ReplicaStarted,
        Some(WorkloadName::new("web").expect("valid")),
        Some((n % 3) as u32),
        format!("starting web/{} (event {n})", n % 3),
    )
}

fn numbers(log: &EventLog) -> Vec<u64> {
    log.iter().map(|e| e.at.physical_ms - 1_000).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment_numbers(dir)
        .into_iter()
        .map(|n| segment_path(dir, n))
        .collect()
}

fn all_events() -> EventQuery {
    EventQuery {
        workload: None,
        since: None,
        limit: 2_000,
        scope: EventScope::ThisNode,
    }
}

#[test]
fn events_survive_a_reopen_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    for n in 0..50 {
        log.append(event(n));
    }
    drop(log);
    let log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    assert_eq!(numbers(&log), (0..50).collect::<Vec<_>>());
    assert_eq!(log.skipped(), 0);
    assert_eq!(log.newest().map(|t| t.physical_ms), Some(1_049));
}

#[test]
fn segments_are_for_the_agent_s_user_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EventLog::open(dir.path().join("events"), SEGMENT_BYTES_DEFAULT);
    log.append(event(1));
    let dir = dir.path().join("events");
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for file in segment_files(&dir) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[test]
fn rotation_keeps_the_log_within_two_segments_and_drops_the_oldest_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bound = SEGMENT_BYTES_MIN;
    let mut log = EventLog::open(dir.path(), bound);
    for n in 0..2_000 {
        log.append(event(n));
        let files = segment_files(dir.path());
        assert!(files.len() <= 2, "{} segments after event {n}", files.len());
        let bytes: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).expect("segment").len())
            .sum();
        assert!(bytes <= 2 * bound, "{bytes} bytes on disk after event {n}");
    }
    let kept = numbers(&log);
    assert!(kept.len() < 2_000, "the oldest events were dropped");
    assert_eq!(kept.last(), Some(&1_999), "the newest is kept");
    // What memory holds is exactly what a restart reads back.
    drop(log);
    let reopened = EventLog::open(dir.path(), bound);
    assert_eq!(numbers(&reopened), kept);
}

#[test]
fn a_torn_tail_is_skipped_and_cut_so_new_records_follow_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    for n in 0..10 {
        log.append(event(n));
    }
    drop(log);
    let path = segment_files(dir.path()).pop().expect("a segment");
    // A power loss in the middle of the next record: its header and half its payload.
    let torn = encode(&event(10)).expect("encodes");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("segment");
    file.write_all(&torn[..torn.len() / 2]).expect("write");
    drop(file);
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    assert_eq!(numbers(&log), (0..10).collect::<Vec<_>>());
    log.append(event(11));
    drop(log);
    let log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    let mut expected: Vec<u64> = (0..10).collect();
    expected.push(11);
    assert_eq!(
        numbers(&log),
        expected,
        "the record after the torn one was read"
    );
}

#[test]
fn a_corrupt_record_is_skipped_and_the_ones_after_it_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    for n in 0..5 {
        log.append(event(n));
    }
    drop(log);
    let path = segment_files(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&path).expect("segment");
    // Flip a byte inside the second record's payload.
    let first = encode(&event(0)).expect("encodes").len();
    bytes[first + HEADER_BYTES + 3] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    assert_eq!(numbers(&log), [0, 2, 3, 4]);
    assert_eq!(log.skipped(), 1);
}

#[test]
fn garbage_and_stray_files_never_stop_a_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(segment_path(dir.path(), 3), [0xffu8; 100]).expect("write");
    std::fs::write(segment_path(dir.path(), 4), b"").expect("write");
    std::fs::write(segment_path(dir.path(), 1), b"old").expect("write");
    std::fs::write(dir.path().join("notes.txt"), b"not a segment").expect("write");
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    assert_eq!(log.iter().count(), 0);
    assert!(
        !segment_path(dir.path(), 1).exists(),
        "a third segment is removed"
    );
    log.append(event(1));
    drop(log);
    assert_eq!(
        numbers(&EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT)),
        [1]
    );
}

#[test]
fn a_query_filters_by_workload_and_pages_from_a_cursor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = EventLog::open(dir.path(), SEGMENT_BYTES_DEFAULT);
    for n in 0..10 {
        let mut e = event(n);
        if n % 2 == 1 {
            e.workload = Some(WorkloadName::new("db").expect("valid"));
        }
        log.append(e);
    }
    let mut query = all_events();
    query.workload = Some(WorkloadName::new("db").expect("valid"));
    let (db, more) = log.query(&query);
    assert!(!more);
    assert_eq!(
        db.iter()
            .map(|e| e.at.physical_ms - 1_000)
            .collect::<Vec<_>>(),
        [1, 3, 5, 7, 9]
    );
    query.since = Some(db[2].at.clone());
    query.limit = 1;
    let (next, more) = log.query(&query);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].at.physical_ms, 1_007);
    assert!(more);
}
