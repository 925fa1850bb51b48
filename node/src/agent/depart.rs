//! Stopping the agent: the three `--on-stop` modes, and what "done" means for each.
//!
//! - `leave` (the default; an upgrade or a reboot): the node announces a planned restart with
//!   a deadline (its own view, gossip key `departure`, and a push to every live peer), so no
//!   peer replaces its replicas before the deadline; its core gives up every lease and stops
//!   every singleton instance here (placement gives singletons to another node meanwhile);
//!   everything else keeps running for the next agent to adopt.
//! - `drain`: the node announces that it drains; placement gives it nothing, peers start its
//!   replicas at once (no move hold), and its core stops each copy once the new one is healthy
//!   (make before break). What is left at the drain timeout is stopped.
//! - `stop`: every replica is stopped and the agent exits; peers replace them once the node is
//!   down.
//!
//! The decisions (which replicas stop, which leases go) are the core's and the detector's; this
//! module only announces, waits for the outcome and bounds the wait.

use std::time::Duration;

use starling_protocol::placement::Departure;

use super::About;
use super::Agent;
use super::fleet::SyncEvent;
use crate::clock::now_ms;
use starling_protocol::events::EventKind;

/// What the agent does with its workloads when it is asked to stop (SIGTERM or SIGINT).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnStop {
    /// A planned restart: announce it, give leases and singleton instances up, leave every
    /// other replica running for the next agent to adopt.
    #[default]
    Leave,
    /// Move every replica to other nodes (make before break), then stop what is left.
    Drain,
    /// Stop every replica and exit.
    Stop,
}

/// How long each step of a departure may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepartureSettings {
    /// What to do.
    pub on_stop: OnStop,
    /// `leave`: how long peers hold this node's replicas for its next start (default 60 s).
    pub restart_window: Duration,
    /// `drain`: longest wait for the replicas to run elsewhere (default 2 min).
    pub drain_timeout: Duration,
    /// Longest wait for the departure push to be acknowledged (default 2 s).
    pub announce_timeout: Duration,
    /// `leave`: longest wait, after the announcement, for singleton instances to stop and
    /// leases to be released (default 5 s, and never more than the stop grace).
    pub leave_stop_wait_max: Duration,
}

impl Default for DepartureSettings {
    fn default() -> Self {
        DepartureSettings {
            on_stop: OnStop::Leave,
            restart_window: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(120),
            announce_timeout: Duration::from_secs(2),
            leave_stop_wait_max: Duration::from_secs(5),
        }
    }
}

/// A departure under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Departing {
    mode: OnStop,
    /// Peers acknowledged the announcement (or there was nobody to tell).
    announced: bool,
    /// When the announcement stops waiting for acknowledgements.
    announce_until_ms: u64,
    /// When the agent exits whatever is left.
    give_up_at_ms: u64,
}

