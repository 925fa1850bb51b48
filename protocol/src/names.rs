//! Validated names: workload names and node ids.
//!
//! Both are checked when they are built, including when they are decoded from TOML, JSON or
//! the wire (serde goes through `TryFrom<String>`), so a value of these types is always valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest workload name: a DNS label, so that `<name>.starling` resolves (RFC 1123).
pub const WORKLOAD_NAME_BYTES_MAX: usize = 63;
/// Longest node id; node ids may be dotted host names.
pub const NODE_ID_BYTES_MAX: usize = 128;

/// Why a name was refused, in plain English (used as the reason of a field error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// A workload's name: a DNS label (lowercase letters, digits and '-', 1 to 63 bytes, starting
/// and ending with a letter or digit), so it can be served by the agent's DNS as is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WorkloadName(String);

/// A node's stable identity, fixed when the node is created and bound to its certificate:
/// DNS labels separated by dots, 1 to 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl WorkloadName {
    /// Checks `name` against the DNS label rules.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_label(&name, WORKLOAD_NAME_BYTES_MAX)?;
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl NodeId {
    /// Checks `id`: dot-separated DNS labels, at most 128 bytes in all.
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        if id.len() > NODE_ID_BYTES_MAX {
            return Err(NameError(format!(
                "must be at most {NODE_ID_BYTES_MAX} bytes, got {}",
                id.len()
            )));
        }
        for label in id.split('.') {
            check_label(label, WORKLOAD_NAME_BYTES_MAX)?;
        }
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_label(label: &str, bytes_max: usize) -> Result<(), NameError> {
    if label.is_empty() {
        return Err(NameError("must not be empty".into()));
    }
    if label.len() > bytes_max {
        return Err(NameError(format!(
            "must be at most {bytes_max} characters, got {}",
            label.len()
        )));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError(format!(
            "may hold only lowercase letters, digits and '-', found {bad:?} in {label:?}"
        )));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(NameError(format!(
            "must start and end with a letter or digit, got {label:?}"
        )));
    }
    Ok(())
}

macro_rules! string_newtype_impls {
    ($ty:ident, $what:literal) => {
        /// The way serde builds one: a refusal is also left for `wire::decode`, whose codec
        /// drops the text of custom errors, so a bad name on the wire is reported as such.
        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value.clone()).inspect_err(|e| {
                    crate::wire::note_refused(format!(concat!($what, " {:?}: {}"), value, e))
                })
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }
    };
}
string_newtype_impls!(WorkloadName, "workload name");
string_newtype_impls!(NodeId, "node id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_follow_dns_label_rules() {
        assert!(WorkloadName::new("web-1").is_ok());
        assert!(WorkloadName::new("a").is_ok());
        assert!(WorkloadName::new("").is_err());
        assert!(WorkloadName::new("-web").is_err());
        assert!(WorkloadName::new("web-").is_err());
        assert!(WorkloadName::new("Web").is_err());
        assert!(WorkloadName::new("web.site").is_err());
        assert!(WorkloadName::new("x".repeat(64)).is_err());
        assert!(WorkloadName::new("x".repeat(63)).is_ok());
    }

    #[test]
    fn node_ids_may_be_dotted_host_names() {
        assert!(NodeId::new("gw-17.site-a").is_ok());
        assert!(NodeId::new("gw..a").is_err());
        assert!(NodeId::new("GW").is_err());
    }

    #[test]
    fn decoding_checks_the_rules() {
        let bad: Result<WorkloadName, _> = serde_json::from_str("\"Bad Name\"");
        assert!(bad.is_err());
        let good: WorkloadName = serde_json::from_str("\"ok\"").expect("valid name");
        assert_eq!(good.as_str(), "ok");
    }
}
