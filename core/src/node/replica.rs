//! One replica's life on this node: start, exit, back-off, crash loop, health, stop.
//!
//! These are the transitions that depend only on the replica itself and its spec; which
//! replicas this node should run at all is decided in `reconcile`.

use starling_protocol::spec::{RestartMode, WorkloadSpec};
use starling_protocol::status::{Outgoing, ReplicaState, ReplicaStatus};

use super::io::StopReason;

/// Where a local replica is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Claim published at `since_ms`; starts after the settle interval if no higher-ranked
    /// claimant shows up.
    Claimed { since_ms: u64 },
    /// Start asked of the runtime.
    Starting,
    /// Running since `started_ms`.
    Running,
    /// Waiting until `until_ms` before the next start.
    BackingOff { until_ms: u64 },
    /// Exited and not to be restarted (policy never / on-failure success / on-failure gave up).
    Exited,
    /// Stop asked of the runtime; `restart` says whether a new instance follows.
    Stopping { reason: StopReason, restart: bool },
}

/// What the core tracks for a replica that this node claims, runs or stops.
#[derive(Debug, Clone)]
pub(crate) struct LocalReplica {
    pub revision: u64,
    pub spec: WorkloadSpec,
    /// The current instance (0 until the first start).
    pub instance: u64,
    pub phase: Phase,
    pub started_ms: u64,
    pub restarts: u32,
    /// Failures in a row; reset after a run of `restart.reset_after_ms`.
    pub failures: u32,
    pub crash_loop: bool,
    pub last_exit: Option<i32>,
    pub reason: Option<String>,
    pub healthy: bool,
    pub health_failures: u32,
    /// Since when the current instance has passed its health check without a break.
    pub healthy_since_ms: Option<u64>,
    /// Healthy for the spec's `update.min_healthy`: counts as updated for a rollout.
    pub settled: bool,
    /// The old instance that keeps serving beside the new one (start-first update).
    pub outgoing: Option<OutgoingInstance>,
    /// Since when this replica has been moving to a new revision: a failed health gate then
    /// fails the rollout. Cleared once it settles.
    pub updating_since_ms: Option<u64>,
    /// The secret and config versions its revision pins: a new pin is a new template (a
    /// rotation rolls the replica), not a relabel.
    pub inputs: Inputs,
}

/// Object versions a revision pins ([`starling_protocol::desired::Revision::inputs`]).
pub(crate) type Inputs = std::collections::BTreeMap<
    starling_protocol::objects::ObjectKey,
    starling_protocol::hlc::Timestamp,
>;

/// An instance of an older revision kept running until the replica's new instance settles.
#[derive(Debug, Clone)]
pub(crate) struct OutgoingInstance {
    pub instance: u64,
    pub revision: u64,
    pub spec: WorkloadSpec,
    pub inputs: Inputs,
    pub healthy: bool,
    /// Its stop was asked; it is gone at its `Exited`.
    pub stopping: bool,
}

/// What the core should do after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterExit {
    /// Forget the replica (it was stopped on purpose and is not wanted).
    Forget,
    /// Start a new instance now.
    StartNow,
    /// Nothing now: the phase says what happens next (back-off, exited).
    Wait,
    /// The replica entered a crash loop; report it.
    ReportCrashLoop { gave_up: bool },
}

impl LocalReplica {
    pub fn claimed(revision: u64, spec: WorkloadSpec, now_ms: u64) -> Self {
        LocalReplica {
            revision,
            spec,
            instance: 0,
            phase: Phase::Claimed { since_ms: now_ms },
            started_ms: 0,
            restarts: 0,
            failures: 0,
            crash_loop: false,
            last_exit: None,
            reason: None,
            healthy: false,
            health_failures: 0,
            healthy_since_ms: None,
            settled: false,
            outgoing: None,
            updating_since_ms: None,
            inputs: Inputs::new(),
        }
    }

    /// An instance found running from before an agent restart.
    pub fn adopted(revision: u64, spec: WorkloadSpec, instance: u64, now_ms: u64) -> Self {
        let mut r = Self::claimed(revision, spec, now_ms);
        r.instance = instance;
        r.phase = Phase::Running;
        r.started_ms = now_ms;
        r.healthy = r.spec.health.is_none();
        r.healthy_since_ms = r.healthy.then_some(now_ms);
        r
    }

    /// The runtime reports the instance running.
    pub fn on_started(&mut self, now_ms: u64) {
        if self.phase == Phase::Starting {
            self.phase = Phase::Running;
            self.started_ms = now_ms;
            self.reason = None;
            self.health_failures = 0;
            // Without a health check, running is healthy; with one, the first probe decides.
            self.healthy = self.spec.health.is_none();
            self.healthy_since_ms = self.healthy.then_some(now_ms);
            self.settled = false;
        }
    }

