//! Secrets and configs on a node: how their already-decrypted values reach the replicas that
//! use them.
//!
//! - [`files`]: the memory-backed directory an instance's secrets and configs are written to
//!   (never a disk), writing and rewriting them atomically, and wiping them when the instance
//!   is gone. The runtimes (`crate::runtime`) hand the directory to processes through the
//!   environment and bind-mount it into containers.
//! - [`keys`]: this node's X25519 key pair, which secrets are sealed to.
//!
//! What is sealed to whom, and when a replica may start, is decided in `starling_protocol`
//! (`objects`, `desired::objects`) and the core; the agent only opens and delivers.

pub mod files;
pub mod keys;
