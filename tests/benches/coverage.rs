//! Benchmark: how much of what real kernels get kstack takes. A corpus of real fixes,
//! the difference between two Debian source releases of a kernel line cut into
//! fixes (`kstack_tests::corpus`), is drawn with a fixed seed; each fix is built with
//! `kstack commit` for the cloud kernel of the older release, and each that builds is
//! synced in a VM on that kernel with `kstack try`, a generic workload run (and the
//! modules it patches loaded), the kernel log checked, the patch reverted. Then the
//! class cases (`examples/cases`, `examples/modules`, and kpatch's integration cases
//! rewritten for 6.1 in `examples/kpatch`, each with its own check; a line's own
//! version under `<dir>/<line>/` where there is one) on the set-up kernel of the
//! line. Each fix ends as built and passed, refused with a named class, built but
//! failed in the VM, or a tool error; a class case can also not apply to the line's
//! source.
//!
//! The line is `COVERAGE_LINE` (`kstack_tests::corpus::CorpusLine`):
//! - `6.1` (the default): `linux-source-6.1` 6.1.176-1 to 6.1.187-1, built for
//!   6.1.0-50-cloud-amd64; the class cases on the default set-up kernel; results in
//!   `target/coverage/`.
//! - `6.12`: `linux-source-6.12` 6.12.107-1~deb12u1 to 6.12.113-1~deb12u1 (not the
//!   archive's newest two), built for 6.12.107+deb12-cloud-amd64; the class cases on
//!   the newest 6.12 cloud kernel in the cache (`kstack_tests::LINE_612`); results in
//!   `target/coverage-6.12/`.
//!
//! Run: `cargo bench -p kstack-tests --bench coverage` (after `cargo xtask setup`;
//! it adds the base kernel with `kstack kernel add` and downloads the target source,
//! about 140 MB, into the cache). About an hour and a half on 2 cores.
//! `COVERAGE_FIXES` (default 64) is how many fixes of the configuration to take,
//! `COVERAGE_SEED` (default 20261127) the draw. The table is printed and written to
//! `report.md` in the line's directory, each fix's diff and logs beside it.

// A benchmark driver: a failed unwrap is a failed run, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kstack_engine::builder::assets::Cache;
use kstack_engine::builder::deps::IncludeIndex;
use kstack_tests::corpus::{self, CorpusLine, Outcome};
use kstack_tests::{
    CliStore, LINE_612, example_for_line, kernel, kstack_cli, select_kernel, workspace_root,
};

/// The generic workload: what any kernel change should survive. `$MODULES` are the
/// modules the patch changes, loaded so that the patch applies to them. A case's
/// check runs first, on the freshly patched kernel, as in `vm_cases`: checks count
/// reads (`new-static-counter`, `print-once`) that the workload's would add to.
const WORKLOAD: &str = r#"
nodev=""
for m in $MODULES; do
    out=$(modprobe $m 2>&1) && continue
    echo "$out"
    case "$out" in *"No such device"*) nodev="$nodev $m" ;; *) exit 13 ;; esac
