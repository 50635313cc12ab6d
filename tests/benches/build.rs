//! Benchmark: building each example patch with `kstack commit`, warm (the kernel's
//! source tree already prepared) and cold (a fresh cache: fetch and prepare the tree
//! first), with wall time, CPU time and peak memory; and, when asked, the baseline:
//! compiling all of vmlinux with the same flags, which is what kpatch-build does
//! (twice) for every patch.
//!
//! Run: `cargo bench -p kstack-tests --bench build` (after `cargo xtask setup`).
//! `BENCH_COLD=0` skips the cold build; `BENCH_FULL_KERNEL=1` adds the full build
//! (about 25 minutes on 2 cores).

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use kstack_tests::{CliStore, kernel, kstack_cli};

/// Wall seconds, CPU seconds (user + system, children included) and peak RSS in MiB
/// of a command, from GNU time.
fn measure(cmd: &mut Command) -> (f64, f64, f64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-o")
        .arg(out.path())
        .args(["-f", "%e %U %S %M"])
        .arg(program)
        .args(args);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let status = timed
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd:?} failed");
    let text = std::fs::read_to_string(out.path()).unwrap();
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (f[0], f[1] + f[2], f[3] / 1024.0)
}

fn commit(store: &CliStore, stack: &str, diff: &Path, cache: Option<&Path>) -> Command {
    let mut cmd = kstack_cli();
    if let Some(cache) = cache {
        cmd.env("KSTACK_CACHE", cache);
    }
    cmd.arg("--store")
        .arg(&store.store)
        .arg("commit")
        .arg(diff)
        .args(["--stack", stack, "--key"])
        .arg(&store.key);
    cmd
}

fn main() {
    let mut patches = kstack_tests::example_patches();
    // Fixes to loadable modules build the same way, against the module's own symbols.
    for name in ["xfs-stats-marker.diff", "binfmt-misc-status.diff"] {
        patches.push(
            kstack_tests::workspace_root()
                .join("examples/modules")
                .join(name),
        );
    }
    let release = kernel().release;

    println!("kstack commit PATCH.diff on the 2-core machine ({release})");
    println!(
        "{:<34} {:>8} {:>8} {:>9}",
        "warm build (tree prepared)", "wall s", "cpu s", "peak MiB"
    );
    let mut warm_cpu = Vec::new();
    for patch in &patches {
        // Each example on a fresh stack: a one-file fix on the plain kernel.
        let store = CliStore::new();
        let (wall, cpu, rss) = measure(&mut commit(&store, "bench", patch, None));
        let name = patch.file_stem().unwrap().to_string_lossy();
        println!("{name:<34} {wall:>8.1} {cpu:>8.1} {rss:>9.0}");
        warm_cpu.push(cpu);
    }

    if std::env::var("BENCH_COLD").as_deref() != Ok("0") {
        // A fresh cache that shares only the downloaded packages.
        let cold = tempfile::tempdir().unwrap();
        let debs = kstack_engine::builder::assets::Cache::from_env()
            .root()
            .join("debs");
        std::os::unix::fs::symlink(&debs, cold.path().join("debs")).unwrap();
        let mut add = kstack_cli();
        add.env("KSTACK_CACHE", cold.path())
            .args(["kernel", "add", &release, "--default"]);
        let (aw, ac, ar) = measure(&mut add);
        let store = CliStore::new();
        let (bw, bc, br) = measure(&mut commit(&store, "bench", &patches[0], Some(cold.path())));
        println!(
            "{:<34} {:>8.1} {:>8.1} {:>9.0}",
            "cold: kernel add (unpack, prepare)", aw, ac, ar
        );
        println!(
            "{:<34} {:>8.1} {:>8.1} {:>9.0}",
            "cold: then the first build", bw, bc, br
        );
        println!("{:<34} {:>8.1} {:>8.1}", "cold total", aw + bw, ac + bc);
    }

    if std::env::var("BENCH_FULL_KERNEL").as_deref() == Ok("1") {
        let source = kernel().source().unwrap();
        let parent = tempfile::tempdir().unwrap();
        let tree =
            kstack_engine::builder::tree::WorkTree::new(&source, parent.path(), &release).unwrap();
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(tree.path())
            .args(["-s", "-j2"])
            .arg(format!("KERNELRELEASE={release}"))
            .arg(format!(
                "KCFLAGS={}",
                kstack_engine::builder::tree::EXTRA_CFLAGS
            ))
            .arg("vmlinux");
        let (wall, cpu, rss) = measure(&mut make);
        let mean = warm_cpu.iter().sum::<f64>() / warm_cpu.len() as f64;
        println!(
            "{:<34} {:>8.1} {:>8.1} {:>9.0}",
            "baseline: all of vmlinux", wall, cpu, rss
        );
        println!(
            "a warm kstack build costs {:.4} of one full build in CPU time (kpatch-build compiles twice: ratio {:.4})",
            mean / cpu,
            mean / (2.0 * cpu)
        );
    }
}
