//! The deterministic fault simulator: many instances of the real node core driven by one seeded
//! scheduler, over a simulated network and runtime. It lands with the simulator issue; the crate
//! exists now so the workspace's dependency arrows are fixed from the start.

#![forbid(unsafe_code)]

pub use starling_node as node;
