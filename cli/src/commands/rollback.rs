//! `kstack rollback`: return to an earlier generation.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;
use super::sync::{Progress, report};
use crate::context::Context;
use crate::error::CliError;
use crate::ui::Ui;

/// Return the kernel to an earlier generation's stack
///
/// Like NixOS's rollback: without --to, goes back to the generation before the current
/// one; with --to N, to generation N (see `kstack generations`). The generation's
/// stack commit is verified again against today's trusted keys, then synced exactly
/// as `kstack sync` would, and that generation becomes current (an expired validity
/// window is a warning here, not a refusal: going back is explicit). The next
/// `kstack sync` returns to what the config declares, which must descend from the
/// newest commit a sync made current. Like sync, refuses a config, store, state
/// directory or signing key that a user other than root could change.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The generation to return to
    #[arg(long, value_name = "N")]
    pub to: Option<u64>,
    /// Bound on each transition [default: the config's, else 60s]
    #[arg(long, value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
}

pub fn cmd_rollback(
    ui: &Ui,
    global: &GlobalArgs,
    args: RollbackArgs,
) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, true)?;
    ctx.check_strict_modes()?;
    let store = ctx.open_store()?;
    let host = ctx.host(&store)?;
    let timeout = args.timeout.unwrap_or(ctx.config.sync.transition_timeout);
    let mut progress = Progress::new(ui);
    let result = host.rollback(args.to, timeout, &mut progress);
    progress.bar.finish_and_clear();
    report(ui, &result?, "rollback");
    Ok(ExitCode::SUCCESS)
}
