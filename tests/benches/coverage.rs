//! Benchmark: how much of what real kernels get kstack takes. A corpus of real fixes,
//! the difference between Debian's `linux-source-6.1` 6.1.176-1 and 6.1.187-1 cut
//! into fixes (`kstack_tests::corpus`), is drawn with a fixed seed; each fix is built
//! with `kstack commit` for the 6.1.176-1 cloud kernel (6.1.0-50-cloud-amd64), and
//! each that builds is synced in a VM on that kernel with `kstack try`, a generic
//! workload run (and the modules it patches loaded), the kernel log checked, the
//! patch reverted. Then the class cases (`examples/cases`, `examples/modules`, and
//! kpatch's integration cases rewritten for this kernel in `examples/kpatch`, each
//! with its own check) on the set-up kernel. Each fix ends as built and passed,
//! refused with a named class, built but failed in the VM, or a tool error.
//!
//! Run: `cargo bench -p kstack-tests --bench coverage` (after `cargo xtask setup`;
//! it adds the base kernel with `kstack kernel add` and downloads the 6.1.187-1
//! source, about 140 MB, into the cache). About an hour and a half on 2 cores.
//! `COVERAGE_FIXES` (default 64) is how many fixes of the configuration to take,
//! `COVERAGE_SEED` (default 20261127) the draw. The table is printed and written to
//! `target/coverage/report.md`, each fix's diff and logs under `target/coverage/`.

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::deps::IncludeIndex;
use kstack_tests::corpus::{self, Outcome};
use kstack_tests::{CliStore, kernel, kstack_cli, workspace_root};

const BASE_RELEASE: &str = "6.1.0-50-cloud-amd64";
const BASE_VERSION: &str = "6.1.176-1";
const TARGET_VERSION: &str = "6.1.187-1";

/// The generic workload: what any kernel change should survive. `$MODULES` are the
/// modules the patch changes, loaded so that the patch applies to them.
const WORKLOAD: &str = r#"
for f in /proc/version /proc/cmdline /proc/uptime /proc/loadavg /proc/meminfo \
         /proc/stat /proc/cpuinfo /proc/interrupts /proc/softirqs /proc/vmstat \
         /proc/zoneinfo /proc/self/status /proc/self/maps /proc/self/stat /proc/modules \
         /proc/sys/kernel/random/uuid /proc/filesystems /proc/mounts; do
    cat $f > /dev/null || exit 11
