//! Commands that talk to a running agent: apply, delete, scale, rollback, get, describe,
//! status, logs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use starling_node::api::Client;
use starling_protocol::WorkloadName;
use starling_protocol::wire::{ApiRequest, ApiResponse, SpecFormat, SpecText};

use crate::output::{Format, Table};

/// The data dir of the local agent: `--data-dir`, else `$STARLING_DATA_DIR`, else
/// `~/.local/share/starling`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STARLING_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/starling")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sends one request and prints the answer. Exit code 1 on an error answer.
pub fn call(data_dir: &Path, request: ApiRequest, format: Format) -> anyhow::Result<ExitCode> {
    let response = runtime()?.block_on(async {
        let mut client = Client::connect(data_dir).await?;
        client.call(&request).await
    })?;
    Ok(print_response(response, format))
}

pub fn apply(data_dir: &Path, files: &[PathBuf], format: Format) -> anyhow::Result<ExitCode> {
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
        let request = ApiRequest::Apply {
            spec: SpecText {
                format: spec_format,
                text,
            },
            ack_replicas: 0,
        };
        if call(data_dir, request, format)? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

pub fn scale(data_dir: &Path, assignment: &str, format: Format) -> anyhow::Result<ExitCode> {
    let (name, count) = assignment
        .split_once('=')
        .with_context(|| format!("expected NAME=REPLICAS (e.g. web=5), got {assignment:?}"))?;
    let name = WorkloadName::new(name)
        .map_err(|e| anyhow::anyhow!("{name:?} is not a workload name: {e}"))?;
    let replicas: u32 = count
        .parse()
        .with_context(|| format!("replicas must be a whole number, got {count:?}"))?;
    call(data_dir, ApiRequest::Scale { name, replicas }, format)
}

pub fn logs(
    data_dir: &Path,
    name: WorkloadName,
    replica: u32,
    tail_lines: u32,
) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut client = Client::connect(data_dir).await?;
        let request = ApiRequest::Logs {
            name,
            replica: Some(replica),
            follow: false,
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
            ..
        } => {
            match (format, changed, revision) {
                (Format::Json, ..) => println!(
                    "{}",
                    serde_json::json!({"name": name, "revision": revision, "changed": changed})
                ),
                (_, false, _) => println!("{name} unchanged (revision {revision})"),
                (_, true, 0) => println!("{name} deleted"),
                (_, true, r) => println!("{name} written (revision {r})"),
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
            println!(
                "{} held by {} (epoch {}, token {})",
                lease.name, lease.holder, lease.epoch, lease.fencing_token
            );
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
