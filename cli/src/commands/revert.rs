//! `kstack revert`: a new signed commit without one patch.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kstack_store::model::check_name;

use super::GlobalArgs;
use super::commit::{author, kernel_hint, signing_key, stack_name, valid_for};
use crate::context::Context;
use crate::error::CliError;
use crate::json::{CumulativeJson, RevertOutput, StackJson};
use crate::ui::Ui;

/// Remove a patch from a stack with a new signed commit
///
/// Patches above the reverted one keep their order when none of them replaces a
/// function that it replaces (as the manifests record them); otherwise the revert is
/// refused and the shared functions are named. History keeps the patch: `kstack log`
/// shows both commits. The new commit gets the stack's cumulative module, built anew
/// without the patch (the patches above it are not rebuilt).
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// The patch's name
    pub patch: String,
    /// Why it is reverted (signed with the stack)
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: String,
    /// The stack [default: the config's [stack] name]
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// The private key to sign with [default: the config's [trust] signing_key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long the new commit stays valid as the stack's head [default: the
    /// config's [trust] validity, else 30d]
    #[arg(long, env = "KSTACK_VALID_FOR", value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub valid_for: Option<Duration>,
}

pub fn cmd_revert(ui: &Ui, global: &GlobalArgs, args: RevertArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    check_name("patch", &args.patch).map_err(|e| {
        CliError::from(e).with_hint("name a patch of the stack (see `kstack show`)")
    })?;
    let name = stack_name(&ctx, args.stack.as_deref())?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let hint = kernel_hint(args.kernel.as_deref())?;
    let stack = store
        .find_stack(&name, hint.as_ref())?
        .ok_or_else(|| CliError::user(format!("stack {name} does not exist")))?;
    let signer = super::commit_diff::module_signer(&ctx)?;
    let author = author(valid_for(&ctx, args.valid_for));
    let prepared = super::cumulative::publish_with_cumulative(
        ui,
        &store,
        &stack,
        super::cumulative::HowToBuild {
            signer: signer.as_ref(),
            reuse: true,
        },
        &author,
        &key,
        || store.prepare_revert(&stack, &args.patch, &args.message, &author, &key),
    )?;
    let verified = store.check(prepared.commit, Some(&stack))?;
    if ui.json() {
        ui.emit_json(&RevertOutput {
            commit: prepared.commit.to_string(),
            parent: prepared.parent.map(|p| p.to_string()),
            stack: StackJson::from(&stack),
            reverted: args.patch.clone(),
            patches: prepared
                .stack_file
                .patches
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            cumulative: CumulativeJson::from(&verified),
        });
    } else {
        ui.line(format!(
            "Reverted {} from stack {} ({}): {} patch(es) left",
            args.patch,
            stack.name,
            stack.build_id.short(),
            prepared.stack_file.patches.len()
        ));
        ui.line(format!("  commit   {}", prepared.commit));
        ui.line(super::cumulative::describe(&verified));
    }
    Ok(ExitCode::SUCCESS)
}
