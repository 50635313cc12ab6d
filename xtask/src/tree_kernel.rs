//! The test kernel built from a source tree, as an owner builds one: what
//! `kstack kernel add --tree DIR --image FILE` is tested with (`tests/vm_tree_kernel.rs`,
//! `tests/kernel_add_tree.rs`).
//!
//! Set-up unpacks the Debian source of the default kernel (the `linux-source-6.1`
//! package it already fetched) into `<cache>/tree-kernel/linux`, configures it from
//! `make tinyconfig` with [`CONFIG`] merged in (what the sandbox and live patching
//! need, and no more: a small kernel that builds in minutes), and builds it (`make`:
//! vmlinux, bzImage, modules, `Module.symvers`, `System.map`). It is built once: a
//! marker records the source and the configuration fragment it was built from, and a
//! set-up that finds them unchanged does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use kstack_engine::builder::assets::{self, Cache, Kernel};

/// The configuration fragment merged onto `make tinyconfig`.
pub const CONFIG: &str = include_str!("tree_kernel.config");

/// Written last, with what the tree was built from.
const MARKER: &str = ".kstack-built";

/// The built tree (`--tree`).
pub fn tree(cache: &Cache) -> PathBuf {
    cache.root().join("tree-kernel/linux")
}

/// Its bootable image (`--image`).
pub fn image(cache: &Cache) -> PathBuf {
    tree(cache).join("arch/x86/boot/bzImage")
}

/// Whether set-up has built it (the marker is there).
pub fn is_built(cache: &Cache) -> bool {
    cache.root().join("tree-kernel").join(MARKER).is_file()
}

/// What the tree is built from: the source package version and the fragment.
fn fingerprint(version: &str) -> String {
    format!("linux-source {version}\n{CONFIG}")
}

/// Builds the test kernel from the Debian source of `kernel` (a Debian kernel in the
/// cache) unless it is built from that source and fragment already; returns how long
/// the build took, `None` when there was nothing to do.
pub fn build(
    cache: &Cache,
    kernel: &Kernel,
    log: &mut dyn FnMut(&str),
) -> Result<Option<std::time::Duration>> {
    let version = kernel
        .version()
        .with_context(|| format!("kernel {} names no Debian version", kernel.release))?;
    let top = cache.root().join("tree-kernel");
    let marker = top.join(MARKER);
    let wanted = fingerprint(&version);
    if std::fs::read_to_string(&marker).is_ok_and(|text| text == wanted) {
        return Ok(None);
    }
    let started = Instant::now();
    if top.exists() {
        std::fs::remove_dir_all(&top).with_context(|| format!("removing {}", top.display()))?;
    }
    let dir = tree(cache);
    assets::unpack_source(cache, kernel, &version, &dir, log)?;

    log("configuring it (make tinyconfig, the fragment merged, make olddefconfig)");
    let fragment = top.join("kstack.config");
    std::fs::write(&fragment, CONFIG)?;
    make(&dir, &["tinyconfig"])?;
    run(Command::new("scripts/kconfig/merge_config.sh")
        .current_dir(&dir)
        .args(["-m", ".config"])
        .arg(&fragment))?;
    make(&dir, &["olddefconfig"])?;
    let config = std::fs::read_to_string(dir.join(".config"))?;
    let lost: Vec<&str> = wanted_options()
        .filter(|line| !config.lines().any(|l| l == *line))
        .collect();
    if !lost.is_empty() {
        bail!(
            "make olddefconfig did not keep {} of xtask/src/tree_kernel.config (a dependency is \
             not set): {}",
            lost.len(),
            lost.join(", ")
        );
    }

    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    log(&format!(
        "building it (make -j{jobs}: vmlinux, bzImage, modules)"
    ));
    make(&dir, &[&format!("-j{jobs}"), "all"])?;
    for built in [
        "vmlinux",
        "System.map",
        "Module.symvers",
        "arch/x86/boot/bzImage",
    ] {
        if !dir.join(built).is_file() {
            bail!("the build of {} wrote no {built}", dir.display());
        }
    }
    std::fs::write(&marker, wanted)?;
    Ok(Some(started.elapsed()))
}

/// The `CONFIG_...=value` lines of the fragment.
fn wanted_options() -> impl Iterator<Item = &'static str> {
    CONFIG.lines().filter(|l| l.starts_with("CONFIG_"))
}

fn make(dir: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("make").arg("-C").arg(dir).arg("-s").args(args))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{cmd:?} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fragment_asks_for_live_patching_and_its_own_release() {
        let options: Vec<&str> = super::wanted_options().collect();
        for needed in [
            "CONFIG_LIVEPATCH=y",
            "CONFIG_MODULES=y",
            "CONFIG_KALLSYMS_ALL=y",
            "CONFIG_DYNAMIC_FTRACE_WITH_REGS=y",
            "CONFIG_LOCALVERSION=\"-kstack-tree\"",
        ] {
            assert!(options.contains(&needed), "{needed}");
        }
    }
}
