//! LAN discovery's decisions: what agents announce about themselves on the local network,
//! what a member does with an announcement it hears, and the book of devices waiting to be
//! admitted. The libp2p side that carries them is `starling_node::lan`.
//!
//! Announcements come from anyone on the LAN: [`Announcement::parse`] takes untrusted text and
//! never panics (fuzzed: `fuzz/fuzz_targets/announcement.rs`), and the book is bounded.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::api::PendingRow;
use crate::names::NodeId;

/// Who an agent says it is, in its identify record's agent version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Its node id (for a waiting device, the name it would join under).
    pub node: NodeId,
    /// The base address it gossips on (or will).
    pub base: SocketAddr,
    /// Member of which cluster, or waiting.
    pub role: Role,
}

/// A member of a cluster, or a device waiting to be admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Holds a certificate of the cluster whose CA [`cluster_tag`] is this.
    Member {
        /// The cluster's tag.
        cluster: String,
    },
    /// Has no certificate: waiting for a join token.
    Pending,
}

/// What every announcement starts with; another prefix is another program or version.
const PREFIX: &str = "starling/1";

/// Tells clusters apart on a shared LAN: the first 8 bytes of the CA certificate's SHA-256, in
/// hex. Two clusters can share a name; they cannot share a CA.
pub fn cluster_tag(ca_fingerprint: &[u8; 32]) -> String {
    crate::objects::seal::hex(&ca_fingerprint[..8])
}

impl Announcement {
    /// `starling/1 member NAME BASE CLUSTER` or `starling/1 pending NAME BASE`.
    pub fn encode(&self) -> String {
        match &self.role {
            Role::Member { cluster } => {
                format!("{PREFIX} member {} {} {cluster}", self.node, self.base)
            }
            Role::Pending => format!("{PREFIX} pending {} {}", self.node, self.base),
        }
    }

    /// Parses a peer's announcement; the error names the part that is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(' ').collect();
        let (role, rest) = match parts.as_slice() {
            [PREFIX, "member", node, base, cluster] => {
                let ok = cluster.len() == 16 && cluster.bytes().all(|b| b.is_ascii_hexdigit());
                if !ok {
                    return Err(format!("cluster tag {cluster:?} is not 16 hex digits"));
                }
                (
                    Role::Member {
                        cluster: cluster.to_ascii_lowercase(),
                    },
                    (*node, *base),
                )
            }
            [PREFIX, "pending", node, base] => (Role::Pending, (*node, *base)),
            [PREFIX, role, ..] => return Err(format!("unknown role {role:?}")),
            _ => {
                let shown: String = text.chars().take(64).collect();
                return Err(format!("not a starling announcement: {shown:?}"));
            }
        };
        let node = NodeId::new(rest.0).map_err(|e| format!("node name: {e}"))?;
        let base = rest
            .1
            .parse()
            .map_err(|_| format!("base address {:?} is not ip:port", rest.1))?;
        Ok(Announcement { node, base, role })
    }
}

/// What a node does with an announcement it received from `observed` (the address the
/// discovery channel's connection came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A member of this node's cluster: gossip with it at this base address.
    Seed {
        /// The member.
        node: NodeId,
        /// The observed IP with the announced port.
        base: SocketAddr,
    },
    /// A device waiting to join: keep it in the [`PendingBook`].
    Waiting(NodeId),
    /// Nothing to do (another cluster; or this node is waiting itself).
    Ignored(&'static str),
}

/// Decides what `me` does with `heard` received from `observed`.
pub fn classify(me: &Role, heard: &Announcement, observed: IpAddr) -> Found {
    match (me, &heard.role) {
        (Role::Pending, _) => Found::Ignored("this node is waiting to join itself"),
        (Role::Member { cluster }, Role::Member { cluster: theirs }) if cluster == theirs => {
            Found::Seed {
                node: heard.node.clone(),
                base: SocketAddr::new(observed, heard.base.port()),
            }
        }
        (Role::Member { .. }, Role::Member { .. }) => Found::Ignored("a member of another cluster"),
        (Role::Member { .. }, Role::Pending) => Found::Waiting(heard.node.clone()),
    }
}

/// Most waiting devices a node keeps; past it the one seen longest ago is dropped, so a
/// flood of announcements cannot grow the agent's memory.
pub const PENDING_MAX: usize = 512;

