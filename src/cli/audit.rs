//! `mcp-coordinator audit verify|export`: check the chain and export events, on the same
//! database a running server uses.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every hash and check every signature; exit 1 if anything was tampered with
    #[command(
        long_about = "Recompute the SHA-256 chain of every audit event, check sequence \
numbers and links, and check every Ed25519 head signature against the key that signed it: \
this coordinator's own key (in --data-dir), or a key the chain introduced, with an \
audit.key_added event, at or before the head it signs. Each coordinator sharing the database \
introduces its key before the first head it signs; a signature by any other key, or by a key \
introduced only after the head, is reported. Prints a summary and the keys, or the full report \
with --json. Exits 0 when the chain is intact, 1 when it \
is not (the first bad event is named), 2 on error. Safe while servers are running."
    )]
    Verify {
        /// Print the full report as JSON instead of a summary
        #[arg(long)]
        json: bool,
    },
    /// Write every audit event, oldest first, one JSON object per line
    #[command(
        long_about = "Write every audit event, oldest first, in the given format. \
Details are already redacted. Safe while servers are running: the export is one consistent \
snapshot. With --output the file is written under a temporary name and renamed into place, so \
it is never left half-written."
    )]
    Export {
        /// Output format
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Write to this file instead of stdout
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line (JSON Lines)
    Jsonl,
}

pub fn run(global: &GlobalArgs, cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    let (_settings, audit) = super::open_with(global, super::Access::ReadExisting)?;
    match cmd {
        AuditCommand::Verify { json } => {
            let report = audit.verify()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.ok {
                println!("audit chain intact: {}", chain_figures(&report, ""));
                print_keys(&report.signatures.keys);
            } else {
                println!(
                    "audit chain TAMPERED: first bad event {}: {}",
                    report.first_bad_seq.unwrap_or(0),
                    report.first_bad_reason.as_deref().unwrap_or("")
                );
                print_problems(&report);
                print_keys(&report.signatures.keys);
            }
            if !json {
                for w in &report.warnings {
                    eprintln!("warning: {w}");
                }
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Export { format, output } => {
            let ExportFormat::Jsonl = format;
            match output {
                None => {
                    let stdout = std::io::stdout();
                    let mut out = BufWriter::new(stdout.lock());
                    export_jsonl(&audit, &mut out)?;
                    out.flush()?;
                }
                Some(path) => {
                    let tmp = path.with_extension("partial");
                    let file = std::fs::File::create(&tmp)
                        .with_context(|| format!("cannot create {}", tmp.display()))?;
                    let mut out = BufWriter::new(file);
                    let written = export_jsonl(&audit, &mut out).and_then(|n| {
                        out.flush()?;
                        out.get_ref().sync_all()?;
                        Ok(n)
                    });
                    match written {
                        Ok(n) => {
                            std::fs::rename(&tmp, &path)
                                .with_context(|| format!("cannot write {}", path.display()))?;
                            eprintln!("exported {n} events to {}", path.display());
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(&tmp);
                            return Err(e);
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One line per key: where the chain introduced it and what it signed.
/// The problems a verification found, one a line, and how many more it did not list.
pub(super) fn print_problems(report: &mcp_coordinator::audit::VerifyReport) {
    for p in &report.problems {
        println!("  event {}: {:?}: {}", p.seq, p.kind, p.message);
    }
    if report.problem_count > report.problems.len() as u64 {
        println!(
            "  ... and {} more",
            report.problem_count - report.problems.len() as u64
        );
    }
}

/// What a verification checked and found signed, as `audit verify` and `store copy` say it;
/// `valid_by` follows "signatures valid" (which keys, when the caller names them).
pub(super) fn chain_figures(
    report: &mcp_coordinator::audit::VerifyReport,
    valid_by: &str,
) -> String {
    format!(
        "{} events checked in {} ms; {} of {} signatures valid{valid_by}, newest signed event {}, {} unsigned after it",
        report.events_checked,
        report.duration_ms,
        report.signatures.valid,
        report.signatures.total,
        report
            .signatures
            .last_signed_seq
            .map_or("none".into(), |s| s.to_string()),
        report.signatures.unsigned_tail,
    )
}

fn print_keys(keys: &[mcp_coordinator::audit::KeyStatus]) {
    println!("signing keys:");
    for k in keys {
        let introduced = k.introduced_seq.map_or_else(
            || "never introduced in the chain".to_string(),
            |s| format!("introduced at event {s}"),
        );
        let newest = k
            .last_signed_seq
            .map_or(String::new(), |s| format!(", newest at event {s}"));
        let invalid = if k.invalid > 0 {
            format!(", {} invalid", k.invalid)
        } else {
            String::new()
        };
        let own = if k.this_coordinator {
            " (this coordinator)"
        } else {
            ""
        };
        println!(
            "  {}  {introduced}; {} valid signatures{newest}{invalid}{own}",
            k.public_key, k.valid
        );
    }
}

fn export_jsonl(
    audit: &mcp_coordinator::audit::AuditLog,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    Ok(audit.export_jsonl(&mcp_coordinator::audit::Query::default(), out)?)
}
