//! The values a node publishes in its gossip state: the key names, and one checked encoding
//! for every value. Chitchat carries strings, so a value is the [`crate::wire`] envelope
//! (version + postcard) in base64; decoding goes through [`crate::wire::decode`], so a
//! value from a peer is bounded, versioned and checked ([`Check`]) like any other message,
//! and a bad one is an error naming the key, never a silent default or a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::lease::Lease;
use crate::names::WorkloadName;
use crate::placement::{Departure, Liveness, NodeView};
use crate::quantity::{Bytes, Millicores};
use crate::status::NodeStatus;
use crate::wire::{self, Check, MESSAGE_BYTES_MAX, WireError};

/// Its description ([`NodeView`]).
pub const NODE: &str = "node";
/// Its replicas ([`NodeStatus`]).
pub const STATUS: &str = "status";
/// Its desired-state digest root (`u128`).
pub const DIGEST: &str = "digest";
/// Its failure-detector incarnation (`u64`).
pub const INCARNATION: &str = "inc";
/// Its planned absence ([`Departure`]).
pub const DEPARTURE: &str = "departure";
/// What it measured in use ([`Usage`]).
pub const USAGE: &str = "usage";
/// The load of its replicas of workloads with `[scaling]` ([`Load`]); absent when it runs
/// none, so a fleet without autoscaling pays nothing for it.
pub const LOAD: &str = "load";
/// Its service endpoints ([`Names`]: `workload/index/port=host:port`).
pub const ENDPOINTS: &str = "endpoints";
/// The node's X25519 public key for secrets, 64 hex digits.
pub const SEAL_KEY: &str = "sealkey";
/// Join token ids it accepted ([`Names`]).
pub const SPENT: &str = "spent";
/// Certificate names refused fleet-wide ([`Names`]).
pub const REVOKED: &str = "revoked";
/// Prefix of its verdicts on the nodes it watches: `v.<node>` ([`VerdictValue`]).
pub const VERDICT_PREFIX: &str = "v.";
/// Prefix of the lease records it holds: `lease.<name>` ([`Lease`]).
pub const LEASE_PREFIX: &str = "lease.";
/// The voter set it knows (the agent's voter record).
pub const VOTERS: &str = "voters";

/// A gossip value refused, naming the key.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip key {key}: {reason}")]
pub struct ValueError {
    pub key: String,
    /// Why.
    pub reason: String,
}

/// Encodes a value for the gossip state. A value too large for one message encodes as the
/// empty string, which every decoder refuses.
pub fn encode<T: Serialize>(value: &T) -> String {
    wire::encode(value)
        .map(|bytes| B64.encode(bytes))
        .unwrap_or_default()
}

/// Decodes the value of `key` from a peer's gossip state: base64, then the checked wire path.
pub fn decode<T: DeserializeOwned + Check>(key: &str, text: &str) -> Result<T, ValueError> {
    let refuse = |reason: String| ValueError {
        key: key.to_string(),
        reason,
    };
    // Base64 of the largest message, checked before decoding so a huge value costs nothing.
    if text.len() > MESSAGE_BYTES_MAX / 3 * 4 + 4 {
        return Err(refuse(
            WireError::TooLarge {
                bytes: text.len() / 4 * 3,
                max: MESSAGE_BYTES_MAX,
            }
            .to_string(),
        ));
    }
    let bytes = B64
        .decode(text)
        .map_err(|e| refuse(format!("not base64: {e}")))?;
    wire::decode(&bytes).map_err(|e| refuse(e.to_string()))
}

/// What a node measured in use, rounded so a jittering gauge does not cost gossip bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU in use.
    pub cpu: Millicores,
    /// Memory in use.
    pub memory: Bytes,
}

impl Usage {
    /// Rounded to 250 millicores and 64 MiB: only a real move is republished.
    pub fn rounded(self) -> Usage {
        Usage {
            cpu: Millicores((self.cpu.0.saturating_add(125)) / 250 * 250),
            memory: Bytes((self.memory.0.saturating_add(32 << 20)) / (64 << 20) * (64 << 20)),
        }
    }

