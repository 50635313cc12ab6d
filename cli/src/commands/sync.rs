//! `kstack sync`: make the running kernel run the declared stack.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::ProgressBar;
use kstack_engine::host::Step;
use kstack_engine::host::exec::Observer;
use kstack_engine::host::reconcile::Synced;

use super::GlobalArgs;
use super::plan::render_plan;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{PlanOutput, SyncOutput};
use crate::ui::Ui;

/// Apply or revert livepatch modules until the kernel runs the declared stack
///
/// Verifies the declared stack completely before anything reaches the kernel
/// (signatures against the trusted keys, every SHA-256, the kernel build ID, each
/// module's vermagic). In replace mode ([sync] mode, the default) it then loads the
/// stack's cumulative module, which replaces whatever kstack patches run in one
/// transition, and unloads the replaced modules. In stack mode (and for a stack
/// without a cumulative module) it keeps the longest common prefix of the applied and
/// the declared patches, reverts the rest of the applied ones newest first and applies
/// the rest of the declared ones in order, waiting for each livepatch transition. If a
/// step fails or its transition does not finish within the configured timeout, the
/// transition is reversed, the completed steps are undone and the host stays on its
/// previous generation. A successful sync that changes something records a new
/// generation; a second sync does nothing. Livepatches kstack did not load are never
/// touched. Only one kstack changes the kernel at a time (exit 75 when busy).
///
/// Trust beyond signatures: the stack's head must satisfy [trust] threshold and not
/// be signed only by [trust] revoked keys; it must be within its signed validity
/// window (exit 65 when it expired, or a warning with [trust] expired = "warn"); and
/// it must be the commit this host runs or a descendant of it (exit 65, naming both
/// commits): going back is `kstack rollback`, a [stack] commit pin, or
/// --allow-downgrade. The config, store, state directory and signing key must be
/// writable by root alone (exit 65 naming the path).
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Verify and print the plan, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Bound on each transition [default: the config's, else 60s]
    #[arg(long, value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Running at boot (the systemd unit): do nothing if the kernel command line
    /// has kstack.sync=0
    #[arg(long)]
    pub boot: bool,
    /// Sync the declared head even if it does not descend from the commit this host
    /// runs (going back in the stack's history on purpose)
    #[arg(long)]
    pub allow_downgrade: bool,
}

/// The kernel command-line switch that turns boot-time sync off.
pub const BOOT_OFF_SWITCH: &str = "kstack.sync=0";

pub fn cmd_sync(ui: &Ui, global: &GlobalArgs, args: SyncArgs) -> Result<ExitCode, CliError> {
    if args.boot
        && std::fs::read_to_string("/proc/cmdline")
            .is_ok_and(|c| c.split_whitespace().any(|w| w == BOOT_OFF_SWITCH))
    {
        ui.status(format!(
            "sync: skipped, {BOOT_OFF_SWITCH} is on the kernel command line"
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = Context::load(global, true)?;
    ctx.check_strict_modes()?;
    let store = ctx.open_store()?;
    let mut host = ctx.host(&store)?;
    host.allow_downgrade = args.allow_downgrade;
    if args.dry_run {
        let prepared = host.plan()?;
        if ui.json() {
            ui.emit_json(&PlanOutput::from(&prepared));
        } else {
            render_plan(ui, &prepared);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = args.timeout.unwrap_or(ctx.config.sync.transition_timeout);
    let mut progress = Progress::new(ui);
    let result = host.sync(timeout, &mut progress);
    progress.bar.finish_and_clear();
    let synced = result?;
    report(ui, &synced, "sync");
    Ok(ExitCode::SUCCESS)
}

/// Prints what a sync or rollback did.
pub fn report(ui: &Ui, synced: &Synced, verb: &str) {
    let kernel_time: Duration = synced.timings.iter().map(|t| t.elapsed).sum();
    if ui.json() {
        ui.emit_json(&SyncOutput::from(synced));
        return;
    }
    for t in &synced.timings {
        let (sign, what) = match &t.step {
            Step::Apply { .. } => ("+", "applied"),
            Step::Revert { .. } => ("-", "reverted"),
            Step::Unload { .. } => ("-", "unloaded"),
            Step::Replace { .. } => ("~", "replaced the applied patches"),
        };
        ui.line(format!(
            "  {sign} {}  {what} in {:.0} ms",
            t.step.module(),
            t.elapsed.as_secs_f64() * 1e3
        ));
        if let Step::Replace { replaces, .. } = &t.step {
            for old in replaces {
                ui.line(format!("  - {old}  replaced and unloaded"));
            }
        }
        for left in &t.left_loaded {
            ui.status(format!(
                "warning: replaced module {left} stays loaded (disabled); the next sync unloads it"
            ));
        }
    }
    let plan = &synced.prepared.plan;
    let mode = match &plan.fallback {
        None => plan.mode.as_str().to_owned(),
        Some(why) => format!("stack mode: {why}"),
    };
    match synced.generation {
        Some(n) => ui.line(format!(
            "{verb}: now on generation {n} ({} patches, {mode}; kernel {:.0} ms, kstack {:.0} ms)",
            synced.prepared.desired.modules.len(),
            kernel_time.as_secs_f64() * 1e3,
            synced.overhead.as_secs_f64() * 1e3
        )),
        None => ui.line(format!(
            "{verb}: nothing to do, the kernel runs the declared stack"
        )),
    }
    for warning in &synced.prepared.desired.warnings {
        ui.status(format!("warning: {warning}"));
    }
    let proof = &synced.prepared.proof;
    if proof.matched > 0 {
        ui.line(format!(
            "run-pre: {} replaced function(s) matched the running code before loading ({:.0} ms)",
            proof.matched,
            proof.elapsed.as_secs_f64() * 1e3
        ));
    }
    for patch in &proof.unproven {
        ui.status(format!(
            "note: patch {patch} has no before images (a prebuilt module): not proven by run-pre"
        ));
    }
    for module in &synced.prepared.foreign {
        ui.status(format!(
            "note: livepatch {module} is not kstack's; left alone"
        ));
    }
}

/// A progress bar over the plan's steps.
pub struct Progress {
    pub bar: ProgressBar,
    ui_quiet: bool,
}

impl Progress {
    pub fn new(ui: &Ui) -> Progress {
        Progress {
            bar: ui.steps(0, "verifying and planning"),
            ui_quiet: ui.json(),
        }
    }
}

impl Observer for Progress {
    fn step_started(&mut self, index: usize, total: usize, step: &Step) {
        self.bar.set_length(total as u64);
        self.bar.set_position(index as u64);
        let verb = match step {
            Step::Apply { .. } => "applying",
            Step::Revert { .. } => "reverting",
            Step::Unload { .. } => "unloading",
            Step::Replace { .. } => "replacing with",
        };
        self.bar.set_message(format!("{verb} {}", step.module()));
    }

    fn step_finished(&mut self, index: usize, _step: &Step, _elapsed: Duration) {
        self.bar.set_position(index as u64 + 1);
    }

    fn undoing(&mut self, step: &Step) {
        if !self.ui_quiet {
            self.bar
                .println(format!("undoing: {} {}", describe(step), step.module()));
        }
    }
}

fn describe(step: &Step) -> &'static str {
    match step {
        Step::Apply { .. } => "apply of",
        Step::Revert { .. } => "revert of",
        Step::Unload { .. } => "unload of",
        Step::Replace { .. } => "replace with",
    }
}
