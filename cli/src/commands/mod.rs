//! One module per command; [`run`] is the one dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::error::CliError;
use crate::ui::Ui;

pub mod approve;
pub mod commit;
pub mod commit_diff;
pub mod completion;
pub mod cumulative;
pub mod generations;
pub mod guest_init;
pub mod init;
pub mod kernel;
pub mod key;
pub mod log;
pub mod man;
pub mod plan;
pub mod promote;
pub mod pull;
pub mod renew;
pub mod revert;
pub mod rollback;
pub mod show;
pub mod stacks;
pub mod status;
pub mod sync;
pub mod r#try;
pub mod verify;

/// Live-patch a running Linux kernel from signed, declarative patch stacks.
///
/// kstack keeps livepatch modules in a content-addressed, signed store (a Git
/// repository), one ordered stack per kernel build ID. A config file declares the stack
/// a host should run and `kstack sync` makes the running kernel match it.
///
/// Exit codes: 0 success, 1 the operation failed, 2 `plan` found changes, 3 `commit` of
/// a change that compiles to identical code (no patch made), 64 bad usage
/// (a bad argument or name, an unreadable file), 65 bad or untrusted data (also a
/// change that cannot be live-applied), 69 something needed is missing (a tool, a
/// kernel or its source, livepatch support), 70 internal error, 75 busy (another
/// kstack holds the lock). With --json, errors are a JSON document on stdout
/// (docs/json.md).
///
/// Environment, besides the options': KSTACK_STATE_DIR, the state directory;
/// KSTACK_LIVEPATCH_SYSFS, the kernel's livepatch directory (default
/// /sys/kernel/livepatch; tests point it elsewhere).
#[derive(Debug, Parser)]
#[command(
    name = "kstack",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// Print no progress or status lines
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The config file
    #[arg(long, global = true, env = "KSTACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store (a bare Git repository) [default: the config's, else /var/lib/kstack/store]
    #[arg(long, global = true, env = "KSTACK_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // Authoring stacks.
    Commit(commit::CommitArgs),
    Log(log::LogArgs),
    Show(show::ShowArgs),
    Revert(revert::RevertArgs),
    Promote(promote::PromoteArgs),
    Approve(approve::ApproveArgs),
    Renew(renew::RenewArgs),
    Verify(verify::VerifyArgs),
    Stacks(stacks::StacksArgs),
    Pull(pull::PullArgs),
    Init(init::InitArgs),
    Key(key::KeyArgs),
    // Running them on a host.
    Sync(sync::SyncArgs),
    Plan(plan::PlanArgs),
    Status(status::StatusArgs),
    Generations(generations::GenerationsArgs),
    Rollback(rollback::RollbackArgs),
    // Trying them, and the kernels they are for.
    Try(r#try::TryArgs),
    Kernel(kernel::KernelArgs),
    // The command line itself.
    Completion(completion::CompletionArgs),
    #[command(hide = true)]
    Man(man::ManArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli, ui: &Ui) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Sync(args) => sync::cmd_sync(ui, &cli.global, args),
        Command::Plan(args) => plan::cmd_plan(ui, &cli.global, args),
        Command::Status(args) => status::cmd_status(ui, &cli.global, args),
        Command::Generations(args) => generations::cmd_generations(ui, &cli.global, args),
        Command::Rollback(args) => rollback::cmd_rollback(ui, &cli.global, args),
        Command::Try(args) => r#try::cmd_try(ui, &cli.global, args),
        Command::Kernel(args) => kernel::cmd_kernel(ui, &cli.global, args),
        Command::Init(args) => init::cmd_init(ui, &cli.global, args),
        Command::Key(args) => key::cmd_key(ui, &cli.global, args),
        Command::Commit(args) => commit::cmd_commit(ui, &cli.global, args),
        Command::Log(args) => log::cmd_log(ui, &cli.global, args),
        Command::Show(args) => show::cmd_show(ui, &cli.global, args),
        Command::Revert(args) => revert::cmd_revert(ui, &cli.global, args),
        Command::Promote(args) => promote::cmd_promote(ui, &cli.global, args),
        Command::Approve(args) => approve::cmd_approve(ui, &cli.global, args),
        Command::Renew(args) => renew::cmd_renew(ui, &cli.global, args),
        Command::Verify(args) => verify::cmd_verify(ui, &cli.global, args),
        Command::Stacks(args) => stacks::cmd_stacks(ui, &cli.global, args),
        Command::Pull(args) => pull::cmd_pull(ui, &cli.global, args),
        Command::Completion(args) => completion::cmd_completion(ui, &cli.global, args),
        Command::Man(args) => man::cmd_man(ui, &cli.global, args),
    }
}
