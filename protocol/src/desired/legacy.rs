//! Entry formats written by earlier builds, read once and converted (stored desired state
//! survives an upgrade; nothing is lost because the format grew).
//!
//! Format 1 (before revision ids): revisions had no lineage and no author, entries no write
//! records. Converted entries start with the record of their own write only.

use crdts::LWWReg;
use serde::Deserialize;

use super::{DesiredEntry, DesiredState, PreviousRevision, Revision};
use crate::hlc::Timestamp;
use crate::names::WorkloadName;
use crate::spec::WorkloadSpec;

#[derive(Deserialize)]
struct RevisionV1 {
    number: u64,
    spec: WorkloadSpec,
    previous: Option<PreviousRevision>,
}

#[derive(Deserialize)]
struct EntryV1 {
    name: WorkloadName,
    register: LWWReg<Option<RevisionV1>, Timestamp>,
}

/// Decodes a desired state stored in format 1 (postcard of its entries).
pub fn decode_v1(bytes: &[u8]) -> Result<DesiredState, String> {
    let entries: Vec<EntryV1> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
    let mut state = DesiredState::new();
    for old in entries {
        let entry = DesiredEntry {
            name: old.name,
            register: LWWReg {
                val: old.register.val.map(|r| Revision {
                    number: r.number,
                    spec: r.spec,
                    previous: r.previous,
                    lineage: Vec::new(),
                    by: String::new(),
                }),
                marker: old.register.marker,
            },
            writes: Vec::new(),
        };
        entry.check().map_err(|e| e.to_string())?;
        state.merge_entry(entry);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::names::NodeId;

    #[derive(Serialize)]
    struct RevisionV1Out {
        number: u64,
        spec: WorkloadSpec,
        previous: Option<PreviousRevision>,
    }

    #[derive(Serialize)]
    struct EntryV1Out {
        name: WorkloadName,
        register: LWWReg<Option<RevisionV1Out>, Timestamp>,
    }

    #[test]
    fn a_format_1_state_reads_back_with_its_writes() {
        let spec = WorkloadSpec::from_toml("name = \"web\"\ncommand = \"sleep\"\nreplicas = 2")
            .expect("valid");
        let marker = Timestamp {
            physical_ms: 42,
            logical: 1,
            node: NodeId::new("n1").expect("valid"),
        };
        let old = vec![
            EntryV1Out {
                name: WorkloadName::new("web").expect("valid"),
                register: LWWReg {
                    val: Some(RevisionV1Out {
                        number: 3,
                        spec: spec.clone(),
                        previous: None,
                    }),
                    marker: marker.clone(),
                },
            },
            EntryV1Out {
                name: WorkloadName::new("gone").expect("valid"),
                register: LWWReg {
                    val: None,
                    marker: marker.clone(),
                },
            },
        ];
        let bytes = postcard::to_allocvec(&old).expect("encodes");
        let state = decode_v1(&bytes).expect("decodes");
        let web = WorkloadName::new("web").expect("valid");
        assert_eq!(
            state.get(&web).map(|r| (r.number, &r.spec)),
            Some((3, &spec))
        );
        assert_eq!(state.len(), 2, "the tombstone stays");
        assert_eq!(state.revision_id(&web).map(|id| id.at), Some(marker));
        assert!(state.overwritten(&web).is_empty());
        // Today's format does not read as format 1, and the reverse: versions tell them apart.
        assert!(decode_v1(b"\x01\x02garbage").is_err());
    }
}
