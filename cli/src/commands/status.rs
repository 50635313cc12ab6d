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
/// reported as drift. Livepatches that kstack did not load are listed as foreign.
/// Also shows whether the kernel enforces module signatures (module.sig_enforce,
/// lockdown, UEFI Secure Boot) and the keys it trusts for them.
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
    let signing = &status.module_signing;
    let reasons = signing.enforcement.reasons();
    ui.line(format!(
        "signatures: {}",
        if signing.enforced {
            format!("enforced ({})", reasons.join(", "))
        } else {
            let secure_boot = match signing.enforcement.secure_boot {
                Some(true) => ", UEFI Secure Boot on",
                Some(false) => ", UEFI Secure Boot off",
                None => "",
            };
            format!("not enforced (unsigned modules load and taint the kernel){secure_boot}")
        }
    ));
    match (&signing.trusted_keys, &signing.trusted_keys_error) {
        (Some(keys), _) if keys.is_empty() => ui.line("  trusted keys: none"),
        (Some(keys), _) => {
            for k in keys {
                ui.line(format!("  trusted:  {} ({})", k.description, k.keyring));
            }
        }
        (None, Some(why)) => ui.line(format!("  trusted keys unknown: {why}")),
        (None, None) => {}
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
