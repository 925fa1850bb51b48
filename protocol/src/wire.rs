//! Every message on the wire: between nodes, and between the CLI and a node.
//!
//! Messages are serde data encoded with postcard inside an [`Envelope`] that starts with the
//! protocol version, so a node can refuse a peer of another version with a clear error instead
//! of misreading it (postcard is not self-describing: a new field breaks old readers).
//!
//! Mixed versions (a rolling upgrade, a CLI newer than the node it asks): within one protocol
//! version, [`ApiRequest`] and [`ApiResponse`] only grow, by variants added last (postcard
//! numbers variants by position). A node of the same version that predates a request refuses
//! it as a malformed message and changes nothing; every request it knows keeps its meaning.
//! Anything else (a field added to a variant, a peer message changed) takes a new version.
//!
//! [`decode`] takes untrusted bytes. It never panics; it refuses input over
//! [`MESSAGE_BYTES_MAX`], bounds allocation by the input size (postcard reads every length from
//! the input and serde pre-allocates cautiously), refuses trailing bytes, and then runs each
//! message's semantic [`Check`] (names, specs, digests), so a decoded message is a valid one.
//! One exception, on purpose: the spec of an [`ApiRequest::Apply`] is only bounded here; the
//! node that would store it checks it ([`WorkloadSpec::check`]) and answers every field error,
//! which a refused decode could not carry back to the caller.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{
    Description, EndpointRow, LeaseRow, NodeRow, ReplicaRow, RolloutReport, Voter, WorkloadRow,
};
use crate::desired::tombstones::Summary;
use crate::desired::{Entry, Key};
use crate::hlc::Timestamp;
use crate::lease::{Lease, LeaseMessage, LeaseName};
use crate::names::{NodeId, WorkloadName};
use crate::objects::{ObjectEntry, ObjectKey, ObjectKind as ObjectsKind, ObjectVersion, Seal};
use crate::spec::{FieldError, WorkloadSpec};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 3;
/// Largest encoded message accepted (4 MiB): one QUIC stream's worth of desired state.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;

/// The frame of every message: version first, then the body.
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<M> {
    /// Protocol version of the sender.
    pub version: u16,
    pub message: M,
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The input is larger than [`MESSAGE_BYTES_MAX`].
    #[error("message of {bytes} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Size received.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The sender speaks another protocol version.
    #[error(
        "peer speaks protocol version {theirs}, this node speaks {ours}; upgrade the older one"
    )]
    Version {
        /// The sender's version.
        theirs: u16,
        /// Ours.
        ours: u16,
    },
    /// The bytes are not a message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but its contents are invalid.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Semantic checks run on every decoded message.
pub trait Check {
    /// `Err` with a reason when the contents are invalid.
    fn check(&self) -> Result<(), String>;
}

/// Encodes a message in an envelope of this build's version.
pub fn encode<M: Serialize>(message: &M) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_allocvec(&Envelope {
        version: PROTOCOL_VERSION,
        message,
    })
    .map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge {
            bytes: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    Ok(bytes)
}

thread_local! {
    /// Why a value of the message being decoded on this thread was refused. postcard drops
    /// the text of custom serde errors ("Serde Deserialization Error"), so the newtypes that
    /// refuse values (names) leave it here for [`decode`] to report. Cleared by every decode.
    static REFUSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records why a value was refused while deserializing (see `REFUSED`).
pub(crate) fn note_refused(why: String) {
    REFUSED.with(|r| *r.borrow_mut() = Some(why));
}

fn take_refused() -> Option<String> {
    REFUSED.with(|r| r.borrow_mut().take())
}

/// Decodes and checks untrusted bytes. See the module docs for the guarantees.
pub fn decode<M: DeserializeOwned + Check>(bytes: &[u8]) -> Result<M, WireError> {
    take_refused();
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge {
            bytes: bytes.len(),
            max: MESSAGE_BYTES_MAX,
        });
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes)
        .map_err(|e| WireError::Malformed(format!("no version: {e}")))?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::Version {
            theirs: version,
            ours: PROTOCOL_VERSION,
        });
    }
    let (message, trailing) =
        postcard::take_from_bytes::<M>(rest).map_err(|e| match take_refused() {
            Some(why) => WireError::Invalid(why),
            None => WireError::Malformed(e.to_string()),
        })?;
    if !trailing.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            trailing.len()
        )));
    }
    message.check().map_err(WireError::Invalid)?;
    Ok(message)
}

