//! `kstack completion SHELL`: the shell completion script, from the clap definitions.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, GlobalArgs};
use crate::error::CliError;
use crate::ui::Ui;

/// Print the completion script for a shell
///
/// The Debian package installs them (bash-completion, zsh's vendor-completions and
/// fish's vendor_completions.d); otherwise, e.g. `source <(kstack completion bash)`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn cmd_completion(
    _ui: &Ui,
    _global: &GlobalArgs,
    args: CompletionArgs,
) -> Result<ExitCode, CliError> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "kstack", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
