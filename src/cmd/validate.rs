//! `starling validate`: check spec files and list every problem with its field path.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use crate::output::Format;

#[derive(Serialize)]
struct FileReport {
    file: String,
    ok: bool,
    name: Option<String>,
    errors: Vec<String>,
}

/// `starling validate`.
#[derive(clap::Args)]
pub struct ValidateArgs {
    /// Spec files (`.toml` or `.json`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// `starling validate FILE...`.
pub fn run(args: ValidateArgs, format: Format) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for path in &args.files {
        let report = match super::load_spec(path) {
            Err(io) => FileReport {
                file: path.display().to_string(),
                ok: false,
                name: None,
                errors: vec![format!("{io:#}")],
            },
            Ok(Ok(spec)) => FileReport {
                file: path.display().to_string(),
                ok: true,
                name: Some(spec.name.to_string()),
                errors: vec![],
            },
            Ok(Err(errors)) => FileReport {
                file: path.display().to_string(),
                ok: false,
                name: None,
                errors: errors.errors().iter().map(|e| e.to_string()).collect(),
            },
        };
        reports.push(report);
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Format::Table => {
            for r in &reports {
                if r.ok {
                    println!(
                        "OK    {} ({})",
                        r.file,
                        r.name.as_deref().unwrap_or_default()
                    );
                } else {
                    let n = r.errors.len();
                    println!(
                        "FAIL  {}: {n} problem{}",
                        r.file,
                        if n == 1 { "" } else { "s" }
                    );
                    for e in &r.errors {
                        println!("      {e}");
                    }
                }
            }
        }
    }
    Ok(if reports.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