/// What the CLI (or any API client) asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// Create or update a workload; answered once durable here and on `ack_replicas` peers.
    /// The node checks the spec again ([`WorkloadSpec::check`]) before it stores it and
    /// answers every field error: decoding does not, so those errors reach the caller.
    Apply {
        /// The spec, as the caller validated it.
        spec: Box<WorkloadSpec>,
        /// Other peers that must hold the write before the answer.
        ack_replicas: u32,
    },
    /// Delete a workload (writes a tombstone).
    Delete {
        /// The workload.
        name: WorkloadName,
    },
    /// Set a workload's replica count.
    Scale {
        /// The workload.
        name: WorkloadName,
        /// New count.
        replicas: u32,
    },
    /// Go back to the previous revision.
    Rollback {
        /// The workload.
        name: WorkloadName,
    },
    /// List objects.
    Get {
        /// Which kind.
        kind: ObjectKind,
    },
    /// One workload in detail.
    Describe {
        /// The workload.
        name: WorkloadName,
    },
    /// Fleet summary.
    Status,
    /// A replica's log.
    Logs {
        /// The workload.
        name: WorkloadName,
        /// Which replica (all when absent).
        replica: Option<u32>,
        /// Keep streaming.
        follow: bool,
        /// Lines from the end to start with.
        tail_lines: u32,
    },
    /// Refuse a node's or a user's certificate from now on, fleet-wide.
    Revoke {
        /// The certificate's name (node id or user name).
        name: String,
    },
    /// Rotate the fleet's gossip key: a new key is installed everywhere, then used.
    RotateGossipKey,
    /// Make the answering node campaign for a lease (a script's own election) and keep it
    /// until released; answered with [`ApiResponse::Lease`] once held, or an error naming what
    /// it waits for after `wait_ms`.
    LeaseAcquire {
        /// The lease.
        name: LeaseName,
        /// Duration of each grant.
        duration_ms: u64,
        /// How long to wait for it (0: answer at once).
        wait_ms: u64,
    },
    /// Give up a lease acquired with `LeaseAcquire` on the answering node.
    LeaseRelease {
        /// The lease.
        name: LeaseName,
    },
    /// Show the fleet's lease voters, or set them (`force` allows changing more than one voter
    /// at a time, which can elect two holders while the change spreads).
    Voters {
        /// The new set, if changing it.
        set: Option<Vec<NodeId>>,
        /// Allow a change of more than one voter.
        force: bool,
    },
    /// A new one-time join token from the answering node (`starling token create --peer`).
    /// Operators and the local socket only: a node's certificate may not mint tokens.
    /// (Variants are numbered by position on the wire: new ones go last.)
    TokenCreate,
    /// `Apply` only if the workload's current write at the answering peer is `if_revision`
    /// (compare-and-set: a number, `0` for "does not exist yet", or a whole revision id
    /// `N@NODE:MS.LOGICAL`, see [`crate::desired::RevisionMatch`]).
    ApplyIf {
        /// The spec, as the caller validated it (checked again as for `Apply`).
        spec: Box<WorkloadSpec>,
        /// Other peers that must hold the write before the answer.
        ack_replicas: u32,
        /// The revision the caller last saw.
        if_revision: String,
    },
    /// A workload's rollout: its revision and how far the replicas moved to it.
    RolloutStatus {
        /// The workload.
        name: WorkloadName,
    },
    /// An operator's hand on a rollout: a write of the same revision with its pause or
    /// promote flag changed. Operators and the local socket only.
    Rollout {
        /// The workload.
        name: WorkloadName,
        /// What to do.
        action: RolloutAction,
    },
    /// `Apply` with every option. The CLI sends it only for what the older variants cannot
    /// say (`force`), so plain applies still reach a node of the previous build. Operators
    /// and the local socket only.
    ApplyWith {
        /// The spec, as the caller validated it (checked again as for `Apply`).
        spec: Box<WorkloadSpec>,
        /// Other peers that must hold the write before the answer.
        ack_replicas: u32,
        /// Compare-and-set, as for `ApplyIf`.
        if_revision: Option<String>,
        /// Write even a template whose rollout failed and was rolled back
        /// ([`crate::desired::Revision::failed_template`]), which is refused otherwise.
        force: bool,
    },
    /// Write a new version of a secret or config. A secret arrives sealed by the client
    /// (`secret set` seals to the recipients `SecretRecipients` named), so no peer ever holds
    /// its plaintext; the answering node stamps it and rolls the workloads that use it.
    ObjectSet {
        /// The object.
        key: ObjectKey,
        /// The version (its `by` is set by the node from the caller's certificate).
        version: Box<ObjectVersion>,
        /// A secret's data key sealed to each recipient.
        seals: std::collections::BTreeMap<NodeId, Seal>,
    },
    /// Delete a secret or config.
    ObjectDelete {
        /// The object.
        key: ObjectKey,
    },
    /// List secrets or configs: metadata only, never values.
    ObjectList {
        /// Which kind.
        kind: ObjectsKind,
    },
    /// The nodes a new version of secret `name` is sealed to, with their public keys.
    SecretRecipients {
        /// The secret.
        name: WorkloadName,
    },
    /// Events the fleet's nodes recorded (`starling get events`), merged by HLC; answered
    /// with [`ApiResponse::Events`].
    Events(crate::events::EventQuery),
    /// Devices with no certificate that the answering node found on its LAN, waiting to be
    /// admitted (`starling nodes --pending`); answered with [`ApiResponse::Pending`].
    Pending,
    /// Admit waiting devices (`starling node admit`): the answering node hands each a one-time
    /// join token over the channel it discovered it on; answered with [`ApiResponse::Admitted`].
    Admit {
        /// The devices, by the name they announce.
        nodes: Vec<NodeId>,
        /// Every device waiting, instead of `nodes`.
        all: bool,
    },
}

