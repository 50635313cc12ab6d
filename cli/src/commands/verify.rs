//! `kstack verify`: check stack commits against the trust policy, every digest
//! recomputed from the bytes.

use std::process::ExitCode;

use clap::Args;
use kstack_store::error_chain;

use super::GlobalArgs;
use super::log::resolve;
use crate::context::Context;
use crate::error::{CliError, EXIT_DATA, Kind};
use crate::ui::Ui;

/// Verify stacks: digests, signatures, trust and history
///
/// Recomputes the SHA-256 of every module, diff, manifest and stack.toml, checks the
/// signature and that the config's [trust] keys list the signer, and checks the
/// signatures and parent digests of the history. Without REV, every stack in the
/// store is verified. Exits 65 if anything fails.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The commit: a stack name, BUILD-ID/NAME, a commit id, or REV~N [default: every
    /// stack]
    pub rev: Option<String>,
    /// Pick among same-named stacks of several kernels: a build ID or a kernel image
    /// [default: the running kernel]
    #[arg(long, value_name = "BUILD-ID|IMAGE")]
    pub kernel: Option<String>,
}

pub fn cmd_verify(ui: &Ui, global: &GlobalArgs, args: VerifyArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    if ctx.config_path.is_none() {
        return Err(CliError::user("no trust policy: there is no config file")
            .with_hint("pass --config FILE whose [trust] keys lists the keys to trust"));
    }
    let store = ctx.open_store()?;
    let policy = ctx.trust()?;
    let targets: Vec<(String, _, _)> = match args.rev.as_deref() {
        Some(rev) => {
            let r = resolve(&ctx, &store, Some(rev), args.kernel.as_deref())?;
            vec![(rev.to_owned(), r.commit, r.stack)]
        }
        None => store
            .stacks()?
            .into_iter()
            .map(|(stack, head)| (stack.to_string(), head, Some(stack)))
            .collect(),
    };
    let mut results = Vec::new();
    let mut failed = 0;
    for (name, commit, stack) in &targets {
        let outcome = store
            .verify(*commit, stack.as_ref(), &policy)
            .and_then(|v| store.verify_history(*commit, None, None).map(|n| (v, n)));
        match outcome {
            Ok((v, history)) => {
                ui.line(format!(
                    "ok    {name} {}: {} patch(es), {history} commit(s), signed by {}",
                    commit.to_hex_with_len(12),
                    v.patches.len(),
                    v.signer
                ));
                results.push(serde_json::json!({
                    "rev": name, "commit": commit.to_string(), "ok": true,
                    "patches": v.patches.len(), "history": history,
                    "signer": v.signer.to_string(),
                }));
            }
            Err(e) => {
                failed += 1;
                let message = error_chain(&e);
                ui.line(format!("FAIL  {name}: {message}"));
                results.push(serde_json::json!({
                    "rev": name, "commit": commit.to_string(), "ok": false, "error": message,
                }));
            }
        }
    }
    if ui.json() {
        ui.emit_json(&serde_json::json!({ "results": results, "failed": failed }));
    }
    if targets.is_empty() {
        ui.status("the store has no stacks");
    }
    if failed > 0 {
        if ui.json() {
            return Ok(ExitCode::from(EXIT_DATA));
        }
        return Err(CliError::new(
            Kind::Data,
            format!("{failed} of {} failed verification", targets.len()),
        ));
    }
    Ok(ExitCode::SUCCESS)
}
