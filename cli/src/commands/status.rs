//! `kstack status`: what the kernel runs, and how it compares to kstack's record.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::json::StatusOutput;
use crate::ui::Ui;

/// Show the running kernel, its generation, applied patches, drift and taint
///
/// Reads the kernel's own view (/sys/kernel/livepatch, /proc/modules,
/// /proc/sys/kernel/tainted) and compares it with the state file: a difference is
/// reported as drift. Livepatches that kstack did not load are listed as foreign. The
/// current generation's commit is shown with its signers and its signed validity
/// window (EXPIRED when it has run out: the stack was not renewed, or the store
/// stopped receiving newer commits).
#[derive(Debug, Args)]
pub struct StatusArgs {}

pub fn cmd_status(ui: &Ui, global: &GlobalArgs, _args: StatusArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let host = ctx.host(&store)?;
    let status = host.status()?;
    if ui.json() {
        ui.emit_json(&StatusOutput::from(&status));
        return Ok(ExitCode::SUCCESS);
    }
    ui.line(format!("kernel:     {}", status.release));
    ui.line(format!("build ID:   {}", status.build_id));
    ui.line(format!(
        "livepatch:  {}",
        if status.livepatch {
            "supported"
        } else {
            "NOT supported by this kernel"
        }
    ));
    match &status.generation {
        Some(g) => ui.line(format!(
            "generation: {} ({} {}, {})",
            g.number,
            if g.stack.is_empty() {
                "no stack"
            } else {
                &g.stack
            },
            &g.commit[..g.commit.len().min(12)],
            g.created_at
        )),
        None => ui.line("generation: none"),
    }
    if let Some(window) = &status.validity {
        ui.line(format!(
            "validity:   {}",
            super::plan::describe_window(window)
        ));
    }
    if !status.signers.is_empty() {
        let signers: Vec<String> = status.signers.iter().map(ToString::to_string).collect();
        ui.line(format!("signed by:  {}", signers.join(", ")));
    }
    ui.line(format!("applied:    {}", status.applied.len()));
    for p in &status.applied {
        let state = match (p.enabled, p.transition) {
            (true, false) => "enabled",
            (true, true) => "enabling (transition)",
            (false, true) => "disabling (transition)",
            (false, false) => "disabled",
        };
        let name = p.patch.as_deref().unwrap_or("?");
        ui.line(format!("  {} [{state}] patch {name}", p.module));
        let waiting: Vec<&str> = p
            .objects
            .iter()
            .filter(|o| !o.patched)
            .map(|o| o.name.as_str())
            .collect();
        if !waiting.is_empty() {
            ui.line(format!(
                "      waiting for {} (patched when loaded)",
                waiting.join(", ")
            ));
        }
        for f in &p.functions {
            ui.line(format!("      {f}"));
        }
    }
    for f in &status.foreign {
        ui.line(format!("foreign:    {f} (not kstack's; never touched)"));
    }
    for d in &status.drift {
        ui.line(format!("drift:      {d}"));
    }
    ui.line(format!(
        "taint:      {} {}",
        status.taint,
        if status.taint_flags.is_empty() {
            "(none)".to_owned()
        } else {
            status.taint_flags.clone()
        }
    ));
    Ok(ExitCode::SUCCESS)
}
