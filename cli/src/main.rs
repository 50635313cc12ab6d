//! `kstack`: declarative live patching for the Linux kernel.
//!
//! This crate only parses arguments, renders output and maps errors to exit codes;
//! the work is done by `kstack-store` and `kstack-engine`.

mod commands;
mod context;
mod error;
mod json;
mod metrics;
mod ui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // As PID 1 of the sandbox VM, kstack is the guest's init, whatever argv says.
    if std::process::id() == 1 {
        return commands::guest_init::run_as_init();
    }
    // Like other command-line tools, end quietly when the reader of our output goes
    // away (`kstack log | head`), instead of failing on the write.
    // SAFETY: restoring the default action of a signal kstack installs no handler for.
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        )
    };
    let cli = match commands::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { error::EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let ui = ui::Ui::new(cli.global.json, cli.global.quiet);
    match commands::run(cli, &ui) {
        Ok(code) => code,
        Err(err) => err.report(&ui),
    }
}
