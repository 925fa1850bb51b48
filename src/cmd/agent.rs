//! `starling agent`: run this machine's agent in the foreground.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use starling_node::agent::{AgentConfig, run};
use starling_protocol::NodeId;

pub struct AgentArgs {
    pub data_dir: PathBuf,
    pub node_id: Option<String>,
    pub labels: Vec<String>,
    pub stop_grace_ms: u64,
    pub stop_on_exit: bool,
}

pub fn main(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let mut config = AgentConfig::new(&args.data_dir);
    if let Some(id) = args.node_id {
        config.node_id =
            Some(NodeId::new(id.clone()).map_err(|e| anyhow::anyhow!("--node-id {id:?}: {e}"))?);
    }
    config.labels = parse_labels(&args.labels)?;
    config.stop_grace = Duration::from_millis(args.stop_grace_ms);
    config.stop_on_exit = args.stop_on_exit;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        run(config, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for label in labels {
        let Some((k, v)) = label.split_once('=') else {
            bail!("--label {label:?}: expected KEY=VALUE")
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the agent runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
