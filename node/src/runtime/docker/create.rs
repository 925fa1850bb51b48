//! What a container is created from: its image (present, pulled when the policy allows, or
//! loaded from an archive)
//! and the create request (environment, labels, port bindings, mounts, limits, command).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use futures_util::StreamExt as _;
use starling_protocol::spec::{PortProtocol, PortSpec, PullPolicy};

use super::super::StartRequest;
use super::super::ports::{self, Bound, PortMap};
use super::{
    ContainerRuntime, LABEL_INSTANCE, LABEL_NODE, LABEL_REPLICA, LABEL_REVISION, LABEL_WORKLOAD,
};

/// Bytes of an image archive handed to the engine at a time by `load_image`.
const LOAD_CHUNK: usize = 256 << 10;

impl ContainerRuntime {
    /// The image is there, or may and can be pulled.
    pub(super) async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), String> {
        let docker = self.docker()?;
        let present = docker.inspect_image(image).await.is_ok();
        let pull = match policy {
            PullPolicy::Never => false,
            PullPolicy::IfNotPresent => !present,
            PullPolicy::Always => true,
        };
        if pull {
            let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
                .from_image(image)
                .build();
            let mut stream = docker.create_image(Some(options), None, None);
            let mut failure = None;
            while let Some(step) = stream.next().await {
                if let Err(e) = step {
                    failure = Some(e.to_string());
                    break;
                }
            }
            match (failure, present) {
                (None, _) => return Ok(()),
                (Some(_), true) => return Ok(()),
                (Some(e), false) => {
                    return Err(format!(
                        "ImageNotFound: {image} on node {} (pull failed: {e})",
                        self.node
                    ));
                }
            }
        }
        if present {
            Ok(())
        } else {
            Err(format!(
                "ImageNotFound: {image} on node {} (load it with `starling image load`, pull policy {:?})",
                self.node, policy
            ))
        }
    }

    /// Loads images from a `docker save` archive (what `starling image load` runs), for
    /// nodes that cannot reach a registry. Returns what the engine reported; `sent` counts
    /// the archive's bytes as they go to the engine.
    pub async fn load_image(
        &self,
        archive: &std::path::Path,
        sent: &Arc<AtomicU64>,
    ) -> Result<Vec<String>, String> {
        let bytes = bytes::Bytes::from(
            std::fs::read(archive)
                .map_err(|e| format!("cannot read {}: {e}", archive.display()))?,
        );
        // Handed over in chunks, each counted as the engine's connection takes it: the
        // caller shows how far a large archive got (the engine answers only at the end).
        let chunks: Vec<bytes::Bytes> = (0..bytes.len())
            .step_by(LOAD_CHUNK)
            .map(|start| bytes.slice(start..bytes.len().min(start + LOAD_CHUNK)))
            .collect();
        let sent = Arc::clone(sent);
        let body = futures_util::stream::iter(chunks).map(move |chunk| {
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            chunk
        });
        let options = bollard::query_parameters::ImportImageOptionsBuilder::default().build();
        let mut stream = self
            .docker()?
            .import_image(options, bollard::body_stream(body), None);
        let mut said = Vec::new();
        while let Some(step) = stream.next().await {
            match step {
                Ok(info) => {
                    if let Some(line) = info.stream.filter(|l| !l.trim().is_empty()) {
                        said.push(line.trim().to_string());
                    }
                }
                Err(e) => return Err(self.explain(e)),
            }
        }
        Ok(said)
    }

    pub(super) fn container_body(
        &self,
        request: &StartRequest,
        image: String,
        mounts: Vec<Mount>,
    ) -> ContainerCreateBody {
        let spec = &request.spec;
        let replica = &request.replica;
        // Inside its container an instance listens on its container ports, whatever the engine
        // maps them to on the host: those are what `${port.NAME}` and STARLING_PORT_* say.
        let inside: PortMap = spec
            .ports
            .iter()
            .map(|p| {
                let bound = Bound {
                    port: p.container_port,
                    protocol: p.protocol,
                };
                (p.name.clone(), bound)
            })
            .collect();
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("STARLING_WORKLOAD={}", replica.workload));
        env.push(format!("STARLING_REPLICA={}", replica.index));
        env.push(format!("STARLING_NODE={}", request.node));
        env.push(format!("STARLING_REVISION={}", request.revision));
        env.extend(ports::env(&inside).iter().map(|(k, v)| format!("{k}={v}")));
        env.extend(request.env.iter().map(|(k, v)| format!("{k}={v}")));
        let labels: HashMap<String, String> = [
            (LABEL_WORKLOAD, replica.workload.to_string()),
            (LABEL_REPLICA, replica.index.to_string()),
            (LABEL_REVISION, request.revision.to_string()),
            (LABEL_NODE, self.node.to_string()),
            (LABEL_INSTANCE, request.instance.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut bindings = HashMap::new();
        let mut exposed = Vec::new();
        for port in &spec.ports {
            let key = port_key(port);
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: None,
                    // Empty: the engine picks a free host port.
                    host_port: Some(port.host_port.map(|p| p.to_string()).unwrap_or_default()),
                }]),
            );
        }
        let host_config = HostConfig {
            port_bindings: Some(bindings),
            mounts: (!mounts.is_empty()).then_some(mounts),
            dns: (!request.dns.is_empty())
                .then(|| request.dns.iter().map(|ip| ip.to_string()).collect()),
            memory: spec.resources.memory_limit.map(|m| m.0 as i64),
            nano_cpus: spec.resources.cpu_limit.map(|c| i64::from(c.0) * 1_000_000),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            ..Default::default()
        };
        let args: Vec<String> = spec
            .args
            .iter()
            .map(|a| ports::substitute(a, &inside))
            .collect();
        let (entrypoint, cmd) = match &spec.command {
            Some(command) => (Some(vec![ports::substitute(command, &inside)]), Some(args)),
            None if args.is_empty() => (None, None),
            None => (None, Some(args)),
        };
        ContainerCreateBody {
            image: Some(image),
            entrypoint,
            cmd,
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(exposed),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// The engine's name for a container port: `8080/tcp`.
pub(super) fn port_key(port: &PortSpec) -> String {
    let protocol = match port.protocol {
        PortProtocol::Udp => "udp",
        _ => "tcp",
    };
    format!("{}/{protocol}", port.container_port)
}