impl Agent {
    /// The agent was asked to stop: start the departure its settings choose.
    pub(super) async fn begin_departure(&mut self) {
        let now = now_ms();
        let mut settings = self.config.departure;
        if self.fleet.is_none() && settings.on_stop == OnStop::Drain {
            // No other node to move anything to.
            settings.on_stop = OnStop::Stop;
        }
        // Leases taken for scripts go too: a stopped agent cannot renew them.
        for name in std::mem::take(&mut self.leases.scripts) {
            self.leases.elector.unwant(&name);
        }
        self.drive_elector();
        let departure = match settings.on_stop {
            OnStop::Stop => None,
            OnStop::Leave => Some(Departure::Restarting {
                back_by_ms: now + settings.restart_window.as_millis() as u64,
            }),
            OnStop::Drain => Some(Departure::Draining),
        };
        let wait = match settings.on_stop {
            OnStop::Stop => Duration::ZERO,
            // Singleton instances stop with the lease-lost grace; leases go with one round
            // of release messages.
            OnStop::Leave => {
                settings.announce_timeout + self.config.stop_grace.min(settings.leave_stop_wait_max)
            }
            OnStop::Drain => settings.announce_timeout + settings.drain_timeout,
        };
        let mut announced = true;
        if let (Some(departure), Some(fleet)) = (departure, self.fleet.as_mut()) {
            let tx = fleet.sync_tx.clone();
            fleet.announce_departure(now, departure, move |acked, asked| async move {
                tx.send(SyncEvent::DepartureAnnounced { acked, asked })
                    .await;
            });
            fleet.publish_me_view().await;
            fleet.gossip_round(now);
            announced = false;
        }
        if let Some(departure) = departure {
            // The core decides what leaves with the node (singletons, leases; a drain's
            // handovers) from its own view, as it would from a peer's.
            let mut view = self.core.view().clone();
            if let Some(me) = view.nodes.get_mut(&self.node) {
                me.departure = departure;
            }
            self.decide(|core| core.handle_view(now, view));
        }
        self.note(EventKind::Agent, About::Node, format!(
            "stopping ({:?}): {}",
            settings.on_stop,
            match settings.on_stop {
                OnStop::Leave => "peers hold this node's replicas for its next start; leases and singletons go now",
                OnStop::Drain => "moving every replica to other nodes first",
                OnStop::Stop => "stopping every replica",
            }
        ));
        self.departing = Some(Departing {
            mode: settings.on_stop,
            announced,
            announce_until_ms: now + settings.announce_timeout.as_millis() as u64,
            give_up_at_ms: now + wait.as_millis() as u64,
        });
    }

    pub(super) fn on_departure_announced(&mut self, acked: usize, asked: usize) {
        self.note(
            EventKind::Agent,
            About::Node,
            format!("{acked} of {asked} live peers acknowledged this node's departure"),
        );
        if let Some(d) = self.departing.as_mut() {
            d.announced = true;
        }
    }

    /// When the departure under way next needs the loop (its timeouts).
    pub(super) fn departure_deadline(&self) -> Option<u64> {
        let d = self.departing.as_ref()?;
        Some(if d.announced {
            d.give_up_at_ms
        } else {
            d.announce_until_ms.min(d.give_up_at_ms)
        })
    }

    /// Whether the departure under way has done what its mode promises (or ran out of time).
    pub(super) fn departure_done(&self) -> bool {
        let Some(d) = self.departing.as_ref() else {
            return false;
        };
        let now = now_ms();
        if now >= d.give_up_at_ms {
            if d.mode != OnStop::Stop {
                tracing::warn!(
                    "stopping before the departure finished ({:?}): {} replicas here, {} leases held",
                    d.mode,
                    self.core.instances().len(),
                    self.leases
                        .elector
                        .table()
                        .iter()
                        .filter(|l| self.leases.elector.holds(&l.name, now).is_some())
                        .count()
                );
            }
            return true;
        }
        let announced = d.announced || now >= d.announce_until_ms;
        let releases_sent = self.leases.sends_in_flight() == 0;
        match d.mode {
            OnStop::Stop => true,
            OnStop::Leave => {
                announced && releases_sent && !self.holds_any_lease(now) && !self.runs_singleton()
            }
            OnStop::Drain => {
                announced
                    && releases_sent
                    && !self.holds_any_lease(now)
                    && self.core.instances().is_empty()
            }
        }
    }

    fn holds_any_lease(&self, now: u64) -> bool {
        let elector = &self.leases.elector;
        elector
            .table()
            .iter()
            .any(|l| elector.holds(&l.name, now).is_some())
    }

    /// A singleton instance still runs here (its stop is under way).
    fn runs_singleton(&self) -> bool {
        self.core.instances().iter().any(|(replica, _)| {
            self.core
                .desired()
                .get(&replica.workload)
                .is_some_and(|rev| rev.spec.singleton)
        })
    }

    /// What the agent stops itself as it exits: everything, unless it leaves for a restart.
    pub(super) fn stops_everything_on_exit(&self) -> bool {
        let mode = self
            .departing
            .map_or(self.config.departure.on_stop, |d| d.mode);
        mode != OnStop::Leave
    }
}
