//! Health probes.
