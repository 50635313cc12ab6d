//! The builder through `kstack commit`, with no VM: a commit of a kernel Git tree,
//! and two builds at once. Building, applying and checking the example patches in
//! the VM is `vm_build`. (The first build for a kernel boots it once, to capture its
//! kallsyms; later builds read them from the cache.)

use kstack_tests::{CliStore, example_patch, kernel};

/// `kstack commit --git REPO REV`: the diff of a commit of a kernel Git tree.
#[test]
fn a_commit_of_a_kernel_git_tree_builds() {
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git (run `cargo xtask setup`)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    let file = repo.path().join("fs/proc/loadavg.c");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let original = std::fs::read_to_string(tree.join("fs/proc/loadavg.c")).unwrap();
    std::fs::write(&file, &original).unwrap();
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "import loadavg.c"]);
    std::fs::write(
        &file,
        original.replacen(
            "\treturn 0;\n}\n",
            "\tseq_puts(m, \"from-git\\n\");\n\treturn 0;\n}\n",
            1,
        ),
    )
    .unwrap();
    git(&[
        "commit",
        "-q",
        "-a",
        "-m",
        "loadavg: say where the fix came from",
    ]);

    let store = CliStore::new();
    let out = kstack_tests::run_ok(
        kstack_tests::kstack_cli()
            .arg("--store")
            .arg(&store.store)
            .args(["--json", "commit", "--git"])
            .arg(repo.path())
            .args(["HEAD", "--stack", "git", "--key"])
            .arg(&store.key),
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // The schema of docs/json.md, `kstack commit` (the same as for --module, which
    // cli/tests/json_output.rs snapshots).
    let keys = |v: &serde_json::Value| -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let expected = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        keys(&report),
        expected(&[
            "commit",
            "parent",
            "stack",
            "kernel_release",
            "patch",
            "signer",
            "validity"
        ]),
        "{report}"
    );
    assert_eq!(
        keys(&report["patch"]),
        expected(&["name", "dir", "module_name", "manifest_sha256", "functions"]),
        "{report}"
    );
    assert_eq!(report["parent"], serde_json::Value::Null, "a new stack");
    assert_eq!(report["kernel_release"], kernel().release, "{report}");
    assert!(
        report["patch"]["module_name"]
            .as_str()
            .unwrap()
            .starts_with("kstack_"),
        "{report}"
    );
    assert_eq!(
        report["patch"]["name"],
        "loadavg-say-where-the-fix-came-from"
    );
    assert_eq!(
        report["patch"]["functions"],
        serde_json::json!(["vmlinux:loadavg_proc_show"])
    );
}

/// Two builds at the same time share nothing: each module holds its own functions.
#[test]
fn two_builds_at_once_do_not_mix() {
    let a = CliStore::new();
    let b = CliStore::new();
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.commit_diff("x", &example_patch("0001-proc-version-banner.diff")));
        let tb =
            s.spawn(|| b.commit_diff("x", &example_patch("0004-loadavg-running-percent.diff")));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(
        ra["patch"]["functions"],
        serde_json::json!(["vmlinux:version_proc_show"])
    );
    assert_eq!(
        rb["patch"]["functions"],
        serde_json::json!(["vmlinux:loadavg_proc_show"])
    );
}

/// A fix to a file this kernel's configuration does not build (a DRM driver the
/// cloud kernel leaves out) is refused with that reason (exit 65), not with make's
/// output.
#[test]
fn a_file_the_configuration_does_not_build_is_refused_with_that_reason() {
    let tree = kernel().source().expect("run `cargo xtask setup`");
    let file = "drivers/gpu/drm/i915/i915_driver.c";
    let text = std::fs::read_to_string(tree.join(file)).unwrap();
    let first = text.lines().next().unwrap();
    let diff = format!(
        "i915: a fix to a driver this kernel does not build\n\n\
         --- a/{file}\n+++ b/{file}\n@@ -1,1 +1,2 @@\n {first}\n+/* kstack */\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i915.diff");
    std::fs::write(&path, diff).unwrap();
    let store = CliStore::new();
    let out = kstack_tests::kstack_cli()
        .arg("--store")
        .arg(&store.store)
        .args(["commit", "--stack", "drm", "--key"])
        .arg(&store.key)
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(
        stderr.contains("drivers/gpu/drm/i915/i915_driver.o is not built for kernel"),
        "{stderr}"
    );
    assert!(!stderr.contains("No rule to make target"), "{stderr}");
}

/// A module fix builds into a patch whose functions are named with their module,
/// and `kstack verify --image` proves it offline against the image package's `.ko`.
#[test]
fn a_module_fix_builds_and_is_proven_against_the_image_packages_ko() {
    let store = CliStore::new();
    let diff = kstack_tests::workspace_root().join("examples/modules/xfs-stats-marker.diff");
    let report = store.commit_diff("mods", &diff);
    assert_eq!(
        report["patch"]["functions"],
        serde_json::json!(["xfs:xfs_stats_format"]),
        "{report}"
    );
    let config = store.dir.path().join("host.toml");
    std::fs::write(
        &config,
        store.config(Some("mods"), None, "15s").replace(
            kstack_tests::stack::GUEST_STORE,
            &store.store.display().to_string(),
        ),
    )
    .unwrap();
    let out = kstack_tests::run_ok(
        kstack_tests::kstack_cli()
            .arg("--config")
            .arg(&config)
            .args(["verify", "mods", "--image"])
            .arg(kernel().vmlinuz()),
    );
    assert!(out.contains("xfs_stats_format: matches"), "{out}");
}
