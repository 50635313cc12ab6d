//! `kstack generations`: the host's history of synced stacks.

use std::process::ExitCode;

use clap::Args;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{GenerationJson, GenerationsOutput};
use crate::ui::Ui;

/// List the generations this host has synced, the current one marked
///
/// Each successful `kstack sync` that changed something recorded one: its number, the
/// stack commit, the modules it applied and when. `kstack rollback --to N` returns to
/// one.
#[derive(Debug, Args)]
pub struct GenerationsArgs {}

pub fn cmd_generations(
    ui: &Ui,
    global: &GlobalArgs,
    _args: GenerationsArgs,
) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    let state = ctx.state_dir().load()?;
    if ui.json() {
        ui.emit_json(&GenerationsOutput {
            current: state.current,
            generations: state.generations.iter().map(GenerationJson::from).collect(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    if state.generations.is_empty() {
        ui.line("no generations yet: `kstack sync` records one when it changes the kernel");
    }
    for g in &state.generations {
        let mark = if Some(g.number) == state.current {
            "*"
        } else {
            " "
        };
        let commit = if g.commit.is_empty() {
            "(no stack)".to_owned()
        } else {
            format!("{} {}", g.stack, &g.commit[..g.commit.len().min(12)])
        };
        ui.line(format!(
            "{mark} {:>3}  {}  {commit}  [{}]",
            g.number,
            g.created_at,
            g.modules.join(", ")
        ));
    }
    Ok(ExitCode::SUCCESS)
}