/// Most devices one `Admit` names.
pub const ADMIT_NODES_MAX: usize = 256;

/// What `ApiRequest::Rollout` does to the current revision's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutAction {
    /// No replica moves until resumed.
    Pause,
    /// Undo a pause.
    Resume,
    /// Let a canary rollout go on past its canaries.
    Promote,
}

impl std::fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Promote => "promote",
        })
    }
}

/// Kinds of object `Get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObjectKind {
    /// Workloads.
    Workloads,
    /// Nodes.
    Nodes,
    /// Replicas.
    Replicas,
    /// Service endpoints: where each running replica's ports are reachable.
    Endpoints,
    /// Leases: holder, epoch, fencing token, time left.
    Leases,
    /// Services: each one's address, ports and instances as the answering node sees them.
    Services,
}

/// A node's answer to an [`ApiRequest`].
#[allow(missing_docs)] // a field named for what it holds has no doc to add
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiResponse {
    /// A write was stored.
    Written {
        /// The workload.
        name: WorkloadName,
        /// Its revision after the write (0 for a delete).
        revision: u64,
        /// The write's HLC timestamp.
        at: Timestamp,
        /// Whether anything changed (an identical re-apply changes nothing).
        changed: bool,
    },
    /// Workloads (`get workloads`).
    Workloads(Vec<WorkloadRow>),
    /// Replicas (`status`, `get replicas`), unplaceable ones included.
    Replicas(Vec<ReplicaRow>),
    /// Nodes (`get nodes`).
    Nodes(Vec<NodeRow>),
    /// Service endpoints of live nodes (`get endpoints`), sorted.
    Endpoints(Vec<EndpointRow>),
    /// Leases known to the answering node (`get leases`, `lease release`).
    Leases(Vec<LeaseRow>),
    /// One workload in detail (`describe`).
    Described(Box<Description>),
    /// The fleet's lease voters (`voters`) and the version of their set.
    Voters {
        /// The voters (empty while none are defined).
        voters: Vec<Voter>,
        /// The version grant requests carry.
        version: u64,
    },
    /// A new one-time join token (`token create --peer`).
    Token(String),
    /// A certificate name refused from now on (`user remove`, `node remove`).
    Revoked(NodeId),
    /// A gossip key rotation (`key rotate`): the new key seals everywhere from now on.
    KeyRotated {
        /// The new key's id.
        key: u32,
        /// Live peers that held it before it sealed.
        installed: u64,
        /// Live peers asked to install it.
        asked: u64,
    },
    /// A chunk of log lines; `end` marks the last chunk.
    LogChunk {
        lines: Vec<String>,
        /// No more chunks follow.
        end: bool,
    },
    /// A lease grant.
    Lease(Lease),
    /// The request failed.
    Error(ApiError),
    /// A workload's rollout (`rollout status`). (Variants are numbered by position on the
    /// wire: new ones go last.)
    Rollout(Box<RolloutReport>),
    /// Services as the answering node sees them (`get services`).
    Services {
        /// The node whose view this is.
        answered_by: NodeId,
        /// Every service, sorted by name.
        services: Vec<crate::service::Service>,
    },
    /// A secret or config was written or deleted.
    ObjectWritten {
        /// The object.
        key: ObjectKey,
        /// The write's HLC timestamp: the version's name.
        at: Timestamp,
        /// Workloads that roll onto it (their `reload = "restart"` references).
        rolled: Vec<WorkloadName>,
        /// Workloads whose replicas get the files rewritten and a signal.
        reloaded: Vec<WorkloadName>,
    },
    /// Secrets or configs, metadata only.
    Objects(Vec<crate::api::ObjectRow>),
    /// Who a new version of a secret is sealed to: node and X25519 public key.
    Recipients(Vec<(NodeId, [u8; 32])>),
    /// Events (`get events`), oldest first by HLC.
    Events(Box<crate::events::EventPage>),
    /// Devices waiting to be admitted, as the answering node sees them on its LAN.
    Pending(Vec<crate::api::PendingRow>),
    /// What became of each device an `Admit` named.
    Admitted(Vec<crate::api::AdmitRow>),
}

