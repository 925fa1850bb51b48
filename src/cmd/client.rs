//! Commands that talk to a running agent: apply, delete, scale, rollback, get, describe,
//! status, logs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use starling_node::api::Client;
use starling_protocol::WorkloadName;
use starling_protocol::wire::{ApiRequest, ApiResponse, SpecFormat, SpecText};

use crate::output::{Format, Table};

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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sends one request and prints the answer. Exit code 1 on an error answer.
pub fn call(target: &Target, request: ApiRequest, format: Format) -> anyhow::Result<ExitCode> {
    let response = runtime()?.block_on(async {
        let mut client = target.connect().await?;
        anyhow::Ok(client.call(&request).await?)
    })?;
    Ok(print_response(response, format))
}

/// `starling token create --peer X`: the peer makes the token (it refuses node
/// certificates). Prints the bare token, as the local `token create` does, so scripts can
/// use either.
pub fn token_create(target: &Target) -> anyhow::Result<ExitCode> {
    let response = runtime()?.block_on(async {
        let mut client = target.connect().await?;
        anyhow::Ok(client.call(&ApiRequest::TokenCreate).await?)
    })?;
    if let ApiResponse::Table { rows, .. } = &response
        && let Some(token) = rows.first().and_then(|row| row.first())
    {
        println!("{token}");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(print_response(response, Format::Table))
}

/// `starling lease acquire NAME --ttl T --wait W`.
pub fn lease_acquire(
    target: &Target,
    name: starling_protocol::WorkloadName,
    ttl: &str,
    wait: &str,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let ttl = starling_protocol::quantity::parse_duration_ms(ttl)
        .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
    let wait = starling_protocol::quantity::parse_duration_ms(wait)
        .map_err(|e| anyhow::anyhow!("--wait: {e}"))?;
    call(
        target,
        ApiRequest::LeaseAcquire {
            name,
            duration_ms: ttl,
            wait_ms: wait,
        },
        format,
    )
}

/// `starling voters [set NODE...] [--force]`.
pub fn voters(
    target: &Target,
    set: Option<Vec<String>>,
    force: bool,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let set = set
        .map(|nodes| {
            nodes
                .into_iter()
                .map(|n| {
                    starling_protocol::NodeId::new(&n).map_err(|e| anyhow::anyhow!("{n:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    call(target, ApiRequest::Voters { set, force }, format)
}

pub fn apply(
    target: &Target,
    files: &[PathBuf],
    ack_replicas: u32,
    if_revision: Option<String>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if let Some(wanted) = &if_revision {
        if files.len() != 1 {
            anyhow::bail!(
                "--if-revision {wanted}: give exactly one spec file (got {})",
                files.len()
            );
        }
        wanted
            .parse::<starling_protocol::desired::RevisionMatch>()
            .map_err(|e| anyhow::anyhow!("--if-revision: {e}"))?;
    }
    let mut code = ExitCode::SUCCESS;
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let spec_format = if path.extension().is_some_and(|e| e == "json") {
            SpecFormat::Json
        } else {
            SpecFormat::Toml
        };
        // Validate here first, so mistakes are listed without a round trip; the agent checks again.
        if let Err(errors) = super::parse_spec(path, &text) {
            println!(
                "{}: the spec has {} problem(s); nothing was sent",
                path.display(),
                errors.errors().len()
            );
            for e in errors.errors() {
                println!("  {e}");
            }
            code = ExitCode::FAILURE;
            continue;
        }
        let spec = SpecText {
            format: spec_format,
            text,
        };
        let request = match &if_revision {
            Some(wanted) => ApiRequest::ApplyIf {
                spec,
                ack_replicas,
                if_revision: wanted.clone(),
            },
            None => ApiRequest::Apply { spec, ack_replicas },
        };
        if call(target, request, format)? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

pub fn scale(target: &Target, assignment: &str, format: Format) -> anyhow::Result<ExitCode> {
    let (name, count) = assignment
        .split_once('=')
        .with_context(|| format!("expected NAME=REPLICAS (e.g. web=5), got {assignment:?}"))?;
    let name = WorkloadName::new(name)
        .map_err(|e| anyhow::anyhow!("{name:?} is not a workload name: {e}"))?;
    let replicas: u32 = count
        .parse()
        .with_context(|| format!("replicas must be a whole number, got {count:?}"))?;
    call(target, ApiRequest::Scale { name, replicas }, format)
}

pub fn logs(
    target: &Target,
    name: WorkloadName,
    replica: u32,
    tail_lines: u32,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = target.connect().await?;
        let request = ApiRequest::Logs {
            name,
            replica: Some(replica),
            follow,
            tail_lines,
        };
        let mut response = client.call(&request).await?;
        loop {
            match response {
                ApiResponse::LogChunk { lines, end } => {
                    for line in lines {
                        println!("{line}");
                    }
                    if end {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                other => return Ok(print_response(other, Format::Table)),
            }
            response = client.next().await?;
        }
    })
}

/// Prints an answer for people or scripts; returns the exit code it implies.
pub fn print_response(response: ApiResponse, format: Format) -> ExitCode {
    match response {
        ApiResponse::Written {
            name,
            revision,
            changed,
            at,
        } => {
            // The number alone can name two writes made at two peers at once; the id cannot.
            let id = starling_protocol::desired::RevisionId {
                number: revision,
                at,
            };
            match (format, changed, revision) {
                (Format::Json, ..) => println!(
                    "{}",
                    serde_json::json!({
                        "name": name, "revision": revision, "revision_id": id.to_string(),
                        "changed": changed,
                    })
                ),
                (_, false, _) => println!("{name} unchanged (revision {id})"),
                (_, true, 0) => println!("{name} deleted"),
                (_, true, _) => println!("{name} written (revision {id})"),
            }
            ExitCode::SUCCESS
        }
        ApiResponse::Table {
            columns,
            rows,
            json,
        } => {
            match format {
                Format::Json => println!("{json}"),
                Format::Table => {
                    let mut table =
                        Table::new(&columns.iter().map(String::as_str).collect::<Vec<_>>());
                    for row in rows {
                        table.row(row);
                    }
                    print!("{}", table.render());
                }
            }
            ExitCode::SUCCESS
        }
        ApiResponse::LogChunk { lines, .. } => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        ApiResponse::Lease(lease) => {
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"name": lease.name.as_str(), "holder": lease.holder.as_str(), "epoch": lease.epoch, "token": lease.fencing_token})
                ),
                Format::Table => println!(
                    "{} held by {} (epoch {}, token {})",
                    lease.name, lease.holder, lease.epoch, lease.fencing_token
                ),
            }
            ExitCode::SUCCESS
        }
        ApiResponse::Error(error) => {
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"error": error.message, "fields": error.fields.iter().map(|f| f.to_string()).collect::<Vec<_>>()})
                ),
                Format::Table => {
                    eprintln!("error: {}", error.message);
                    for field in &error.fields {
                        eprintln!("  {field}");
                    }
                }
            }
            ExitCode::FAILURE
        }
    }
}
