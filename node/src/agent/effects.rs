//! The loop's two directions of traffic with the runtime: carrying out what the core decided
//! (starts and stops, in order per replica; published status; persisted assignments) and
//! feeding back what the runtime saw (starts, exits, health), with health probers alongside.

use super::*;
use crate::runtime::StartRequest;
use starling_core::node::{CoreEvent, Effects, LeaseWant, StopReason};
use starling_protocol::WorkloadName;
use starling_protocol::spec::WorkloadSpec;
use starling_protocol::status::NodeStatus;

impl Agent {
    pub(super) fn on_runtime_event(&mut self, event: RuntimeEvent) {
        let mut adopted = None;
        match &event {
            RuntimeEvent::Started { replica, instance } => {
                if let Some(spec) = self.starting.remove(&(replica.clone(), *instance)) {
                    self.start_prober(replica, *instance, &spec);
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
                self.forget_delivered(replica, *instance);
                self.note(
                    EventKind::ReplicaExited,
                    About::Replica(replica),
                    format!(
                        "{}/{} instance {instance} exited with {}",
                        replica.workload,
                        replica.index,
                        code.map_or("a signal".to_string(), |c| format!("code {c}"))
                    ),
                );
            }
            RuntimeEvent::StartFailed {
                replica,
                reason,
                instance,
            } => {
                self.forget_delivered(replica, *instance);
                self.note(
                    EventKind::StartFailed,
                    About::Replica(replica),
                    format!(
                        "{}/{} failed to start: {reason}",
                        replica.workload, replica.index
                    ),
                );
            }
            RuntimeEvent::Adopted {
                replica,
                instance,
                revision,
            } => adopted = Some((replica.clone(), *instance, *revision)),
            RuntimeEvent::Health { .. } => {}
        }
        let now = now_ms();
        self.decide(|core| core.handle_runtime(now, event));
        // After the core: only an instance it kept is probed.
        if let Some((replica, instance, revision)) = adopted {
            self.probe_adopted(replica, instance, revision);
        }
    }

    /// Starts probing an instance's health, when its spec has a check. Each instance has its
    /// own prober, on the ports that instance listens on: two instances of one replica (a
    /// start-first update) are probed apart.
    fn start_prober(&mut self, replica: &ReplicaId, instance: u64, spec: &WorkloadSpec) {
        let Some(check) = spec.health.clone() else {
            return;
        };
        let tx = self.probe_tx.clone();
        let handle = if crate::runtime::docker::is_container(spec) {
            containers::spawn_prober(
                self.runtime.clone(),
                replica.clone(),
                instance,
                check,
                spec.ports.clone(),
                tx,
            )
        } else {
            // A process's ports are fixed for its life: resolved once, here.
            let ports = self.runtime.reachable_ports(replica, instance, &spec.ports);
            crate::health::spawn_prober(replica.clone(), instance, check, ports, tx)
        };
        if let Some(old) = self.probers.insert((replica.clone(), instance), handle) {
            old.abort();
        }
    }

    /// An adopted instance the core kept is probed like a started one, with the spec of the
    /// revision it runs (the core judges its health from the first probe on; without a prober
    /// it would never hear one).
    fn probe_adopted(&mut self, replica: ReplicaId, instance: u64, revision: u64) {
        if !self.core.instances().contains(&(replica.clone(), instance)) {
            return;
        }
        let Some(current) = self.core.desired().get(&replica.workload) else {
            return;
        };
        let spec = match &current.previous {
            Some(previous) if current.number != revision && previous.number == revision => {
                previous.spec.clone()
            }
            _ => current.spec.clone(),
        };
        self.start_prober(&replica, instance, &spec);
    }

    /// Carries out what the core decided, in order. A status to publish is published before
    /// the next action is taken (the gossip layer is awaited; everything else is sync).
    pub(super) async fn execute(&mut self) {
        loop {
            self.execute_core_actions().await;
            // A rollback or a scale is a write, which the core answers with more actions.
            if let Some((workload, from, to, why)) = self.scales_due.pop() {
                self.autoscale(workload, from, to, why);
                continue;
            }
            let Some((workload, revision, reason)) = self.rollbacks_due.pop() else {
                return;
            };
            self.roll_back(workload, revision, reason);
        }
    }

    async fn execute_core_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            let mut shell = Shell {
                agent: self,
                publish: None,
            };
            action.execute(&mut shell);
            if let Some(status) = shell.publish {
                let endpoints = self.endpoints();
                if let Some(fleet) = self.fleet.as_mut() {
                    fleet.publish_status(&status).await;
                    fleet.publish_endpoints(endpoints).await;
                }
            }
        }
    }

    fn on_core_event(&mut self, event: CoreEvent) {
        let (kind, replica) = match &event {
            CoreEvent::CrashLoop { replica, .. } => (EventKind::CrashLoop, Some(replica.clone())),
            CoreEvent::RolloutFailed { replica, .. } => {
                (EventKind::RolloutFailed, Some(replica.clone()))
            }
            CoreEvent::MinoritySide { .. } | CoreEvent::MajorityRegained { .. } => {
                (EventKind::Partition, None)
            }
            CoreEvent::Rejoined { .. } => (EventKind::Agent, None),
        };
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
            CoreEvent::RolloutFailed {
                replica,
                revision,
                reason,
                rolling_back,
            } => format!(
                "rollout of {} revision {revision} failed at replica {}: {reason}{}",
                replica.workload,
                replica.index,
                if rolling_back {
                    "; rolling back"
                } else {
                    " (no automatic rollback: auto_rollback = false, or it is a rollback)"
                }
            ),
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
        let about = replica.as_ref().map_or(About::Node, About::Replica);
        self.note(kind, about, text);
    }

    /// Runs a runtime operation on `replica` after the previous one on it finished: a stop
    /// decided a moment after a start must not overtake it (it would find nothing to stop,
    /// and the start would then leave a process nobody tracks).
    pub(super) fn in_order(
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

/// The agent as the core's [`Effects`], for one action. A status to publish is handed back to
/// `execute`, which awaits the gossip layer before it takes the next action.
struct Shell<'a> {
    agent: &'a mut Agent,
    publish: Option<NodeStatus>,
}

