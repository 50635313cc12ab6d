//! `kstack renew`: re-sign a stack's head with a new validity window.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::GlobalArgs;
use super::commit::{author, kernel_hint, signing_key, stack_name, valid_for, with_retry};
use crate::context::Context;
use crate::error::CliError;
use crate::json::{RenewOutput, StackJson, ValidityJson};
use crate::ui::Ui;

/// Re-sign a stack's head with a new validity window, its patches unchanged
///
/// Makes a new signed commit on top of the head with exactly its patches (the same
/// trees, modules and digests) and a window from now for --valid-for. Hosts refuse a
/// head whose window has expired (a mirror that stopped serving new commits shows as
/// an expired head), so a publisher renews each stack's head well before it expires,
/// for example weekly from a timer with a 30-day window. With [trust] threshold = N,
/// the renewed head needs N signatures like any other (`kstack approve`).
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The stack [default: the config's [stack] name]
    pub stack: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// How long the new head stays valid [default: the config's [trust] validity,
    /// else 30d]
    #[arg(long, env = "KSTACK_VALID_FOR", value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub valid_for: Option<Duration>,
    /// Why (signed with the stack) [default: "Renew: valid until <time>"]
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: Option<String>,
    /// The private key to sign with [default: the config's [trust] signing_key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

pub fn cmd_renew(ui: &Ui, global: &GlobalArgs, args: RenewArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let name = stack_name(&ctx, args.stack.as_deref())?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let hint = kernel_hint(args.kernel.as_deref())?;
    let stack = store
        .find_stack(&name, hint.as_ref())?
        .ok_or_else(|| CliError::user(format!("stack {name} does not exist")))?;
    let author = author(valid_for(&ctx, args.valid_for));
    let expires = kstack_store::validity::Timestamp::from_secs(author.time).plus(author.valid_for);
    let message = args
        .message
        .unwrap_or_else(|| format!("Renew: valid until {expires}"));
    let prepared = with_retry(ui, &stack, || store.renew(&stack, &message, &author, &key))?;
    let parent = prepared.parent.expect("a renewal is made on a head");
    let validity = prepared.stack_file.validity;
    if ui.json() {
        ui.emit_json(&RenewOutput {
            commit: prepared.commit.to_string(),
            parent: parent.to_string(),
            stack: StackJson::from(&stack),
            validity: validity.as_ref().map(ValidityJson::from),
            signer: key.public().to_string(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    ui.line(format!(
        "Renewed stack {} ({}): {} patch(es), valid until {expires}",
        stack.name,
        stack.build_id.short(),
        prepared.stack_file.patches.len()
    ));
    ui.line(format!("  commit   {} (on {})", prepared.commit, parent));
    Ok(ExitCode::SUCCESS)
}
