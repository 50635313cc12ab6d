//! `kstack pull`: fetch stacks from another store and adopt those that verify.

use std::process::ExitCode;

use clap::Args;
use kstack_store::pull::PullOutcome;

use super::GlobalArgs;
use crate::context::Context;
use crate::error::CliError;
use crate::json::{PullOutput, PulledJson};
use crate::ui::Ui;

/// Fetch stacks from another store; adopt them only if they verify
///
/// Fetches refs/kstack/* from URL (a path, file://, or git://) into a quarantine
/// namespace, verifies every fetched head against the config's [trust] keys (digests,
/// signature, history) and checks that it fast-forwards the local stack. Only if all
/// pass are the local stacks moved; otherwise nothing changes (exit 65).
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  kstack pull /srv/kstack/store\n  kstack pull git://patches.example.org/kstack"
)]
pub struct PullArgs {
    /// Where to fetch from [default: the config's [store] remote]
    pub url: Option<String>,
}

pub fn cmd_pull(ui: &Ui, global: &GlobalArgs, args: PullArgs) -> Result<ExitCode, CliError> {
    let ctx = Context::load(global, false)?;
    if ctx.config_path.is_none() {
        return Err(CliError::user("no trust policy: there is no config file")
            .with_hint("pass --config FILE whose [trust] keys lists the keys to accept"));
    }
    let url = args
        .url
        .or_else(|| ctx.config.store.remote.clone())
        .ok_or_else(|| {
            CliError::user("pull from where?")
                .with_hint("pass URL or set [store] remote in the config")
        })?;
    let store = ctx.open_store()?;
    let policy = ctx.trust()?;
    let spinner = ui.spinner(format!("fetching from {url}"));
    let result = store.pull(&url, &policy);
    spinner.finish_and_clear();
    let report = result?;
    if ui.json() {
        let stacks = report
            .stacks
            .iter()
            .map(|s| PulledJson {
                build_id: s.stack.build_id.to_hex(),
                name: s.stack.name.clone(),
                old: s.old.map(|o| o.to_string()),
                new: s.new.to_string(),
                outcome: match s.outcome {
                    PullOutcome::Updated => "updated",
                    PullOutcome::UpToDate => "up-to-date",
                    PullOutcome::LocalAhead => "local-ahead",
                },
            })
            .collect();
        ui.emit_json(&PullOutput { url, stacks });
        return Ok(ExitCode::SUCCESS);
    }
    if report.stacks.is_empty() {
        ui.line(format!("{url} has no stacks"));
    }
    for s in &report.stacks {
        let short = |id: &kstack_store::store::ObjectId| id.to_hex_with_len(12).to_string();
        let what = match (s.outcome, s.old) {
            (PullOutcome::Updated, Some(old)) => {
                format!("updated {}..{}", short(&old), short(&s.new))
            }
            (PullOutcome::Updated, None) => format!("new at {}", short(&s.new)),
            (PullOutcome::UpToDate, _) => "up to date".to_owned(),
            (PullOutcome::LocalAhead, _) => "local stack is ahead; kept".to_owned(),
        };
        ui.line(format!(
            "{} ({}): {what}",
            s.stack.name,
            s.stack.build_id.short()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
