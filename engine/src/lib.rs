//! The kstack engine: everything that acts, as opposed to what is stored.
//!
//! - [`config`]: the host's declaration (`kstack.toml`).
//! - [`assets`]: the kernels kstack targets, fetched from Debian into a cache.
//! - [`kbuild`]: building a livepatch module with the kernel's own kbuild.
//! - [`initramfs`]: a `newc` cpio writer for the sandbox's root file system.
//! - [`sandbox`]: a QEMU VM running a given kernel, for `kstack try` and the tests.
//! - [`guest`]: what `kstack` does as PID 1 inside that VM.
//!
//! It is quiet: it returns values and errors and never prints; the CLI renders.

pub mod assets;
pub mod build;
pub mod config;
pub mod guest;
pub mod initramfs;
pub mod kbuild;
pub mod kernel;
pub mod reconcile;
pub mod runpre;
pub mod sandbox;

/// Parses a duration as people write it (`30s`, `2m`, `1500ms`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e} (try \"30s\")"))
}
