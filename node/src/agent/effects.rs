//! The loop's two directions of traffic with the runtime: carrying out what the core decided
//! (starts and stops, in order per replica; published status; persisted assignments) and
//! feeding back what the runtime saw (starts, exits, health), with health probers alongside.

use super::*;
use crate::runtime::StartRequest;
use starling_core::node::StopReason;
use starling_core::node::{Action, CoreEvent};

/// Grace between SIGTERM and SIGKILL when a lease was lost: well inside the drift margin.
const LEASE_LOST_GRACE: Duration = Duration::from_millis(100);

impl Agent {
    pub(super) fn on_runtime_event(&mut self, event: RuntimeEvent) {
        match &event {
            RuntimeEvent::Started { replica, instance } => {
                let key = (replica.clone(), *instance);
                if let Some(spec) = self.starting.remove(&key)
                    && let Some(check) = spec.health.clone()
                {
                    let tx = self.probe_tx.clone();
                    let handle = if crate::runtime::docker::is_container(&spec) {
                        containers::spawn_prober(
                            self.runtime.clone(),
                            replica.clone(),
                            *instance,
                            check,
                            spec.ports.clone(),
                            tx,
                        )
                    } else {
                        crate::health::spawn_prober(
                            replica.clone(),
                            *instance,
                            check,
                            spec.ports.clone(),
                            tx,
                        )
                    };
                    self.probers.insert(key, handle);
                }
            }
            RuntimeEvent::Exited {
                replica,
                instance,
                code,
                ..
            } => {
                if let Some(handle) = self.probers.remove(&(replica.clone(), *instance)) {
                    handle.abort();
                }
                self.starting.remove(&(replica.clone(), *instance));
                self.note(format!(
                    "{}/{} instance {instance} exited with {}",
                    replica.workload,
                    replica.index,
                    code.map_or("a signal".to_string(), |c| format!("code {c}"))
                ));
            }
            RuntimeEvent::StartFailed {
                replica, reason, ..
            } => {
                self.note(format!(
                    "{}/{} failed to start: {reason}",
                    replica.workload, replica.index
                ));
            }
            RuntimeEvent::Health { .. } | RuntimeEvent::Adopted { .. } => {}
        }
        let now = now_ms();
        self.decide(|core| core.handle_runtime(now, event));
    }

    /// Carries out what the core decided, in order.
    pub(super) async fn execute(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Start {
                    replica,
                    instance,
                    revision,
                    spec,
                } => {
                    self.note(format!(
                        "starting {}/{} (revision {revision}, instance {instance})",
                        replica.workload, replica.index
                    ));
                    self.starting
                        .insert((replica.clone(), instance), (*spec).clone());
                    let env = if spec.singleton {
                        // Before the start: a fenced instance reads the file from its first look.
                        self.prepare_lease_file(&replica);
                        self.lease_env(&replica.workload)
                    } else {
                        Vec::new()
                    };
                    let request = StartRequest {
                        replica,
                        instance,
                        revision,
                        spec: *spec,
                        node: self.node.clone(),
                        env,
                    };
                    let runtime = self.runtime.clone();
                    let replica = request.replica.clone();
                    self.in_order(replica, async move { runtime.start(request).await });
                }
                Action::Stop {
                    replica,
                    instance,
                    reason,
                } => {
                    self.note(format!(
                        "stopping {}/{} instance {instance}: {reason}",
                        replica.workload, replica.index
                    ));
                    if let Some(handle) = self.probers.remove(&(replica.clone(), instance)) {
                        handle.abort();
                    }
                    // Self-fencing cannot wait out a long grace: the lease ends elsewhere soon.
                    let grace = if reason == StopReason::LeaseLost {
                        self.config.stop_grace.min(LEASE_LOST_GRACE)
                    } else {
                        self.config.stop_grace
                    };
                    let runtime = self.runtime.clone();
                    let id = replica.clone();
                    self.in_order(id, async move {
                        runtime.stop(&replica, instance, grace).await;
                    });
                }
                Action::Publish(status) => {
                    let endpoints = self.endpoints(&status);
                    if let Some(fleet) = self.fleet.as_mut() {
                        fleet.publish_status(&status).await;
                        fleet.publish_endpoints(endpoints).await;
                    }
                }
                Action::PersistAssignment(assignment) => {
                    if let Err(e) = self.store.write_assignment(&assignment) {
                        tracing::error!("cannot persist the assignment: {e}");
                    }
                }
                Action::Event(event) => self.on_core_event(event),
                Action::Campaign { lease, want } => self.campaign(lease, want),
                Action::Withdraw { lease } => self.withdraw(lease),
            }
        }
    }

    fn on_core_event(&mut self, event: CoreEvent) {
        let text = match event {
            CoreEvent::CrashLoop {
                replica,
                exit_code,
                log_tail,
                gave_up,
            } => format!(
                "{}/{} is in CrashLoop (last exit {}{}); last log lines: {}",
                replica.workload,
                replica.index,
                exit_code.map_or("by signal".into(), |c| format!("code {c}")),
                if gave_up {
                    ", gave up restarting"
                } else {
                    ", restarting at the back-off ceiling"
                },
                log_tail.join(" | ")
            ),
            CoreEvent::MinoritySide { visible, known } => {
                format!("sees {visible} of {known} members: minority side, replacing nothing")
            }
            CoreEvent::MajorityRegained { visible, known } => {
                format!("sees {visible} of {known} members again: majority")
            }
            CoreEvent::Rejoined { heard, timed_out } => {
                if timed_out {
                    format!(
                        "rejoin wait over with {heard} peers heard: acting on what it knows \
                         (a node that hears nobody restarts its last assignment)"
                    )
                } else {
                    format!("rejoined: heard the status of all {heard} peers it sees")
                }
            }
        };
        tracing::warn!("{text}");
        self.note(text);
    }

    /// Runs a runtime operation on `replica` after the previous one on it finished: a stop
    /// decided a moment after a start must not overtake it (it would find nothing to stop,
    /// and the start would then leave a process nobody tracks).
    fn in_order(
        &mut self,
        replica: ReplicaId,
        operation: impl Future<Output = ()> + Send + 'static,
    ) {
        self.operations.retain(|_, h| !h.is_finished());
        let previous = self.operations.remove(&replica);
        let handle = tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            operation.await;
        });
        self.operations.insert(replica, handle);
    }

    pub(super) async fn stop_everything(&mut self) {
        let instances = self.core.instances();
        tracing::info!(
            replicas = instances.len(),
            "stopping every replica before exit"
        );
        let stops = instances.into_iter().map(|(replica, instance)| {
            let (runtime, grace) = (self.runtime.clone(), self.config.stop_grace);
            tokio::spawn(async move { runtime.stop(&replica, instance, grace).await })
        });
        for stop in stops.collect::<Vec<_>>() {
            let _ = stop.await;
        }
    }
}
