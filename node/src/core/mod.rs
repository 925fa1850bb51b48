//! The node core: placeholder while the reconciler is written.

mod io;

pub use io::{Action, CoreEvent, RuntimeEvent, StopReason};
