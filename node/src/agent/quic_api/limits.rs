//! What a dialer can hold on the QUIC server: the caps of [`QuicSettings`], counted per
//! connection in a [`Slot`] that gives its place back when dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::net::quic::QuicSettings;

/// What the QUIC server counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct QuicCounters {
    /// Connections refused because all were taken.
    pub refused_connections: AtomicU64,
    /// Connections refused because their IP address held its share.
    pub refused_address: AtomicU64,
    /// Connections without a certificate closed because all joiner slots were taken.
    pub refused_anonymous: AtomicU64,
    /// Connections held now, handshakes included.
    pub connections: AtomicU64,
    /// Connections without a certificate held now.
    pub anonymous: AtomicU64,
    /// Dialers asked to prove their address first (a retry) because a cap was half taken.
    pub validations: AtomicU64,
    /// API requests refused for who asked them, by the caller's kind and role.
    pub refused_requests: RefusedRequests,
    /// Handshakes that failed, by why.
    pub handshake_failures: super::HandshakeFailures,
    /// Requests refused unread, by why; shared with the local socket's door.
    pub bad_requests: std::sync::Arc<super::BadRequests>,
}

/// API requests refused for who asked them (`starling_api_refused_total`).
#[derive(Debug, Default)]
pub struct RefusedRequests {
    /// From a node's certificate (join tokens, the operator's hand on rollouts).
    pub node: AtomicU64,
    /// From a deployer's certificate.
    pub deployer: AtomicU64,
    /// From a viewer's certificate.
    pub viewer: AtomicU64,
    /// From an admin's certificate: zero unless the policy changes, kept so a refusal is
    /// never lost from the count.
    pub admin: AtomicU64,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// All connections are taken.
    Connections,
    /// The dialer's IP address holds its share.
    Address,
    /// All slots for connections without a certificate are taken.
    Anonymous,
}

impl Refusal {
    fn describe(self, caps: &Caps) -> String {
        match self {
            Refusal::Connections => {
                format!("all {} connections are taken", caps.connections_max)
            }
            Refusal::Address => format!(
                "its address holds {} connections already",
                caps.per_address_max
            ),
            Refusal::Anonymous => format!(
                "{} connections without a certificate (joiners) are open already",
                caps.anonymous_max
            ),
        }
    }
}

/// The caps of [`QuicSettings`] the limiter enforces.
#[derive(Debug, Clone, Copy)]
struct Caps {
    connections_max: usize,
    per_address_max: usize,
    anonymous_max: usize,
    refusal_log_every: Duration,
}

/// Counts what dialers hold against the caps; a [`Slot`] gives back what it holds on drop,
/// so a connection that ends in any way (closed, failed handshake, aborted task) frees it.
#[derive(Debug)]
pub(crate) struct Limiter {
    caps: Caps,
    pub(super) counters: Arc<QuicCounters>,
    held: Mutex<Held>,
    /// When a refusal was last logged, and how many were not logged since.
    warned: Mutex<(Option<Instant>, u64)>,
}

#[derive(Debug, Default)]
struct Held {
    connections: usize,
    per_address: BTreeMap<IpAddr, usize>,
    anonymous: usize,
}

/// One admitted connection.
#[derive(Debug)]
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    /// The address whose count this connection is in (none once it proved a node).
    address: Option<IpAddr>,
    anonymous: bool,
}

impl Limiter {
    /// A limiter for `settings`' caps, reporting into `counters`.
    pub fn new(settings: &QuicSettings, counters: Arc<QuicCounters>) -> Arc<Self> {
        Arc::new(Limiter {
            caps: Caps {
                connections_max: settings.connections_max,
                per_address_max: settings.per_address_max,
                anonymous_max: settings.anonymous_max,
                refusal_log_every: settings.refusal_log_every,
            },
            counters,
            held: Mutex::default(),
            warned: Mutex::default(),
        })
    }

