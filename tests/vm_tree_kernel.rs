//! A kernel its owner built from a source tree: the one set-up builds (Debian's 6.1
//! source, `make tinyconfig` with live patching, `xtask/src/tree_kernel.rs`),
//! registered with `kstack kernel add --tree DIR --image FILE` in a cache of the
//! test's own. It is listed as a tree kernel, not a Debian line; every example
//! patch is built for it with `kstack commit`, and `kstack try` boots it, syncs the
//! stack (run-pre proves every replaced function first), checks each patch's effect
//! and reverts them all. And the kallsyms that registration derives from the tree's
//! `System.map` is the one the booted kernel prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use kstack_engine::builder::assets::Cache;
use kstack_engine::sandbox::{GuestRun, GuestStatus, SandboxOptions};
use kstack_tests::scenarios::{assert_checks_held_then_gone, sync_check_revert_script};
use kstack_tests::{CliStore, SETUP, kstack_cli, run_ok};

/// The tree set-up built, and its image.
fn built_tree() -> (PathBuf, PathBuf) {
    let cache = Cache::from_env();
    assert!(
        xtask::tree_kernel::is_built(&cache),
        "the test kernel built from a source tree is not in {}\nrun `{SETUP}` first",
        cache.root().display()
    );
    (
        xtask::tree_kernel::tree(&cache),
        xtask::tree_kernel::image(&cache),
    )
}

