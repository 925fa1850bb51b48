//! How commands reach a running agent: the local socket, `--peer`, or the peers recorded in
//! the cluster dir; one request, its answer printed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use starling_node::api::Client;
use starling_protocol::wire::{ApiRequest, ApiResponse};

use crate::output::{self, Format};

/// The data dir of the local agent: `--data-dir`, else `$STARLING_DATA_DIR`, else
/// `~/.local/share/starling`.
pub fn default_data_dir() -> PathBuf {
    // Set but empty (`STARLING_DATA_DIR= starling ...`, an unset shell variable in a unit
    // file) means unset: an empty path would name the working directory.
    if let Some(dir) = std::env::var_os("STARLING_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/starling")
}

/// Which agent a command talks to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The local agent's data dir.
    pub data_dir: PathBuf,
    /// A peer's base address (`--peer`), reached over QUIC.
    pub peer: Option<String>,
    /// The operator's certificate dir.
    pub cluster_dir: PathBuf,
}

impl Target {
    /// `--peer` first (QUIC, with the user certificate); else the local agent's socket when
    /// it is there; else the peers recorded in the cluster dir.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let client_dir = starling_node::cluster::ClientDir {
            dir: self.cluster_dir.clone(),
        };
        let peers = match &self.peer {
            Some(peer) => vec![peer.clone()],
            None if starling_node::api::socket_path(&self.data_dir).exists()
                || !client_dir.exists() =>
            {
                return Ok(Client::connect(&self.data_dir).await?);
            }
            None => client_dir.peers(),
        };
        if !client_dir.exists() {
            anyhow::bail!(
                "no operator certificate in {} (run `starling user add NAME --cluster-dir {0}` on a member, or pass --cluster-dir)",
                self.cluster_dir.display()
            );
        }
        let tls = client_dir.tls()?;
        let mut failures = Vec::new();
        for peer in &peers {
            let addr = starling_node::cluster::quic_addr(starling_node::cluster::resolve(peer)?);
            match Client::connect_quic(addr, &tls).await {
                Ok(client) => return Ok(client),
                Err(e) => failures.push(format!("{peer}: {e}")),
            }
        }
        anyhow::bail!("no peer answered: {}", failures.join("; "))
    }
}

/// A runtime for one command's calls.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sends one request and returns the answer.
pub fn ask(target: &Target, request: &ApiRequest) -> anyhow::Result<ApiResponse> {
    runtime()?.block_on(async {
        let mut client = target.connect().await?;
        let answer = client.call(request).await;
        client.close().await;
        anyhow::Ok(answer?)
    })
}

/// Sends one request and prints the answer. Exit code 1 on an error answer.
pub fn call(target: &Target, request: ApiRequest, format: Format) -> anyhow::Result<ExitCode> {
    Ok(output::print(&ask(target, &request)?, format))
}

/// `starling token create --peer X`: the peer makes the token (it refuses node
/// certificates). Prints the bare token, as the local `token create` does, so scripts can
/// use either.
pub fn token_create(target: &Target) -> anyhow::Result<ExitCode> {
    match ask(target, &ApiRequest::TokenCreate)? {
        ApiResponse::Token(token) => {
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        other => Ok(output::print(&other, Format::Table)),
    }
}

/// Streams an answer of log chunks to stdout until its last chunk.
pub fn stream_logs(target: &Target, request: &ApiRequest) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = target.connect().await?;
        let mut response = client.call(request).await?;
        loop {
            match response {
                ApiResponse::LogChunk { lines, end } => {
                    for line in lines {
                        println!("{line}");
                    }
                    if end {
                        client.close().await;
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                other => return Ok(output::print(&other, Format::Table)),
            }
            response = client.next().await?;
        }
    })
}
