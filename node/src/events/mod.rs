//! This node's events, kept on disk and bounded: what `describe` and `starling get events`
//! read, surviving a restart of the agent.
//!
//! The log is two segment files in `DATA_DIR/events/`, named by a growing sequence number.
//! Records are appended to the newer one; once it would pass `segment_bytes_max`, the older
//! one is deleted and a new one started, so the log never holds more than two segments
//! (`2 × segment_bytes_max` bytes on disk; the same events are kept in memory for queries).
//! A record is `length (u32 LE) | checksum (u64 LE, xxh3 of the length and payload) |
//! payload (postcard [`Event`])`.
//!
//! Loading never fails the agent: a record whose checksum, decoding or [`Event::check`]
//! fails is skipped (and counted); a record cut short (a torn write at power loss) or a
//! length that cannot be right ends the segment there, and the newer segment is cut back to
//! its last whole record so new records follow good ones. A segment that cannot be read is
//! left out with a warning; a log that cannot be written keeps its events in memory.
//!
//! Durability: appends are plain writes, never fsynced. Events are diagnostics: a killed
//! agent loses nothing (the kernel has the bytes), a power loss may lose the last seconds of
//! events, which the torn-tail rule above then skips. The agent loop never waits on a disk
//! flush for an event.

mod fleet;

pub(crate) use fleet::{EventSource, Member};

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use starling_protocol::events::{Event, EventQuery, TEXT_BYTES_MAX};
use starling_protocol::hash::hash64;
use starling_protocol::hlc::Timestamp;

/// Default size of one segment (256 KiB, some 2,500 typical events): the log holds at most two.
pub const SEGMENT_BYTES_DEFAULT: u64 = 256 << 10;
/// Bytes before a record's payload: its length and checksum.
const HEADER_BYTES: usize = 12;
/// Largest payload a record may have: an event with a full text and long names fits well
/// inside; a larger length read from disk is damage.
const RECORD_BYTES_MAX: usize = TEXT_BYTES_MAX + 1024;
/// The smallest segment bound accepted, so a record always fits in an empty segment.
const SEGMENT_BYTES_MIN: u64 = (HEADER_BYTES + RECORD_BYTES_MAX) as u64;

/// This node's event log. Call [`EventLog::open`] once at start, [`EventLog::append`] for
/// every event (oldest first), and read with [`EventLog::query`] or [`EventLog::iter`].
#[derive(Debug)]
pub struct EventLog {
    dir: PathBuf,
    segment_bytes_max: u64,
    /// The newer segment's number; the older one, if any, is `active - 1`.
    active: u64,
    /// The newer segment, open for appending (`None`: it could not be opened; events stay
    /// in memory).
    file: Option<File>,
    active_bytes: u64,
    /// Every event of both segments, oldest first.
    events: VecDeque<Event>,
    /// How many of `events` are in the older segment (dropped with it at the next rotation).
    older_len: usize,
    /// Records skipped as damaged when the log was loaded.
    skipped: u64,
    /// A write failed and was logged: the next failure is not logged again.
    failing: bool,
}

impl EventLog {
    /// Opens (creating it if needed) the log in `dir` and loads its events. Never fails: what
    /// cannot be read is skipped with a warning, see the module doc.
    pub fn open(dir: impl Into<PathBuf>, segment_bytes_max: u64) -> Self {
        let dir = dir.into();
        let mut log = EventLog {
            dir,
            segment_bytes_max: segment_bytes_max.max(SEGMENT_BYTES_MIN),
            active: 0,
            file: None,
            active_bytes: 0,
            events: VecDeque::new(),
            older_len: 0,
            skipped: 0,
            failing: false,
        };
        if let Err(e) = crate::store::create_private_dir(&log.dir) {
            tracing::warn!(dir = %log.dir.display(), "events are kept in memory only: {e}");
            return log;
        }
        let mut segments = segment_numbers(&log.dir);
        // More than two (a crash between a rotation's create and delete): the oldest go.
        while segments.len() > 2 {
            let old = segments.remove(0);
            let _ = std::fs::remove_file(segment_path(&log.dir, old));
        }
        for (i, number) in segments.iter().enumerate() {
            let newest = i + 1 == segments.len();
            let (events, end, skipped) = read_segment(&segment_path(&log.dir, *number), newest);
            log.skipped += skipped;
            if newest {
                log.active = *number;
                log.active_bytes = end;
            } else {
                log.older_len = events.len();
            }
            log.events.extend(events);
        }
        if log.skipped > 0 {
            tracing::warn!(
                skipped = log.skipped,
                dir = %log.dir.display(),
                "skipped damaged event records"
            );
        }
        log.file = open_append(&log.dir, log.active);
        log
    }

