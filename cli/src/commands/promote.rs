//! `kstack promote`: the patches of one stack's commit, as a new signed commit on
//! another stack of the same kernel (canary, then production).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use kstack_store::model::check_name;
use kstack_store::promote::PromoteError;
use kstack_store::store::StoreError;

use super::GlobalArgs;
use super::commit::{author, signing_key, valid_for};
use super::log::resolve;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{PromoteOutput, PromotedFromJson, StackJson, ValidityJson};
use crate::ui::Ui;

/// Make stack DST run exactly what SRC runs, with a signed commit
///
/// The new commit on DST has exactly the patches of SRC's commit: the same modules,
/// byte for byte, the same manifests and digests, and so the same module names (a
/// host switching stacks has nothing to reload). Its signed stack.toml records the
/// source (stack, commit and stack.toml digest), and `kstack log` shows it. SRC must
/// verify against the config's trust policy ([trust] keys, threshold, revoked):
/// promoting re-signs its patches. The new commit has its own validity window, and
/// with a threshold it needs its approvals (`kstack approve DST`) like any other. DST is a
/// stack of the same kernel build ID, created if it does not exist; when its head
/// already has exactly these patches, nothing is committed. Hosts pick the promotion
/// up with `kstack pull` and `kstack sync`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    kstack promote canary production\n  \
    kstack promote canary~1 production -m 'Roll out the fixes of Monday'")]
pub struct PromoteArgs {
    /// The source: a stack name, BUILD-ID/NAME, a commit id, or REV~N
    pub src: String,
    /// The destination stack's name (same kernel)
    pub dst: String,
    /// Why (signed with the stack) [default: "Promote SRC <commit> to DST"]
    #[arg(long, short = 'm', value_name = "MESSAGE")]
    pub message: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
    /// The private key to sign with [default: the config's [trust] signing_key]
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// How long the new commit stays valid as DST's head [default: the config's
    /// [trust] validity, else 30d]
    #[arg(long, env = "KSTACK_VALID_FOR", value_parser = kstack_engine::parse_duration, value_name = "DURATION")]
    pub valid_for: Option<Duration>,
}

pub fn cmd_promote(ui: &Ui, global: &GlobalArgs, args: PromoteArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    check_name("stack", &args.dst).map_err(CliError::from)?;
    let store = ctx.open_store()?;
    let key = signing_key(&ctx, args.key.as_deref())?;
    let trust = ctx.trust()?;
    let resolved = resolve(&ctx, &store, Some(&args.src), args.kernel.as_deref())?;
    let source = store.verify(resolved.commit, None, &trust)?;
    let message = args.message.clone().unwrap_or_else(|| {
        format!(
            "Promote {} {} to {}",
            source.stack.name,
            source.commit.to_hex_with_len(12),
            args.dst
        )
    });
    let author = author(valid_for(&ctx, args.valid_for));
    let mut attempt = 0;
    let prepared = loop {
        attempt += 1;
        match store.promote(&source, &args.dst, &message, &author, &key) {
            Err(PromoteError::Commit(kstack_store::commit::CommitError::Store(
                StoreError::StackMoved { .. } | StoreError::Locked { .. },
            ))) if attempt < 3 => {
                ui.status(format!(
                    "stack {} was moved by another kstack; retrying on its new head",
                    args.dst
                ));
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            other => break other?,
        }
    };
    let dst = kstack_store::store::StackId::new(source.stack.build_id.clone(), &args.dst)?;
    let head = store.stack_head(&dst)?;
    if ui.json() {
        ui.emit_json(&PromoteOutput {
            commit: head.map(|h| h.to_string()),
            parent: prepared
                .as_ref()
                .and_then(|p| p.parent.map(|c| c.to_string())),
            stack: StackJson::from(&dst),
            promoted_from: PromotedFromJson {
                stack: source.stack.name.clone(),
                commit: source.commit.to_string(),
            },
            changed: prepared.is_some(),
            validity: prepared
                .as_ref()
                .and_then(|p| p.stack_file.validity.as_ref())
                .map(ValidityJson::from),
            patches: source
                .stack
                .patches
                .iter()
                .map(|p| p.name.clone())
                .collect(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    match &prepared {
        Some(p) => {
            ui.line(format!(
                "Promoted {} {} to stack {} ({}): {} patch(es)",
                source.stack.name,
                source.commit.to_hex_with_len(12),
                dst.name,
                dst.build_id.short(),
                source.stack.patches.len()
            ));
            ui.line(format!("  commit   {}", p.commit));
        }
        None => ui.line(format!(
            "Stack {} already has exactly the patches of {} {}: nothing to promote",
            dst.name,
            source.stack.name,
            source.commit.to_hex_with_len(12)
        )),
    }
    Ok(ExitCode::SUCCESS)
}