    /// Whether this measurement moved a whole step (250 millicores or 64 MiB) away from the
    /// `published` figure: a gauge that jitters across a rounding boundary flips its rounded
    /// value back and forth, and each flip would travel to every member.
    pub fn moved_from(self, published: Usage) -> bool {
        self.cpu.0.abs_diff(published.cpu.0) >= 250
            || self.memory.0.abs_diff(published.memory.0) >= 64 << 20
    }
}

/// The load of a node's replicas of workloads with `[scaling]`, in each policy's unit
/// (percent of the CPU request, or the value of the custom metric), per workload and replica
/// index. Grouped by workload so a name travels once, not once per replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load(pub BTreeMap<WorkloadName, BTreeMap<u32, u64>>);

impl Load {
    /// How many replicas it tells of.
    pub fn replicas(&self) -> usize {
        self.0.values().map(BTreeMap::len).sum()
    }

    /// Rounded to two significant digits (at most 5 % off, half the scaler's tolerance band),
    /// so a jittering gauge is not republished at every sample.
    pub fn rounded(mut self) -> Load {
        for values in self.0.values_mut() {
            for value in values.values_mut() {
                *value = two_digits(*value);
            }
        }
        self
    }
}

/// `value` rounded to its two leading decimal digits (half up): 142 -> 140, 1_250 -> 1_300.
pub fn two_digits(value: u64) -> u64 {
    let mut step = 1u64;
    while value / step >= 100 {
        step *= 10;
    }
    let half = step / 2;
    (value.saturating_add(half) / step).saturating_mul(step)
}

impl Check for Load {
    fn check(&self) -> Result<(), String> {
        if self.0.len() > REPLICAS_MAX {
            return Err(format!(
                "workloads: at most {REPLICAS_MAX}, got {}",
                self.0.len()
            ));
        }
        let replicas = self.replicas();
        if replicas > REPLICAS_MAX {
            return Err(format!("replicas: at most {REPLICAS_MAX}, got {replicas}"));
        }
        Ok(())
    }
}

/// A watcher's verdict on one node, under `v.<node>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictValue {
    /// What the watcher concluded.
    pub state: Liveness,
    /// The incarnation it concluded it about.
    pub incarnation: u64,
}

/// A list of short names (endpoints, token ids, certificate names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names(pub Vec<String>);

/// Most names in one list.
pub const NAMES_MAX: usize = 4_096;
/// Longest name in a list.
pub const NAME_BYTES_MAX: usize = 255;

impl Check for Names {
    fn check(&self) -> Result<(), String> {
        if self.0.len() > NAMES_MAX {
            return Err(format!("at most {NAMES_MAX} names, got {}", self.0.len()));
        }
        match self
            .0
            .iter()
            .position(|n| n.is_empty() || n.len() > NAME_BYTES_MAX)
        {
            Some(i) => Err(format!(
                "name {i}: 1 to {NAME_BYTES_MAX} bytes, got {}",
                self.0[i].len()
            )),
            None => Ok(()),
        }
    }
}

