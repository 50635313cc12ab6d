//! `kstack plan`: what `kstack sync` would do, terraform-style.

use std::process::ExitCode;

use clap::Args;
use kstack_engine::host::Step;
use kstack_engine::host::reconcile::Prepared;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::{CliError, EXIT_CHANGES};
use crate::json::PlanOutput;
use crate::ui::Ui;

/// Show what `kstack sync` would change, without changing anything
///
/// Identifies the running kernel, verifies the stack the config declares (signatures,
/// digests, build ID, vermagic), reads the applied livepatches and prints the plan.
/// In replace mode ([sync] mode, the default): the stack's cumulative module, which
/// replaces whatever runs in one transition. In stack mode (or for a stack without a
/// cumulative module, which the plan says): the patches kept, reverted (newest first)
/// and applied (in stack order).
///
/// Exit status: 0 when the kernel already runs the declared stack, 2 when there are
/// changes, 1 (or another error code) when the plan cannot be made.
///
/// The same trust checks as sync refuse the plan (exit 65): a head below [trust]
/// threshold, signed only by revoked keys, expired, or not descending from the commit
/// the host runs.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan for a declared head that does not descend from the commit this host runs
    /// (what `kstack sync --allow-downgrade` would do)
    #[arg(long)]
    pub allow_downgrade: bool,
}

pub fn cmd_plan(ui: &Ui, global: &GlobalArgs, args: PlanArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, true)?;
    let store = ctx.open_store()?;
    let mut host = ctx.host(&store)?;
    host.allow_downgrade = args.allow_downgrade;
    let prepared = host.plan()?;
    if ui.json() {
        ui.emit_json(&PlanOutput::from(&prepared));
    } else {
        render_plan(ui, &prepared);
    }
    Ok(if prepared.plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CHANGES)
    })
}

/// A window for people: `signed ..., expires ... (in 12 days)` or `(EXPIRED 3 days
/// ago)`.
pub fn describe_window(window: &kstack_store::validity::Validity) -> String {
    use kstack_store::validity::{Freshness, Timestamp, rough};
    let when = match window.freshness(Timestamp::now()) {
        Freshness::Valid { left } => format!("in {}", rough(left)),
        Freshness::Expired { ago } => format!("EXPIRED {} ago", rough(ago)),
    };
    format!("{window} ({when})")
}

/// The plan for people.
pub fn render_plan(ui: &Ui, p: &Prepared) {
    let stack = match &p.desired.stack {
        Some(s) => format!(
            "stack {} @ {} ({} patches)",
            s.stack.name,
            s.commit.to_hex_with_len(12),
            s.patches.len()
        ),
        None => "no stack declared".to_owned(),
    };
    ui.line(format!(
        "kernel {} (build ID {}), {stack}",
        p.identity.release,
        p.identity.build_id.short()
    ));
    match &p.plan.fallback {
        None => ui.line(format!("mode {}", p.plan.mode.as_str())),
        Some(why) => ui.line(format!("mode stack (replace mode, but {why})")),
    }
    let holds = p
        .desired
        .stack
        .as_ref()
        .map(|s| {
            s.patches
                .iter()
                .map(|x| x.entry.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let name_of = |module: &str| {
        if p.desired.cumulative.as_deref() == Some(module) {
            return format!(" (cumulative: {holds})");
        }
        p.desired
            .stack
            .as_ref()
            .and_then(|s| s.patches.iter().find(|x| x.manifest.module_name == module))
            .map(|x| format!(" (patch {})", x.manifest.name))
            .unwrap_or_default()
    };
    for module in &p.plan.keep {
        ui.line(format!("  = {module}{}", name_of(module)));
    }
    let (mut apply, mut revert) = (0, 0);
    for step in &p.plan.steps {
        match step {
            Step::Revert { module } => {
                revert += 1;
                ui.line(format!("  - {module}  revert"));
            }
            Step::Unload { module } => {
                revert += 1;
                ui.line(format!("  - {module}  unload (already disabled)"));
            }
            Step::Apply { module, .. } => {
                apply += 1;
                ui.line(format!("  + {module}  apply{}", name_of(module)));
            }
            Step::Replace { module, replaces } => {
                apply += 1;
                revert += replaces.len();
                ui.line(format!(
                    "  ~ {module}  replace{}, one transition",
                    name_of(module)
                ));
                for old in replaces {
                    ui.line(format!("  - {old}  replaced, then unloaded"));
                }
            }
        }
    }
    for module in &p.foreign {
        ui.line(format!("  ! {module}  not kstack's: left alone"));
    }
    if p.proof.matched > 0 {
        ui.line(format!(
            "Run-pre: the {} function(s) to replace match the running code ({:.0} ms).",
            p.proof.matched,
            p.proof.elapsed.as_secs_f64() * 1e3
        ));
    }
    for patch in &p.proof.unproven {
        ui.line(format!(
            "Run-pre: patch {patch} has no before images (a prebuilt module): not proven"
        ));
    }
    if let Some(window) = p.desired.stack.as_ref().and_then(|s| s.stack.validity) {
        ui.line(format!("Validity: {}", describe_window(&window)));
    }
    for warning in &p.desired.warnings {
        ui.line(format!("Warning: {warning}"));
    }
    let enforced = p.signatures.enforcement.enforced();
    for m in &p.signatures.modules {
        ui.line(format!("Signature: {} {}", m.module, m.describe()));
    }
    if enforced && !p.signatures.modules.is_empty() {
        ui.line(format!(
            "Signature: the kernel enforces module signatures ({})",
            p.signatures.enforcement.reasons().join(", ")
        ));
    } else if p
        .signatures
        .modules
        .iter()
        .any(|m| m.verdict == kstack_engine::host::signatures::Verdict::Unsigned)
    {
        ui.line("Signature: the kernel does not enforce signatures: unsigned modules load and taint it (E)");
    }
    if p.plan.is_empty() {
        ui.line("Nothing to do: the kernel runs the declared stack.");
    } else {
        ui.line(format!(
            "Plan: {apply} to apply, {revert} to revert, {} kept.",
            p.plan.keep.len()
        ));
    }
}