/// A failed request: what went wrong, and for specs every field error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One line for people.
    pub message: String,
    /// Field errors of a refused spec.
    pub fields: Vec<FieldError>,
}

/// Messages between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Failure detection: are you there?
    Ping {
        /// Matches the ack.
        seq: u64,
    },
    /// Failure detection: yes.
    Ack {
        /// The ping's seq.
        seq: u64,
    },
    /// Failure detection: please ping `target` for me (indirect probe before suspicion).
    PingReq {
        /// The node to probe.
        target: NodeId,
        /// Matches the ack.
        seq: u64,
    },
    /// A watcher's verdict on a node (the sender is the watcher), pushed to the members.
    Verdict {
        /// The node judged.
        node: NodeId,
        /// What the watcher concluded.
        state: crate::placement::Liveness,
        /// The node's incarnation when judged; a higher one refutes the verdict.
        incarnation: u64,
    },
    /// Anti-entropy: send me your digest leaves.
    DigestRequest,
    /// Anti-entropy: my digest leaves (bucket hashes, in bucket order).
    DigestLeaves(Vec<u128>),
    /// Anti-entropy: summarize these buckets.
    SummaryRequest(Vec<u16>),
    /// Anti-entropy: the buckets that differ, names, markers and hashes in them, and the
    /// answering node's tombstone horizon.
    Summary(Summary),
    /// Anti-entropy: send me these entries.
    Pull(Vec<Key>),
    /// Entries, as an answer to `Pull` or pushed after a write.
    Entries(Vec<Entry>),
    /// The pushed entries are durable here.
    Stored,
    /// The gossip keyring, over mutual TLS only: the receiver adds keys it lacks and, once it
    /// holds `primary`, seals with it if it is newer than its own primary (key rotation).
    Keys {
        /// (key id, key).
        keys: Vec<(u32, [u8; 32])>,
        /// The sender's primary key id.
        primary: u32,
    },
    /// Ask a peer for its gossip keyring (a node that missed a rotation).
    KeysRequest,
    /// Leader election: grant requests, replies and releases.
    Lease(LeaseMessage),
    /// The sender is about to stop (`starling agent --on-stop`): pushed to every live peer
    /// before its agent exits, so none of them replaces its replicas in the gap before gossip
    /// would have told them. Also gossiped under the sender's `departure` key.
    Departure(crate::placement::Departure),
}