/// The devices waiting to join that this node found, by discovery identity (libp2p peer id).
#[derive(Debug, Default, Clone)]
pub struct PendingBook {
    devices: BTreeMap<String, Waiting>,
}

#[derive(Debug, Clone)]
struct Waiting {
    node: NodeId,
    address: SocketAddr,
    first_ms: u64,
    last_ms: u64,
}

impl PendingBook {
    /// `peer` announced itself waiting as `node`, from `address`, at `now_ms`.
    pub fn seen(&mut self, peer: &str, node: NodeId, address: SocketAddr, now_ms: u64) {
        if !self.devices.contains_key(peer)
            && self.devices.len() >= PENDING_MAX
            && let Some(oldest) = self
                .devices
                .iter()
                .min_by_key(|(_, w)| w.last_ms)
                .map(|(p, _)| p.clone())
        {
            self.devices.remove(&oldest);
        }
        let first_ms = self.devices.get(peer).map_or(now_ms, |w| w.first_ms);
        self.devices.insert(
            peer.to_string(),
            Waiting {
                node,
                address,
                first_ms,
                last_ms: now_ms,
            },
        );
    }

    /// `peer` is still announced (mDNS refreshed its record): keep it listed.
    pub fn touch(&mut self, peer: &str, now_ms: u64) {
        if let Some(w) = self.devices.get_mut(peer) {
            w.last_ms = now_ms;
        }
    }

    /// The discovery identities of the devices listed.
    pub fn peers(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }

    /// `peer` is gone (its mDNS record expired, or it took a token).
    pub fn forget_peer(&mut self, peer: &str) {
        self.devices.remove(peer);
    }

    /// `node` now announces itself a member: whatever waited under that name joined.
    pub fn forget_node(&mut self, node: &NodeId) {
        self.devices.retain(|_, w| w.node != *node);
    }

    /// Drops devices not seen for `ttl_ms`.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        self.devices
            .retain(|_, w| now_ms.saturating_sub(w.last_ms) <= ttl_ms);
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The waiting devices, by name.
    pub fn rows(&self, now_ms: u64) -> Vec<PendingRow> {
        let mut rows: Vec<PendingRow> = self
            .devices
            .iter()
            .map(|(peer, w)| PendingRow {
                node: w.node.clone(),
                address: w.address.to_string(),
                peer: peer.clone(),
                waiting_ms: now_ms.saturating_sub(w.first_ms),
            })
            .collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node).then(a.peer.cmp(&b.peer)));
        rows
    }

    /// The devices an admission names: each name with the peer to send its token to, or why
    /// not (not waiting here, or two devices announce that name). `all` takes every device
    /// whose name is announced once.
    pub fn pick(&self, nodes: &[NodeId], all: bool) -> Vec<(NodeId, Result<String, String>)> {
        let mut by_name: BTreeMap<&NodeId, Vec<&String>> = BTreeMap::new();
        for (peer, w) in &self.devices {
            by_name.entry(&w.node).or_default().push(peer);
        }
        let names: Vec<NodeId> = if all {
            by_name.keys().map(|n| (*n).clone()).collect()
        } else {
            nodes.to_vec()
        };
        names
            .into_iter()
            .map(|node| {
                let outcome = match by_name.get(&node).map(Vec::as_slice) {
                    None | Some([]) => Err(format!(
                        "{node} is not waiting to join on this node's LAN (see `starling nodes --pending`)"
                    )),
                    Some([peer]) => Ok((*peer).clone()),
                    Some(peers) => Err(format!(
                        "{} devices announce the name {node} (peers {}): rename all but one \
                         (--node-id) and admit again",
                        peers.len(),
                        peers
                            .iter()
                            .map(|p| short_peer(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                (node, outcome)
            })
            .collect()
    }
}

/// The tail of a peer id, enough to tell two apart on screen.
pub fn short_peer(peer: &str) -> &str {
    let start = peer.len().saturating_sub(8);
    peer.get(start..).unwrap_or(peer)
}

/// What the admitting member sends a waiting device, and its answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AdmitOffer {
    /// The join token, as `starling token create` prints it.
    pub token: String,
    /// The member that sends it.
    pub by: String,
}

/// A waiting device's answer to an [`AdmitOffer`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AdmitAnswer {
    /// It took the token and joins now.
    Taken,
    /// It refused the token, and why.
    Refused(String),
}

#[cfg(test)]
mod tests;
