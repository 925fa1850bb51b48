//! What the agent does differently for container workloads: health probes against the
//! container (exec inside it; TCP and HTTP on the host ports the engine bound), and watching
//! whether the engines still answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use starling_protocol::placement::ReplicaId;
use starling_protocol::spec::{HealthCheck, PortSpec, Probe, RuntimeKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::health::ProbeResult;
use crate::runtime::Runtimes;

/// Probes a container instance on its schedule until aborted: exec checks run inside the
/// container, TCP and HTTP checks go to the host ports the engine bound.
pub(super) fn spawn_prober(
    runtime: Arc<Runtimes>,
    replica: ReplicaId,
    instance: u64,
    check: HealthCheck,
    ports: Vec<PortSpec>,
    events: crate::runtime::EventSender,
) -> JoinHandle<()> {
    let probe = check.probe.clone();
    let target = replica.clone();
    crate::health::spawn_prober_with(replica, instance, check, events, move |timeout| {
        let (runtime, replica, probe, ports) = (
            runtime.clone(),
            target.clone(),
            probe.clone(),
            ports.clone(),
        );
        async move { probe_container(&runtime, &replica, instance, &probe, &ports, timeout).await }
    })
}

async fn probe_container(
    runtime: &Runtimes,
    replica: &ReplicaId,
    instance: u64,
    probe: &Probe,
    ports: &[PortSpec],
    timeout: Duration,
) -> ProbeResult {
    let (ok, detail) = match probe {
        Probe::Exec { command } => {
            let run = async {
                match runtime.container_of_instance(replica, instance) {
                    Some(engine) => engine.exec(replica, instance, command).await,
                    None => Err("the container is not running".into()),
                }
            };
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(0)) => (true, "exit 0".to_string()),
                Ok(Ok(code)) => (false, format!("exit {code}")),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, format!("timed out after {timeout:?}")),
            }
        }
        probe => {
            // TCP and HTTP checks go to the host ports the engine bound for this instance
            // (also for adopted containers, whose ports are read back from the engine).
            let mapped = runtime.reachable_ports(replica, instance, ports);
            return crate::health::probe(probe, &mapped, timeout, None, &[]).await;
        }
    };
    ProbeResult { ok, detail }
}

/// Asks the engines every `interval` whether they answer; sends each answer.
pub(super) fn watch_engines(
    runtime: Arc<Runtimes>,
    interval: Duration,
) -> (mpsc::Receiver<BTreeSet<RuntimeKind>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4);
    let handle = tokio::spawn(async move {
        if runtime.containers.is_empty() {
            return;
        }
        loop {
            tokio::time::sleep(interval).await;
            if tx.send(runtime.available().await).await.is_err() {
                return;
            }
        }
    });
    (rx, handle)
}