impl PeerMessage {
    /// The message's kind, for errors and logs (entries can be megabytes: never print them
    /// whole).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Ping { .. } => "ping",
            PeerMessage::Ack { .. } => "ack",
            PeerMessage::PingReq { .. } => "ping-req",
            PeerMessage::Verdict { .. } => "verdict",
            PeerMessage::DigestRequest => "digest request",
            PeerMessage::DigestLeaves(_) => "digest leaves",
            PeerMessage::SummaryRequest(_) => "summary request",
            PeerMessage::Summary(_) => "summary",
            PeerMessage::Pull(_) => "pull",
            PeerMessage::Entries(_) => "entries",
            PeerMessage::Stored => "stored",
            PeerMessage::Keys { .. } => "keys",
            PeerMessage::KeysRequest => "keys request",
            PeerMessage::Lease(_) => "lease",
            PeerMessage::Departure(_) => "departure",
        }
    }
}

/// The first frame of every QUIC stream: what the dialer wants. Which requests a dialer may
/// make depends on its certificate (see `node::net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An API call (operators and nodes); answered with [`ApiResponse`] frames.
    Api(ApiRequest),
    /// A node-to-node message (nodes only); answered with one [`PeerMessage`].
    Peer(PeerMessage),
    /// Enrolment of a node that has no certificate yet; answered with one [`JoinReply`].
    Join(JoinRequest),
}

/// A node asking to join with a token's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The id the node wants.
    pub node: NodeId,
    /// The token's secret.
    pub secret: [u8; 16],
}

/// The answer to a [`JoinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// Welcome: everything a member holds.
    Accepted(Box<Enrolment>),
    /// Refused, and why.
    Refused(String),
}

/// What a new member receives: the cluster's name, CA (with its key, so every member can enrol
/// others without a master), gossip keyring, its own certificate, and peers to contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    /// The cluster's name.
    pub cluster: String,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The CA key (PEM).
    pub ca_key_pem: String,
    /// The gossip keyring: (key id, key), the first one primary.
    pub gossip_keys: Vec<(u32, [u8; 32])>,
    /// The new node's certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// Gossip addresses of current members.
    pub seeds: Vec<String>,
}

impl Check for Request {
    fn check(&self) -> Result<(), String> {
        match self {
            Request::Api(request) => request.check(),
            Request::Peer(message) => message.check(),
            Request::Join(_) => Ok(()),
        }
    }
}

/// Largest PEM text (certificate or key) an enrolment may carry.
const PEM_BYTES_MAX: usize = 64 << 10;
/// Most seeds an enrolment may name.
const SEEDS_MAX: usize = 256;

impl Check for JoinReply {
    /// A new member indexes the keyring and parses the PEMs it is given: an enrolment that is
    /// empty or unbounded is refused here, naming the field, before anything is stored.
    fn check(&self) -> Result<(), String> {
        let JoinReply::Accepted(e) = self else {
            return Ok(());
        };
        if e.gossip_keys.is_empty() || e.gossip_keys.len() > 16 {
            return Err(format!(
                "enrolment.gossip_keys: a keyring holds 1 to 16 keys, got {}",
                e.gossip_keys.len()
            ));
        }
        if e.cluster.is_empty() || e.cluster.len() > 63 {
            return Err(format!(
                "enrolment.cluster: 1 to 63 bytes, got {}",
                e.cluster.len()
            ));
        }
        for (field, pem) in [
            ("ca_pem", &e.ca_pem),
            ("ca_key_pem", &e.ca_key_pem),
            ("cert_pem", &e.cert_pem),
            ("key_pem", &e.key_pem),
        ] {
            if pem.is_empty() || pem.len() > PEM_BYTES_MAX {
                return Err(format!(
                    "enrolment.{field}: 1 to {PEM_BYTES_MAX} bytes, got {}",
                    pem.len()
                ));
            }
        }
        if e.seeds.len() > SEEDS_MAX || e.seeds.iter().any(|s| s.is_empty() || s.len() > 255) {
            return Err(format!(
                "enrolment.seeds: at most {SEEDS_MAX} addresses of 1 to 255 bytes"
            ));
        }
        Ok(())
    }
}

