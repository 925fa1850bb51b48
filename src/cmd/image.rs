//! `starling image load`: container images for nodes that cannot reach a registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use starling_node::runtime::docker::{ContainerRuntime, default_socket};
use starling_protocol::NodeId;
use starling_protocol::spec::RuntimeKind;

use crate::output::progress::{self, Progress};

/// How often the bytes sent are shown.
const TICK: Duration = Duration::from_millis(200);

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
        let said = load_showing_progress(&engine, file).await?;
        for line in said {
            println!("{line}");
        }
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// Loads `file` into `engine`, showing on stderr the bytes sent of the archive's size and the
/// rate, then that the engine is unpacking it (it answers only once it has).
async fn load_showing_progress(
    engine: &ContainerRuntime,
    file: &Path,
) -> anyhow::Result<Vec<String>> {
    let total = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let what = file.display().to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let mut shown = Progress::stderr();
    let started = Instant::now();
    let load = engine.load_image(file, &sent);
    tokio::pin!(load);
    let mut tick = tokio::time::interval(TICK);
    let said = loop {
        tokio::select! {
            said = &mut load => break said,
            _ = tick.tick() => {
                let now = sent.load(Ordering::Relaxed);
                let state = if now >= total {
                    format!("{what}: all {} sent; the engine is loading it", human(total))
                } else {
                    // A log gets a line per tenth of the archive, not one per tick.
                    format!("{what}: {}0%", now.saturating_mul(10).checked_div(total).unwrap_or(10))
                };
                let line = if now >= total {
                    progress::with_elapsed(&state, started.elapsed())
                } else {
                    progress::transfer(&what, now, total, started.elapsed())
                };
                shown.update(&state, &line);
            }
        }
    };
    let took = progress::elapsed(started.elapsed());
    match said {
        Ok(said) => {
            shown.say(&format!("{what}: {} loaded in {took}", human(total)));
            Ok(said)
        }
        Err(e) => {
            shown.clear();
            Err(anyhow::Error::msg(e))
        }
    }
}

fn human(bytes: u64) -> String {
    crate::output::answers::human_bytes(bytes)
}
