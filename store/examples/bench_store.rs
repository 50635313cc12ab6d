//! Benchmark of the store's hot paths, with `git` on the same repository for scale.
//!
//! ```text
//! cargo run --release -p kstack-store --example bench_store [-- --commits N --patches N --runs N]
//! ```
//!
//! Builds, in a temporary directory, a stack of N commits (default 10,000) and a
//! stack of N patches (default 100, 64 KiB modules), then measures each operation in
//! a fresh child process (so its peak RSS, VmHWM, is its own), median of `--runs`:
//! `log` of the long stack (and `git log --oneline` of the same ref), `verify` of the
//! 100-patch stack, and committing a 1 MiB module. Each is measured twice: on the
//! store as kstack wrote it (loose objects, auto-packed past a threshold) and after
//! `git repack -adq`. With
//! `KSTACK_BIN` set to a built `kstack`, `kstack log --oneline` is timed too.
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

/// Median wall time and peak RSS (from `/usr/bin/time`, when there) of a command.
fn external(program: &str, args: &[&str], runs: usize) -> (Duration, Option<u64>) {
    let time = Path::new("/usr/bin/time").exists();
    let mut samples: Vec<(Duration, Option<u64>)> = (0..runs)
        .map(|_| {
            let mut cmd = if time {
                let mut c = Command::new("/usr/bin/time");
                c.args(["-f", "%M", program]);
                c
            } else {
                Command::new(program)
            };
            cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
            let start = Instant::now();
            let out = cmd.output().unwrap();
            let elapsed = start.elapsed();
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let rss = String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok());
            (elapsed, rss)
        })
        .collect();
    samples.sort_by_key(|s| s.0);
    samples.swap_remove(runs / 2)
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
    let path: PathBuf = match std::env::var_os("BENCH_STORE_DIR") {
        Some(p) => PathBuf::from(p),
        None => dir.path().join("store"),
    };
    let store = Store::init(&path).unwrap();

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
    let wide_setup = setup.elapsed();
    let objects = Command::new("git")
        .args([
            &format!("--git-dir={}", path.display()),
            "count-objects",
            "-v",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
        .unwrap_or_default();
    drop(store);

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
    println!("objects after setup: {objects}");
    println!();
    println!("| operation | store | time | peak RSS | detail |");
    println!("|---|---|---|---|---|");
    let refname = long.ref_name();
    let git_dir = format!("--git-dir={}", path.display());
    let kstack_bin = std::env::var("KSTACK_BIN").ok();
    for layout in ["as kstack wrote it", "after `git repack -adq`"] {
        if layout != "as kstack wrote it" {
            let ok = Command::new("git")
                .args([&git_dir, "repack", "-adq"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!("(git is missing: no packed measurements)");
                break;
            }
        }
        let s = child("log", &path, runs);
        println!(
            "| `log` of {commits} commits | {layout} | {} | {} | {} |",
            ms(s.elapsed),
            mib(s.peak_kib),
            s.detail
        );
        if let Some(bin) = &kstack_bin {
            let store_arg = format!("--store={}", path.display());
            let (t, rss) = external(
                bin,
                &[&store_arg, "log", "--oneline", &format!("{BUILD_ID}/long")],
                runs,
            );
            println!(
                "| `kstack log --oneline` (CLI, whole process) | {layout} | {} | {} | vs library log: {:.2}x |",
                ms(t),
                rss.map_or("?".into(), mib),
                t.as_secs_f64() / s.elapsed.as_secs_f64()
            );
        }
        let (t, rss) = external("git", &[&git_dir, "log", "--oneline", &refname], runs);
        println!(
            "| `git log --oneline`, same ref (whole process) | {layout} | {} | {} | kstack/git: {:.2}x |",
            ms(t),
            rss.map_or("?".into(), mib),
            s.elapsed.as_secs_f64() / t.as_secs_f64()
        );
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