impl Check for ApiRequest {
    fn check(&self) -> Result<(), String> {
        match self {
            ApiRequest::Apply { spec, .. }
            | ApiRequest::ApplyIf { spec, .. }
            | ApiRequest::ApplyWith { spec, .. }
                if spec_bytes(spec) > SPEC_BYTES_MAX =>
            {
                Err("spec is over 1 MiB".into())
            }
            ApiRequest::ObjectSet {
                key,
                version,
                seals,
            } => ObjectEntry {
                key: key.clone(),
                register: crdts::LWWReg {
                    val: Some((**version).clone()),
                    marker: Timestamp {
                        physical_ms: 0,
                        logical: 0,
                        node: NodeId::new("client").map_err(|e| e.to_string())?,
                    },
                },
                seals: seals.clone(),
            }
            .check()
            .map_err(|e| e.to_string()),
            ApiRequest::Scale { replicas, .. } if *replicas > crate::spec::REPLICAS_MAX => {
                Err(format!(
                    "replicas: must be between 0 and {}, got {replicas}",
                    crate::spec::REPLICAS_MAX
                ))
            }
            ApiRequest::ApplyIf { if_revision, .. }
            | ApiRequest::ApplyWith {
                if_revision: Some(if_revision),
                ..
            } => if_revision
                .parse::<crate::desired::RevisionMatch>()
                .map(|_| ())
                .map_err(|e| format!("if_revision: {e}")),
            ApiRequest::Events(query) => query.check(),
            ApiRequest::Admit { nodes, .. } if nodes.len() > ADMIT_NODES_MAX => Err(format!(
                "nodes: at most {ADMIT_NODES_MAX} devices per admission, got {}",
                nodes.len()
            )),
            _ => Ok(()),
        }
    }
}

/// Largest spec an `Apply` may carry, encoded: a quarter of a message, so a write and its
/// previous revision fit in the entry every peer is pushed.
const SPEC_BYTES_MAX: usize = MESSAGE_BYTES_MAX / 4;

fn spec_bytes(spec: &WorkloadSpec) -> usize {
    postcard::to_allocvec(spec).map_or(usize::MAX, |bytes| bytes.len())
}

impl Check for ApiResponse {
    fn check(&self) -> Result<(), String> {
        match self {
            // A node relays its peers' pages: what it merges must be within bounds.
            ApiResponse::Events(page) => page.check(),
            _ => Ok(()),
        }
    }
}

impl Check for PeerMessage {
    fn check(&self) -> Result<(), String> {
        match self {
            PeerMessage::DigestLeaves(leaves) if leaves.len() != crate::desired::DIGEST_BUCKETS => {
                Err(format!(
                    "digest has {} leaves, expected {}",
                    leaves.len(),
                    crate::desired::DIGEST_BUCKETS
                ))
            }
            PeerMessage::SummaryRequest(buckets)
                if buckets
                    .iter()
                    .any(|b| usize::from(*b) >= crate::desired::DIGEST_BUCKETS) =>
            {
                Err("summary request names a bucket out of range".into())
            }
            PeerMessage::Summary(summary)
                if summary
                    .buckets
                    .iter()
                    .any(|b| usize::from(*b) >= crate::desired::DIGEST_BUCKETS) =>
            {
                Err("summary names a bucket out of range".into())
            }
            PeerMessage::Entries(entries) => entries
                .iter()
                .try_for_each(|e| e.check().map_err(|e| e.to_string())),
            PeerMessage::Keys { keys, primary } => {
                if keys.is_empty() || keys.len() > 16 {
                    Err(format!("a keyring holds 1 to 16 keys, got {}", keys.len()))
                } else if !keys.iter().any(|(id, _)| id == primary) {
                    Err(format!("the primary key {primary} is not in the keyring"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
