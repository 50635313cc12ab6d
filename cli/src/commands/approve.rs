//! `kstack approve`: add a signature to a stack's head (the two-person rule).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use super::commit::{author, kernel_hint, signing_key, stack_name, valid_for, with_retry};
use super::log::Trust;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{ApproveOutput, StackJson};
use crate::ui::Ui;

/// Approve a stack's head: add your signature to it
///
/// Signs the head's stack.toml as it is: its patches, its validity window and its
/// content digest (the SHA-256 of stack.toml that every signature covers) do not
/// change; stack.sig gains a signature and the commit message a signer line. The
/// approved commit replaces the head (the same parent, author and message), and
/// hosts and pulls treat it as the same commit. With [trust] threshold = N, hosts
/// and pulls accept a head only when N distinct trusted keys have signed it; the
/// same key signing twice counts once, so a key approves a head once. Review the
/// head first (`kstack show STACK`).
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The stack [default: the config's [stack] name]
    pub stack: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// The private key to sign with [default: the config's [trust] signing_key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

pub fn cmd_approve(ui: &Ui, global: &GlobalArgs, args: ApproveArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let name = stack_name(&ctx, args.stack.as_deref())?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let trust = Trust::load(&ctx)?;
    let hint = kernel_hint(args.kernel.as_deref())?;
    let stack = store
        .find_stack(&name, hint.as_ref())?
        .ok_or_else(|| CliError::user(format!("stack {name} does not exist")))?;
    // The approver is the committer of the rewritten commit; the window is the
    // head's own, signed as it is.
    let committer = author(valid_for(&ctx, None));
    let prepared = with_retry(ui, &stack, || store.approve(&stack, &key, &committer))?;
    let v = store.check(prepared.commit, Some(&stack))?;
    let replaced = prepared.parent.expect("an approval always replaces a head");
    if ui.json() {
        ui.emit_json(&ApproveOutput {
            commit: prepared.commit.to_string(),
            replaces: replaced.to_string(),
            stack: StackJson::from(&stack),
            stack_sha256: v.stack_sha256.to_hex(),
            signers: trust.signers_json(&v.signers),
            trusted: trust.accepts(&v.signers),
        });
        return Ok(ExitCode::SUCCESS);
    }
    ui.line(format!(
        "Approved stack {} ({}) head {}: signed by {} key(s)",
        stack.name,
        stack.build_id.short(),
        replaced.to_hex_with_len(12),
        v.signers.len()
    ));
    ui.line(format!(
        "  commit   {} (replaces {})",
        prepared.commit, replaced
    ));
    for signer in &v.signers {
        ui.line(format!(
            "  signer   {signer} ({})",
            trust.label(Some(signer))
        ));
    }
    if trust.has_config && !trust.accepts(&v.signers) {
        ui.status(format!(
            "note: this config's [trust] does not accept it yet (threshold {})",
            trust.policy.threshold
        ));
    }
    Ok(ExitCode::SUCCESS)
}