/// `kstack --json ARGS` on the cache `cache`, which must succeed; its JSON output.
fn kstack_json(cache: &Path, args: &[&str]) -> serde_json::Value {
    let out = run_ok(
        kstack_cli()
            .env("KSTACK_CACHE", cache)
            .arg("--json")
            .args(args),
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}\n{out}"))
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn a_kernel_built_from_a_tree_is_registered_patched_proven_and_reverted() {
    let (tree, image) = built_tree();
    let cache = tempfile::tempdir().unwrap();

    let started = std::time::Instant::now();
    let added = kstack_json(
        cache.path(),
        &[
            "kernel",
            "add",
            "--tree",
            text(&tree),
            "--image",
            text(&image),
        ],
    );
    eprintln!(
        "registered in {:.1}s: {added}",
        started.elapsed().as_secs_f64()
    );
    let release = added["release"].as_str().unwrap().to_owned();
    assert!(release.ends_with("-kstack-tree"), "{added}");
    assert_eq!(added["line"], serde_json::Value::Null, "{added}");
    assert_eq!(added["flavour"], serde_json::Value::Null, "{added}");
    assert_eq!(added["version"], serde_json::Value::Null, "{added}");
    assert_eq!(added["tree"], text(&tree), "{added}");
    assert!(added["source"].is_string(), "{added}");
    let registered = PathBuf::from(added["image"].as_str().unwrap());

    // Listed as a kernel built from that tree, with the image's build ID; not a
    // Debian line, though its release looks like one (6.1.192-kstack-tree).
    let list = kstack_json(cache.path(), &["kernel", "list"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{list}");
    let row = &rows[0];
    assert_eq!(row["release"], release.as_str(), "{list}");
    assert_eq!(row["build_id"], added["build_id"], "{list}");
    assert_eq!(row["line"], serde_json::Value::Null, "{list}");
    assert_eq!(row["flavour"], serde_json::Value::Null, "{list}");
    assert_eq!(row["tree"], text(&tree), "{list}");
    assert_eq!(row["headers"], true, "{list}");
    let human = run_ok(
        kstack_cli()
            .env("KSTACK_CACHE", cache.path())
            .args(["kernel", "list"]),
    );
    assert!(
        human.contains(&format!("tree {}", tree.display())),
        "{human}"
    );

    // A second registration of the same release is refused, and changes nothing.
    let again = kstack_cli()
        .env("KSTACK_CACHE", cache.path())
        .args([
            "kernel",
            "add",
            "--tree",
            text(&tree),
            "--image",
            text(&image),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already in the cache"), "{stderr}");

    // Every example patch, built for the tree kernel (they all change code its
    // minimal configuration builds: /proc files and setpriority).
    let store = CliStore::new();
    let mut checks = Vec::new();
    for patch in kstack_tests::example_patches() {
        let out = run_ok(
            kstack_cli()
                .env("KSTACK_CACHE", cache.path())
                .arg("--store")
                .arg(&store.store)
                .args(["--json", "commit"])
                .arg(&patch)
                .args(["--stack", "tree", "--key"])
                .arg(&store.key)
                .arg("--kernel")
                .arg(&registered),
        );
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(
            !report["patch"]["functions"].as_array().unwrap().is_empty(),
            "{report}"
        );
        let name = report["patch"]["name"].as_str().unwrap().to_owned();
        let check = std::fs::read_to_string(patch.with_extension("check")).unwrap();
        checks.push((name, check.trim().to_owned()));
    }
    // The manifests name the tree the kernel came from, not a Debian package.
    let show: serde_json::Value = serde_json::from_str(
        run_ok(
            kstack_cli()
                .arg("--store")
                .arg(&store.store)
                .args(["--json", "show", "tree"]),
        )
        .trim(),
    )
    .unwrap();
    for patch in show["patches"].as_array().unwrap() {
        let manifest = run_ok(
            Command::new("git")
                .arg("--git-dir")
                .arg(&store.store)
                .arg("show")
                .arg(format!(
                    "refs/kstack/{}/tree:patches/{}/manifest.toml",
                    added["build_id"].as_str().unwrap(),
                    patch["dir"].as_str().unwrap()
                )),
        );
        assert!(
            manifest.contains(&format!("source = \"tree {}\"", tree.display())),
            "{manifest}"
        );
    }

    // `kstack try`: the VM syncs the stack (run-pre first), the script checks each
    // patch and syncs to an empty stack, checking again.
    let dir = store.dir.path();
    let config = dir.join("kstack.toml");
    let host_config = store.config(Some("tree"), None, "15s").replace(
        kstack_tests::stack::GUEST_STORE,
        &store.store.display().to_string(),
    );
    std::fs::write(&config, host_config).unwrap();
    let none = dir.join("none.toml");
    std::fs::write(&none, store.config(None, None, "15s")).unwrap();
    let script = sync_check_revert_script("", "kstack", &checks);
    let out = kstack_cli()
        .env("KSTACK_CACHE", cache.path())
        .arg("--config")
        .arg(&config)
        .args(["try", "--console", "--kernel"])
        .arg(&registered)
        .arg("--file")
        .arg(format!("{}:/etc/kstack/none.toml", none.display()))
        .args(["--", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{stdout}\n{stderr}");
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The sync that `try` ran before the script proved every replaced function.
    assert!(
        stderr.contains(&format!(
            "run-pre: {} replaced function(s) matched the running code",
            checks.len()
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&release), "{stderr}");
    let run = GuestRun {
        status: GuestStatus::Exited(0),
        stdout,
        console: stderr.clone(),
        stderr,
        elapsed: started.elapsed(),
    };
    assert_checks_held_then_gone(&run, &checks);
}

/// Registration writes the kernel's kallsyms from its `System.map` (no VM boot):
/// it must be what the kernel prints, booted without KASLR, entry for entry.
#[test]
fn the_kallsyms_derived_from_system_map_is_the_kernels_own() {
    let (tree, image) = built_tree();
    let config = std::fs::read_to_string(tree.join(".config")).unwrap();
    let derived = kstack_kfacts::system_map::to_kallsyms(
        &std::fs::read_to_string(tree.join("System.map")).unwrap(),
        config
            .lines()
            .any(|l| l == "CONFIG_KALLSYMS_ABSOLUTE_PERCPU=y"),
    );
    let guest = kstack_engine::sandbox::find_guest_binary()
        .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first"));
    let mut options = SandboxOptions::new(&image, guest);
    options.kernel_args.push("nokaslr".into());
    let vm = kstack_engine::sandbox::Sandbox::new(options)
        .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first"));
    let run = vm.run("cat /proc/kallsyms").unwrap();
    assert!(run.status.success(), "{}\n{}", run.stderr, run.console);
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    };
    let (booted, derived) = (sorted(&run.stdout), sorted(&derived));
    let missing: Vec<&String> = booted.iter().filter(|l| !derived.contains(l)).collect();
    let extra: Vec<&String> = derived.iter().filter(|l| !booted.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} lines booted, {} derived; only booted: {:?}; only derived: {:?}",
        booted.len(),
        derived.len(),
        &missing[..missing.len().min(20)],
        &extra[..extra.len().min(20)]
    );
}

/// The image the tree's build wrote boots in the sandbox as it is, with live
/// patching and `/proc/kcore` (what run-pre reads the running code from).
#[test]
fn the_tree_image_boots_in_the_sandbox_with_live_patching() {
    let (_, image) = built_tree();
    let out = Command::new(
        kstack_engine::sandbox::find_guest_binary()
            .unwrap_or_else(|e| panic!("{e}\nrun `{SETUP}` first")),
    )
    .env("KSTACK_CACHE", tempfile::tempdir().unwrap().path())
    .args(["try", "--kernel"])
    .arg(&image)
    .args([
        "--",
        "uname -r; test -d /sys/kernel/livepatch && echo livepatch; test -e /proc/kcore && echo kcore",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].ends_with("-kstack-tree"), "{stdout}");
    assert_eq!(&lines[1..], ["livepatch", "kcore"], "{stdout}");
}