    /// Admits a new connection from `remote` before its handshake, or says (and counts, and
    /// logs now and then) which cap refuses it.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr) -> Result<Slot, Refusal> {
        // An IPv4 dialer reaching a dual-stack socket shows as ::ffff:a.b.c.d: one address.
        let address = remote.ip().to_canonical();
        let mut held = self.lock();
        if held.connections >= self.caps.connections_max {
            drop(held);
            return Err(self.refuse(remote, Refusal::Connections));
        }
        let of_address = held.per_address.get(&address).copied().unwrap_or(0);
        if of_address >= self.caps.per_address_max {
            drop(held);
            return Err(self.refuse(remote, Refusal::Address));
        }
        held.connections += 1;
        held.per_address.insert(address, of_address + 1);
        self.publish(&held);
        Ok(Slot {
            limiter: self.clone(),
            address: Some(address),
            anonymous: false,
        })
    }

    /// Whether a dialer from `remote` must prove its address before it is admitted: the
    /// total or its address's share is half taken.
    pub fn wants_validation(&self, remote: SocketAddr) -> bool {
        let address = remote.ip().to_canonical();
        let held = self.lock();
        let of_address = held.per_address.get(&address).copied().unwrap_or(0);
        held.connections * 2 >= self.caps.connections_max
            || of_address * 2 >= self.caps.per_address_max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Counts are updated under the lock in one step each, so a poisoned lock is whole.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, remote: SocketAddr, why: Refusal) -> Refusal {
        let counter = match why {
            Refusal::Connections => &self.counters.refused_connections,
            Refusal::Address => &self.counters.refused_address,
            Refusal::Anonymous => &self.counters.refused_anonymous,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // One line per `refusal_log_every`: a flood must not flood the log too.
        let now = crate::clock::monotonic();
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        let due = warned
            .0
            .is_none_or(|at| now.duration_since(at) >= self.caps.refusal_log_every);
        if due {
            let unlogged = warned.1;
            *warned = (Some(now), 0);
            drop(warned);
            tracing::warn!(
                %remote,
                unlogged,
                "refused a QUIC connection from {remote}: {} (starling_quic_refused_total counts every refusal)",
                why.describe(&self.caps)
            );
        } else {
            warned.1 += 1;
        }
        why
    }

    fn publish(&self, held: &Held) {
        let c = &self.counters;
        c.connections
            .store(held.connections as u64, Ordering::Relaxed);
        c.anonymous.store(held.anonymous as u64, Ordering::Relaxed);
    }
}

impl Slot {
    /// The connection proved a certificate of the cluster (a node's or an operator's): it no
    /// longer counts against its address, only in the total.
    pub fn proven(&mut self) {
        let Some(address) = self.address.take() else {
            return;
        };
        let mut held = self.limiter.lock();
        release_address(&mut held, address);
    }

    /// The connection presented no certificate (a joiner): it takes a joiner slot, or is
    /// refused (counted, logged now and then) when all are taken.
    pub fn anonymous(&mut self, remote: SocketAddr) -> Result<(), Refusal> {
        if self.anonymous {
            return Ok(());
        }
        let mut held = self.limiter.lock();
        if held.anonymous >= self.limiter.caps.anonymous_max {
            drop(held);
            return Err(self.limiter.refuse(remote, Refusal::Anonymous));
        }
        held.anonymous += 1;
        self.anonymous = true;
        self.limiter.publish(&held);
        Ok(())
    }
}

fn release_address(held: &mut Held, address: IpAddr) {
    if let Some(n) = held.per_address.get_mut(&address) {
        // Every slot with an address was counted there when admitted.
        debug_assert!(*n > 0);
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.per_address.remove(&address);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        // Every slot was counted when admitted, so the count cannot be zero here.
        debug_assert!(held.connections > 0);
        held.connections = held.connections.saturating_sub(1);
        if let Some(address) = self.address.take() {
            release_address(&mut held, address);
        }
        if self.anonymous {
            debug_assert!(held.anonymous > 0);
            held.anonymous = held.anonymous.saturating_sub(1);
        }
        self.limiter.publish(&held);
    }
}