done
ls -R /sys/kernel /sys/class /sys/bus > /dev/null 2>&1
mkdir -p /tmp/w && i=0
while [ $i -lt 100 ]; do echo "$i" > /tmp/w/$i; cat /tmp/w/$i > /dev/null; i=$((i+1)); done
rm -r /tmp/w || exit 12
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null
ping -c 2 -W 1 127.0.0.1 > /dev/null 2>&1
sleep 0.1; uname -a > /dev/null; date > /dev/null; ps > /dev/null
for m in $MODULES; do modprobe $m || exit 13; done
[ -n "$CHECK" ] && { sh -c "$CHECK" || exit 14; }
for d in /sys/kernel/livepatch/*/; do
    [ "$(cat $d/enabled)" = 1 ] || exit 15
    [ "$(cat $d/transition)" = 0 ] || exit 16
done
if dmesg | grep -E "Oops|BUG:|WARNING:|general protection fault|Call Trace"; then exit 17; fi
kstack --config /etc/kstack/none.toml sync > /dev/null || exit 18
[ -z "$(ls /sys/kernel/livepatch)" ] || exit 19
for m in $MODULES; do modprobe -r $m 2>/dev/null; done
if dmesg | grep -E "Oops|BUG:|WARNING:|general protection fault|Call Trace"; then exit 20; fi
exit 0
"#;

/// What each workload exit status means.
fn workload_failure(code: i32) -> String {
    match code {
        11 => "reading /proc failed".into(),
        12 => "file operations failed".into(),
        13 => "loading the patched module failed".into(),
        14 => "the case's check failed".into(),
        15 => "the patch is not enabled after the workload".into(),
        16 => "the transition had not finished".into(),
        17 => "the kernel logged an oops or warning while patched".into(),
        18 => "reverting failed".into(),
        19 => "a livepatch was left after reverting".into(),
        20 => "the kernel logged an oops or warning after reverting".into(),
        c => format!("the VM run ended with status {c} (sync failed, or the guest died)"),
    }
}

struct Row {
    id: String,
    files: Vec<String>,
    outcome: Outcome,
    build_secs: f64,
    functions: usize,
}

fn main() {
    let out_dir = workspace_root().join("target/coverage");
    std::fs::create_dir_all(&out_dir).unwrap();
    let fixes: usize = env_or("COVERAGE_FIXES", 64);
    let seed: u64 = env_or("COVERAGE_SEED", 20_261_127);

    let cache = Cache::from_env();
    let base = ensure_base_kernel(&cache);
    let base_tree = base
        .source()
        .expect("the base kernel's source was prepared");
    let target_tree = ensure_target_source(&cache);

    eprintln!("==> the fixes between {BASE_VERSION} and {TARGET_VERSION}");
    let changed = corpus::changed_files(&base_tree, &target_tree);
    let index =
        IncludeIndex::load_or_scan(&target_tree, &cache.root().join("corpus/deps")).unwrap();
    let groups = corpus::group(&changed, |f| index.includes_of(f).to_vec());
    eprintln!(
        "    {} files changed, {} fixes; drawing {fixes} the configuration builds (seed {seed})",
        changed.len(),
        groups.len()
    );
    let order = corpus::shuffled(&groups, seed);

    let mut rows = Vec::new();
    let mut not_built = 0usize;
    for files in order {
        if rows.len() >= fixes {
            break;
        }
        let id = format!("fix-{:03}", rows.len() + not_built + 1);
        let slug = files[0].replace('/', "_");
        let diff_path = out_dir.join(format!("{id}-{slug}.diff"));
        let diff = corpus::unified_diff(
            &base_tree,
            &target_tree,
            &files,
            &format!(
                "corpus {id}: {} ({BASE_VERSION} to {TARGET_VERSION})",
                files.join(", ")
            ),
        );
        std::fs::write(&diff_path, diff).unwrap();
        eprintln!("==> {id}: {}", files.join(" "));
        let row = run_fix(&id, &files, &diff_path, &base.vmlinuz(), &out_dir, None);
        eprintln!("    {} ({:.0} s)", describe(&row.outcome), row.build_secs);
        if row.outcome == Outcome::NotBuilt {
            not_built += 1;
            continue;
        }
        rows.push(row);
        // The table so far, so that a run cut short still says what it found.
        std::fs::write(
            out_dir.join("report.md"),
            report(&rows, &[], not_built, seed),
        )
        .unwrap();
    }

    eprintln!("==> the class cases on the set-up kernel");
    let current = kernel();
    let mut cases = Vec::new();
    for dir in ["examples/cases", "examples/modules", "examples/kpatch"] {
        let Ok(entries) = std::fs::read_dir(workspace_root().join(dir)) else {
            continue;
        };
        let mut diffs: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "diff"))
            .collect();
        diffs.sort();
        for diff in diffs {
            let id = diff.file_stem().unwrap().to_string_lossy().into_owned();
            let check = std::fs::read_to_string(diff.with_extension("check"))
                .ok()
                .map(|c| c.trim().to_owned());
            let row = run_fix(
                &id,
                &[format!("{dir}/{id}.diff")],
                &diff,
                &current.vmlinuz(),
                &out_dir,
                check.as_deref(),
            );
            eprintln!("    {id}: {}", describe(&row.outcome));
            cases.push(row);
        }
    }

    let report = report(&rows, &cases, not_built, seed);
    println!("{report}");
    std::fs::write(out_dir.join("report.md"), report).unwrap();
}

/// Builds one fix on a fresh store and, if it builds, runs it in the VM.
fn run_fix(
    id: &str,
    files: &[String],
    diff: &Path,
    image: &Path,
    out_dir: &Path,
    check: Option<&str>,
) -> Row {
    let store = CliStore::new();
    let started = Instant::now();
    let out = kstack_cli()
        .arg("--store")
        .arg(&store.store)
        .args(["--json", "commit", "--stack", id, "--key"])
        .arg(&store.key)
        .arg("--kernel")
        .arg(image)
        .arg(diff)
        .output()
        .unwrap();
    let build_secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(
        out_dir.join(format!("{id}.commit.log")),
        format!("{stdout}\n{stderr}"),
    )
    .unwrap();
    // With --json an error is a document on stdout; its message is what stderr says
    // without it.
    let message = serde_json::from_str::<serde_json::Value>(stdout.trim())
        .ok()
        .and_then(|v| error_text(&v))
        .unwrap_or_else(|| stderr.clone());
    let row = |outcome, functions| Row {
        id: id.to_owned(),
        files: files.to_vec(),
        outcome,
        build_secs,
        functions,
    };
    if let Some(outcome) = corpus::classify_commit(out.status.code(), &message) {
        return row(outcome, 0);
    }
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let functions = report["patch"]["functions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let modules: Vec<String> = functions
        .iter()
        .filter_map(|f| f["object"].as_str())
        .filter(|o| *o != "vmlinux")
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kstack.toml");
    std::fs::write(&config, store.config(Some(id), None, "30s")).unwrap();
    let none = dir.path().join("none.toml");
    std::fs::write(&none, store.config(None, None, "30s")).unwrap();
    let script = format!(
        "MODULES='{}'\nCHECK='{}'\n{WORKLOAD}",
        modules.join(" "),
        check.unwrap_or("").replace('\'', "'\\''")
    );
    let vm = kstack_cli()
        .args(["try", "--kernel"])
        .arg(image)
        .arg("--store")
        .arg(&store.store)
        .arg("--config")
        .arg(&config)
        .arg("--file")
        .arg(format!("{}:/etc/kstack/none.toml", none.display()))
        .args(["--timeout", "300s", "--console", "--"])
        .arg(script)
        .output()
        .unwrap();
    let log = format!(
        "{}\n--- stderr\n{}",
        String::from_utf8_lossy(&vm.stdout),
        String::from_utf8_lossy(&vm.stderr)
    );
    std::fs::write(out_dir.join(format!("{id}.vm.log")), &log).unwrap();
    let outcome = match vm.status.code() {
        Some(0) => Outcome::Passed,
        Some(c) => Outcome::FailedInVm(workload_failure(c)),
        None => Outcome::ToolError("kstack try was killed".into()),
    };
    row(outcome, functions.len())
}

/// The message of a `--json` error document (docs/json.md), as text output prints it.
fn error_text(v: &serde_json::Value) -> Option<String> {
    let message = v.get("error")?.get("message")?.as_str()?;
    Some(format!("error: {message}"))
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Passed => "built and passed".into(),
        Outcome::Refused(class) => format!("refused: {class}"),
        Outcome::FailedInVm(why) => format!("built, failed in the VM: {why}"),
        Outcome::ToolError(why) => format!("tool error: {why}"),
        Outcome::NotBuilt => "not built for the configuration (not counted)".into(),
    }
}

fn report(rows: &[Row], cases: &[Row], not_built: usize, seed: u64) -> String {
    let mut out = format!(
        "### Coverage: {} real fixes ({BASE_VERSION} → {TARGET_VERSION}, seed {seed})\n\n",
        rows.len()
    );
    let mut columns: BTreeMap<&str, usize> = BTreeMap::new();
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    for r in rows {
        *columns.entry(r.outcome.column()).or_default() += 1;
        if let Outcome::Refused(c) = &r.outcome {
            *classes.entry(c.clone()).or_default() += 1;
        }
    }
    out.push_str("| outcome | fixes |\n|---|---|\n");
    for (column, n) in &columns {
        out.push_str(&format!("| {column} | {n} |\n"));
    }
    out.push_str(&format!(
        "\n({not_built} drawn fixes touch only files the cloud configuration does not build \
         and were skipped.)\n\n| refusal class | fixes |\n|---|---|\n"
    ));
    for (class, n) in &classes {
        out.push_str(&format!("| {class} | {n} |\n"));
    }
    out.push_str("\n| fix | files | outcome | functions | build |\n|---|---|---|---|---|\n");
    for r in rows.iter().chain(cases) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.0} s |\n",
            r.id,
            r.files.join(" "),
            describe(&r.outcome),
            r.functions,
            r.build_secs
        ));
    }
    out
}

fn ensure_base_kernel(cache: &Cache) -> kstack_engine::builder::assets::Kernel {
    if let Ok(k) = cache.kernel(BASE_RELEASE)
        && k.source().is_some()
    {
        return k;
    }
    eprintln!("==> kstack kernel add {BASE_RELEASE} --version {BASE_VERSION}");
    let status = kstack_cli()
        .args(["kernel", "add", BASE_RELEASE, "--version", BASE_VERSION])
        .status()
        .unwrap();
    assert!(status.success(), "kstack kernel add {BASE_RELEASE} failed");
    cache.kernel(BASE_RELEASE).unwrap()
}

/// The 6.1.187-1 source, unpacked under the cache (`corpus/linux-<version>`).
fn ensure_target_source(cache: &Cache) -> PathBuf {
    let dir = cache.root().join(format!("corpus/linux-{TARGET_VERSION}"));
    if dir.join("Makefile").is_file() {
        return dir;
    }
    eprintln!("==> linux-source-6.1 {TARGET_VERSION}");
    let debs = cache.root().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = debs.join(format!("linux-source-6.1_{TARGET_VERSION}_all.deb"));
    if !deb.is_file() {
        let ok = Command::new("apt-get")
            .current_dir(&debs)
            .args(["download", &format!("linux-source-6.1={TARGET_VERSION}")])
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "apt-get download linux-source-6.1={TARGET_VERSION} failed"
        );
    }
    let unpack = cache.root().join("corpus/unpack");
    let _ = std::fs::remove_dir_all(&unpack);
    std::fs::create_dir_all(&unpack).unwrap();
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack));
    let tarball = std::fs::read_dir(unpack.join("usr/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .unwrap();
    run(Command::new("tar")
        .arg("-xJf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpack));
    let top = std::fs::read_dir(&unpack)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("Makefile").is_file())
        .unwrap();
    std::fs::rename(&top, &dir).unwrap();
    std::fs::remove_dir_all(&unpack).unwrap();
    dir
}

fn run(cmd: &mut Command) {
    let ok = cmd.status().unwrap().success();
    assert!(ok, "{cmd:?} failed");
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
