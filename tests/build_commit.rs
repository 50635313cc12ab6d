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
            "signer"
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