    /// Records `event`: in memory at once, on disk with one write (never fsynced). Events
    /// must come in HLC order (the agent stamps them with its clock as it records them).
    pub fn append(&mut self, event: Event) {
        debug_assert!(
            self.events.back().is_none_or(|last| last.at < event.at),
            "events are appended in HLC order"
        );
        match encode(&event) {
            Some(record) => {
                let record_bytes = record.len() as u64;
                if self.active_bytes > 0
                    && self.active_bytes + record_bytes > self.segment_bytes_max
                {
                    self.rotate();
                }
                self.write(&record);
            }
            None => tracing::warn!("an event too large to store was kept in memory only"),
        }
        self.events.push_back(event);
    }

    /// The answer to `query` from this node's events (its scope is not looked at).
    pub fn query(&self, query: &EventQuery) -> (Vec<Event>, bool) {
        query.pick(self.events.iter())
    }

    /// Every event kept, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Event> {
        self.events.iter()
    }

    /// The newest event's timestamp, so the clock resumes after it at a restart.
    pub fn newest(&self) -> Option<&Timestamp> {
        self.events.back().map(|e| &e.at)
    }

    /// Records skipped as damaged when the log was loaded.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Starts a new segment, deleting the older one and forgetting its events.
    fn rotate(&mut self) {
        if self.active > 0 {
            let _ = std::fs::remove_file(segment_path(&self.dir, self.active - 1));
        }
        self.events.drain(..self.older_len);
        self.older_len = self.events.len();
        self.active += 1;
        self.active_bytes = 0;
        self.file = open_append(&self.dir, self.active);
    }

    fn write(&mut self, record: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        match file.write_all(record) {
            Ok(()) => {
                self.active_bytes += record.len() as u64;
                self.failing = false;
            }
            Err(e) => {
                // A partial record would hide every later one: cut it off.
                let _ = file.set_len(self.active_bytes);
                if !self.failing {
                    tracing::warn!(dir = %self.dir.display(), "cannot write an event: {e}");
                }
                self.failing = true;
            }
        }
    }
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.log"))
}

/// The segments in `dir`, oldest first.
fn segment_numbers(dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbers: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u64>()
                .ok()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

fn open_append(dir: &Path, number: u64) -> Option<File> {
    let path = segment_path(dir, number);
    // 0600 like every file of the data dir (see docs/OPERATIONS.md, "Files and permissions").
    match OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(path = %path.display(), "events are kept in memory only: {e}");
            None
        }
    }
}

fn checksum(length: &[u8; 4], payload: &[u8]) -> u64 {
    let mut bytes = Vec::with_capacity(4 + payload.len());
    bytes.extend_from_slice(length);
    bytes.extend_from_slice(payload);
    hash64(&bytes)
}

/// One record, or `None` for an event beyond the record bound (not expected: texts are cut).
fn encode(event: &Event) -> Option<Vec<u8>> {
    let payload = postcard::to_allocvec(event).ok()?;
    if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
        return None;
    }
    let length = (payload.len() as u32).to_le_bytes();
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&length);
    record.extend_from_slice(&checksum(&length, &payload).to_le_bytes());
    record.extend_from_slice(&payload);
    Some(record)
}

/// The events of one segment, where its last whole record ends, and how many records were
/// skipped. With `cut`, a torn tail is cut off the file.
fn read_segment(path: &Path, cut: bool) -> (Vec<Event>, u64, u64) {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read events: {e}");
            return (Vec::new(), 0, 0);
        }
    };
    let (events, end, skipped) = decode_records(&bytes);
    if cut && end < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - end,
            "cutting a torn tail off the event log"
        );
        if let Err(e) = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(end as u64))
        {
            tracing::warn!(path = %path.display(), "cannot cut the torn tail: {e}");
        }
    }
    (events, end as u64, skipped)
}

fn decode_records(bytes: &[u8]) -> (Vec<Event>, usize, u64) {
    let mut events = Vec::new();
    let mut skipped = 0;
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let mut length = [0u8; 4];
        length.copy_from_slice(&header[..4]);
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&header[4..]);
        let n = u32::from_le_bytes(length) as usize;
        let Some(payload) = bytes
            .get(at + HEADER_BYTES..at + HEADER_BYTES + n)
            .filter(|_| n > 0 && n <= RECORD_BYTES_MAX)
        else {
            // Cut short, or a length that cannot be right: nothing after it can be trusted.
            break;
        };
        let event = (checksum(&length, payload) == u64::from_le_bytes(sum))
            .then(|| postcard::from_bytes::<Event>(payload).ok())
            .flatten()
            .filter(|e| e.check().is_ok());
        match event {
            Some(event) => events.push(event),
            None => skipped += 1,
        }
        at += HEADER_BYTES + n;
    }
    (events, at, skipped)
}

#[cfg(test)]
mod tests;
