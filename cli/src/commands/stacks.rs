//! `kstack stacks`: every stack in the store, by kernel build ID and name.

use std::process::ExitCode;

use clap::Args;
use kstack_store::store::format_time;

use super::GlobalArgs;
use super::log::Trust;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{StackEntry, StacksOutput};
use crate::ui::Ui;

/// List every stack in the store, by kernel build ID and name
#[derive(Debug, Args)]
pub struct StacksArgs {}

pub fn cmd_stacks(ui: &Ui, global: &GlobalArgs, _args: StacksArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let store = ctx.open_store()?;
    let trust = Trust::load(&ctx)?;
    let running = kstack_store::ident::running_kernel_build_id().ok();
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (stack, head) in store.stacks()? {
        let info = store.commit_info(head)?;
        let running_here = running.as_ref() == Some(&stack.build_id);
        json.push(StackEntry {
            build_id: stack.build_id.to_hex(),
            name: stack.name.clone(),
            head: head.to_string(),
            time: format_time(info.time),
            summary: info.summary().to_owned(),
            signer: info.signer.map(|k| k.to_string()),
            trusted: trust.accepts(&info.signers()),
            running_kernel: running_here,
        });
        rows.push(format!(
            "{}{} {:<16} {}  {}  {}",
            stack.build_id,
            if running_here { "*" } else { " " },
            stack.name,
            head.to_hex_with_len(12),
            format_time(info.time),
            info.summary()
        ));
    }
    if ui.json() {
        ui.emit_json(&StacksOutput { stacks: json });
    } else if rows.is_empty() {
        ui.status("the store has no stacks");
    } else {
        ui.line(rows.join("\n"));
        if json.iter().any(|j| j.running_kernel) {
            ui.status("* the running kernel");
        }
    }
    Ok(ExitCode::SUCCESS)
}
