//! Benchmark: building each example patch with `kstack commit`, whole processes,
//! with wall time, CPU time and peak memory: first with `--no-cache` (kbuild in a
//! full copy of the tree, as the first build of a unit for a kernel is), then warm
//! (a new fix to that unit: the patch with a line of the run added to its message,
//! built from the records that build left: the pre object, the recorded compile and
//! the recorded module link; the stack's cumulative module included), in
//! turn with the baseline, kbuild compiling the patch's unit once in a tree where it
//! compiled it before, and their ratio pair by pair; cold (a fresh cache: fetch and
//! prepare the tree first); and, when asked, compiling all of vmlinux with the same
//! flags, which is what kpatch-build does (twice) for every patch.
//!
//! Run: `cargo bench -p kstack-tests --bench build` (after `cargo xtask setup`).
//! `BENCH_RUNS` (default 3) is the number of warm pairs per patch; `BENCH_WARM=0`
//! skips the warm builds, `BENCH_COLD=0` the cold build; `BENCH_FULL_KERNEL=1` adds the full build
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
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);

    println!("kstack commit PATCH.diff on the 2-core machine ({release}), whole processes");
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "patch", "kbuild s", "warm s", "unit s", "ratio", "peak MiB"
    );
    let mut warm_cpu = Vec::new();
    let mut warm_walls = Vec::new();
    let mut ratios = Vec::new();
    // `BENCH_WARM=0`: only the cold build (and the full kernel when asked).
    let warm = std::env::var("BENCH_WARM").as_deref() != Ok("0");
    for patch in patches.iter().filter(|_| warm) {
        let name = patch.file_stem().unwrap().to_string_lossy().into_owned();
        // The old way, as on the first build of a unit: kbuild in a full copy.
        let store = CliStore::new();
        let mut first = commit(&store, "bench", patch, None);
        first.arg("--no-cache");
        let (kbuild_wall, _, _) = measure(&mut first);
        // The baseline: kbuild compiling the patch's unit once, in a tree where it
        // compiled it before (what a kernel developer's edit-compile loop costs).
        let unit = unit_of(patch);
        let parent = tempfile::tempdir().unwrap();
        let tree = kstack_engine::builder::tree::WorkTree::new(
            &kernel().source().unwrap(),
            parent.path(),
            &release,
        )
        .unwrap();
        let compile_unit = || {
            let source = tree.path().join(unit.replace(".o", ".c"));
            let text = std::fs::read(&source).unwrap();
            // A rewrite (new mtime) of a hard-linked file must not reach the cache.
            std::fs::remove_file(&source).unwrap();
            std::fs::write(&source, text).unwrap();
            let mut make = Command::new("make");
            make.arg("-C")
                .arg(tree.path())
                .args(["-s", "-j2"])
                .arg(format!("KERNELRELEASE={release}"))
                .arg(format!(
                    "KCFLAGS={}",
                    kstack_engine::builder::tree::EXTRA_CFLAGS
                ))
                .arg(&unit);
            make
        };
        measure(&mut compile_unit());
        // Warm builds (each on a fresh stack) and the unit's compile, in turn.
        let mut pairs = Vec::new();
        for run in 0..runs {
            let store = CliStore::new();
            // A new fix to a unit built before: the same change in other bytes, so
            // its pre object is kept but its post object must be compiled (the same
            // diff again would take that from the cache too).
            let variant = variant_of(patch, run, parent.path());
            let (wall, cpu, rss) = measure(&mut commit(&store, "bench", &variant, None));
            let (unit_wall, _, _) = measure(&mut compile_unit());
            pairs.push((wall, cpu, rss, unit_wall));
        }
        let wall = median(pairs.iter().map(|p| p.0).collect());
        let unit_wall = median(pairs.iter().map(|p| p.3).collect());
        let ratio = median(pairs.iter().map(|p| p.0 / p.3).collect());
        let rss = pairs.iter().map(|p| p.2).fold(0.0, f64::max);
        println!(
            "{name:<30} {kbuild_wall:>9.1} {wall:>9.1} {unit_wall:>9.1} {ratio:>7.2} {rss:>9.0}"
        );
        warm_cpu.push(median(pairs.iter().map(|p| p.1).collect()));
        warm_walls.push(wall);
        ratios.push(ratio);
    }
    if warm {
        println!(
            "median of the warm builds: {:.1} s wall, {:.2} x compiling the unit once",
            median(warm_walls[..4.min(warm_walls.len())].to_vec()),
            median(ratios[..4.min(ratios.len())].to_vec())
        );
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

/// `patch` with a line of this run added to its message, in `dir` under the same
/// file name (the patch's name).
fn variant_of(patch: &Path, run: usize, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(patch).unwrap();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let diff_start = text
        .find("diff --git")
        .or_else(|| text.find("--- "))
        .unwrap();
    let body = match text.find("\n\n").filter(|&at| at < diff_start) {
        // After the subject line, which names the patch.
        Some(at) => format!(
            "{}\n\nBench run {run}, {nonce}.{}",
            &text[..at],
            &text[at..]
        ),
        None => format!("Bench run {run}, {nonce}.\n\n{text}"),
    };
    let dir = dir.join(format!("variant-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(patch.file_name().unwrap());
    std::fs::write(&path, body).unwrap();
    path
}

/// The unit (object path) of a one-file fix.
fn unit_of(patch: &Path) -> String {
    let diff = std::fs::read(patch).unwrap();
    let files = kstack_engine::builder::tree::changed_files(&diff);
    let file = files.iter().find(|f| f.ends_with(".c")).unwrap();
    file.replace(".c", ".o")
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