impl Effects for Shell<'_> {
    fn start(&mut self, replica: ReplicaId, instance: u64, revision: u64, spec: Box<WorkloadSpec>) {
        let agent = &mut *self.agent;
        let (kind, from) = match agent.failed_over_from(&replica) {
            Some(down) => (
                EventKind::Failover,
                format!(": failover from {down}, which is down"),
            ),
            None => (EventKind::ReplicaStarted, String::new()),
        };
        agent.note(
            kind,
            About::Replica(&replica),
            format!(
                "starting {}/{} (revision {revision}, instance {instance}){from}",
                replica.workload, replica.index
            ),
        );
        agent
            .starting
            .insert((replica.clone(), instance), (*spec).clone());
        let mut env = if spec.singleton {
            // Before the start: a fenced instance reads the file from its first look.
            agent.prepare_lease_file(&replica);
            agent.lease_env(&replica.workload)
        } else {
            Vec::new()
        };
        env.extend(agent.report_env());
        env.extend(agent.service_env(&spec));
        let inputs = match agent.inputs_for(&spec) {
            Ok(inputs) => inputs,
            Err(reason) => {
                // Reported like a runtime's refusal: the core backs off and tries again.
                let events = agent.probe_tx.clone();
                tokio::spawn(async move {
                    events
                        .send(RuntimeEvent::StartFailed {
                            replica,
                            instance,
                            reason,
                        })
                        .await
                });
                return;
            }
        };
        agent.delivered_to(replica.clone(), instance, (*spec).clone(), &inputs);
        env.extend(inputs.env);
        let request = StartRequest {
            replica,
            instance,
            revision,
            spec: *spec,
            node: agent.node.clone(),
            env,
            dns: agent.services.container_dns.clone(),
            files: inputs.files,
        };
        let runtime = agent.runtime.clone();
        let replica = request.replica.clone();
        agent.in_order(replica, async move { runtime.start(request).await });
    }

    fn stop(&mut self, replica: ReplicaId, instance: u64, reason: StopReason) {
        let agent = &mut *self.agent;
        agent.note(
            EventKind::ReplicaStopped,
            About::Replica(&replica),
            format!(
                "stopping {}/{} instance {instance}: {reason}",
                replica.workload, replica.index
            ),
        );
        if let Some(handle) = agent.probers.remove(&(replica.clone(), instance)) {
            handle.abort();
        }
        // Self-fencing cannot wait out a long grace: the lease ends elsewhere soon.
        let grace = if reason == StopReason::LeaseLost {
            agent.config.stop_grace.min(agent.config.lease_lost_grace)
        } else {
            agent.config.stop_grace
        };
        let runtime = agent.runtime.clone();
        let id = replica.clone();
        agent.in_order(id, async move {
            runtime.stop(&replica, instance, grace).await;
        });
    }

    fn publish(&mut self, status: NodeStatus) {
        self.publish = Some(status);
    }

    fn persist_assignment(&mut self, assignment: Vec<(ReplicaId, u64)>) {
        if let Err(e) = self.agent.store.write_assignment(&assignment) {
            tracing::error!("cannot persist the assignment: {e}");
        }
    }

    fn notify(&mut self, event: CoreEvent) {
        self.agent.on_core_event(event);
    }

    fn campaign(&mut self, lease: WorkloadName, want: LeaseWant) {
        self.agent.campaign(lease, want);
    }

    fn withdraw(&mut self, lease: WorkloadName) {
        self.agent.withdraw(lease);
    }

    fn roll_back(&mut self, workload: WorkloadName, revision: u64, reason: String) {
        self.agent.rollbacks_due.push((workload, revision, reason));
    }

    fn scale(&mut self, workload: WorkloadName, from: u32, to: u32, why: String) {
        self.agent.scales_due.push((workload, from, to, why));
    }
}