done
[ -n "$CHECK" ] && { sh -c "$CHECK" || exit 14; }
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
for d in /sys/kernel/livepatch/*/; do
    [ "$(cat $d/enabled)" = 1 ] || exit 15
    [ "$(cat $d/transition)" = 0 ] || exit 16
done
if dmesg | grep -E "Oops|BUG:|WARNING:|general protection fault|Call Trace"; then exit 17; fi
kstack --config /etc/kstack/none.toml sync > /dev/null || exit 18
[ -z "$(ls /sys/kernel/livepatch)" ] || exit 19
for m in $MODULES; do modprobe -r $m 2>/dev/null; done
if dmesg | grep -E "Oops|BUG:|WARNING:|general protection fault|Call Trace"; then exit 20; fi
[ -z "$nodev" ] || { echo "no such device:$nodev"; exit 21; }
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
    let line = CorpusLine::selected(std::env::var(corpus::LINE_ENV).ok().as_deref())
        .unwrap_or_else(|e| panic!("{e}"));
    let out_dir = line.report_dir(&workspace_root().join("target"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let fixes: usize = env_or("COVERAGE_FIXES", 64);
    let seed: u64 = env_or("COVERAGE_SEED", 20_261_127);
    let (base_version, target_version) = (line.base_version, line.target_version);

    let cache = Cache::from_env();
    let base = ensure_base_kernel(&cache, &line);
    let base_tree = base
        .source()
        .expect("the base kernel's source was prepared");
    let target_tree = ensure_target_source(&cache, &line);

    eprintln!(
        "==> the fixes between {} {base_version} and {target_version}",
        line.source_package
    );
    let changed = corpus::changed_files(&base_tree, &target_tree);
    let index =
        IncludeIndex::load_or_scan(&target_tree, &line.include_index_dir(cache.root())).unwrap();
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
                "corpus {id}: {} ({base_version} to {target_version})",
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
            report(&line, &rows, &[], not_built, seed),
        )
        .unwrap();
    }

    if line != corpus::LINE_6_1 {
        // The class cases run on the line's set-up kernel (6.1's: the default one).
        select_kernel(LINE_612);
    }
    let current = kernel();
    eprintln!(
        "==> the class cases on the set-up kernel {}",
        current.release
    );
    let mut cases = Vec::new();
    for dir in ["cases", "modules", "kpatch"] {
        let Ok(entries) = std::fs::read_dir(workspace_root().join("examples").join(dir)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "diff"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            // The line's own version where the source differs (and its check and hook
            // file beside it: a line's directory has them where it needs them).
            let diff = example_for_line(dir, &name);
            let id = name.trim_end_matches(".diff").to_owned();
            let check = std::fs::read_to_string(diff.with_extension("check"))
                .or_else(|_| {
                    std::fs::read_to_string(
                        workspace_root()
                            .join("examples")
                            .join(dir)
                            .join(format!("{id}.check")),
                    )
                })
                .ok()
                .map(|c| c.trim().to_owned());
            let shown = diff
                .strip_prefix(workspace_root())
                .unwrap_or(&diff)
                .display()
                .to_string();
            let row = run_fix(
                &id,
                &[shown],
                &diff,
                &current.vmlinuz(),
                &out_dir,
                check.as_deref(),
            );
            eprintln!("    {id}: {}", describe(&row.outcome));
            cases.push(row);
        }
    }

    let report = report(&line, &rows, &cases, not_built, seed);
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
    let modules = corpus::patched_modules(functions.iter().filter_map(|f| f.as_str()));

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
        // A driver's module refuses to load without its hardware (-ENODEV from its
        // init): everything else passed, but the patched code never ran.
        Some(21) => Outcome::NotExercised(
            log.lines()
                .find_map(|l| l.strip_prefix("no such device:"))
                .unwrap_or_default()
                .trim()
                .to_owned(),
        ),
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
        Outcome::NotExercised(modules) => {
            format!("built, synced and reverted; {modules} cannot load without its hardware")
        }
        Outcome::ToolError(why) => format!("tool error: {why}"),
        Outcome::NotBuilt => "not built for the configuration (not counted)".into(),
        Outcome::DoesNotApply => "does not apply to the line's source (not built)".into(),
    }
}

fn report(line: &CorpusLine, rows: &[Row], cases: &[Row], not_built: usize, seed: u64) -> String {
    let mut out = format!(
        "### Coverage: {} real fixes ({} {} → {}, built for {}, seed {seed})\n\n",
        rows.len(),
        line.source_package,
        line.base_version,
        line.target_version,
        line.base_release
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

fn ensure_base_kernel(cache: &Cache, line: &CorpusLine) -> kstack_engine::builder::assets::Kernel {
    let (release, version) = (line.base_release, line.base_version);
    if let Ok(k) = cache.kernel(release)
        && k.source().is_some()
    {
        return k;
    }
    eprintln!("==> kstack kernel add {release} --version {version}");
    let status = kstack_cli()
        .args(["kernel", "add", release, "--version", version])
        .status()
        .unwrap();
    assert!(status.success(), "kstack kernel add {release} failed");
    cache.kernel(release).unwrap()
}

/// The line's target source, unpacked under the cache (`corpus/linux-<version>`).
fn ensure_target_source(cache: &Cache, line: &CorpusLine) -> PathBuf {
    let dir = line.target_source_dir(cache.root());
    if dir.join("Makefile").is_file() {
        return dir;
    }
    let package = format!("{}={}", line.source_package, line.target_version);
    eprintln!("==> {package}");
    let debs = cache.root().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let deb = debs.join(line.target_deb_name());
    if !deb.is_file() {
        let ok = Command::new("apt-get")
            .current_dir(&debs)
            .args(["download", &package])
            .status()
            .unwrap()
            .success();
        assert!(ok, "apt-get download {package} failed");
    }
    // One unpacking place per version: two lines' runs may unpack at once.
    let unpack = cache
        .root()
        .join(format!("corpus/unpack-{}", line.target_version));
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