    /// The instance exited (or failed to start, with `reason`). Applies the restart policy.
    /// `last_line` is the last line of its log, quoted in the status of a failed exit.
    pub fn on_exit(
        &mut self,
        now_ms: u64,
        code: Option<i32>,
        reason: Option<String>,
        last_line: Option<&str>,
    ) -> AfterExit {
        self.healthy = false;
        self.healthy_since_ms = None;
        self.settled = false;
        if let Phase::Stopping { restart, .. } = self.phase
            && !restart
        {
            return AfterExit::Forget;
        }
        let planned_restart = matches!(
            self.phase,
            Phase::Stopping {
                reason: StopReason::NewRevision,
                ..
            }
        );
        let unhealthy = matches!(
            self.phase,
            Phase::Stopping {
                reason: StopReason::Unhealthy,
                ..
            }
        );
        let success = code == Some(0) && reason.is_none() && !unhealthy;
        self.last_exit = code;
        if reason.is_some() {
            self.reason = reason;
        } else if success || planned_restart {
            self.reason = None;
        } else if !unhealthy {
            // Keep a health failure's reason; otherwise say how it ended, with its last words.
            let how = code.map_or("killed by a signal".to_string(), |c| {
                format!("exited with code {c}")
            });
            self.reason = Some(match last_line.map(str::trim).filter(|l| !l.is_empty()) {
                Some(line) => format!("{how}: {}", truncate(line, 200)),
                None => how,
            });
        }
        if planned_restart {
            self.failures = 0;
            self.crash_loop = false;
            return AfterExit::StartNow;
        }
        let policy = self.spec.restart;
        let ran_ms = now_ms.saturating_sub(self.started_ms);
        if self.phase == Phase::Running && ran_ms >= policy.reset_after_ms {
            self.failures = 0;
            self.crash_loop = false;
        }
        match policy.mode {
            RestartMode::Never => {
                self.phase = Phase::Exited;
                AfterExit::Wait
            }
            RestartMode::OnFailure { .. } if success => {
                self.phase = Phase::Exited;
                AfterExit::Wait
            }
            RestartMode::OnFailure { max_retries } => {
                self.failures += 1;
                if self.failures > max_retries {
                    self.phase = Phase::Exited;
                    self.crash_loop = true;
                    return AfterExit::ReportCrashLoop { gave_up: true };
                }
                self.back_off(now_ms)
            }
            RestartMode::Always => {
                self.failures += 1;
                self.back_off(now_ms)
            }
        }
    }

    fn back_off(&mut self, now_ms: u64) -> AfterExit {
        let policy = self.spec.restart;
        let shift = self.failures.saturating_sub(1).min(32);
        let delay_ms = policy
            .backoff_initial_ms
            .saturating_mul(1u64 << shift)
            .min(policy.backoff_max_ms);
        self.phase = Phase::BackingOff {
            until_ms: now_ms + delay_ms,
        };
        let was_looping = self.crash_loop;
        self.crash_loop = self.failures >= CRASH_LOOP_FAILURES;
        if self.crash_loop && !was_looping {
            AfterExit::ReportCrashLoop { gave_up: false }
        } else {
            AfterExit::Wait
        }
    }

    /// A health probe result. Returns true when the failure threshold was just reached and the
    /// instance must be restarted.
    pub fn on_health(&mut self, now_ms: u64, ok: bool, detail: String) -> bool {
        let Some(check) = &self.spec.health else {
            return false;
        };
        if self.phase != Phase::Running {
            return false;
        }
        if ok {
            if !self.healthy {
                self.healthy_since_ms = Some(now_ms);
            }
            self.healthy = true;
            self.health_failures = 0;
            self.reason = None;
            return false;
        }
        if now_ms < self.started_ms + check.initial_delay_ms {
            return false;
        }
        self.health_failures += 1;
        self.reason = Some(format!("health check failed: {detail}"));
        if self.health_failures >= check.failure_threshold {
            self.healthy = false;
            self.healthy_since_ms = None;
            self.settled = false;
            return true;
        }
        false
    }

    /// Marks the replica settled once it has been healthy for `update.min_healthy`; returns
    /// when to look again if it is healthy but not settled yet.
    pub fn refresh_settled(&mut self, now_ms: u64) -> Option<u64> {
        if self.phase != Phase::Running || !self.healthy {
            self.settled = false;
            return None;
        }
        let since = *self.healthy_since_ms.get_or_insert(now_ms);
        let at = since.saturating_add(self.spec.update.min_healthy_ms);
        self.settled = now_ms >= at;
        (!self.settled).then_some(at)
    }

    /// The next instant this replica needs attention, if it waits for time.
    pub fn deadline_ms(&self, settle_ms: u64) -> Option<u64> {
        match self.phase {
            Phase::Claimed { since_ms } => Some(since_ms + settle_ms),
            Phase::BackingOff { until_ms } => Some(until_ms),
            _ => None,
        }
    }

    /// Occupies the node: counted in the persisted assignment and in reserved resources.
    pub fn is_active(&self) -> bool {
        match &self.phase {
            Phase::Exited => false,
            Phase::Stopping { restart, .. } => *restart,
            _ => true,
        }
    }

    /// Has a live instance in the runtime (starting, running or being stopped).
    pub fn has_instance(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting | Phase::Running | Phase::Stopping { .. }
        )
    }

    pub fn status(&self) -> ReplicaStatus {
        let state = match (&self.phase, self.crash_loop) {
            (Phase::Claimed { .. }, _) => ReplicaState::Claimed,
            (Phase::Starting, _) => ReplicaState::Starting,
            (Phase::Running, _) => ReplicaState::Running,
            (Phase::BackingOff { .. } | Phase::Exited, true) => ReplicaState::CrashLoop,
            (Phase::BackingOff { .. }, false) => ReplicaState::BackingOff,
            (Phase::Exited, false) => ReplicaState::Exited,
            (Phase::Stopping { .. }, _) => ReplicaState::Stopping,
        };
        ReplicaStatus {
            revision: self.revision,
            state,
            healthy: self.healthy && self.phase == Phase::Running,
            restarts: self.restarts,
            last_exit_code: self.last_exit,
            reason: self.reason.clone(),
            settled: self.settled && self.healthy && self.phase == Phase::Running,
            outgoing: self.outgoing.as_ref().map(|o| Outgoing {
                revision: o.revision,
                healthy: o.healthy && !o.stopping,
            }),
        }
    }
}

fn truncate(text: &str, chars_max: usize) -> String {
    match text.char_indices().nth(chars_max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// Failures in a row after which a replica under policy `always` is reported as `CrashLoop`
/// (restarts go on at the back-off ceiling).
pub(crate) const CRASH_LOOP_FAILURES: u32 = 5;
