//! The simulated runtime of the fast model: carrying out the core's actions (starts, stops,
//! publishing, persisting) and feeding runtime events back.

use std::sync::Arc;

use starling_core::node::{Action, CoreEvent, RuntimeEvent};
use starling_protocol::placement::ReplicaId;

use super::{Ev, FastWorld, Instance, checks};

impl FastWorld<'_> {
    pub(super) fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::Start {
                replica,
                instance,
                spec,
                ..
            } => {
                checks::on_start(self, i, &replica, &spec);
                self.counters.starts += 1;
                if self.started_on.get(&replica).is_some_and(|n| *n != i) {
                    self.counters.moved += 1;
                }
                self.started_on.insert(replica.clone(), i);
                self.ever_started.insert(replica.clone());
                self.nodes[i].instances.insert(
                    replica.clone(),
                    Instance {
                        instance,
                        running: false,
                        cpu: u64::from(spec.resources.cpu_request.0),
                        memory: spec.resources.memory_request.0,
                    },
                );
                let (lo, hi) = self.scenario.runtime.start_delay_ms;
                let at = self.now + self.rng.range(lo, hi);
                let started = RuntimeEvent::Started {
                    replica: replica.clone(),
                    instance,
                };
                self.schedule(at, Ev::Runtime(i, started));
                if spec.health.is_some() {
                    let ok = RuntimeEvent::Health {
                        replica: replica.clone(),
                        instance,
                        ok: true,
                        detail: String::new(),
                    };
                    self.schedule(at + 50, Ev::Runtime(i, ok));
                }
                self.maybe_crash_later(i, &replica, instance, at);
            }
            Action::Stop {
                replica, instance, ..
            } => {
                let exited = RuntimeEvent::Exited {
                    replica,
                    instance,
                    code: None,
                    log_tail: Vec::new(),
                };
                self.schedule(self.now + 50, Ev::Runtime(i, exited));
            }
            Action::Publish(status) => {
                if status.replicas.is_empty() && !self.nodes[i].published {
                    return;
                }
                self.nodes[i].published = true;
                let bytes = 48 + 64 * status.replicas.len() as u64;
                self.news.start_status(i, Arc::new(status), bytes);
            }
            Action::PersistAssignment(assignment) => self.nodes[i].assignment = assignment,
            Action::Event(event) => {
                match event {
                    CoreEvent::MinoritySide { .. } => {
                        let node = &mut self.nodes[i];
                        node.minority_baseline =
                            Some(node.assignment.iter().map(|(r, _)| r.clone()).collect());
                    }
                    CoreEvent::MajorityRegained { .. } => self.nodes[i].minority_baseline = None,
                    _ => {}
                }
                self.note(format!("{}: {event:?}", self.nodes[i].id));
            }
            // Scenario validation keeps lease workloads out of the fast model.
            Action::Campaign { .. } | Action::Withdraw { .. } => {}
        }
    }

    pub(super) fn runtime_event(&mut self, i: usize, event: RuntimeEvent) {
        let current = |w: &FastWorld, r: &ReplicaId, instance: u64| {
            w.nodes[i]
                .instances
                .get(r)
                .is_some_and(|x| x.instance == instance)
        };
        match &event {
            RuntimeEvent::Started { replica, instance } => {
                if !current(self, replica, *instance) {
                    return;
                }
                if let Some(x) = self.nodes[i].instances.get_mut(replica) {
                    x.running = true;
                }
                self.running.entry(replica.clone()).or_default().insert(i);
            }
            RuntimeEvent::Exited {
                replica, instance, ..
            } => {
                if !current(self, replica, *instance) {
                    return;
                }
                self.nodes[i].instances.remove(replica);
                self.not_running(&replica.clone(), i);
            }
            RuntimeEvent::Health {
                replica, instance, ..
            } if !current(self, replica, *instance) => return,
            _ => {}
        }
        self.with_core(i, |core, now| core.handle_runtime(now, event));
    }

    pub(super) fn not_running(&mut self, replica: &ReplicaId, i: usize) {
        if let Some(on) = self.running.get_mut(replica) {
            on.remove(&i);
            if on.is_empty() {
                self.running.remove(replica);
            }
        }
    }

    pub(super) fn maybe_crash_later(
        &mut self,
        i: usize,
        replica: &ReplicaId,
        instance: u64,
        started: u64,
    ) {
        let rate = self.scenario.runtime.crash_rate_per_hour;
        if rate <= 0.0 {
            return;
        }
        let life_ms = self.rng.lifetime_ms(rate);
        if started + life_ms < self.scenario.duration_ms {
            let crash = RuntimeEvent::Exited {
                replica: replica.clone(),
                instance,
                code: Some(1),
                log_tail: vec!["simulated crash".into()],
            };
            self.schedule(started + life_ms, Ev::Runtime(i, crash));
        }
    }
}
