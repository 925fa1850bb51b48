//! Events (`get events`, and `top`'s events pane): one line per event, oldest first, with the
//! node that recorded it. Times are UTC, to the millisecond, from the recording node's HLC.

use serde_json::{Value, json};
use starling_protocol::events::{Event, EventKind, EventPage};

use super::Table;

/// The page as a table, and the notes that follow it (peers that did not answer, more events).
pub(super) fn listing(page: &EventPage) -> (Table, Value) {
    let mut table = Table::new(&["TIME (UTC)", "NODE", "KIND", "WHAT", "EVENT"]);
    for e in &page.events {
        table.row(vec![
            utc(e.at.physical_ms),
            e.node().to_string(),
            e.kind.to_string(),
            what(e),
            e.text.clone(),
        ]);
    }
    let json = json!({
        "events": page.events.iter().map(event_json).collect::<Vec<_>>(),
        "answered": page.answered,
        "missing": page.missing.iter().map(|(node, why)| json!({"node": node, "why": why})).collect::<Vec<_>>(),
        "truncated": page.truncated,
    });
    (table, json)
}

/// What people read after the table: whose events are missing, and whether there are more.
pub(super) fn notes(page: &EventPage) -> String {
    let mut out = String::new();
    for (node, why) in &page.missing {
        out.push_str(&format!("(no events from {node}: {why})\n"));
    }
    if page.truncated {
        out.push_str("(more events match: narrow with --since or --workload, or raise --limit)\n");
    }
    out
}

/// One event for scripts. The keys are an interface.
pub fn event_json(e: &Event) -> Value {
    let mut value = json!({
        "hlc": format!("{}.{}@{}", e.at.physical_ms, e.at.logical, e.at.node),
        "at_ms": e.at.physical_ms,
        "node": e.node(),
        "kind": e.kind.name(),
        "workload": e.workload,
        "replica": e.replica,
        "text": e.text,
    });
    let detail = match e.kind {
        EventKind::LeaseWon {
            epoch,
            fencing_token,
        } => Some(json!({"epoch": epoch, "fencing_token": fencing_token})),
        EventKind::LeaseLost { fencing_token } => Some(json!({"fencing_token": fencing_token})),
        _ => None,
    };
    if let (Some(detail), Value::Object(keys)) = (detail, &mut value) {
        keys.insert("lease".into(), detail);
    }
    value
}

/// The header of [`event_line`]'s columns.
pub fn event_line_header() -> String {
    format!(
        "{:<23}  {:<16}  {:<14}  {:<16}  EVENT",
        "TIME (UTC)", "NODE", "KIND", "WHAT"
    )
}

/// One event on one line with fixed columns, for output that cannot wait to align a table
/// (`--follow`).
pub fn event_line(e: &Event) -> String {
    format!(
        "{:<23}  {:<16}  {:<14}  {:<16}  {}",
        utc(e.at.physical_ms),
        e.node().as_str(),
        e.kind.name(),
        what(e),
        e.text
    )
}

/// The workload or replica an event is about (`-` for the node or the fleet).
pub fn what(e: &Event) -> String {
    match (&e.workload, e.replica) {
        (Some(w), Some(i)) => format!("{w}/{i}"),
        (Some(w), None) => w.to_string(),
        (None, _) => "-".into(),
    }
}

/// `ms` since the epoch as `YYYY-MM-DD HH:MM:SS.mmm` in UTC.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        // 2024-02-29 12:34:56.789 UTC, a leap day.
        assert_eq!(utc(1_709_210_096_789), "2024-02-29 12:34:56.789");
        assert_eq!(utc(1_764_867_785_123), "2025-12-04 17:03:05.123");
    }
}
