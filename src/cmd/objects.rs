//! `starling secret|config set|get|list|delete`.
//!
//! A secret is sealed here, on the operator's machine: the CLI asks a peer which nodes may
//! open it (and their public keys), encrypts the entries under a fresh data key, seals that
//! key to each of them, and sends only ciphertext and seals. No peer, log or file ever holds
//! the plaintext; only a node that runs a replica using the secret opens it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use starling_node::secrets::keys::random;
use starling_protocol::WorkloadName;
use starling_protocol::objects::seal::{Draw, seal_secret, seal_to};
use starling_protocol::objects::{ObjectKey, ObjectKind, ObjectVersion, check_entries};
use starling_protocol::wire::{ApiRequest, ApiResponse};

use super::client::{Target, ask, call};
use crate::output::{self, Format};

/// `starling secret ...` / `starling config ...`.
#[derive(Subcommand)]
pub enum ObjectCommand {
    /// Write a new version (the workloads that use it roll onto it, or reload its files).
    Set(SetArgs),
    /// Show one: version, size, entry names, who wrote it, who uses it; never the value.
    Get {
        /// Its name.
        name: String,
    },
    /// List them (metadata only).
    List,
    /// Delete it. Running replicas keep their files; new ones wait for it.
    Delete {
        /// Its name.
        name: String,
    },
}

/// Where the entries of `set` come from (any mix; each entry name once).
#[derive(Args)]
pub struct SetArgs {
    /// Its name (a DNS label).
    pub name: String,
    /// An entry from a file; the entry is named after the file (or `KEY=PATH`).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub from_file: Vec<String>,
    /// An entry given on the command line (it stays in your shell history: prefer a file).
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub from_literal: Vec<String>,
    /// Entries from a file of `KEY=VALUE` lines (`#` comments and blank lines skipped).
    #[arg(long = "from-env-file", value_name = "PATH")]
    pub from_env_file: Vec<PathBuf>,
}

/// Runs `starling secret|config ...`.
pub fn main(
    target: &Target,
    kind: ObjectKind,
    what: ObjectCommand,
    format: Format,
) -> anyhow::Result<ExitCode> {
    match what {
        ObjectCommand::Set(args) => set(target, kind, args, format),
        ObjectCommand::List => call(target, ApiRequest::ObjectList { kind }, format),
        ObjectCommand::Get { name } => {
            let name = label(kind, &name)?;
            match ask(target, &ApiRequest::ObjectList { kind })? {
                ApiResponse::Objects(rows) => {
                    let rows: Vec<_> = rows.into_iter().filter(|r| r.key.name == name).collect();
                    if rows.is_empty() {
                        anyhow::bail!("no {kind} named {name}");
                    }
                    Ok(output::print(&ApiResponse::Objects(rows), format))
                }
                other => Ok(output::print(&other, format)),
            }
        }
        ObjectCommand::Delete { name } => {
            let key = ObjectKey {
                kind,
                name: label(kind, &name)?,
            };
            call(target, ApiRequest::ObjectDelete { key }, format)
        }
    }
}

fn label(kind: ObjectKind, name: &str) -> anyhow::Result<WorkloadName> {
    WorkloadName::new(name).map_err(|e| anyhow::anyhow!("{kind} name {name:?}: {e}"))
}

fn set(
    target: &Target,
    kind: ObjectKind,
    args: SetArgs,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let name = label(kind, &args.name)?;
    let entries = entries(&args)?;
    check_entries(&entries).map_err(|e| anyhow::anyhow!("{kind} {name} {e}; nothing was sent"))?;
    let key = ObjectKey {
        kind,
        name: name.clone(),
    };
    let id = u128::from_le_bytes(random::<16>().map_err(anyhow::Error::msg)?);
    let (version, seals) = match kind {
        ObjectKind::Config => (
            ObjectVersion::clear(id, entries).map_err(anyhow::Error::msg)?,
            BTreeMap::new(),
        ),
        ObjectKind::Secret => {
            let recipients = match ask(target, &ApiRequest::SecretRecipients { name })? {
                ApiResponse::Recipients(r) => r,
                other => return Ok(output::print(&other, format)),
            };
            let draw = Draw {
                id,
                data_key: random::<32>().map_err(anyhow::Error::msg)?,
                nonce: random::<24>().map_err(anyhow::Error::msg)?,
            };
            let (version, data_key) = seal_secret(&key, entries, draw)?;
            let mut seals = BTreeMap::new();
            for (node, public) in recipients {
                let ephemeral = random::<32>().map_err(anyhow::Error::msg)?;
                let seal = seal_to(&data_key, &key, id, &node, &public, ephemeral)?;
                seals.insert(node, seal);
            }
            (version, seals)
        }
    };
    call(
        target,
        ApiRequest::ObjectSet {
            key,
            version: Box::new(version),
            seals,
        },
        format,
    )
}

/// The entries `set` was given, in the order given.
fn entries(args: &SetArgs) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for spec in &args.from_file {
        let (name, path) = match spec.split_once('=') {
            Some((k, p)) => (k.to_string(), PathBuf::from(p)),
            None => {
                let path = PathBuf::from(spec);
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_string)
                    .with_context(|| {
                        format!("--from-file {spec}: no file name to name the entry")
                    })?;
                (name, path)
            }
        };
        let value = read_bounded(&path)?;
        out.push((name, value));
    }
    for literal in &args.from_literal {
        let (k, v) = literal
            .split_once('=')
            .with_context(|| format!("--from-literal {literal:?}: expected KEY=VALUE"))?;
        out.push((k.to_string(), v.as_bytes().to_vec()));
    }
    for path in &args.from_env_file {
        let text = String::from_utf8(read_bounded(path)?)
            .with_context(|| format!("--from-env-file {}: not UTF-8 text", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').with_context(|| {
                format!(
                    "--from-env-file {} line {}: expected KEY=VALUE",
                    path.display(),
                    n + 1
                )
            })?;
            out.push((k.trim().to_string(), v.as_bytes().to_vec()));
        }
    }
    if out.is_empty() {
        anyhow::bail!("give the value with --from-file, --from-literal or --from-env-file");
    }
    Ok(out)
}

/// Reads a file, refusing one over the object limit before reading it all.
fn read_bounded(path: &Path) -> anyhow::Result<Vec<u8>> {
    let max = starling_protocol::objects::OBJECT_BYTES_MAX as u64;
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > max {
        anyhow::bail!(
            "{} is {len} bytes, over the limit of {max} bytes (1 MiB) for a secret or config; nothing was sent",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
