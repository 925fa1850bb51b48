//! `starling`: the command-line interface to a Starling fleet.
//!
//! Each subcommand lives in `cmd/`; this file holds the argument definitions and dispatch.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Parser)]
#[command(
    name = "starling",
    version,
    about = "Masterless container scheduler for edge fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workload specs (TOML or JSON) and list every problem with its field path.
    Validate {
        /// Spec files (`.toml` or `.json`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show where a simulated fleet would place workloads (the built-in examples by default).
    Plan {
        /// Spec files; without any, the example specs built into this binary.
        files: Vec<PathBuf>,
        /// Size of the simulated fleet.
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        /// Nodes to mark as down (e.g. `--down node-03`), to see what moves where.
        #[arg(long)]
        down: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files, output } => cmd::validate::run(&files, output),
        Command::Plan {
            files,
            nodes,
            down,
            output,
        } => cmd::plan::run(&files, nodes, &down, output),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
