//! The kstack engine: everything that acts, as opposed to what is stored. Three
//! products, one folder each, and what two of them share:
//!
//! - [`host`]: runs on the patched machine and touches its live kernel: the config,
//!   the livepatch interface, the planner, the executor, the run-pre proof before
//!   loading, generations and the lock.
//! - [`builder`]: runs on a build machine: the kernels kstack targets (fetched from
//!   Debian into a cache), work trees, kbuild, the ELF differ, the livepatch writer.
//! - [`sandbox`]: boots a kernel in QEMU with kstack as PID 1, for `kstack try` and
//!   the tests.
//! - [`runpre`]: run-pre matching, shared by the builder (which keeps each replaced
//!   function's "before" image) and the host (which proves it against the running
//!   kernel before loading).
//!
//! The host never imports the builder nor the builder the host; kernel facts both
//! need are in `kstack-kfacts`. The engine is quiet: it returns values and errors and
//! never prints; the CLI renders.

pub mod builder;
pub mod host;
pub mod runpre;
pub mod sandbox;

/// Parses a duration as people write it (`30s`, `2m`, `1500ms`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e} (try \"30s\")"))
}
