//! The simulated runtime: carrying out the core's actions (starts, stops, publishing,
//! persisting) and feeding runtime events back.

use starling_core::node::{Action, CoreEvent, RuntimeEvent};
use starling_protocol::placement::ReplicaId;

use crate::world::{Event, Instance, World};

impl World<'_> {
    pub(crate) fn runtime_event(&mut self, i: usize, event: RuntimeEvent) {
        let current = |w: &World, r: &ReplicaId, instance: u64| {
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
                    x.running_since_ms = self.now;
                }
            }
            RuntimeEvent::Exited {
                replica, instance, ..
            } => {
                if !current(self, replica, *instance) {
                    return;
                }
                self.nodes[i].instances.remove(replica);
            }
            RuntimeEvent::Health {
                replica, instance, ..
            } if !current(self, replica, *instance) => return,
            _ => {}
        }
        self.with_core(i, |core, now| core.handle_runtime(now, event));
    }

    /// Carries out one action of node `i`'s core.
    pub(crate) fn act(&mut self, i: usize, action: Action) {
        match action {
            Action::Campaign { lease, want } => self.campaign(i, lease, want),
            Action::Withdraw { lease } => self.withdraw(i, lease),
            Action::Start {
                replica,
                instance,
                revision,
                spec,
            } => {
                crate::checks::on_start(self, i, &replica, &spec);
                self.counters.starts += 1;
                if self.started_on.get(&replica).is_some_and(|n| *n != i) {
                    self.counters.moved += 1;
                }
                self.started_on.insert(replica.clone(), i);
                self.note(format!(
                    "{} starts {}/{}",
                    self.nodes[i].id, replica.workload, replica.index
                ));
                let has_health = spec.health.is_some();
                self.nodes[i].instances.insert(
                    replica.clone(),
                    Instance {
                        instance,
                        revision,
                        running: false,
                        running_since_ms: 0,
                        spec: *spec,
                    },
                );
                let (lo, hi) = self.scenario.runtime.start_delay_ms;
                let at = self.now + self.rng.range(lo, hi);
                self.schedule(
                    at,
                    Event::Runtime(
                        i,
                        RuntimeEvent::Started {
                            replica: replica.clone(),
                            instance,
                        },
                    ),
                );
                if has_health {
                    let ok = RuntimeEvent::Health {
                        replica: replica.clone(),
                        instance,
                        ok: true,
                        detail: String::new(),
                    };
                    self.schedule(at + 50, Event::Runtime(i, ok));
                }
                self.maybe_crash_later(i, &replica, instance, at);
            }
            Action::Stop {
                replica,
                instance,
                reason,
            } => {
                self.note(format!(
                    "{} stops {}/{} ({reason})",
                    self.nodes[i].id, replica.workload, replica.index
                ));
                let exited = RuntimeEvent::Exited {
                    replica,
                    instance,
                    code: None,
                    log_tail: Vec::new(),
                };
                self.schedule(self.now + 50, Event::Runtime(i, exited));
            }
            Action::Publish(status) => {
                self.nodes[i].status = status;
                self.nodes[i].status_version += 1;
            }
            Action::PersistAssignment(assignment) => self.nodes[i].disk.assignment = assignment,
            Action::Event(event) => {
                if let CoreEvent::MinoritySide { .. } = event {
                    let baseline = self.nodes[i]
                        .disk
                        .assignment
                        .iter()
                        .map(|(r, _)| r.clone())
                        .collect();
                    self.nodes[i].minority_baseline = Some(baseline);
                }
                if let CoreEvent::MajorityRegained { .. } = event {
                    self.nodes[i].minority_baseline = None;
                }
                self.note(format!("{}: {event:?}", self.nodes[i].id));
            }
        }
    }

    fn maybe_crash_later(&mut self, i: usize, replica: &ReplicaId, instance: u64, started_at: u64) {
        let rate = self.scenario.runtime.crash_rate_per_hour;
        if rate <= 0.0 {
            return;
        }
        // Exponential lifetime from a uniform draw: -ln(u) / rate hours.
        let life_ms = self.rng.lifetime_ms(rate);
        if started_at + life_ms < self.scenario.duration_ms {
            let crash = RuntimeEvent::Exited {
                replica: replica.clone(),
                instance,
                code: Some(1),
                log_tail: vec!["simulated crash".into()],
            };
            self.schedule(started_at + life_ms, Event::Runtime(i, crash));
        }
    }
}
