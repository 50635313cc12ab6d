//! Benchmark of the store's hot paths, with `git` on the same repository for scale.
//!
//! ```text
//! cargo run --release -p kstack-store --example bench_store [-- --commits N --patches N --runs N]
//! BENCH_STORE_DIR=DIR cargo run --release -p kstack-store --example bench_store -- --setup-only
//! ```
//!
//! Builds, through the library, a stack of N commits (default 10,000) and a stack of
//! N patches (default 100, 64 KiB modules) in `written/` (under `BENCH_STORE_DIR`,
//! else a temporary directory), then three copies of that store: `loose/` (every
//! object a file, by `git unpack-objects`), `kstack-packed/` (one pack written by
//! kstack's own packing, `Store::pack`) and `git-packed/` (after `git repack -adf`,
//! so about half the commits are deltas of others). `--setup-only` stops there, for
//! timing the commands with other tools.
//!
//! On each layout it then measures, median of `--runs`, each operation in a fresh
//! child process (so its peak RSS, VmHWM, is its own): `log` of the long stack,
//! `verify` of the 100-patch stack, and committing a 1 MiB module. `git log` of the
//! long stack's ref is timed as a whole process; with `KSTACK_BIN` set to a built
//! `kstack`, so is `kstack log` of the same stack, like for like: process start
//! included, both writing to a file, run in turn with `git log`.
#![allow(clippy::unwrap_used)] // a benchmark: any failure should stop it loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kstack_fixtures::FakeModule;
use kstack_store::commit::NewPatch;
use kstack_store::keys::{SecretKey, TrustPolicy};
use kstack_store::model::PatchSource;
use kstack_store::store::{Author, StackId, Store};

const BUILD_ID: &str = "3b43fad5034874490492495d552c0af6a5fab235";

fn key() -> SecretKey {
    SecretKey::from_seed(&[42; 32])
}

fn author() -> Author {
    Author {
        name: "bench".into(),
        email: "bench@kstack".into(),
        time: 1_700_000_000,
        valid_for: kstack_store::validity::DEFAULT_VALIDITY,
    }
}

fn patch(name: &str, functions: &[&str], size: usize, seed: u64) -> NewPatch {
    let mut m = FakeModule::livepatch(&format!("kstack_{name}"), functions);
    m.padding = size;
    m.seed = seed;
    NewPatch {
        name: name.to_owned(),
        module: m.build(),
        module_file: format!("{name}.ko"),
        diff: None,
        functions: Vec::new(),
        build: Default::default(),
        source: PatchSource::Prebuilt,
        extra: Default::default(),
    }
}

