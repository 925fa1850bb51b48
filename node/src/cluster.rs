//! A member's cluster material on disk, and the operator's client material.
//!
//! A node's data dir holds `cluster/`: the cluster name, the CA certificate and key (every
//! member can enrol others: there is no master to ask), the gossip keyring, this node's
//! certificate and key, and the seeds it last knew. An operator's cluster dir (default
//! `~/.config/starling`) holds the CA certificate, a user certificate and key, and peers.
//! Both dirs are 0700 and every file in them 0600 (written by [`write_atomic`]); the agent
//! refuses to start while a key is open to others ([`check_key_permissions`]).
//!
//! Addresses: a node is reached at one base address `host:port`: gossip on `port` (UDP),
//! QUIC on `port + 1`, probes on `port + 2`.

use std::fs;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use starling_protocol::NodeId;
use starling_protocol::access::OperatorRole;
use starling_protocol::wire::Enrolment;

use crate::gossip::seal::Keyring;
use crate::identity::{ClusterCa, IdentityError, JoinToken, Role, hex, unhex};
use crate::net::tls::TlsIdentity;
use crate::store::{StoreError, create_private_dir, write_atomic};

/// The secret files of a member's `cluster/` dir: whoever reads `ca.key` can mint
/// certificates, `node.key` can act as this node, `gossip.keys` can forge gossip and probes.
pub const SECRET_FILES: [&str; 3] = ["ca.key", "node.key", "gossip.keys"];

/// The QUIC port of a base address.
pub fn quic_addr(base: SocketAddr) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port().wrapping_add(1))
}

/// The probe port of a base address.
pub fn probe_addr(base: SocketAddr) -> SocketAddr {
    SocketAddr::new(base.ip(), base.port().wrapping_add(2))
}

/// Resolves `host:port`, naming it on failure.
pub fn resolve(text: &str) -> Result<SocketAddr, ClusterError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ClusterError::Address(text.to_string()))
}

/// Errors of cluster material.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Reading or writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file is missing or unreadable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificates or tokens.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Not a usable address.
    #[error("{0:?} is not a reachable host:port")]
    Address(String),
    /// The join exchange failed.
    #[error("join: {0}")]
    Join(String),
    /// Already initialised.
    #[error("{0} already belongs to a cluster (remove it to start over)")]
    Exists(PathBuf),
}

/// Everything a member holds.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The cluster's name.
    pub cluster: String,
    /// CA certificate (PEM).
    pub ca_pem: String,
    /// CA key (PEM).
    pub ca_key_pem: String,
    /// Gossip keys, the first primary.
    pub gossip_keys: Vec<(u32, [u8; 32])>,
    /// This node's certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// Base addresses to gossip with at start.
    pub seeds: Vec<String>,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