impl Check for Usage {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Check for VerdictValue {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Check for u64 {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Check for u128 {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Check for Departure {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Most labels a node may carry.
pub const LABELS_MAX: usize = 64;
/// Longest label key.
pub const LABEL_KEY_BYTES_MAX: usize = 253;
/// Longest label value.
pub const LABEL_VALUE_BYTES_MAX: usize = 1_024;

/// Whether a node's labels fit what peers accept (the agent refuses others at start-up, so
/// a node is never invisible because of its own labels).
pub fn check_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    if labels.len() > LABELS_MAX {
        return Err(format!(
            "labels: at most {LABELS_MAX}, got {}",
            labels.len()
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > LABEL_KEY_BYTES_MAX {
            return Err(format!(
                "label {key:?}: a key is 1 to {LABEL_KEY_BYTES_MAX} bytes"
            ));
        }
        if value.len() > LABEL_VALUE_BYTES_MAX {
            return Err(format!(
                "label {key:?}: a value is at most {LABEL_VALUE_BYTES_MAX} bytes, got {}",
                value.len()
            ));
        }
    }
    Ok(())
}

impl Check for NodeView {
    fn check(&self) -> Result<(), String> {
        check_labels(self.labels.iter())?;
        if self.arch.len() > 32 {
            return Err(format!("arch: at most 32 bytes, got {}", self.arch.len()));
        }
        Ok(())
    }
}

/// Most replicas one node reports.
pub const REPLICAS_MAX: usize = 10_000;

impl Check for NodeStatus {
    fn check(&self) -> Result<(), String> {
        if self.replicas.len() > REPLICAS_MAX {
            return Err(format!(
                "replicas: at most {REPLICAS_MAX}, got {}",
                self.replicas.len()
            ));
        }
        Ok(())
    }
}

impl Check for Lease {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_name_the_key() {
        let usage = Usage {
            cpu: Millicores(260),
            memory: Bytes(100 << 20),
        }
        .rounded();
        assert_eq!(usage.cpu, Millicores(250));
        assert_eq!(usage.memory, Bytes(128 << 20));
        let measured = |cpu, mib: u64| Usage {
            cpu: Millicores(cpu),
            memory: Bytes(mib << 20),
        };
        // 380 m rounds to 500 m, but is less than a step from the published 250 m.
        assert_ne!(measured(380, 100).rounded(), usage);
        assert!(!measured(380, 100).moved_from(usage));
        assert!(!measured(130, 70).moved_from(usage));
        assert!(measured(500, 128).moved_from(usage));
        assert!(measured(250, 192).moved_from(usage));
        assert!(measured(0, 64).moved_from(usage));
        assert_eq!(decode::<Usage>(USAGE, &encode(&usage)), Ok(usage));
        let verdict = VerdictValue {
            state: Liveness::Down,
            incarnation: 7,
        };
        assert_eq!(
            decode::<VerdictValue>("v.n1", &encode(&verdict)),
            Ok(verdict)
        );
        assert_eq!(decode::<u128>(DIGEST, &encode(&u128::MAX)), Ok(u128::MAX));
        let e = decode::<u64>(INCARNATION, "12").expect_err("raw text");
        assert_eq!(e.key, "inc");
        assert!(e.to_string().starts_with("gossip key inc: "), "{e}");
        let e = decode::<u64>(INCARNATION, "!!").expect_err("not base64");
        assert!(e.reason.contains("base64"), "{e}");
        assert!(decode::<u64>(INCARNATION, "").is_err());
        // A name list with an empty name is refused, naming which.
        let e = decode::<Names>(SPENT, &encode(&Names(vec!["a".into(), String::new()])))
            .expect_err("empty name");
        assert!(e.reason.contains("name 1"), "{e}");
        let big = "A".repeat(MESSAGE_BYTES_MAX * 2);
        assert!(
            decode::<Names>(ENDPOINTS, &big)
                .expect_err("too large")
                .reason
                .contains("over the limit")
        );
    }

    #[test]
    fn load_is_rounded_to_two_digits_and_bounded_on_decode() {
        assert_eq!(
            [0, 7, 99, 142, 145, 1_249, 1_250, u64::MAX].map(two_digits),
            [0, 7, 99, 140, 150, 1_200, 1_300, 18_000_000_000_000_000_000]
        );
        let web = WorkloadName::new("web").expect("name");
        let load = Load([(web.clone(), [(0, 142), (1, 71)].into())].into()).rounded();
        assert_eq!(load.0[&web], [(0, 140), (1, 71)].into());
        assert_eq!(decode::<Load>(LOAD, &encode(&load)), Ok(load));
        let many = Load([(web, (0..=REPLICAS_MAX as u32).map(|i| (i, 1)).collect())].into());
        let e = decode::<Load>(LOAD, &encode(&many)).expect_err("too many replicas");
        assert!(e.reason.contains("at most 10000"), "{e}");
    }

    proptest! {
        /// Any text a peer gossips decodes to a value or an error, never a panic.
        #[test]
        fn any_text_decodes_or_is_refused(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<NodeStatus>(STATUS, &text);
            let _ = decode::<NodeView>(NODE, &text);
            let b64 = B64.encode(&bytes);
            let _ = decode::<NodeStatus>(STATUS, &b64);
            let _ = decode::<NodeView>(NODE, &b64);
            let _ = decode::<Names>(ENDPOINTS, &b64);
            let _ = decode::<Lease>("lease.x", &b64);
            let _ = decode::<Usage>(USAGE, &b64);
            let _ = decode::<Load>(LOAD, &b64);
        }
    }
}
