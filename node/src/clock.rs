//! The shell's only access to the wall clock. The core never calls this: it receives `now_ms`.
//!
//! `STARLING_FAULT_CLOCK_OFFSET_MS` (signed milliseconds, read once) shifts this process's
//! wall clock: fault injection for drills and tests of what a device whose clock is off does
//! (a board without a real-time clock boots with the time it last saved, or 1970). Leave it
//! unset in production.

#![allow(clippy::disallowed_methods)]

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The variable that shifts the wall clock (see the module docs).
pub const OFFSET_VAR: &str = "STARLING_FAULT_CLOCK_OFFSET_MS";

fn offset_ms() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let Ok(text) = std::env::var(OFFSET_VAR) else {
            return 0;
        };
        match text.trim().parse::<i64>() {
            Ok(offset) => {
                tracing::warn!("{OFFSET_VAR}={offset}: this agent's wall clock is shifted");
                offset
            }
            Err(e) => {
                tracing::error!(
                    "{OFFSET_VAR}={text:?} is not a number of milliseconds ({e}); ignored"
                );
                0
            }
        }
    })
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    real.saturating_add_signed(offset_ms())
}

/// A monotonic instant, for measuring durations in the shell (timeouts, back-off sleeps).
pub fn monotonic() -> std::time::Instant {
    std::time::Instant::now()
}