fn read(path: &Path) -> Result<String, ClusterError> {
    fs::read_to_string(path).map_err(|e| ClusterError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The non-empty lines of a list file, trimmed.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn write(path: &Path, text: &str) -> Result<(), ClusterError> {
    write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS generator failing is not recoverable and never happens on Linux after boot; a
    // zero key would still be refused by nobody, so fail loudly instead.
    if SystemRandom::new().fill(&mut out).is_err() {
        tracing::error!("the operating system's random generator failed");
        std::process::abort();
    }
    out
}

impl Membership {
    /// Whether `data_dir` belongs to a cluster.
    pub fn exists(data_dir: &Path) -> bool {
        dir(data_dir).join("node.pem").exists()
    }

    /// A new cluster with `node` as its first member.
    pub fn init(cluster: &str, node: &NodeId) -> Result<Self, ClusterError> {
        let ca = ClusterCa::create(cluster)?;
        let issued = ca.issue(Role::Node, node)?;
        Ok(Membership {
            cluster: cluster.to_string(),
            ca_pem: ca.cert_pem().to_string(),
            ca_key_pem: ca.key_pem(),
            gossip_keys: vec![(1, random::<32>())],
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            seeds: Vec::new(),
        })
    }

    /// What a joiner received.
    pub fn from_enrolment(enrolment: Enrolment) -> Self {
        Membership {
            cluster: enrolment.cluster,
            ca_pem: enrolment.ca_pem,
            ca_key_pem: enrolment.ca_key_pem,
            gossip_keys: enrolment.gossip_keys,
            cert_pem: enrolment.cert_pem,
            key_pem: enrolment.key_pem,
            seeds: enrolment.seeds,
        }
    }

    /// Writes the material into `data_dir/cluster/` (keys readable by the owner only).
    pub fn save(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let d = dir(data_dir);
        create_private_dir(&d).map_err(|e| ClusterError::File {
            path: d.clone(),
            reason: e.to_string(),
        })?;
        write(&d.join("name"), &self.cluster)?;
        write(&d.join("ca.pem"), &self.ca_pem)?;
        write(&d.join("ca.key"), &self.ca_key_pem)?;
        let keys: String = self
            .gossip_keys
            .iter()
            .map(|(id, key)| format!("{id} {}\n", hex(key)))
            .collect();
        write(&d.join("gossip.keys"), &keys)?;
        write(&d.join("seeds"), &self.seeds.join("\n"))?;
        write(&d.join("node.key"), &self.key_pem)?;
        // The certificate last: its presence marks the dir as a member's.
        write(&d.join("node.pem"), &self.cert_pem)?;
        Ok(())
    }

    /// Reads the material of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, ClusterError> {
        let d = dir(data_dir);
        let keys_path = d.join("gossip.keys");
        let mut gossip_keys = Vec::new();
        for line in read(&keys_path)?.lines().filter(|l| !l.trim().is_empty()) {
            let bad = || ClusterError::File {
                path: keys_path.clone(),
                reason: format!("{line:?} is not `<id> <64 hex digits>`"),
            };
            let (id, key) = line.trim().split_once(' ').ok_or_else(bad)?;
            let id = id.parse::<u32>().map_err(|_| bad())?;
            let mut bytes = [0u8; 32];
            unhex(key.trim(), &mut bytes).ok_or_else(bad)?;
            gossip_keys.push((id, bytes));
        }
        if gossip_keys.is_empty() {
            return Err(ClusterError::File {
                path: keys_path,
                reason: "holds no key".into(),
            });
        }
        Ok(Membership {
            cluster: read(&d.join("name"))?.trim().to_string(),
            ca_pem: read(&d.join("ca.pem"))?,
            ca_key_pem: read(&d.join("ca.key"))?,
            gossip_keys,
            cert_pem: read(&d.join("node.pem"))?,
            key_pem: read(&d.join("node.key"))?,
            seeds: lines(&read(&d.join("seeds"))?),
        })
    }

    /// Records the base address peers reach this node at (for tokens and user files).
    pub fn write_advertise(data_dir: &Path, addr: SocketAddr) -> Result<(), ClusterError> {
        write(&dir(data_dir).join("advertise"), &addr.to_string())
    }

    /// The base address recorded by [`Membership::write_advertise`].
    pub fn read_advertise(data_dir: &Path) -> Option<SocketAddr> {
        fs::read_to_string(dir(data_dir).join("advertise"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Stores the names whose certificates are refused.
    pub fn write_revoked(data_dir: &Path, names: &[String]) -> Result<(), ClusterError> {
        write(&dir(data_dir).join("revoked"), &names.join("\n"))
    }

    /// The names stored by [`Membership::write_revoked`].
    pub fn read_revoked(data_dir: &Path) -> Vec<String> {
        lines(&fs::read_to_string(dir(data_dir).join("revoked")).unwrap_or_default())
    }

    /// Stores the gossip keys only (after a rotation).
    pub fn save_keys(&self, data_dir: &Path) -> Result<(), ClusterError> {
        let keys: String = self
            .gossip_keys
            .iter()
            .map(|(id, key)| format!("{id} {}\n", hex(key)))
            .collect();
        write(&dir(data_dir).join("gossip.keys"), &keys)
    }

    /// Merges a peer's keyring: adds keys this node lacks and adopts the peer's primary when
    /// it is newer (higher id) than ours. Keeps the primary and the two newest others. Returns
    /// whether anything changed.
    pub fn merge_keys(&mut self, keys: &[(u32, [u8; 32])], primary: u32) -> bool {
        let before = self.gossip_keys.clone();
        for (id, key) in keys {
            if !self.gossip_keys.iter().any(|(have, _)| have == id) {
                self.gossip_keys.push((*id, *key));
            }
        }
        let mut current = self.gossip_keys[0].0;
        if primary > current && self.gossip_keys.iter().any(|(id, _)| *id == primary) {
            current = primary;
        }
        let Some(first) = self
            .gossip_keys
            .iter()
            .find(|(id, _)| *id == current)
            .copied()
        else {
            return false;
        };
        let mut others: Vec<(u32, [u8; 32])> = self
            .gossip_keys
            .iter()
            .filter(|(id, _)| *id != current)
            .copied()
            .collect();
        others.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        others.truncate(2);
        self.gossip_keys = std::iter::once(first).chain(others).collect();
        self.gossip_keys != before
    }

    /// A new key with the next id, added (not yet primary). Returns its id.
    pub fn new_key(&mut self) -> u32 {
        let id = self
            .gossip_keys
            .iter()
            .map(|(id, _)| *id)
            .max()
            .unwrap_or(0)
            + 1;
        self.gossip_keys.push((id, random::<32>()));
        id
    }

    /// The gossip keyring (the first key encrypts, all decrypt).
    pub fn keyring(&self) -> Keyring {
        let (first_id, first_key) = self.gossip_keys[0];
        let mut ring = Keyring::new(first_id, first_key);
        for (id, key) in &self.gossip_keys[1..] {
            ring.add(*id, *key);
        }
        ring
    }

    /// The TLS identity of this node.
    pub fn tls(&self) -> Result<TlsIdentity, ClusterError> {
        TlsIdentity::from_pem(&self.ca_pem, &self.cert_pem, &self.key_pem).map_err(|e| {
            ClusterError::File {
                path: PathBuf::from("cluster/node.pem"),
                reason: e.to_string(),
            }
        })
    }

    /// The CA, to sign certificates.
    pub fn ca(&self) -> Result<ClusterCa, ClusterError> {
        Ok(ClusterCa::load(
            &self.cluster,
            &self.ca_pem,
            &self.ca_key_pem,
        )?)
    }

    fn join_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.gossip_keys[0].1)
    }

    /// A join token: a random id and its MAC under the cluster key, so any member can check
    /// it without a master. `seeds` are base addresses of members to knock at.
    pub fn token(&self, seeds: Vec<String>) -> Result<JoinToken, ClusterError> {
        let ca = self.ca()?;
        let id = random::<8>();
        let tag = hmac::sign(&self.join_key(), &id);
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&id);
        secret[8..].copy_from_slice(&tag.as_ref()[..8]);
        Ok(JoinToken {
            ca_fingerprint: ca.fingerprint(),
            secret,
            seeds,
        })
    }

    /// Whether `secret` is a token this cluster made; returns its id (to spend it).
    pub fn check_secret(&self, secret: &[u8; 16]) -> Option<String> {
        // Only 8 bytes of the tag travel: compare those, in constant time.
        let tag = hmac::sign(&self.join_key(), &secret[..8]);
        let differ = tag.as_ref()[..8]
            .iter()
            .zip(&secret[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (differ == 0).then(|| hex(&secret[..8]))
    }

    /// Everything a new member `node` receives.
    pub fn enrol(&self, node: &NodeId, seeds: Vec<String>) -> Result<Enrolment, ClusterError> {
        let issued = self.ca()?.issue(Role::Node, node)?;
        Ok(Enrolment {
            cluster: self.cluster.clone(),
            ca_pem: self.ca_pem.clone(),
            ca_key_pem: self.ca_key_pem.clone(),
            gossip_keys: self.gossip_keys.clone(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            seeds,
        })
    }
}

/// How long a joiner waits for one seed's answer to its join (connection included) before it
/// tries the next seed: the seed signs a certificate and stores the enrolment first.
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a joiner keeps making passes over the seeds while none answers. A rack of boards
/// powered on together would otherwise lose most of its joins to the seeds' cap on joiners
/// at once (and a device booting before its network is up would lose it to that); a refusal
/// ends the join at once.
pub const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Enrols `node` through the token's seeds (the first that answers): checks each peer holds
/// the pinned CA, proves the token's secret, receives the cluster material.
pub async fn join(token: &JoinToken, node: &NodeId) -> Result<Membership, ClusterError> {
    join_with_steps(token, node, &mut |_| {}).await
}

/// A step of a join as it happens, for the CLI to show (a seed may take [`JOIN_TIMEOUT`]).
#[derive(Debug, Clone, Copy)]
pub enum JoinStep<'a> {
    /// Connecting to a seed and proving the token (TLS pinned to the token's CA).
    Contacting(&'a str, std::net::SocketAddr),
    /// That seed did not answer or could not be reached; the next one is tried.
    Unanswered(&'a str, &'a str),
    /// The seed accepted: this node's certificate and the cluster material arrived.
    Accepted(&'a str),
    /// No seed answered this pass; the next pass starts after this wait.
    Waiting(std::time::Duration),
}

/// The wait before pass `pass` (1 = after the first failed pass) of `node`'s join: doubling
/// from 1 s to at most 16 s, plus a share of it (up to a half) that depends on the node's
/// name, so boards that failed together do not come back together.
pub fn join_backoff(node: &NodeId, pass: u32) -> std::time::Duration {
    let base_ms = 1_000u64 << pass.saturating_sub(1).min(4);
    let spread = starling_protocol::hash::hash64_parts(&[b"join", node.as_str().as_bytes()]);
    std::time::Duration::from_millis(base_ms + spread % (base_ms / 2 + 1))
}

/// [`join`], telling `step` what happens as it happens. Passes over the seeds are repeated,
/// with [`join_backoff`] between them, while none answers, for up to [`JOIN_PATIENCE`].
pub async fn join_with_steps(
    token: &JoinToken,
    node: &NodeId,
    step: &mut dyn FnMut(JoinStep<'_>),
) -> Result<Membership, ClusterError> {
    let started = crate::clock::monotonic();
    let mut pass = 0;
    loop {
        let failures = match join_pass(token, node, step).await? {
            Ok(membership) => return Ok(membership),
            Err(failures) => failures,
        };
        pass += 1;
        let wait = join_backoff(node, pass);
        if started.elapsed() + wait > JOIN_PATIENCE {
            return Err(ClusterError::Join(format!(
                "no peer of the token answered in {} passes over {} s: {}",
                pass,
                started.elapsed().as_secs(),
                failures.join("; ")
            )));
        }
        step(JoinStep::Waiting(wait));
        tokio::time::sleep(wait).await;
    }
}

/// One pass over the token's seeds: the enrolment, or why each seed did not answer. A refusal
/// is an error: asking again would be refused again.
async fn join_pass(
    token: &JoinToken,
    node: &NodeId,
    step: &mut dyn FnMut(JoinStep<'_>),
) -> Result<Result<Membership, Vec<String>>, ClusterError> {
    use starling_protocol::wire::{JoinReply, JoinRequest, Request};
    let config = crate::net::tls::join_client_config(token.ca_fingerprint)
        .map_err(|e| ClusterError::Join(format!("cannot set up TLS for the join: {e}")))?;
    let quic =
        crate::net::quic::Quic::dialer(config).map_err(|e| ClusterError::Join(e.to_string()))?;
    let request = Request::Join(JoinRequest {
        node: node.clone(),
        secret: token.secret,
    });
    let mut failures = Vec::new();
    for seed in &token.seeds {
        let addr = match resolve(seed) {
            Ok(addr) => quic_addr(addr),
            Err(e) => {
                step(JoinStep::Unanswered(seed, &e.to_string()));
                failures.push(e.to_string());
                continue;
            }
        };
        step(JoinStep::Contacting(seed, addr));
        match quic.call::<JoinReply>(addr, &request, JOIN_TIMEOUT).await {
            Ok(JoinReply::Accepted(enrolment)) => {
                step(JoinStep::Accepted(seed));
                quic.close().await;
                return Ok(Ok(Membership::from_enrolment(*enrolment)));
            }
            Ok(JoinReply::Refused(reason)) => {
                return Err(ClusterError::Join(format!(
                    "{seed} refused the join: {reason}"
                )));
            }
            Err(e) => {
                step(JoinStep::Unanswered(seed, &e.to_string()));
                failures.push(format!("{seed}: {e}"));
            }
        }
    }
    quic.close_now().await;
    Ok(Err(failures))
}

/// Secret files that others than their owner may read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", exposed_message(.0))]
pub struct ExposedKeys(pub Vec<(PathBuf, u32)>);

fn exposed_message(exposed: &[(PathBuf, u32)]) -> String {
    exposed
        .iter()
        .map(|(path, mode)| {
            format!(
                "{} is mode {mode:04o}: a secret key must be open to its owner only; fix it with `chmod 600 {0}`",
                path.display()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks that no secret file of `data_dir` ([`SECRET_FILES`]) has permission bits for group
/// or others; call it before the agent uses them. Missing files pass: loading reports those.
/// The error names every exposed file, its mode and the `chmod` that fixes it.
pub fn check_key_permissions(data_dir: &Path) -> Result<(), ExposedKeys> {
    let d = dir(data_dir);
    let exposed: Vec<(PathBuf, u32)> = SECRET_FILES
        .iter()
        .map(|name| d.join(name))
        .filter_map(|path| {
            let mode = fs::metadata(&path).ok()?.permissions().mode() & 0o7777;
            (mode & 0o077 != 0).then_some((path, mode))
        })
        .collect();
    if exposed.is_empty() {
        Ok(())
    } else {
        Err(ExposedKeys(exposed))
    }
}

/// An operator's client material (`~/.config/starling` or `--cluster-dir`).
#[derive(Debug, Clone)]
pub struct ClientDir {
    /// Where it lives.
    pub dir: PathBuf,
}

impl ClientDir {
    /// Writes a certificate for operator `user` holding `role`, with `peers` (base addresses).
    pub fn write(
        &self,
        membership: &Membership,
        user: &NodeId,
        role: OperatorRole,
        peers: &[String],
    ) -> Result<(), ClusterError> {
        let issued = membership.ca()?.issue(Role::User(role), user)?;
        create_private_dir(&self.dir).map_err(|e| ClusterError::File {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        write(&self.dir.join("ca.pem"), &membership.ca_pem)?;
        write(&self.dir.join("user.key"), &issued.key_pem)?;
        write(&self.dir.join("user.pem"), &issued.cert_pem)?;
        write(&self.dir.join("peers"), &peers.join("\n"))?;
        Ok(())
    }

    /// Whether a user certificate is there.
    pub fn exists(&self) -> bool {
        self.dir.join("user.pem").exists()
    }

    /// The user's TLS identity.
    pub fn tls(&self) -> Result<TlsIdentity, ClusterError> {
        let ca = read(&self.dir.join("ca.pem"))?;
        let cert = read(&self.dir.join("user.pem"))?;
        let key = read(&self.dir.join("user.key"))?;
        TlsIdentity::from_pem(&ca, &cert, &key).map_err(|e| ClusterError::File {
            path: self.dir.join("user.pem"),
            reason: e.to_string(),
        })
    }

    /// Peers recorded at `user add` time.
    pub fn peers(&self) -> Vec<String> {
        lines(&fs::read_to_string(self.dir.join("peers")).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