fn stack(name: &str) -> StackId {
    StackId::new(BUILD_ID.parse().unwrap(), name).unwrap()
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs in the child: one measured operation; prints `elapsed_us peak_kib detail`.
fn measure(what: &str, store: &Path) {
    let start = Instant::now();
    let detail = match what {
        "log" => {
            let store = Store::open(store).unwrap();
            let head = store.resolve("long", None).unwrap().commit;
            format!("{} commits", store.log(head, None).unwrap().len())
        }
        "verify" => {
            let store = Store::open(store).unwrap();
            let policy = TrustPolicy {
                keys: vec![key().public()],
                ..TrustPolicy::default()
            };
            let head = store.resolve("wide", None).unwrap().commit;
            let v = store.verify(head, Some(&stack("wide")), &policy).unwrap();
            let history = store.verify_history(head, None, None).unwrap();
            format!("{} patches, {history} signatures", v.patches.len())
        }
        "commit-new" | "commit-wide" => {
            let store = Store::open(store).unwrap();
            let p = patch("big", &["big_function"], 1 << 20, 7);
            let size = p.module.len();
            let target = if what == "commit-new" {
                stack(&format!("fresh-{}", std::process::id()))
            } else {
                stack("wide")
            };
            let start = Instant::now();
            store
                .add_patch(&target, None, p, "add a 1 MiB module", &author(), &key())
                .unwrap();
            let elapsed = start.elapsed();
            if what == "commit-wide" {
                // Leave the stack as it was for the next run (not timed).
                store
                    .revert_patch(&target, "big", "undo", &author(), &key())
                    .unwrap();
            }
            println!(
                "{} {} {size}-byte module",
                elapsed.as_micros(),
                vm_hwm_kib()
            );
            return;
        }
        other => panic!("unknown measurement {other}"),
    };
    let elapsed = start.elapsed();
    println!("{} {} {detail}", elapsed.as_micros(), vm_hwm_kib());
}

struct Sample {
    elapsed: Duration,
    peak_kib: u64,
    detail: String,
}

fn child(what: &str, store: &Path, runs: usize) -> Sample {
    let exe = std::env::current_exe().unwrap();
    let mut samples: Vec<Sample> = (0..runs)
        .map(|_| {
            let out = Command::new(&exe)
                .args(["--measure", what])
                .arg(store)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let mut parts = text.trim().splitn(3, ' ');
            Sample {
                elapsed: Duration::from_micros(parts.next().unwrap().parse().unwrap()),
                peak_kib: parts.next().unwrap().parse().unwrap(),
                detail: parts.next().unwrap_or("").to_owned(),
            }
        })
        .collect();
    samples.sort_by_key(|s| s.elapsed);
    samples.swap_remove(runs / 2)
}

/// One run of a command, its standard output written to the file `out`: wall time
/// of the whole process and its peak RSS (from `/usr/bin/time`, when there).
fn run_once(program: &str, args: &[&str], out: &Path) -> (Duration, Option<u64>) {
    let mut cmd = if Path::new("/usr/bin/time").exists() {
        let mut c = Command::new("/usr/bin/time");
        c.args(["-f", "%M", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let output = cmd.output().unwrap();
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rss = String::from_utf8_lossy(&output.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok());
    (elapsed, rss)
}

fn median<T: Clone>(mut samples: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    samples.sort_by(|a, b| key(a).total_cmp(&key(b)));
    samples[samples.len() / 2].clone()
}

/// Median wall time and peak RSS of a command (see [`run_once`]).
fn external(program: &str, args: &[&str], runs: usize, out: &Path) -> (Duration, Option<u64>) {
    let samples = (0..runs).map(|_| run_once(program, args, out)).collect();
    median(samples, |s| s.0.as_secs_f64())
}

/// Wall time and peak RSS of one run.
type Timed = (Duration, Option<u64>);

/// Two commands run in turn, A B A B ..., so that both see the same machine: each
/// one's median wall time and peak RSS, and the median of the ratios A/B pair by pair.
fn paired(a: (&str, &[&str]), b: (&str, &[&str]), runs: usize, out: &Path) -> (Timed, Timed, f64) {
    let pairs: Vec<(Timed, Timed)> = (0..runs)
        .map(|_| (run_once(a.0, a.1, out), run_once(b.0, b.1, out)))
        .collect();
    let ratio = median(
        pairs
            .iter()
            .map(|(a, b)| a.0.as_secs_f64() / b.0.as_secs_f64())
            .collect(),
        |r| *r,
    );
    let a = median(pairs.iter().map(|p| p.0).collect(), |s| s.0.as_secs_f64());
    let b = median(pairs.iter().map(|p| p.1).collect(), |s| s.0.as_secs_f64());
    (a, b, ratio)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().unwrap())
}

/// The layouts every operation is measured on: a directory under the benchmark's
/// root, and how the table names it.
const LAYOUTS: [(&str, &str); 4] = [
    ("loose", "every object loose"),
    ("written", "as kstack wrote it"),
    ("kstack-packed", "one pack by kstack"),
    ("git-packed", "after `git repack -adf`"),
];

/// Builds the two stacks in a new store at `path`; returns how long each took.
fn build(path: &Path, commits: usize, patches: usize) -> (Duration, Duration) {
    let store = Store::init(path).unwrap();
    // A long history: add and revert one small patch, over and over.
    let setup = Instant::now();
    let long = stack("long");
    let p = patch("p", &["f"], 4096, 1);
    for i in 0..commits {
        if i % 2 == 0 {
            store
                .add_patch(
                    &long,
                    None,
                    p.clone(),
                    &format!("add p ({i})"),
                    &author(),
                    &key(),
                )
                .unwrap();
        } else {
            store
                .revert_patch(&long, "p", &format!("revert p ({i})"), &author(), &key())
                .unwrap();
        }
    }
    let long_setup = setup.elapsed();
    // A wide stack: many patches of realistic size.
    let setup = Instant::now();
    let wide = stack("wide");
    for i in 0..patches {
        let name = format!("patch-{i:03}");
        let function = format!("function_{i}");
        store
            .add_patch(
                &wide,
                None,
                patch(&name, &[&function], 64 << 10, i as u64 + 2),
                &name,
                &author(),
                &key(),
            )
            .unwrap();
    }
    (long_setup, setup.elapsed())
}

/// A copy of the store at `from`, made with `cp -a`.
fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Turns every pack of the store at `path` into loose objects, with `git
/// unpack-objects` (which only writes objects the store does not have, so each pack
/// is moved out first).
fn explode(path: &Path) -> bool {
    let pack_dir = path.join("objects/pack");
    let packs: Vec<PathBuf> = std::fs::read_dir(&pack_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    packs.iter().all(|pack| {
        let moved = path.join(pack.file_name().unwrap());
        std::fs::rename(pack, &moved).unwrap();
        std::fs::remove_file(pack.with_extension("idx")).unwrap();
        let ok = Command::new("git")
            .arg(format!("--git-dir={}", path.display()))
            .args(["unpack-objects", "-q"])
            .stdin(std::fs::File::open(&moved).unwrap())
            .status()
            .is_ok_and(|s| s.success());
        std::fs::remove_file(&moved).unwrap();
        ok
    })
}

/// `git count-objects -v` on one line, or nothing without git.
fn count_objects(path: &Path) -> String {
    Command::new("git")
        .arg(format!("--git-dir={}", path.display()))
        .args(["count-objects", "-v"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--measure") {
        measure(&args[2], Path::new(&args[3]));
        return;
    }
    let commits = arg(&args, "--commits", 10_000);
    let patches = arg(&args, "--patches", 100);
    let runs = arg(&args, "--runs", 5);
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = match std::env::var_os("BENCH_STORE_DIR") {
        Some(p) => PathBuf::from(p),
        None => dir.path().to_owned(),
    };
    std::fs::create_dir_all(&root).unwrap();

    let written = root.join("written");
    let _ = std::fs::remove_dir_all(&written);
    let (long_setup, wide_setup) = build(&written, commits, patches);
    let objects = count_objects(&written);
    let kstack_packed = root.join("kstack-packed");
    copy(&written, &kstack_packed);
    let report = Store::open(&kstack_packed).unwrap().pack(true).unwrap();
    // The other layouts are git's work: without git there are only these two.
    let loose = root.join("loose");
    copy(&written, &loose);
    let git = explode(&loose);
    let git_packed = root.join("git-packed");
    copy(&written, &git_packed);
    let git = git
        && Command::new("git")
            .arg(format!("--git-dir={}", git_packed.display()))
            .args(["repack", "-adfq"])
            .status()
            .is_ok_and(|s| s.success());

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    println!(
        "kstack store benchmark ({} CPUs, {cpu}), median of {runs} runs, each in a fresh process",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "setup: {commits} commits in {:.1} s ({:.2} ms/commit); {patches} patches of 64 KiB in {:.1} s",
        long_setup.as_secs_f64(),
        long_setup.as_secs_f64() * 1000.0 / commits as f64,
        wide_setup.as_secs_f64()
    );
    println!("objects as written: {objects}");
    println!("kstack's packing: {report:?}");
    let long = stack("long");
    if args.iter().any(|a| a == "--setup-only") {
        println!(
            "stores in {}: {}",
            root.display(),
            LAYOUTS.map(|l| l.0).join(", ")
        );
        println!(
            "the long stack: `long` (kstack), ref {} (git)",
            long.ref_name()
        );
        let _kept = dir.keep(); // the stores are what was asked for
        return;
    }
    println!();
    println!("| operation | store | time | peak RSS | detail |");
    println!("|---|---|---|---|---|");
    let refname = long.ref_name();
    let kstack_bin = std::env::var("KSTACK_BIN").ok();
    let out = root.join("log-output");
    for (name, layout) in LAYOUTS {
        let path = root.join(name);
        if matches!(name, "loose" | "git-packed") && !git {
            println!("(git is missing: no measurements {layout})");
            continue;
        }
        let s = child("log", &path, runs);
        println!(
            "| `log` of {commits} commits (library, incl. open) | {layout} | {} | {} | {} |",
            ms(s.elapsed),
            mib(s.peak_kib),
            s.detail
        );
        let git_dir = format!("--git-dir={}", path.display());
        let store_arg = format!("--store={}", path.display());
        for format in [None, Some("--oneline")] {
            let shown = format.map_or(String::new(), |f| format!(" {f}"));
            let git_args: Vec<&str> = [git_dir.as_str(), "log"]
                .into_iter()
                .chain(format)
                .chain([refname.as_str()])
                .collect();
            let Some(bin) = &kstack_bin else {
                let (t, rss) = external("git", &git_args, runs, &out);
                println!(
                    "| `git log{shown}`, same ref (whole process) | {layout} | {} | {} | |",
                    ms(t),
                    rss.map_or("?".into(), mib),
                );
                continue;
            };
            let kstack_args: Vec<&str> = [store_arg.as_str(), "log"]
                .into_iter()
                .chain(format)
                .chain(["long"])
                .collect();
            let ((kt, krss), (gt, grss), ratio) =
                paired((bin, &kstack_args), ("git", &git_args), runs, &out);
            println!(
                "| `git log{shown}`, same ref (whole process) | {layout} | {} | {} | |",
                ms(gt),
                grss.map_or("?".into(), mib),
            );
            println!(
                "| `kstack log{shown}` (whole process) | {layout} | {} | {} | kstack/git: {ratio:.2}x (median of pairs) |",
                ms(kt),
                krss.map_or("?".into(), mib),
            );
        }
        let s = child("verify", &path, runs);
        println!(
            "| `verify` of a {patches}-patch stack (64 KiB modules) | {layout} | {} | {} | {} |",
            ms(s.elapsed),
            mib(s.peak_kib),
            s.detail
        );
        let s = child("commit-new", &path, runs);
        println!(
            "| commit a 1 MiB module (new stack) | {layout} | {} | {} | {} |",
            ms(s.elapsed),
            mib(s.peak_kib),
            s.detail
        );
        let s = child("commit-wide", &path, runs);
        println!(
            "| commit a 1 MiB module onto the {patches}-patch stack | {layout} | {} | {} | {}; the parent is verified first |",
            ms(s.elapsed),
            mib(s.peak_kib),
            s.detail
        );
    }
}
