//! PID 1 of the sandbox VM (see `kstack_engine::sandbox::guest`). Not a user command: `main`
//! calls it when kstack runs as init.

use std::process::ExitCode;

pub fn run_as_init() -> ExitCode {
    if let Err(e) = kstack_engine::sandbox::guest::run_script() {
        // PID 1's stderr is the kernel console, which the host keeps.
        eprintln!("kstack-init: {}", kstack_store::error_chain(&e));
    }
    kstack_engine::sandbox::guest::power_off()
}
