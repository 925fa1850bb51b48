//! The shell's only access to the wall clock. The core never calls this: it receives `now_ms`.

#![allow(clippy::disallowed_methods)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A monotonic instant, for measuring durations in the shell (timeouts, back-off sleeps).
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
