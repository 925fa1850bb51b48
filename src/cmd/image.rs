//! `starling image load`: container images for nodes that cannot reach a registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use starling_node::runtime::docker::{ContainerRuntime, default_socket};
use starling_protocol::NodeId;
use starling_protocol::spec::RuntimeKind;

/// `starling image`.
#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Load images from a `docker save` archive into this node's engine (no registry needed).
    Load {
        /// The archive (`docker save -o FILE.tar IMAGE`).
        file: PathBuf,
        /// Which engine: docker or podman.
        #[arg(long, default_value = "docker")]
        runtime: String,
        /// The engine's socket [default: the engine's usual one].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

/// `starling image load FILE`.
pub fn run(what: ImageCommand) -> anyhow::Result<ExitCode> {
    let ImageCommand::Load {
        file,
        runtime,
        socket,
    } = what;
    load(&file, &runtime, socket)
}

fn load(file: &Path, runtime: &str, socket: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let kind = match runtime {
        "docker" => RuntimeKind::Docker,
        "podman" => RuntimeKind::Podman,
        other => bail!("--runtime {other:?}: expected docker or podman"),
    };
    let socket = socket
        .or_else(|| default_socket(kind))
        .context("no socket for that engine")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let (events, _) = starling_node::channel::bounded(1, Default::default());
        let engine = ContainerRuntime::connect(
            kind,
            &socket,
            NodeId::new("cli")?,
            events,
            Default::default(),
        )
        .await
        .with_context(|| format!("{} is not a usable socket path", socket.display()))?;
        if !engine.available().await {
            bail!("no {runtime} engine answers at {}", socket.display());
        }
        let said = engine.load_image(file).await.map_err(anyhow::Error::msg)?;
        for line in said {
            println!("{line}");
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
