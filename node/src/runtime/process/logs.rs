//! The process runtime's logs: one `output.log` per replica, kept bounded by copy-and-truncate
//! rotation, and read backwards for its last lines.
//!
//! The log is per replica, not per instance: while two instances of a replica run (a
//! start-first update) both append to it, their lines interleaved. That keeps `starling logs`
//! one stream across restarts and updates, and the writes do not tear each other: both open
//! the file with O_APPEND, so each write lands whole at the end. The cost is that the lines
//! attached to an instance's exit report may include some of the other instance's.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::Inner;

/// Bytes read per step when scanning a log backwards for its last lines.
const TAIL_CHUNK_BYTES: u64 = 8 << 10;

/// The log file of a replica's directory.
pub(super) fn log_file(dir: &Path) -> PathBuf {
    dir.join("output.log")
}

impl Inner {
    pub(super) fn rotate_logs(&self) {
        let dirs: BTreeSet<PathBuf> = self
            .lock()
            .live
            .keys()
            .map(|(replica, _)| self.replica_dir(replica))
            .collect();
        for dir in dirs {
            self.rotate_one(&log_file(&dir));
        }
    }

    /// Copy-and-truncate rotation of one log past `log_bytes_max`.
    pub(super) fn rotate_one(&self, log: &Path) {
        let size = fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        if size <= self.config.log_bytes_max {
            return;
        }
        let kept = self.config.log_files_kept.max(1);
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
        let _ = fs::remove_file(rotated(kept));
        for n in (1..kept).rev() {
            let _ = fs::rename(rotated(n), rotated(n + 1));
        }
        if let Err(e) = fs::copy(log, rotated(1))
            .and_then(|_| OpenOptions::new().write(true).open(log)?.set_len(0))
        {
            tracing::warn!("cannot rotate {}: {e}", log.display());
        }
    }
}

/// The last `n` lines of a file, read backwards in chunks and at most `bytes_max` from its
/// end (so a line longer than that comes back cut at its start).
pub(super) fn tail_lines(path: &Path, n: usize, bytes_max: u64) -> Vec<String> {
    let Ok(mut file) = fs::File::open(path) else {
        return Vec::new();
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let floor = size.saturating_sub(bytes_max);
    let (mut start, mut newlines) = (size, 0usize);
    let mut bytes: Vec<u8> = Vec::new();
    // n complete lines need n + 1 newlines: each line's own and the one before the first.
    while n > 0 && start > floor && newlines <= n {
        let from = start.saturating_sub(TAIL_CHUNK_BYTES).max(floor);
        // `start - from` is at most TAIL_CHUNK_BYTES, so the cast cannot truncate.
        let mut chunk = vec![0u8; (start - from) as usize];
        // A read cut short by a concurrent rotation (truncate) ends the scan with what we have.
        if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut chunk).is_err() {
            break;
        }
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunk.extend_from_slice(&bytes);
        bytes = chunk;
        start = from;
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}
